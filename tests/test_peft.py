"""LoRA through peft on HDPL models (chapter 17, `hdpl.peft`): every projection adapted, HDPL layers included; train,
save, reload in a new process (hdpl's class and a `trust_remote_code` checkpoint's own copy of it); merging refused with
nothing changed; DoRA and weight-based initialisations refused; several adapters in one batch; hdpl's own model."""
import json, subprocess, sys, textwrap, warnings
import pytest
import torch
import transformers
from hdpl.hf import hdplify
from hdpl.model import HDPLForCausalLM
from hdpl.params import HDPLConfig

peft = pytest.importorskip('peft')      # a dev requirement: present in CI
from hdpl.peft import get_peft_model, lora_config, lora_targets, register, MERGE_REFUSED

pytestmark = pytest.mark.filterwarnings('ignore:.*is_gradient_checkpointing')
PROJ = ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']
X = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))

def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        hdplify(m, 'surgical', rank=8, groups=4, **kw)
    return m.eval()

def adapted(pm): return {n.rsplit('.', 1)[-1]: type(m).__name__ for n, m in pm.named_modules() if hasattr(m, 'lora_A')}

def trained(seed=0, steps=3, **kw):
    pm = get_peft_model(tiny(seed), r=4, lora_alpha=8, **kw)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm.train()
    for _ in range(steps):
        pm(input_ids=X, labels=X).loss.backward(); opt.step(); opt.zero_grad()
    return pm.eval()

def test_lazy_names():
    import hdpl.peft
    assert hdpl.peft.LoraHDPL is hdpl.peft.lora_class() and hdpl.peft.LoraHDPL.__name__ == 'LoraHDPL'
    with pytest.raises(AttributeError): hdpl.peft.NoSuchThing
    out = _fresh("import sys, hdpl.peft; print('peft' in sys.modules)")    # peft is imported when LoRA is used, not before
    assert out.strip() == 'False'

def test_plain_peft_cannot():
    with pytest.raises(ValueError, match='is not supported'):
        peft.get_peft_model(tiny(), peft.LoraConfig(target_modules=['q_proj']))
    assert sorted(adapted(peft.get_peft_model(tiny(), peft.LoraConfig(target_modules='all-linear')))) == ['down_proj', 'o_proj']

def test_every_projection_and_not_the_head():
    m = tiny()
    assert lora_targets(m) == PROJ
    pm = get_peft_model(m, r=4)
    kinds = adapted(pm)
    assert sorted(kinds) == PROJ and {kinds[p] for p in ('q_proj', 'k_proj', 'v_proj', 'gate_proj', 'up_proj')} == {'LoraHDPL'}
    assert lora_targets(pm) == PROJ                              # an adapted model lists the same layers
    assert not any('lm_head' in n for n, p in pm.named_parameters() if p.requires_grad)
    cfg = peft.LoraConfig(target_modules='all-linear', r=2)      # peft's 'all-linear', given to hdpl.peft, includes HDPL
    assert sorted(adapted(get_peft_model(tiny(), cfg))) == PROJ

def test_training_moves_only_the_adapters():
    base = {k: v.clone() for k, v in tiny().state_dict().items()}
    pm = get_peft_model(tiny(), r=4, lora_alpha=8)
    with torch.no_grad(): l0 = pm(input_ids=X, labels=X).loss.item()
    pm = trained(steps=5)
    with torch.no_grad(): l1 = pm(input_ids=X, labels=X).loss.item()
    assert l1 < l0 - 0.05, (l0, l1)
    sd = pm.get_base_model().state_dict()
    for k, v in base.items():
        k2 = k if k in sd else k.replace('_proj.', '_proj.base_layer.')
        assert torch.equal(sd[k2], v), k                            # the HDPL and dense weights are untouched
    b = pm.base_model.model.model.layers[0].self_attn.q_proj.lora_B['default'].weight
    assert b.abs().sum() > 0                                         # an HDPL layer's adapter trained

def _fresh(code, *args):
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

def test_save_and_reload_in_a_new_process(tmp_path):
    pm = trained()
    with torch.no_grad(): want = pm(X).logits
    base, adapter = tmp_path / 'base', tmp_path / 'adapter'
    tiny().save_pretrained(base)                    # the base model the adapter was trained on, with its remote-code file
    pm.save_pretrained(adapter)
    torch.save({'x': X, 'logits': want}, tmp_path / 'want.pt')
    assert sorted(json.loads((adapter / 'adapter_config.json').read_text())['target_modules']) == PROJ
    code = """
        import sys, torch, warnings
        warnings.simplefilter('ignore')
        from transformers import AutoModelForCausalLM
        base, adapter, want, remote = sys.argv[1:5]
        if remote == '1': sys.modules['hdpl'] = None        # load as where hdpl is not installed: the checkpoint's own code
        else: import hdpl                                   # hdpl's classes, registered with the Auto classes
        m = AutoModelForCausalLM.from_pretrained(base, trust_remote_code=remote == '1').eval()
        if remote == '1': del sys.modules['hdpl']
        from hdpl.peft import load_lora
        layer = m.model.layers[0].self_attn.q_proj
        pm = load_lora(m, adapter)
        w = torch.load(want)
        with torch.no_grad(): got = pm(w['x']).logits
        print(type(layer).__module__, type(pm.base_model.model.model.layers[0].self_attn.q_proj).__name__,
              (got - w['logits']).abs().max().item())
    """
    for remote in ('0', '1'):
        mod, kind, err = _fresh(code, base, adapter, tmp_path / 'want.pt', remote).split()
        assert kind == 'LoraHDPL' and float(err) < 1e-5, (remote, mod, kind, err)
        assert mod.startswith('transformers_modules' if remote == '1' else 'hdpl.'), (remote, mod)

