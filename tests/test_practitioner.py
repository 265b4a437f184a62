"""An HDPL model used the way a 🤗 practitioner uses a model: transformers' `Trainer` with gradient accumulation and
checkpoint + resume, `pipeline('text-generation')`, `torch.compile`, bf16, activation checkpointing both ways, remote-code
save and re-save without hdpl, LoRA through peft on every projection. One tiny grouped-query Llama (hidden 64, 2 blocks,
4 query / 2 key-value heads), hdplified at R 8, K 4; the whole file runs in well under a minute on 2 CPU cores."""
import contextlib, io, os, subprocess, sys, warnings
from functools import partial
from pathlib import Path
import pytest
import torch
import transformers
from transformers import TrainingArguments, TrainerCallback
from hdpl.hf import hdplify, HDPLTrainer

def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        hdplify(m, 'surgical', rank=8, groups=4, **kw)
    return m

X = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))
SEQS = [dict(input_ids=s, labels=s) for s in torch.randint(3, 100, (8, 16), generator=torch.Generator().manual_seed(1)).tolist()]

class Grads(TrainerCallback):
    "The gradients just before each optimizer step."
    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

def args(out, **kw):
    base = dict(per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy='no',
                disable_tqdm=True, use_cpu=True, seed=0)
    return TrainingArguments(str(out), **{**base, **kw})

def fit(model, a, cls=HDPLTrainer, data=SEQS[:4], **kw):
    cb = Grads()
    t = cls(model=model, args=a, train_dataset=data, callbacks=[cb])
    with contextlib.redirect_stdout(io.StringIO()): t.train(**kw)
    return t, cb.g

@pytest.mark.parametrize('trainer', ['HDPLTrainer', 'Trainer'])
def test_accumulation_equals_one_big_batch(tmp_path, trainer):
    "4 × 1 and 2 × 2 give the same logged loss and the same gradients, with hdpl's Trainer and with transformers' own."
    cls = HDPLTrainer if trainer == 'HDPLTrainer' else transformers.Trainer
    kw = dict(kl_bound=1e4, noise=False)                     # deterministic KL that passes gradient: an over-count would show
    t4, g4 = fit(tiny(**kw), args(tmp_path / 'a'), cls)
    t22, g22 = fit(tiny(**kw), args(tmp_path / 'b', per_device_train_batch_size=2, gradient_accumulation_steps=2), cls)
    l4, l22 = t4.state.log_history[0], t22.state.log_history[0]
    assert abs(l4['loss'] - l22['loss']) < 1e-5
    assert max((g4[n] - g22[n]).abs().max().item() for n in g4) < 1e-6
    assert max(g4[n].abs().max().item() for n in g4 if 'encoder_weight' in n) > 1e-4     # the KL term does reach the encoders
    if cls is HDPLTrainer:
        assert l4['aux_loss'] > 0 and abs(l4['ce_loss'] + l4['aux_loss'] - l4['loss']) < 1e-4
        assert abs(l4['ce_loss'] - l22['ce_loss']) < 1e-4

def test_ce_is_what_eval_measures(tmp_path):
    "The training batch evaluated after a step at lr 0 (and no ε noise): eval_loss is the logged ce_loss, below the loss."
    t, _ = fit(tiny(noise=False), args(tmp_path, learning_rate=0.0))
    log = t.state.log_history[0]
    with contextlib.redirect_stdout(io.StringIO()): ev = t.evaluate(SEQS[:4])
    assert abs(ev['eval_loss'] - log['ce_loss']) < 1e-4 and log['ce_loss'] < log['loss']

