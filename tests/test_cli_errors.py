"""Bad input to the five commands (chapter 16): every user error ends as ONE line on stderr, `prog: message`, naming the
file or the setting, with no traceback; exit status 2 for a bad command line (found before any data is read), 1 for a
damaged input found while running; and nothing is written. A bug keeps its traceback.

Most cases call the entry points in this process (imports are paid once); a few run the installed console scripts
and `python -m hdpl.cli` as a user does. Cases that read data need the SmolLM2 tokenizer of shared/data and are
skipped when it is absent (never under CI=true, where find_data_dir raises)."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
import torch
from hdpl import cli
from hdpl.cli import train_cli, compare_cli, bench_cli, diagnose_cli, sweep_cli, main
from hdpl.data import find_data_dir
from hdpl.params import HDPLConfig

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
try: import torch_xla; HAS_XLA = True              # noqa: F401
except ImportError: HAS_XLA = False

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    "A folder of good and damaged inputs."
    d = tmp_path_factory.mktemp('inputs')
    (d / 'file').write_text('not a folder')
    (d / 'empty.parquet').write_bytes(b'')
    (d / 'fake.parquet').write_text('a,b\n1,2\n')
    (d / 'pq').mkdir(); (d / 'pq' / 'good.jsonl').write_text('{"text": "a"}\n'); (d / 'pq' / 'cut.parquet').write_bytes(b'PAR1' + b'\0' * 20)
    (d / 'docs.jsonl').write_text('{"text": "hello world"}\n' * 50)
    (d / 'bad.jsonl').write_text('{"text": "fine"}\n' * 3 + '{"text": "no end\n' + '{"text": "fine"}\n' * 3)
    (d / 'latin1.txt').write_bytes('caf\xe9 cr\xe8me\n'.encode('latin-1') * 20)
    (d / 'run-garbage').mkdir(); (d / 'run-garbage' / 'config.json').write_text('{"model": {"d_mod')
    (d / 'run-list').mkdir(); (d / 'run-list' / 'config.json').write_text('[1, 2]')
    (d / 'run-none').mkdir()
    tiny = HDPLConfig.preset('surgical', vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16, rank=8, groups=4)
    r = d / 'run-cut'; r.mkdir(); (r / 'config.json').write_text(json.dumps(dict(model=tiny.to_dict(), train={}, data={})))
    (r / 'best.safetensors').write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')      # truncated
    (r / 'ckpt-00000004').mkdir(); (r / 'ckpt-00000004' / 'state.pt').write_bytes(b'PK\x03\x04 truncated')
    return d

@pytest.fixture(scope='module')
def tok():
    d = find_data_dir()
    if d is None: pytest.skip("no shared/data (set HDPL_DATA)")
    return d / 'smollm2-tokenizer'

def outcome(capsys, entry, *argv) -> tuple:
    "(exit status, stderr) of one in-process call of an entry point."
    capsys.readouterr()
    with pytest.raises(SystemExit) as e: entry([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err

def check(code, err, want_code, *names):
    assert code == want_code, (code, err)
    assert err.endswith('\n') and err.count('\n') == 1, f"not one line: {err!r}"
    assert 'Traceback' not in err
    for n in names: assert str(n) in err, f"{n!r} not in {err!r}"

# (id, entry, argv as a function of the inputs folder, exit status, strings the one line must contain)
F = lambda *a: (lambda d: list(a))
CASES = [
    # hdpl_train: the command line
    ('train-bad-float', train_cli, F('--lr', 'fast'), 2, ['hdpl_train: ', '--lr', "'fast'"]),
    ('train-unknown-flag', train_cli, F('--lrr', '1'), 2, ['unrecognized arguments: --lrr']),
    ('train-unknown-model', train_cli, F('--model', 'huge'), 2, ['--model', "'huge'"]),
    ('train-unknown-preset', train_cli, F('--preset', 'huge'), 2, ['--preset']),
    ('train-lr-0', train_cli, F('--preset', 'tiny', '--lr', '0', '--min-lr', '0', '--warmup-steps', '0'), 2, ['--lr']),
    ('train-lr-inf', train_cli, F('--preset', 'tiny', '--lr', 'inf'), 2, ['--lr']),
    ('train-checkpoint-interval-0', train_cli, F('--preset', 'tiny', '--checkpoint-interval', '0'), 2, ['--checkpoint-interval']),
    ('train-grad-clip-negative', train_cli, F('--preset', 'tiny', '--grad-clip', '-1'), 2, ['--grad-clip']),
    ('train-beta-nan', train_cli, F('--preset', 'tiny', '--beta', 'nan'), 2, ['--beta']),
    ('train-heads', train_cli, F('--preset', 'tiny', '--d-model', '100', '--n-heads', '3'), 2, ['--d-model=100']),
    ('train-seq-too-long', train_cli, F('--preset', 'tiny', '--max-seq-len', '16', '--seq-len', '64'), 2, ['--max-seq-len=16']),
    ('train-batch-0', train_cli, F('--preset', 'tiny', '--batch-size', '0'), 2, ['--batch-size']),
    ('train-device-unknown', train_cli, F('--preset', 'tiny', '--device', 'tpu'), 2, ['--device', "'tpu'"]),
    ('train-precision-unknown', train_cli, F('--preset', 'tiny', '--precision', 'fp16'), 2, ['--precision', "'fp16'"]),
    ('train-out-dir-is-file', train_cli, lambda d: ['--preset', 'tiny', '--out-dir', d / 'file'], 2, ['--out-dir', 'is not a folder']),
    ('train-out-dir-under-file', train_cli, lambda d: ['--preset', 'tiny', '--out-dir', d / 'file' / 'run'], 2, ['file is not a folder']),
    ('train-out-dir-garbage-config', train_cli, lambda d: ['--preset', 'tiny', '--out-dir', d / 'run-garbage'], 2, ['run-garbage/config.json', 'damaged']),
    ('train-out-dir-list-config', train_cli, lambda d: ['--preset', 'tiny', '--out-dir', d / 'run-list'], 2, ['run-list/config.json']),
    ('train-no-resume-existing', train_cli, lambda d: ['--preset', 'tiny', '--no-resume', '--out-dir', d / 'run-cut'], 2, ['already holds a run']),
    ('train-data-device-file', train_cli, F('--preset', 'tiny', '--data', '/dev/zero'), 2, ['/dev/zero', 'not a regular file']),
    ('train-data-missing', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'nope.parquet'], 2, ['nope.parquet does not exist']),
    ('train-data-empty-parquet', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'empty.parquet'], 2, ['empty.parquet', '0 bytes']),
    ('train-data-fake-parquet', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'fake.parquet'], 2, ['fake.parquet', 'not a Parquet file']),
    ('train-data-folder-with-cut-parquet', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'pq'], 2, ['cut.parquet', 'not a Parquet file']),
    ('train-tokenizer-is-file', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'docs.jsonl', '--tokenizer', d / 'file'], 2, ['--tokenizer', 'is a file']),
    ('train-tokenizer-missing', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'docs.jsonl', '--tokenizer', d / 'no-tok'], 2, ['no-tok does not exist']),
    ('train-tokenizer-not-a-tokenizer', train_cli, lambda d: ['--preset', 'tiny', '--data', d / 'docs.jsonl', '--tokenizer', d / 'pq'], 1, ['tokenizer', 'pq']),
    ('train-device-cuda', train_cli, F('--preset', 'tiny', '--device', 'cuda'), 2, ['--device cuda']) if NO_CUDA else None,
    ('train-device-xla', train_cli, F('--preset', 'tiny', '--device', 'xla'), 2, ['`tpu` extra']) if not HAS_XLA else None,
    # hdpl_compare
    ('compare-models-empty', compare_cli, F('--models', ''), 2, ['--models is empty']),
    ('compare-models-commas', compare_cli, F('--models', ' , '), 2, ['--models is empty']),
    ('compare-models-unknown', compare_cli, F('--models', 'baseline,huge'), 2, ["--models: unknown model(s) ['huge']"]),
    ('compare-models-repeated', compare_cli, F('--models', 'baseline,baseline'), 2, ['--models repeats']),
    ('compare-bad-setting', compare_cli, F('--warmup-steps', '-1'), 2, ['--warmup-steps']),
    ('compare-device-cuda', compare_cli, F('--device', 'cuda'), 2, ['--device cuda']) if NO_CUDA else None,
    ('compare-out-dir-is-file', compare_cli, lambda d: ['--out-dir', d / 'file'], 2, ['is not a folder']),
    # hdpl_bench
    ('bench-no-dense', bench_cli, F('--variants', 'fast,reference'), 2, ["must include 'dense'"]),
    ('bench-unknown-variant', bench_cli, F('--variants', 'dense,turbo'), 2, ["'turbo'"]),
    ('bench-repeats-0', bench_cli, F('--repeats', '0'), 2, ['--repeats']),
    ('bench-dtype', bench_cli, F('--dtypes', 'float33'), 2, ['float33']),
    ('bench-shape', bench_cli, F('--shapes', '512x'), 2, ['--shapes', "'512x'"]),
    ('bench-sweep', bench_cli, F('--sweep', '1024,lots'), 2, ['--sweep']),
    ('bench-tokens-vs-seq', bench_cli, F('--tokens', '100', '--seq-len', '64'), 2, ['100', 'seq_len=64']),
    ('bench-model-shape', bench_cli, F('--model-shape', 'huge'), 2, ['--model-shape']),
    ('bench-tokens-not-int', bench_cli, F('--tokens', '1.5'), 2, ['--tokens', "'1.5'"]),
    ('bench-device-xla', bench_cli, F('--device', 'xla'), 2, ["'xla'"]),
    ('bench-device-cuda', bench_cli, F('--device', 'cuda'), 2, ['--device cuda']) if NO_CUDA else None,
    ('bench-out-dir-is-file', bench_cli, lambda d: ['--out-dir', d / 'file'], 2, ['is not a folder']),
    # hdpl_diagnose
    ('diagnose-run-missing', diagnose_cli, lambda d: [d / 'nope'], 2, ['nope does not exist']),
    ('diagnose-no-run', diagnose_cli, F(), 2, ['the following arguments are required: run']),
    ('diagnose-batches-0', diagnose_cli, lambda d: [d / 'run-cut', '--batches', '0'], 2, ['--batches must be >= 1']),
    ('diagnose-device-unknown', diagnose_cli, lambda d: [d / 'run-cut', '--device', 'gpu'], 2, ['--device', "'gpu'"]),
    ('diagnose-device-cuda', diagnose_cli, lambda d: [d / 'run-cut', '--device', 'cuda'], 2, ['--device cuda']) if NO_CUDA else None,
    ('diagnose-json-is-dir', diagnose_cli, lambda d: [d / 'run-cut', '--json', d], 2, ['--json', 'is a folder']),
    ('diagnose-bad-data-flag', diagnose_cli, lambda d: [d / 'run-cut', '--seq-len', '0'], 2, ['--seq-len']),
    ('diagnose-tokenizer-is-file', diagnose_cli, lambda d: [d / 'run-cut', '--tokenizer', d / 'file'], 2, ['is a file']),
    ('diagnose-garbage-config', diagnose_cli, lambda d: [d / 'run-garbage'], 1, ['run-garbage/config.json', 'damaged']),
    ('diagnose-list-config', diagnose_cli, lambda d: [d / 'run-list'], 1, ['run-list/config.json']),
    ('diagnose-no-config', diagnose_cli, lambda d: [d / 'run-none'], 1, ['run-none', 'config.json']),
    ('diagnose-truncated-safetensors', diagnose_cli, lambda d: [d / 'run-cut', '--weights', 'best'], 1, ['best.safetensors']),
    ('diagnose-truncated-state', diagnose_cli, lambda d: [d / 'run-cut' / 'ckpt-00000004'], 1, ['ckpt-00000004/state.pt']),
    ('diagnose-no-final', diagnose_cli, lambda d: [d / 'run-cut', '--weights', 'final'], 1, ['final.safetensors']),
    # hdpl_sweep
    ('sweep-variants-unknown', sweep_cli, F('--variants', 'surgical,huge'), 2, ["--variants: unknown variant(s) ['huge']"]),
    ('sweep-variants-empty', sweep_cli, F('--variants', ','), 2, ['--variants is empty']),
    ('sweep-seeds-repeated', sweep_cli, F('--seeds', '0,0'), 2, ['--seeds repeats']),
    ('sweep-seeds-bad', sweep_cli, F('--seeds', '0,one'), 2, ['--seeds', "'0,one'"]),
    ('sweep-eval-batches-0', sweep_cli, F('--eval-batches', '0'), 2, ['--eval-batches must be >= 1']),
    ('sweep-diag-batches-negative', sweep_cli, F('--diag-batches', '-2'), 2, ['--diag-batches must be >= 1']),
    ('sweep-time-budget-negative', sweep_cli, F('--time-budget-s', '-1'), 2, ['--time-budget-s']),
    ('sweep-data-dir-missing', sweep_cli, lambda d: ['--data-dir', d / 'nope'], 2, ['nope']),
    ('sweep-out-dir-is-file', sweep_cli, lambda d: ['--out-dir', d / 'file'], 2, ['is not a folder']),
    # python -m hdpl.cli
    ('main-unknown-command', main, F('hdpl_fly'), 2, ['python -m hdpl.cli']),
]
CASES = [c for c in CASES if c is not None]

@pytest.mark.parametrize('name,entry,argv,code,names', CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line(name, entry, argv, code, names, files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                      # default output folders (runs/...) would land here
    c, err = outcome(capsys, entry, *argv(files))
    check(c, err, code, *names)
    assert not os.listdir(tmp_path), f"{name} left {os.listdir(tmp_path)}"

def test_inputs_untouched(files):
    "The cases above wrote nothing into the inputs' folder (runs that were refused left no outputs)."
    assert sorted(p.name for p in files.iterdir()) == ['bad.jsonl', 'docs.jsonl', 'empty.parquet', 'fake.parquet', 'file', 'latin1.txt',
                                                       'pq', 'run-cut', 'run-garbage', 'run-list', 'run-none']
    assert sorted(p.name for p in (files / 'run-cut').iterdir()) == ['best.safetensors', 'ckpt-00000004', 'config.json']

def test_sweep_settings_checked_before_any_run(files, capsys, tmp_path):
    "Every run's configuration is built before the first trains: a bad value stops the sweep with nothing written."
    d = find_data_dir()
    if d is None: pytest.skip("no shared/data")
    c, err = outcome(capsys, sweep_cli, '--preset', 'tiny', '--data-dir', d, '--out-dir', tmp_path / 's', '--lr', '0', '--min-lr', '0')
    check(c, err, 2, 'lr')
    c, err = outcome(capsys, sweep_cli, '--preset', 'tiny', '--data-dir', d, '--out-dir', tmp_path / 's', '--device', 'tpu')
    check(c, err, 2, "'tpu'")
    if NO_CUDA:
        c, err = outcome(capsys, sweep_cli, '--preset', 'tiny', '--data-dir', d, '--out-dir', tmp_path / 's', '--device', 'cuda')
        check(c, err, 2, '--device cuda')
    assert not (tmp_path / 's').exists()

# Damaged data found while reading it (after the tokenizer is loaded): exit status 1, the file named, nothing written.
DAMAGED = [('bad.jsonl', ['bad.jsonl', '4']), ('latin1.txt', ['latin1.txt'])]

@pytest.mark.parametrize('fname,names', DAMAGED, ids=[f for f, _ in DAMAGED])
def test_damaged_data_is_one_line(fname, names, files, tok, capsys, tmp_path):
    out = tmp_path / 'run'
    c, err = outcome(capsys, train_cli, '--preset', 'tiny', '--data', files / fname, '--tokenizer', tok, '--out-dir', out,
                     '--val-docs', '2', '--no-progress', '--max-steps', '2')
    check(c, err, 1, *names)
    assert not out.exists(), sorted(os.listdir(out))

def test_a_bug_keeps_its_traceback(files, monkeypatch, tmp_path):
    "Anything but a user error propagates unchanged (the console script prints its traceback)."
    def broken(*a, **k): raise RuntimeError("a bug in the trainer")
    monkeypatch.setattr(cli, 'train_run', broken)
    with pytest.raises(RuntimeError, match='a bug in the trainer'):
        train_cli(['--preset', 'tiny', '--data', str(files / 'docs.jsonl'), '--out-dir', str(tmp_path / 'r')])

def test_traceback_on_request(files, monkeypatch, capsys):
    "HDPL_TRACEBACK=1 shows the traceback of a user error found while running."
    monkeypatch.setenv('HDPL_TRACEBACK', '1')
    with pytest.raises(ValueError, match='config.json'): diagnose_cli([str(files / 'run-garbage')])

def _script(name):
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert exe, f"console script {name} not installed: pip install -e ."
    return [exe]

# As a user runs them, in a subprocess each (a few: each pays the imports, seconds on a small machine): two installed
# console scripts (a bad command line, a damaged input) and `python -m hdpl.cli`.
SCRIPTS = [
    ('hdpl_train', lambda d: ['--preset', 'tiny', '--lr', 'x'], 2, ['hdpl_train: ', '--lr']),
    ('hdpl_diagnose', lambda d: [d / 'run-garbage'], 1, ['hdpl_diagnose: ', 'run-garbage/config.json']),
    ('-m', lambda d: ['sweep', '--seeds', '1,1'], 2, ['hdpl_sweep: --seeds repeats']),
]

@pytest.mark.parametrize('name,argv,code,names', SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_console_script(name, argv, code, names, files, tmp_path):
    cmd = [sys.executable, '-m', 'hdpl.cli'] if name == '-m' else _script(name)
    r = subprocess.run(cmd + [str(a) for a in argv(files)], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, 'PYTHONWARNINGS': 'ignore', 'HDPL_TRACEBACK': ''})
    check(r.returncode, r.stderr, code, *names)
    assert not os.listdir(tmp_path)

# hdpl_convert: a source that is missing or damaged, an OUT that would overwrite a model, placements that cannot work.
@pytest.fixture(scope='module')
def models(tmp_path_factory):
    d = find_data_dir()
    if d is None: pytest.skip("no shared/data (set HDPL_DATA)")
    from transformers import LlamaConfig, LlamaForCausalLM
    m = tmp_path_factory.mktemp('models')
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=49_152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(m / 'tiny')
    shutil.copytree(m / 'tiny', m / 'cut'); w = m / 'cut' / 'model.safetensors'; w.write_bytes(w.read_bytes()[:w.stat().st_size // 2])
    gguf = d / 'smollm2-135m-instruct' / 'SmolLM2-135M-Instruct.Q4_1.gguf'
    with open(gguf, 'rb') as f: (m / 'cut.gguf').write_bytes(f.read(3_000_000))
    (m / 'theirs').mkdir(); (m / 'theirs' / 'config.json').write_text('{"model_type": "llama"}')
    return dict(dir=m, gguf=gguf, tok=d / 'smollm2-tokenizer', calib=d / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt')

def _tree(d: Path) -> dict:
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob('*')) if f.is_file()}

CONVERT = [   # (id, SRC, OUT, extra flags, exit status, strings the line must contain); paths relative to the models folder
    ('missing-name', 'nosuchmodel', 'o', [], 2, ['nosuchmodel not found']),
    ('missing-path', 'models-here/nope/model', 'o', [], 2, ['does not exist']),
    ('out-is-src', 'tiny', 'tiny', [], 2, ['is the source model']),
    ('out-inside-src', 'tiny', 'tiny/hdpl', [], 2, ['is inside the source model']),
    ('out-holds-src', 'tiny', '.', [], 2, ['holds the source model']),
    ('out-is-another-model', 'tiny', 'theirs', [], 2, ['theirs', 'no conversion']),
    ('groups-0', 'tiny', 'o', ['--groups', '0'], 2, ['--groups must be a positive integer']),
    ('rank-too-wide', 'GGUF', 'o', ['--rank', '100000'], 2, ['rank=100000 is wider than the projection (576→576)']),
    ('layers-out-of-range', 'GGUF', 'o', ['--layers', '5-99'], 2, ['layers 30-99 out of range']),
    ('truncated-gguf', 'cut.gguf', 'o', [], 1, ['cut.gguf is damaged or truncated']),
    ('truncated-safetensors', 'cut', 'o', [], 1, ['cut/model.safetensors is damaged or truncated']),
    ('calib-too-small', 'tiny', 'o', ['--calib-tokens', str(10 ** 8)], 1, ['calibration data too small']),
]

@pytest.mark.parametrize('name,src,out,extra,code,names', CONVERT, ids=[c[0] for c in CONVERT])
def test_convert_user_error(name, src, out, extra, code, names, models, capsys, monkeypatch):
    import time
    from hdpl.cli import convert_cli
    m = models['dir']; monkeypatch.chdir(m)
    before = _tree(m)
    s = str(models['gguf']) if src == 'GGUF' else (src if src in ('nosuchmodel',) or src.startswith('models-here') else str(m / src))
    argv = [s, str(m / out), '--tokenizer', models['tok'], '--calib', models['calib'], '--seq-len', '64', '--device', 'cpu',
            '--rank', '8', '--groups', '4', *extra]   # flags given later win
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()                 # transformers' "Loading weights" bar on stderr is not the error line
    t = time.perf_counter()
    try: c, err = outcome(capsys, convert_cli, *argv)
    finally: hf_logging.enable_progress_bar()
    check(c, err, code, *names)
    assert time.perf_counter() - t < 30, f"{name}: {time.perf_counter() - t:.0f} s (a check before loading the model should take seconds)"
    assert _tree(m) == before, f"{name} changed the models folder"       # nothing written, nothing removed, the source intact
    assert not (m / 'o').exists()
