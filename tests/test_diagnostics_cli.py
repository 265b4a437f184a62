"""The console scripts of chapters 10 and 11 end to end, as a user runs them: `hdpl_train` a tiny model, `hdpl_diagnose`
its checkpoint; a tiny `hdpl_sweep` (2 variants x 2 seeds), run again (everything skipped), and one cut short by its
time budget that a second call resumes. Real data from shared/data; skipped only when it is absent outside CI."""
import csv, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from hdpl.data import find_data_dir

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def data():
    d = find_data_dir()                 # under CI=true a missing shared/data is an error, not a skip
    if d is None: pytest.skip("no shared/data (set HDPL_DATA)")
    return d

def cli(name, *args, ok=True):
    "Run console script `name` (from this environment's bin) with `args`; returns the CompletedProcess."
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert exe, f"console script {name} not installed: pip install -e ."
    r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=ROOT, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    if ok: assert r.returncode == 0, f"{name} {' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r

TINY = ['--d-model', '64', '--n-layers', '2', '--n-heads', '2', '--d-ff', '128', '--rank', '16', '--groups', '4']

def test_diagnose_a_trained_checkpoint(data, tmp_path):
    run = tmp_path / 'run'
    cli('hdpl_train', '--preset', 'tiny', '--model', 'surgical', '--out-dir', run, *TINY, '--max-steps', '8', '--eval-interval', '4',
        '--log-interval', '2', '--seq-len', '32', '--batch-size', '2', '--val-docs', '16', '--val-batches', '2', '--no-progress',
        '--data', data / 'enwiki-2015', '--tokenizer', data / 'smollm2-tokenizer')
    assert (run / 'latest').read_text().strip() == 'ckpt-00000008'
    md = cli('hdpl_diagnose', run, '--batches', '2', '--json', tmp_path / 'd.json').stdout
    assert 'ckpt-00000008' in md and '| **total** |' in md and 'block path only' in md
    d = json.loads((tmp_path / 'd.json').read_text())
    assert [l['name'] for l in d['layers']][:5] == ['layers.0.self_attn.q_proj', 'layers.0.self_attn.k_proj', 'layers.0.self_attn.v_proj',
                                                     'layers.0.mlp.gate_proj', 'layers.0.mlp.up_proj']
    assert len(d['layers']) == 10 and d['n_batches'] == 2 and d['n_tokens'] == 2 * 2 * 32
    assert set(d['ce']) == {'both', 'block', 'variational'} and all(0 < v < 12 for v in d['ce'].values())
    for l in d['layers']:
        assert 0 <= l['frac_under_bound'] <= 1 and 0 <= l['active_units'] <= 16 and len(l['kl_per_dim']) == 16
        assert l['block_rms'] > 0 and l['var_rms'] > 0 and l['sigma_min'] <= l['sigma_quantiles']['0.5'] <= l['sigma_max']
    # the trainer evaluated the same held-out batches (first two) at its last step: the same cross-entropy
    last = [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines() if 'val_ce' in x][-1]
    assert abs(last['val_ce'] - d['ce']['both']) < 1e-4, (last['val_ce'], d['ce'])
    # JSON on stdout, from best.safetensors; and a clear error for a wrong path
    j = json.loads(cli('hdpl_diagnose', run, '--weights', 'best', '--batches', '1', '--no-path-ce', '--format', 'json').stdout)
    assert j['weights'].endswith('best.safetensors') and set(j['ce']) == {'both'}
    r = cli('hdpl_diagnose', tmp_path / 'nope', ok=False)
    assert r.returncode != 0 and 'does not exist' in r.stderr

def test_sweep_end_to_end_and_resume(data, tmp_path):
    out = tmp_path / 'sweep'
    args = ['--preset', 'tiny', '--data-dir', data, '--out-dir', out]
    r = cli('hdpl_sweep', *args, '--variants', 'baseline,surgical', '--seeds', '0,1')
    assert 'complete: 4 of 4 runs' in r.stdout, r.stdout
    md = (out / 'sweep_table.md').read_text()
    for s in ('| baseline |', '| surgical |', 'held-out enwiki', 'FineWeb-Edu', 'WikiText-2 valid', 'ELTeC novels', 'Difference to the baseline'):
        assert s in md, s
    rows = list(csv.DictReader(open(out / 'sweep_runs.csv')))
    assert [(x['variant'], x['seed'], x['steps']) for x in rows] == [('baseline', '0', '6'), ('surgical', '0', '6'), ('baseline', '1', '6'), ('surgical', '1', '6')]
    for x in rows:
        for k in ('ce_held_out', 'ce_fineweb_edu', 'ce_wikitext2', 'ce_eltec'): assert 0 < float(x[k]) < 12
    js = json.loads((out / 'sweep.json').read_text())           # strict JSON (no NaN)
    assert js['complete'] and len(js['runs']) == 4 and [r_['variant'] for r_ in js['rows']] == ['baseline', 'surgical']
    assert (out / 'sweep_curves.png').stat().st_size > 1000
    # same command again: every run is skipped and the numbers are the same
    r2 = cli('hdpl_sweep', *args, '--variants', 'baseline,surgical', '--seeds', '0,1')
    assert r2.stdout.count('done, skipped') == 4 and 'parameters to step' not in r2.stdout, r2.stdout
    assert list(csv.DictReader(open(out / 'sweep_runs.csv'))) == rows
    # a sweep stopped by its time budget after one step resumes from its checkpoint on the next call
    r3 = cli('hdpl_sweep', *args, '--variants', 'free_bits,surgical', '--seeds', '0', '--time-budget-s', '0.001')
    assert 'INCOMPLETE' in r3.stdout and 'surgical seed 0: done, skipped' in r3.stdout, r3.stdout
    assert 'free_bits seed 0: stopped at step 1' in r3.stdout, r3.stdout
    r4 = cli('hdpl_sweep', *args, '--variants', 'surgical,free_bits', '--seeds', '0')
    assert 'free_bits seed 0: training' in r4.stdout and '(from step 1)' in r4.stdout and 'complete: 2 of 2' in r4.stdout, r4.stdout
    # bad input: a clear message, a non-zero exit
    r5 = cli('hdpl_sweep', *args, '--variants', 'surgical,huge', ok=False)
    assert r5.returncode != 0 and "unknown variant(s) ['huge']" in r5.stderr
