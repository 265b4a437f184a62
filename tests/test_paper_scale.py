"""`results/gpu/paper_scale.py`, the paper's scale in one accelerator call: its CPU dry run (the same code on a tiny model).

`prepare` packs a few thousand tokens of each set from the shared data folder; `run --dry-run` trains the four variants
(baseline, surgical, deterministic, lowrank) for 4 steps each on identical batches, evaluates them on the four sets,
writes the table, the curves and the JSON, and runs `hdpl_bench` (a tiny layer table on the CPU)."""
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest, torch
from hdpl.data import find_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'results' / 'gpu' / 'paper_scale.py'

@pytest.fixture(scope='module')
def data():
    d = find_data_dir()                       # under CI=true a missing shared/data is an error, not a skip
    if d is None: pytest.skip("no shared/data (set HDPL_DATA)")
    return d

def test_paper_scale_dry_run(data, tmp_path):
    tokens, out = tmp_path / 'tokens.npz', tmp_path / 'out'
    env = {'TQDM_DISABLE': '1', 'PATH': str(Path(sys.executable).parent) + ':/usr/bin:/bin', 'HOME': str(tmp_path)}
    r = subprocess.run([sys.executable, str(SCRIPT), 'prepare', '--data-dir', str(data), '--tokens', str(tokens), '--train-tokens', '20000',
                        '--seq-len', '64', '--eval-windows', '4', '--held-out-docs', '20'], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(SCRIPT), 'run', '--tokens', str(tokens), '--out', str(out), '--dry-run', '--device', 'cpu',
                        '--steps', '4', '--seeds', '0', '--eval-batch', '2'], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / 'paper_scale.json').read_text())
    assert [x['variant'] for x in res['runs']] == ['baseline', 'surgical', 'deterministic', 'lowrank']
    assert all(x['steps'] == 4 and set(x['eval']) == {'held_out', 'fineweb_edu', 'wikitext2', 'eltec'} for x in res['runs'])
    assert all(torch.isfinite(torch.tensor(list(x['eval'].values()))).all() for x in res['runs'])
    p = {x['variant']: x['params'] for x in res['runs']}
    assert p['surgical'] == p['deterministic'] and abs(p['lowrank'] - p['surgical']) < 0.001 * p['surgical'] < p['baseline'] - p['surgical']
    table = (out / 'table.md').read_text()
    assert all(f"| {v} |" in table for v in ('baseline', 'surgical', 'deterministic', 'lowrank'))
    assert (out / 'curves.png').stat().st_size > 0 and res['bench_rc'] == 0 and (out / 'bench' / 'bench.json').is_file()

def test_step_time_calibration():
    "The step count of a real run comes from `_step_time`: a positive, finite time for a tiny model."
    spec = importlib.util.spec_from_file_location('paper_scale', SCRIPT); ps = importlib.util.module_from_spec(spec); spec.loader.exec_module(ps)
    from hdpl.sweep import variant_config
    cfg = variant_config('surgical', dict(ps.TINY, vocab_size=256), 1)
    x = torch.randint(0, 256, (2, 65))
    t = ps._step_time(cfg, (x[:, :-1], x[:, 1:]), torch.device('cpu'), False, n=2)
    assert 0 < t < 60
