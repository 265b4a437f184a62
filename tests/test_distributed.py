"""More than one device (chapter 06, `hdpl.distributed`), tested on this CPU-only machine:

* DDP: `torchrun --standalone --nproc_per_node=2 -m hdpl.distributed spec.json` (gloo) trains a tiny HDPL model on
  the FineWeb sample in shared/data through hdpl's `Trainer`; both ranks must end with bitwise identical weights.
* XLA: the XLA CPU device (`PJRT_DEVICE=CPU`) in a second venv with torch 2.9.0 + torch_xla 2.9.0, built by
  `.ci/xla_venv.sh`; its python is `$HDPL_XLA_PYTHON`, else `.venv-xla/bin/python`. tests/xla_check.py runs there and
  reports what it measured; these tests assert on it. Without that venv they are skipped, except under `CI=true`.
"""
import json, math, os, subprocess, sys, time
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
from hdpl.params import HDPLConfig
from hdpl.data import DataConfig, find_data_dir
from hdpl.train import TrainConfig, latest_checkpoint, read_metrics
from hdpl.distributed import RunSpec, write_spec, torchrun_command, param_checksum

CI = os.environ.get('CI', '').lower() == 'true'

def _env(**kw):
    "The environment of a child process: this checkout's hdpl first on the path."
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])}
    return {**env, **kw}

def _run(cmd, cwd, timeout, **env):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}) after {dt:.0f}s\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p, dt

# ---------------------------------------------------------------- DDP, two CPU processes, gloo

def test_ddp_two_processes_identical_weights(tmp_path):
    data = find_data_dir()               # under CI=true a missing shared/data is an error, not a skip
    if data is None: pytest.skip("no shared/data (set HDPL_DATA)")
    spec = RunSpec(
        HDPLConfig.preset('surgical', d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=32, rank=8, groups=4),
        TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=6, eval_interval=3, log_interval=2, progress=False),
        DataConfig(source=str(data / 'fineweb-sample-10BT' / 'docs.parquet'), tokenizer=str(data / 'smollm2-tokenizer'),
                   seq_len=32, batch_size=2, val_docs=8, val_batches=2, shuffle_buffer=16),
        str(tmp_path / 'run'))
    cmd = torchrun_command(write_spec(tmp_path / 'run.json', spec), nproc_per_node=2)
    assert Path(cmd[0]).name == 'torchrun' and '--standalone' in cmd and '--nproc_per_node=2' in cmd
    _, dt = _run(cmd, tmp_path, timeout=180)
    out = tmp_path / 'run'
    rep = json.loads((out / 'replicas.json').read_text())
    assert rep['world_size'] == 2 and rep['step'] == 6
    assert len(rep['checksums']) == 2 and rep['checksums'][0] == rep['checksums'][1], rep   # bitwise identical replicas
    ck = latest_checkpoint(out)
    assert ck is not None and ck.name == 'ckpt-00000006'
    assert {'state.pt', 'rank0.pt', 'rank1.pt'} <= {p.name for p in ck.iterdir()}
    # the checksums are of the weights that were saved
    assert param_checksum(torch.load(ck / 'state.pt', map_location='cpu', weights_only=False)['model']) == rep['checksums'][0]
    # each rank read its own shard of the data
    for r in (0, 1):
        cfg = torch.load(ck / f'rank{r}.pt', map_location='cpu', weights_only=False)['data']['config']
        assert (cfg['rank'], cfg['world_size'], cfg['batch_size']) == (r, 2, 2)
    m = read_metrics(out)
    train = [r for r in m if 'train_ce' in r]
    assert [r['step'] for r in train] == [2, 4, 6] and [r['step'] for r in m if 'val_ce' in r] == [0, 3, 6]
    assert all(0 < r['train_ce'] < 20 for r in train)
    assert all(r['tokens_per_s'] > 0 for r in train)
    assert {'best.safetensors', 'config.json', 'loss_curves.png'} <= {p.name for p in out.iterdir()}
    print(f"DDP 2 x gloo: {dt:.1f}s, checksum {rep['checksums'][0][:16]}")

# ---------------------------------------------------------------- the XLA CPU device (torch_xla 2.9, second venv)

def xla_python() -> str:
    p = os.environ.get('HDPL_XLA_PYTHON') or str(ROOT / '.venv-xla' / 'bin' / 'python')
    if Path(p).exists(): return p
    msg = f"no XLA venv python at {p} (build it with `bash .ci/xla_venv.sh`, or set HDPL_XLA_PYTHON)"
    if CI or os.environ.get('HDPL_XLA_PYTHON'): pytest.fail(msg)
    pytest.skip(msg)