def test_merge_refused_with_nothing_changed():
    pm = trained()
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    for f in (pm.merge_and_unload, pm.merge_adapter, lambda: pm.base_model.model.model.layers[0].self_attn.q_proj.merge()):
        with pytest.raises(ValueError, match='cannot be merged'): f()
    after = pm.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, 'merged', False) for m in pm.modules())
    assert 'unload()' in MERGE_REFUSED

def test_a_plain_lora_model_still_merges():
    "The merge guard only refuses models that hold HDPL adapters."
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)).eval()
    trained()                                                        # the guard is installed
    pm = peft.get_peft_model(m, peft.LoraConfig(target_modules=['q_proj'], init_lora_weights=False))
    with torch.no_grad(): want = pm(X).logits
    merged = pm.merge_and_unload()
    with torch.no_grad(): torch.testing.assert_close(merged(X).logits, want, atol=1e-5, rtol=1e-5)

def test_unload_and_disable():
    m = tiny()
    with torch.no_grad(): base = m(X).logits
    pm = trained()
    with pm.disable_adapter(), torch.no_grad(): assert torch.equal(pm(X).logits, base)
    with torch.no_grad(): assert not torch.equal(pm(X).logits, base)
    plain = pm.unload()
    assert type(plain.model.layers[1].mlp.up_proj).__name__ == 'HybridDualPathLinear'
    with torch.no_grad(): assert torch.equal(plain(X).logits, base)

@pytest.mark.parametrize('kw, msg', [(dict(use_dora=True), 'DoRA needs'), (dict(init_lora_weights='pissa'), 'does not have'),
                                     (dict(init_lora_weights='olora'), 'does not have')])
def test_options_that_need_a_dense_weight(kw, msg):
    with pytest.raises(ValueError, match=msg): get_peft_model(tiny(), r=4, target_modules=['q_proj'], **kw)

def test_bad_calls():
    with pytest.raises(ValueError, match='needs the model'): lora_config()
    with pytest.raises(TypeError, match='not both'): get_peft_model(tiny(), peft.LoraConfig(target_modules=['q_proj']), r=4)
    with pytest.raises(TypeError, match='LoRA'): get_peft_model(tiny(), peft.IA3Config(target_modules=['q_proj']))
    with pytest.raises(ValueError, match='no nn.Linear'): lora_targets(torch.nn.Sequential(torch.nn.ReLU()))

def test_two_adapters_in_one_batch():
    pm = trained(seed=0)
    cfg = register(peft.LoraConfig(target_modules=PROJ, r=4, init_lora_weights=False), pm)
    pm.add_adapter('other', cfg)
    with torch.no_grad():
        pm.set_adapter('default'); a = pm(X).logits
        pm.set_adapter('other'); b = pm(X).logits
        mixed = pm(X, adapter_names=['default', 'other']).logits
    assert not torch.allclose(a, b)
    torch.testing.assert_close(mixed[0], a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], b[1], atol=1e-5, rtol=1e-5)

def test_bf16_forward_and_backward():
    pm = get_peft_model(tiny().to(torch.bfloat16), r=4)
    pm.train()
    out = pm(input_ids=X, labels=X)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for n, p in pm.named_parameters() if p.requires_grad)

def test_hdpl_own_model():
    "hdpl's `HDPLForCausalLM` (not a transformers model) through peft's generic PeftModel."
    torch.manual_seed(0)
    m = HDPLForCausalLM(HDPLConfig(vocab_size=100, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=32, rank=8, groups=4)).eval()
    assert lora_targets(m) == PROJ                                   # lm_head left out
    with torch.no_grad(): base = m(X).logits
    pm = get_peft_model(m, r=4, lora_alpha=8)
    assert type(pm).__name__ == 'PeftModel' and sorted(adapted(pm)) == PROJ
    with torch.no_grad(): assert torch.equal(pm(X).logits, base)
    pm.train()
    pm(X, X).loss.backward()
    assert pm.base_model.model.model.layers[0].self_attn.q_proj.lora_A['default'].weight.grad is not None