def test_trainer_checkpoint_and_resume(tmp_path):
    "save_strategy='steps' writes HDPL checkpoints (remote code included); resuming gives the uninterrupted run's weights."
    kw = dict(per_device_train_batch_size=2, max_steps=4, save_strategy='steps', save_steps=2, learning_rate=1e-2,
              lr_scheduler_type='constant')                  # the 2-step run's schedule is the 4-step run's first half
    whole, _ = fit(tiny(noise=False), args(tmp_path / 'whole', **kw), data=SEQS)
    half, _ = fit(tiny(noise=False), args(tmp_path / 'half', **{**kw, 'max_steps': 2}), data=SEQS)
    ck = tmp_path / 'half' / 'checkpoint-2'
    assert (ck / 'modeling_hdpl.py').exists() and not any(p.name.startswith('.') for p in (tmp_path / 'half').iterdir())
    resumed, _ = fit(tiny(noise=False), args(tmp_path / 'half', **kw), data=SEQS, resume_from_checkpoint=str(ck))
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6

def test_pipeline_generates_as_generate():
    m = tiny().eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=_char_tokenizer(), bos_token='<s>', eos_token='</s>', pad_token='<pad>')
    out = transformers.pipeline('text-generation', model=m, tokenizer=tok, device='cpu')('abc', max_new_tokens=6, do_sample=False,
                                                                                        return_full_text=False)
    ids = tok('abc', return_tensors='pt').input_ids
    want = m.generate(ids, max_new_tokens=6, do_sample=False)[0, ids.shape[1]:]
    assert out[0]['generated_text'] == tok.decode(want, skip_special_tokens=True)

def _char_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {'<pad>': 0, '<s>': 1, '</s>': 2, **{chr(97 + i): 3 + i for i in range(26)}}
    vocab.update({f'[{i}]': i for i in range(29, 100)})
    t = Tokenizer(models.WordLevel(vocab, unk_token='<pad>'))
    t.pre_tokenizer = pre_tokenizers.Split('', 'isolated')
    return t

def test_compile_and_bf16():
    m = tiny().eval()
    with torch.no_grad():
        ref = m(input_ids=X).logits
        got = torch.compile(m, backend='aot_eager')(input_ids=X).logits
        assert (ref - got).abs().max().item() < 1e-4
        b = tiny().eval().to(torch.bfloat16)
        lb = b(input_ids=X).logits
        assert lb.dtype == torch.bfloat16 and torch.isfinite(lb).all() and (lb.float() - ref).abs().max().item() < 0.1
    b.train(); out = b(input_ids=X, labels=X); out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in b.parameters() if p.grad is not None)

def test_checkpointing_both_ways():
    m = tiny().train()
    def grads():
        torch.manual_seed(3); m(input_ids=X, labels=X).loss.backward()
        g = {n: p.grad.clone() for n, p in m.named_parameters()}; m.zero_grad(); return g
    g0 = grads()
    m.activation_checkpointing_enable({'use_reentrant': False})
    g1 = grads()
    assert max((g0[n] - g1[n]).abs().max().item() for n in g0) < 1e-6
    m.activation_checkpointing_disable()
    with pytest.raises(ValueError, match='use_reentrant=False'): m.activation_checkpointing_enable({'use_reentrant': True})
    with pytest.raises(ValueError, match='use_reentrant=False'): m.activation_checkpointing_enable({})
    from torch.utils.checkpoint import checkpoint
    for blk in m.model.layers: blk.gradient_checkpointing, blk._gradient_checkpointing_func = True, partial(checkpoint, use_reentrant=True)
    with pytest.raises(RuntimeError, match='no gradient'): m(input_ids=X, labels=X)

def _probe(code, tmp_path):
    "Run `code` in a fresh process where `import hdpl` fails."
    p = subprocess.run([sys.executable, '-c', "import sys; sys.modules['hdpl'] = None\n" + code], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, 'HF_MODULES_CACHE': str(tmp_path / 'modules')})
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout

def test_remote_code_save_reload_resave(tmp_path):
    m = tiny().eval()
    m.save_pretrained(tmp_path / 'a')
    torch.save(m(input_ids=X).logits.detach(), tmp_path / 'ref.pt')
    code = f"""
import torch, transformers
from pathlib import Path
d = Path({str(tmp_path)!r})
m = transformers.AutoModelForCausalLM.from_pretrained(d / 'a', trust_remote_code=True).eval()
m.save_pretrained(d / 'b')
m2 = transformers.AutoModelForCausalLM.from_pretrained(d / 'b', trust_remote_code=True).eval()
with torch.no_grad(): print((m2(input_ids=torch.tensor({X.tolist()})).logits - torch.load(d / 'ref.pt')).abs().max().item())
"""
    assert float(_probe(code, tmp_path)) == 0.0
    assert (tmp_path / 'b' / 'modeling_hdpl.py').read_text() == (tmp_path / 'a' / 'modeling_hdpl.py').read_text()