def xla_check(mode, tmp_path, script='xla_check.py', **env) -> dict:
    "Run tests/`script` (`mode`, if not None) on the XLA CPU device; its measurements."
    p, dt = _run([xla_python(), str(ROOT / 'tests' / script), *([mode] if mode else []), str(tmp_path)], tmp_path, timeout=300,
                 PJRT_DEVICE='CPU', TF_CPP_MIN_LOG_LEVEL='2', **env)
    line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    assert line, f"no RESULT line\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    res = json.loads(line[-1][len('RESULT '):])
    print(f"xla_check {mode}: {dt:.1f}s", json.dumps(res)[:2000])
    return res

def assert_stops_compiling(counts, after=2):
    "The compile count after each training step: constant from step `after` on (it grows only in the first steps)."
    assert len(counts) >= after + 4 and len(set(counts[after - 1:])) == 1, f"graphs still compiling: {counts}"

def test_xla_single_device(tmp_path):
    r = xla_check('single', tmp_path)
    assert r['world_size'] == 1
    a = r['a']                                                   # bf16, noise on: the TPU recipe
    assert a['precision'] == 'bf16' and a['compiles_before'] == 0
    assert_stops_compiling(a['compiles_after_step'])             # measured: [4, 6, 6, 6, 6, 6, 6, 6] (evals included)
    assert set(a['fallbacks']) <= {'aten::_local_scalar_dense'}, a['fallbacks']   # every op lowered to XLA (.item() aside)
    assert a['checkpoint'] == 'ckpt-00000008' and {'best.safetensors', 'metrics.jsonl'} <= set(a['files'])
    assert all(4 < c < 7 for c in a['ce'])                       # ~ln(256) = 5.55 on random tokens
    b = r['b']                                                   # fp32, noise off: XLA vs eager CPU, same weights and batches
    assert_stops_compiling(b['compiles_after_step'])             # measured: [9, 10, 10, 10, 10, 10, 10, 10]
    assert len(b['xla']['ce']) == len(b['cpu']['ce']) == 8
    assert b['max_dce'] < 1e-4 and b['max_dval'] < 1e-4, b      # measured: 1.9e-6, 0 (8 steps, 3 evaluations)
    assert b['max_daux'] < 1e-6, b                               # measured: 4.7e-10
    assert b['max_dparam'] < 1e-3, b                             # measured: 1.7e-6 after 8 AdamW steps
    c = r['c']                                                   # launch_tpu(spec, nprocs=1): the TPU entry point
    assert c['steps'] == [1, 2, 3, 4] and c['replicas']['world_size'] == 1 and len(c['replicas']['checksums']) == 1
    assert {'replicas.json', 'best.safetensors', 'ckpt-00000004', 'latest'} <= set(c['files'])
    assert c['new_compiles'] == 0, c                             # the same graphs as (a): all cached

def test_xla_spmd_two_devices(tmp_path):
    r = xla_check('spmd', tmp_path, CPU_NUM_DEVICES='2')
    assert r['num_devices'] == 2 and r['world_size'] == 1
    assert r['input_sharding'] == '{devices=[2,1]0,1}'           # batches split along dim 0 over the 2 devices
    assert_stops_compiling(r['compiles_after_step'])
    assert r['max_ddevices'] == 0.0                              # the replicated weights are identical on both devices
    assert r['max_dce'] < 1e-4 and r['max_dval'] < 1e-4, r      # = one device on the whole batch (eager CPU): 9.5e-7, 0
    assert r['max_dparam'] < 1e-3, r                             # measured: 1.8e-6
    e = r['train_spmd']                                          # the entry point: the same run, from a spec
    assert e['replicas']['world_size'] == 1 and {'replicas.json', 'best.safetensors', 'latest'} <= set(e['files'])
    assert max(abs(a - b) for a, b in zip(e['ce'], r['spmd']['ce'])) < 1e-6 and e['new_compiles'] == 0, e

def test_xla_hdplified_transformers_llama(tmp_path):
    "hdpl's Trainer trains an hdplified 🤗 transformers Llama on the XLA CPU device (tests/xla_hf_check.py)."
    r = xla_check(None, tmp_path, script='xla_hf_check.py')
    for prec, dtype in (('fp32', 'torch.float32'), ('bf16-weights', 'torch.bfloat16')):
        a = r[prec]
        assert a['model'] == a['reloaded'] == 'HDPLLlamaForCausalLM' and a['hdpl_layers'] == 10 and a['dtype'] == dtype
        assert_stops_compiling(a['compiles_after_step'])         # measured: fp32 [5, 7, 7, ...], bf16 weights [10, 11, 11, ...]
        assert set(a['fallbacks']) <= {'aten::_local_scalar_dense'}, a['fallbacks']
        assert len(a['ce']) == 8 and all(4 < c < 7 for c in a['ce'])  # ~ln(256) = 5.55 on random tokens
        bound = 10 * 1e-3 * math.log(2)                           # 10 HDPL layers, each at most beta ln 2
        assert all(0.99 * bound < x <= bound * (1 + 1e-6) for x in a['aux']), a['aux']   # measured: 0.006920-0.006930
        assert {'best', 'metrics.jsonl', 'latest'} <= set(a['files'])   # best/: a save_pretrained directory, reloaded above
