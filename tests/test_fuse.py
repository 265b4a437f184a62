"""`fuse_for_inference` (chapter 09) on an `hdplify`'d grouped-query Llama (hidden 64, 2 blocks, 4 query / 2 key-value
heads, surgical R 8 with k/v at R 4, K 4): the fused model computes the unfused one's logits, inside cached `generate()`,
on left-padded batches, in bf16, under `torch.compile` and with latent edits; `save_pretrained` of a fused model writes
the standard layout; training and gradients are untouched; with `drop_logvar=True` it holds less and refuses to
save or train."""
import warnings
import torch
import transformers
from hdpl.bench import fuse_for_inference, unfuse_for_inference, fused_groups
from hdpl.hf import hdplify
from hdpl.latent import steer

def tiny(seed=0):
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        hdplify(m, 'surgical', rank=8, groups=4, overrides={'k': {'rank': 4}, 'v': {'rank': 4}})
    with torch.no_grad():                                       # latents away from 0, so that SiLU is not ~linear
        for n, p in m.named_parameters():
            if 'encoder' in n or 'decoder' in n: p.normal_(0, 0.2)
    return m.eval()

X = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(0))

def logits(m, x=X, **kw):
    with torch.no_grad(): return m(input_ids=x, **kw).logits

def test_same_logits_and_groups():
    m = tiny(); want = logits(m)
    fuse_for_inference(m)
    gs = fused_groups(m)
    assert [len(g.layers) for g in gs] == [3, 2, 3, 2]
    torch.testing.assert_close(logits(m), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(m, X[:1, :1]), logits(unfuse_for_inference(tiny()), X[:1, :1]), atol=1e-5, rtol=1e-5)

def test_used_and_declined():
    m = fuse_for_inference(tiny())
    runs = []
    for g in fused_groups(m): g._run = (lambda f: lambda x: (runs.append(1), f(x))[1])(g._run)
    logits(m); assert len(runs) == 4                            # one shared evaluation per group and input
    runs.clear()
    m(input_ids=X).logits                                       # grad enabled: the layers' own forward
    assert runs == []
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad(): m(input_ids=X)
    assert runs == []

def test_generate_cached_uncached_and_unfused():
    ref = tiny(); m = fuse_for_inference(tiny())
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        a = m.generate(X[:, :5], **kw); b = m.generate(X[:, :5], use_cache=False, **kw); c = ref.generate(X[:, :5], **kw)
    assert torch.equal(a, b) and torch.equal(a, c)

def test_left_padding():
    m = fuse_for_inference(tiny())
    ids = torch.cat([torch.zeros(1, 3, dtype=torch.long), X[:1, :6]], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], 1)
    torch.testing.assert_close(logits(m, ids, attention_mask=mask)[:, 3:], logits(m, X[:1, :6]), atol=1e-5, rtol=1e-5)

def test_bf16():
    ref = tiny().to(torch.bfloat16); m = fuse_for_inference(tiny()).to(torch.bfloat16)     # .to() after fusing: rebuilt
    got = logits(m)
    assert got.dtype == torch.bfloat16 and fused_groups(m)[0].weight.dtype == torch.bfloat16
    assert (got.float() - logits(ref).float()).abs().max() < 0.1

def test_compile():
    m = fuse_for_inference(tiny()); want = logits(m)
    c = torch.compile(m, backend='eager')
    with torch.no_grad(): torch.testing.assert_close(c(input_ids=X).logits, want, atol=1e-5, rtol=1e-5)

def test_latent_edits_still_apply():
    ref, m = tiny(), fuse_for_inference(tiny())
    edit = {'model.layers.0.self_attn.k_proj': {'add': torch.full((4,), 0.5)}, 'model.layers.1.mlp.up_proj': {'scale': 0.0}}
    with steer(ref, edit): want = logits(ref)
    with steer(m, edit): got = logits(m)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, logits(ref), atol=1e-3)       # the edits did something
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=1e-5)   # and are gone after

def test_weights_change_after_fusing():
    m = fuse_for_inference(tiny())
    logits(m)
    sd = tiny(seed=1).state_dict()
    m.load_state_dict(sd)
    ref = tiny(seed=1)
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=1e-5)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(input_ids=X, labels=X).loss.backward(); opt.step()
    m.eval(); want = logits(unfuse_for_inference(m)); fuse_for_inference(m)
    torch.testing.assert_close(logits(m), want, atol=1e-5, rtol=1e-5)

def test_save_pretrained_standard_layout(tmp_path):
    import hdpl  # noqa: F401  (registers the HDPL classes with the Auto classes)
    m = fuse_for_inference(tiny()); want = logits(m)
    keys = set(m.state_dict())
    m.save_pretrained(tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert set(back.state_dict()) == keys and fused_groups(back) == []
    torch.testing.assert_close(logits(back), want, atol=1e-5, rtol=1e-5)

def test_unfuse_and_refuse_twice():
    m = fuse_for_inference(tiny())
    fuse_for_inference(m)                                        # again: replaces, no nesting
    assert len(fused_groups(m)) == 4
    assert fused_groups(unfuse_for_inference(m)) == []
    assert all('inference_group' not in l.__dict__ for l in m.modules())

def test_drop_logvar_same_function_less_memory(tmp_path):
    from hdpl.bench import logvar_dropped
    from hdpl.layer import HybridDualPathLinear
    ref = tiny(); m = fuse_for_inference(tiny(), drop_logvar=True)
    n = lambda mod: sum(p.numel() for p in {id(p): p for p in mod.parameters()}.values())
    hd = [l for l in ref.modules() if isinstance(l, HybridDualPathLinear)]
    assert n(m) == n(ref) - sum(l.rank * (l.in_features + 1) for l in hd)          # the log-variance rows are gone
    assert len(logvar_dropped(m)) == len(hd) == 10
    torch.testing.assert_close(logits(m), logits(ref), atol=1e-5, rtol=1e-5)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad(): assert torch.equal(m.generate(X[:, :5], **kw), ref.generate(X[:, :5], **kw))
    with steer(ref, {'model.layers.0.mlp.gate_proj': {'scale': 0.5}}): want = logits(ref)   # an edited layer runs on its own
    with steer(m, {'model.layers.0.mlp.gate_proj': {'scale': 0.5}}): torch.testing.assert_close(logits(m), want, atol=1e-5, rtol=1e-5)
    b = m.to(torch.bfloat16)                                                        # .to(): rebuilt at the next call, still views
    assert (logits(b).float() - logits(ref.to(torch.bfloat16)).float()).abs().max() < 0.1
    assert all(g.weight.data_ptr() == g.layers[0].encoder_weight.data_ptr() for g in fused_groups(b))
    m = m.float(); fuse_for_inference(m)                                             # re-fused without the flag: stays dropped
    assert len(logvar_dropped(m)) == 10
    try: m.save_pretrained(tmp_path); raise AssertionError('saved')
    except ValueError as e: assert 'drop_logvar=True' in str(e)
    assert not any(tmp_path.iterdir())                                               # nothing written
    m.train()
    try: m(input_ids=X, labels=X); raise AssertionError('trained')
    except RuntimeError as e: assert 'drop_logvar=True' in str(e) and 'reload' in str(e)