def test_remote_code_model_saves_its_own_code(tmp_path):
    """A model loaded with trust_remote_code where hdpl is installed but not imported runs the checkpoint's code, and
    re-saves that code, not the installed hdpl's; once hdpl is imported its registered classes load, and save hdpl's code."""
    m = tiny(); m.save_pretrained(tmp_path / 'a')
    f = tmp_path / 'a' / 'modeling_hdpl.py'
    f.write_text(f.read_text() + '\n# a checkpoint written by another hdpl version\n')
    code = f"""
import importlib.util, sys, transformers
from pathlib import Path
d = Path({str(tmp_path)!r})
m = transformers.AutoModelForCausalLM.from_pretrained(d / 'a', trust_remote_code=True)
m.save_pretrained(d / 'b')
import hdpl.hf
h = transformers.AutoModelForCausalLM.from_pretrained(d / 'a', trust_remote_code=True)
h.save_pretrained(d / 'c')
print(type(m).__module__.split('.')[-1], type(h).__module__)
"""
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, 'HF_MODULES_CACHE': str(tmp_path / 'modules')})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ['modeling_hdpl', 'hdpl.hf']
    assert (tmp_path / 'b' / 'modeling_hdpl.py').read_text() == f.read_text()
    from hdpl.hf import standalone_source
    assert (tmp_path / 'c' / 'modeling_hdpl.py').read_text() == standalone_source()

def test_failed_save_changes_nothing(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path / 'a')
    before = {p.name: p.read_bytes() for p in (tmp_path / 'a').iterdir()}
    with torch.no_grad(): next(m.parameters()).add_(1.0)
    with pytest.raises(ValueError): m.save_pretrained(tmp_path / 'a', max_shard_size='a lot')
    assert {p.name: p.read_bytes() for p in (tmp_path / 'a').iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a']                  # no temporary folder left behind
    m.save_pretrained(tmp_path / 'a', max_shard_size='100KB')                   # sharded: the single file it replaces is gone
    names = sorted(p.name for p in (tmp_path / 'a').iterdir())
    assert 'model.safetensors' not in names and 'model.safetensors.index.json' in names
    r = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'a')
    assert torch.equal(next(r.parameters()), next(m.parameters()))

@pytest.mark.filterwarnings('ignore:.*is_gradient_checkpointing')
def test_lora_in_the_trainer(tmp_path):
    "LoRA on every projection (hdpl.peft) trained by HDPLTrainer: accumulation equals one big batch; checkpoints hold the adapter."
    pytest.importorskip('peft')
    from hdpl.peft import get_peft_model
    kw = dict(kl_bound=1e4, noise=False)
    lora = lambda: get_peft_model(tiny(**kw), r=4, lora_alpha=8)
    t4, g4 = fit(lora(), args(tmp_path / 'a'))
    t22, g22 = fit(lora(), args(tmp_path / 'b', per_device_train_batch_size=2, gradient_accumulation_steps=2, save_strategy='steps',
                                save_steps=1))
    assert set(g4) == set(g22) and all('lora_' in n for n in g4) and any('q_proj.lora_A' in n for n in g4)   # adapters alone
    assert max((g4[n] - g22[n]).abs().max().item() for n in g4) < 1e-6
    l4, l22 = t4.state.log_history[0], t22.state.log_history[0]
    assert abs(l4['loss'] - l22['loss']) < 1e-5 and l4['aux_loss'] > 0 and abs(l4['ce_loss'] - l22['ce_loss']) < 1e-4
    ck = tmp_path / 'b' / 'checkpoint-1'
    assert (ck / 'adapter_model.safetensors').exists() and not (ck / 'model.safetensors').exists()
