"""`hdpl_convert` (chapter 13, `hdpl.convert`): a pretrained dense model to an HDPL checkpoint.

- The shared SmolLM2-135M-Instruct (GGUF), two blocks converted, two distillation steps, through the installed console
  script; the result loads with `AutoModelForCausalLM` after `import hdpl`, runs and generates; the same command again
  does nothing.
- The same with `--structure lowrank` (one block): low-rank pairs whose parameters equal the HDPL layers' inference
  count, saved and reloaded as an HF checkpoint.
- A killed run (SIGKILL after its first distillation checkpoint) started again with the same command ends with the same
  model, weight for weight, as a run that was never killed (a tiny random Llama, for speed)."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
import hdpl                                   # registers the HDPL classes with AutoModelForCausalLM
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from hdpl.data import find_data_dir
from hdpl.cli import convert_cli
from hdpl.layer import HybridDualPathLinear

@pytest.fixture(scope='module')
def data():
    d = find_data_dir()                       # under CI=true a missing shared/data is an error, not a skip
    if d is None: pytest.skip("no shared/data (set HDPL_DATA)")
    return d

def script(name):
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'hdpl.cli', name]

def test_convert_smollm2_two_blocks(data, tmp_path, capsys):
    gguf = data / 'smollm2-135m-instruct' / 'SmolLM2-135M-Instruct.Q4_1.gguf'
    out = tmp_path / 'smollm2-hdpl'
    args = [str(gguf), str(out), '--layers', '28-29', '--override', 'k:rank=48,v:rank=48', '--tokenizer', str(data / 'smollm2-tokenizer'),
            '--calib', str(data / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'), '--calib-tokens', '2048', '--seq-len', '128',
            '--local-epochs', '1', '--distil-steps', '2', '--batch-size', '2', '--val-docs', '20', '--val-batches', '1', '--eval-interval', '2',
            '--device', 'cpu']
    r = subprocess.run(script('hdpl_convert') + args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    short = json.loads(r.stdout[r.stdout.index('{'):])
    assert short['distil_steps'] == 2 and short['hdpl_params']['blocks'] < short['dense_params']['blocks']
    res = json.loads((out / 'convert.json').read_text())
    assert res['finished'] and sorted({p['layer'] for p in res['convert']['projections']}) == [28, 29]
    assert not list((out / 'convert-work' / 'distil').glob('ckpt-*'))           # checkpoints removed when done
    m = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(m).__name__ == 'HDPLLlamaForCausalLM'
    hd = [n for n, x in m.named_modules() if isinstance(x, HybridDualPathLinear)]
    assert len(hd) == 10 and all(n.startswith(('model.layers.28.', 'model.layers.29.')) for n in hd)
    ids = torch.tensor([[1, 504, 3458, 314, 4649, 282]])
    with torch.no_grad(): lg = m(input_ids=ids).logits
    assert torch.isfinite(lg).all()
    g = m.generate(ids, max_new_tokens=4, do_sample=False)
    assert g.shape == (1, 10)
    assert (out / 'tokenizer.json').is_file()
    capsys.readouterr()
    t = time.time(); convert_cli(args)                                      # finished: nothing to do
    again = capsys.readouterr().out
    assert time.time() - t < 10 and json.loads(again[again.index('{'):])['hdpl_params'] == short['hdpl_params']

def test_killed_run_resumes_exactly(data, tmp_path):
    torch.manual_seed(0)
    src = tmp_path / 'tiny'
    LlamaForCausalLM(LlamaConfig(vocab_size=49_152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(src)
    base = [str(src), None, '--rank', '8', '--groups', '4', '--tokenizer', str(data / 'smollm2-tokenizer'),
            '--calib', str(data / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'), '--calib-tokens', '2048', '--seq-len', '64',
            '--local-epochs', '1', '--distil-steps', '40', '--batch-size', '2', '--val-docs', '10', '--val-batches', '1',
            '--eval-interval', '4', '--device', 'cpu']
    run = lambda out: [*script('hdpl_convert'), base[0], str(out), *base[2:]]
    env = dict(os.environ, TQDM_DISABLE='1')
    whole = tmp_path / 'whole'
    r = subprocess.run(run(whole), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = tmp_path / 'killed'
    p = subprocess.Popen(run(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while time.time() - t0 < 300 and p.poll() is None:
        ck = list((killed / 'convert-work' / 'distil').glob('ckpt-*'))
        if any(int(c.name.split('-')[1]) >= 8 for c in ck): break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (killed / 'convert.json').exists()
    r = subprocess.run(run(killed), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(l) for l in (killed / 'convert-work' / 'distil' / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    ref = [json.loads(l) for l in (whole / 'convert-work' / 'distil' / 'metrics.jsonl').read_text().splitlines() if l.strip()]
    val = lambda rs: sorted({(r['step'], r['val_ce']) for r in rs if 'val_ce' in r})
    assert val(recs) == val(ref) and len(val(ref)) == 11                     # every validation, as if never killed
    wa, wb = load_file(killed / 'model.safetensors'), load_file(whole / 'model.safetensors')
    assert set(wa) == set(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)

def test_convert_refuses_other_settings(data, tmp_path):
    torch.manual_seed(0)
    src = tmp_path / 'tiny'
    LlamaForCausalLM(LlamaConfig(vocab_size=49_152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(src)
    a = [str(src), str(tmp_path / 'out'), '--rank', '8', '--groups', '4', '--tokenizer', str(data / 'smollm2-tokenizer'),
         '--calib', str(data / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'), '--seq-len', '64', '--device', 'cpu', '--stage', 'closed']
    convert_cli(a + ['--calib-tokens', '2048'])
    with pytest.raises(SystemExit) as e: convert_cli(a + ['--calib-tokens', '4096'])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e: convert_cli(a[:1] + [str(tmp_path / 'o2')] + a[2:] + ['--calib-tokens', str(10 ** 8)])
    assert e.value.code == 1                                                 # calibration data too small
    big = tmp_path / 'bigvocab'
    LlamaForCausalLM(LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(big)
    with pytest.raises(SystemExit) as e: convert_cli([str(big), str(tmp_path / 'o3')] + a[2:] + ['--calib-tokens', '2048'])
    assert e.value.code == 1                                                 # the tokenizer does not fit the model

def test_convert_smollm2_lowrank(data, tmp_path):
    "`hdpl_convert --structure lowrank`: the equal-parameter control of chapter 14, end to end on the shared GGUF."
    from hdpl.layer import LowRankLinear
    from hdpl.functional import hdpl_num_params
    gguf = data / 'smollm2-135m-instruct' / 'SmolLM2-135M-Instruct.Q4_1.gguf'
    out = tmp_path / 'smollm2-lowrank'
    args = [str(gguf), str(out), '--structure', 'lowrank', '--match', 'inference', '--layers', '29', '--override', 'k:rank=48,v:rank=48',
            '--tokenizer', str(data / 'smollm2-tokenizer'), '--calib', str(data / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'),
            '--calib-tokens', '2048', '--seq-len', '128', '--local-epochs', '1', '--distil-steps', '2', '--batch-size', '2', '--val-docs', '20',
            '--val-batches', '1', '--eval-interval', '2', '--device', 'cpu']
    r = subprocess.run(script('hdpl_convert') + args, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / 'convert.json').read_text())
    assert res['finished'] and {p['structure'] for p in res['convert']['projections']} == {'LowRankLinear'}
    m = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(m).__name__ == 'HDPLLlamaForCausalLM' and m.config.hdpl_structure == 'lowrank'
    pairs = {n: x for n, x in m.named_modules() if isinstance(x, LowRankLinear)}
    assert len(pairs) == 5 and all(n.startswith('model.layers.29.') for n in pairs)
    assert not any(isinstance(x, HybridDualPathLinear) for x in m.modules())
    for name, (d_in, d_out, R) in {'q_proj': (576, 576, 128), 'k_proj': (576, 192, 48), 'gate_proj': (576, 1536, 128)}.items():
        pair = next(x for n, x in pairs.items() if n.endswith(name))
        got = sum(p.numel() for p in pair.parameters())            # equal to the HDPL layer's inference count, to half a rank step
        assert abs(got - hdpl_num_params(d_in, d_out, R, 8, logvar=False)) <= (d_in + d_out) / 2, (name, got)
    ids = torch.tensor([[1, 504, 3458, 314, 4649, 282]])
    with torch.no_grad(): lg = m(input_ids=ids).logits
    assert torch.isfinite(lg).all() and m.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, 9)
    assert res['hdpl_params']['blocks'] < res['dense_params']['blocks']
