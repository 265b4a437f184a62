"""Faults a real user meets, driven through the public API: damaged run directories, bad settings, damaged data files,
bad model input, and SIGKILL at random moments, including in the middle of every kind of write.

Each test asserts the outcome: the run is kept or resumed (never silently restarted or wiped), and the message names
the file or the setting. `test_sigkill_anywhere` kills training many times and checks the resumed runs are identical,
record for record and weight for weight, to an uninterrupted one; `HDPL_FAULT_ROUNDS=N` runs N rounds instead of the
default (each round is a run killed up to 8 times, then finished).
"""
import contextlib, io, json, math, os, random, signal, subprocess, sys, time, traceback, warnings
from dataclasses import replace
from pathlib import Path
import pytest, torch
import torch.nn as nn
import torch.nn.functional as F
import hdpl.train as T
from hdpl.layer import HybridDualPathLinear, IMPLS, KL_MODES
from hdpl.model import HDPLForCausalLM, LMOutput
from hdpl.params import HDPLConfig
from hdpl.train import Trainer, TrainConfig, CheckpointError, checkpoint_dirs, read_metrics


class Tokens:
    "Endless deterministic (x, y) batches, resumable by position: training data without a tokenizer."
    def __init__(self, vocab=64, seq_len=16, batch_size=2, seed=0): self.v, self.t, self.b, self.seed, self.pos = vocab, seq_len, batch_size, seed, 0
    def __iter__(self): return self
    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.pos); self.pos += 1
        start = torch.randint(0, self.v, (self.b, 1), generator=g)   # counting sequences mod vocab: learnable, so the best model changes
        w = (start + torch.arange(self.t + 1)) % self.v
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()
    def state_dict(self): return dict(pos=self.pos)
    def load_state_dict(self, st): self.pos = st['pos']; return self

def val_batches(n=2, seed=99):
    t = Tokens(seed=seed); return [next(t) for _ in range(n)]

CFG = HDPLConfig.preset('surgical', vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16, rank=8, groups=2)
TC = TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=12, eval_interval=4, checkpoint_interval=2, log_interval=1, progress=False)

class TinyLM(nn.Module):
    "A module (not an HDPLConfig) with the interface Trainer uses: forward(idx, targets), config_dict(), save_pretrained()."
    def __init__(self, vocab=64, d=16):
        super().__init__(); self.d = d
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
    def forward(self, idx, targets):
        logits = self.head(self.emb(idx))
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return LMOutput(logits, ce, ce, torch.zeros(()))
    def config_dict(self): return dict(kind='tiny', d=self.d)
    def save_pretrained(self, directory, state_dict=None):
        os.makedirs(directory, exist_ok=True)
        torch.save(self.state_dict() if state_dict is None else state_dict, Path(directory) / 'weights.pt')
        (Path(directory) / 'config.json').write_text(json.dumps(self.config_dict()))

def trainer(out, module=False, val=None, **kw):
    torch.manual_seed(0)
    model = TinyLM() if module else CFG
    return Trainer(model, replace(TC, **kw), Tokens(), val_batches() if val is None else val, out_dir=out)

def quiet(fn):
    "fn() with its printed lines and warnings captured: (result, printed text, warning messages)."
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); res = fn()
    return res, out.getvalue(), [str(x.message) for x in w]

STRIP = ('tokens_per_s', 'eval_s')
def strip(recs): return [{k: v for k, v in r.items() if k not in STRIP} for r in recs]

def snapshot(d: Path) -> dict:
    "Every file under d with its size and modification time: to show a refusal changed nothing."
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.rglob('*'))}

def truncate(p: Path, n=1000):
    with open(p, 'r+b') as f: f.truncate(n)

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "An uninterrupted run: its metrics."
    out = tmp_path_factory.mktemp('ref') / 'run'
    quiet(lambda: trainer(out).fit())
    return out, strip(read_metrics(out))


# ---- 1. the `latest` pointer: empty, garbage, naming a missing checkpoint -----------------------------------------

@pytest.mark.parametrize('pointer', ['', 'garbage\x00\xff', 'ckpt-00009999', '../ckpt-00000004'])
def test_damaged_pointer_resumes_from_newest_good_checkpoint(tmp_path, reference, pointer):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=8))          # stopped at an evaluation, so its records are those of a full run
    (out / 'latest').write_bytes(pointer.encode('utf-8', 'surrogateescape'))
    t, printed, warned = quiet(lambda: trainer(out))
    assert t.step == 8 and 'resumed from' in printed and 'ckpt-00000008' in printed
    assert len(warned) == 1 and str(out / 'latest') in warned[0] and 'resuming from' in warned[0]
    assert [r['step'] for r in read_metrics(out)][-1] == 8          # metrics kept, not wiped
    quiet(t.fit)
    assert strip(read_metrics(out)) == reference[1]


# ---- 2. truncated checkpoints: fall back to the previous one, or refuse; the file is named -----------------------

def test_truncated_state_falls_back_to_previous_checkpoint(tmp_path, reference):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=8))
    assert [d.name for d in checkpoint_dirs(out)] == ['ckpt-00000008', 'ckpt-00000006']   # the last two are kept
    truncate(out / 'ckpt-00000008' / 'state.pt')
    t, printed, warned = quiet(lambda: trainer(out))
    assert t.step == 6 and str(out / 'ckpt-00000008' / 'state.pt') in warned[0] and 'is damaged' in warned[0]
    quiet(t.fit)
    assert strip(read_metrics(out)) == reference[1]
    assert [d.name for d in checkpoint_dirs(out)] == ['ckpt-00000012', 'ckpt-00000010']

@pytest.mark.parametrize('damage', ['truncate-all', 'rank-file', 'empty-pointer-and-all'])
def test_no_loadable_checkpoint_is_refused_and_nothing_changes(tmp_path, damage):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=4))
    for d in checkpoint_dirs(out):
        if damage == 'rank-file': (d / 'rank0.pt').unlink()
        else: truncate(d / 'state.pt')
    if damage == 'empty-pointer-and-all': (out / 'latest').write_text('')
    before = snapshot(out)
    with pytest.raises(CheckpointError) as e: quiet(lambda: trainer(out))
    msg = str(e.value)
    assert 'holds a run, but no checkpoint of it can be loaded' in msg and 'Nothing was changed' in msg
    assert str(out / 'ckpt-00000004') in msg
    assert snapshot(out) == before

def test_damaged_config_json_is_named(tmp_path):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=2))
    (out / 'config.json').write_text('{"model": {')
    before = snapshot(out)
    with pytest.raises(ValueError, match='config.json is damaged'): quiet(lambda: trainer(out))
    assert snapshot(out) == before

def test_truncated_safetensors_is_named(tmp_path):
    from hdpl.diagnostics import load_run_model
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=4))
    truncate(out / 'best.safetensors', 100)
    with pytest.raises(ValueError, match='best.safetensors'): load_run_model(out / 'best.safetensors')
    truncate(out / 'ckpt-00000004' / 'state.pt')
    with pytest.raises(ValueError, match='ckpt-00000004/state.pt'): load_run_model(out / 'ckpt-00000004')


# ---- 3. a torn last metrics line --------------------------------------------------------------------------------

def test_torn_metrics_line_is_tolerated_and_repaired(tmp_path, reference):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=8))
    with open(out / 'metrics.jsonl', 'a') as f: f.write('{"step": 9, "lr": 0.00')       # a kill mid-write
    assert read_metrics(out)[-1]['step'] == 8
    t, printed, _ = quiet(lambda: trainer(out))
    assert t.step == 8 and (out / 'metrics.jsonl').read_text().endswith('\n')
    quiet(t.fit)
    assert strip(read_metrics(out)) == reference[1]
    (out / 'metrics.jsonl').write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r'metrics.jsonl, line 2: not a JSON record'): read_metrics(out)


# ---- 4, 5, 11. every numeric setting, checked where it is defined -----------------------------------------------

NAN, INF = float('nan'), float('inf')
BAD_SETTINGS = [
    (TrainConfig, dict(grad_clip=-1.0), 'grad_clip'), (TrainConfig, dict(grad_clip=NAN), 'grad_clip'),
    (TrainConfig, dict(lr=INF), 'lr'), (TrainConfig, dict(lr=0.0, min_lr=0.0, warmup_steps=0), 'lr'),
    (TrainConfig, dict(lr=0.0, min_lr=0.0, warmup_steps=10), 'lr'), (TrainConfig, dict(lr=NAN), 'lr'),
    (TrainConfig, dict(min_lr=-1e-5), 'min_lr'), (TrainConfig, dict(min_lr=1.0), 'min_lr'),
    (TrainConfig, dict(weight_decay=-0.1), 'weight_decay'), (TrainConfig, dict(weight_decay=NAN), 'weight_decay'),
    (TrainConfig, dict(beta1=1.0), 'beta1'), (TrainConfig, dict(beta2=-0.1), 'beta2'),
    (TrainConfig, dict(checkpoint_interval=0), 'checkpoint_interval'), (TrainConfig, dict(eval_interval=0), 'eval_interval'),
    (TrainConfig, dict(log_interval=-1), 'log_interval'), (TrainConfig, dict(max_steps=0), 'max_steps'),
    (TrainConfig, dict(max_steps=10.5), 'max_steps'), (TrainConfig, dict(warmup_steps=-1), 'warmup_steps'),
    (TrainConfig, dict(time_budget_s=-5.0), 'time_budget_s'), (TrainConfig, dict(seed=1.5), 'seed'),
    (HDPLConfig, dict(beta=NAN), 'beta'), (HDPLConfig, dict(beta=-1e-3), 'beta'), (HDPLConfig, dict(beta=INF), 'beta'),
    (HDPLConfig, dict(kl_bound=NAN), 'kl_bound'), (HDPLConfig, dict(kl_bound=0.0), 'kl_bound'),
    (HDPLConfig, dict(norm_eps=0.0), 'norm_eps'), (HDPLConfig, dict(norm_eps=-1e-6), 'norm_eps'),
    (HDPLConfig, dict(rope_base=0.0), 'rope_base'), (HDPLConfig, dict(rope_base=-10.0), 'rope_base'),
    (HDPLConfig, dict(free_bits=NAN), 'free_bits'), (HDPLConfig, dict(path_dropout=NAN), 'path_dropout'),
    (HDPLConfig, dict(d_model=0), 'd_model'), (HDPLConfig, dict(vocab_size=-5), 'vocab_size'),
]

@pytest.mark.parametrize('cls,kw,name', BAD_SETTINGS, ids=[f"{c.__name__}-{n}-{list(kw.values())[0]}" for c, kw, n in BAD_SETTINGS])
def test_bad_setting_names_itself(cls, kw, name):
    with pytest.raises(ValueError) as e: cls(**kw)
    assert name in str(e.value) and any(repr(v) in str(e.value) or str(v) in str(e.value) for v in kw.values()), str(e.value)

@pytest.mark.parametrize('kw,name', [(dict(beta=NAN), 'beta'), (dict(beta=-1.0), 'beta'), (dict(kl_bound=INF), 'kl_bound'),
                                     (dict(kl_bound=-1.0), 'kl_bound'), (dict(free_bits=-1.0), 'free_bits')])
def test_bad_layer_setting_names_itself(kw, name):
    with pytest.raises(ValueError, match=name): HybridDualPathLinear(32, 32, rank=4, groups=4, **kw)

def test_no_validation_data_is_an_error():
    from hdpl.data import DataConfig
    with pytest.raises(ValueError, match='val_docs must be an integer >= 1, got 0'): DataConfig(val_docs=0)
    with pytest.raises(ValueError, match='val_batches must be an integer >= 1 or None, got 0'): DataConfig(val_batches=0)
    with pytest.raises(ValueError, match='val_batches is empty'): Trainer(CFG, TC, Tokens(), [])

# ---- 6. a changed schedule on resume -----------------------------------------------------------------------------

def test_changed_max_steps_warns_with_the_lr_jump(tmp_path, reference):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit())
    t, _, warned = quiet(lambda: trainer(out, max_steps=20))
    assert len(warned) == 1 and 'max_steps changed from 12 to 20' in warned[0] and 'learning rate goes from' in warned[0]
    h, _, _ = quiet(t.fit)
    lrs = [r['lr'] for r in h if 'lr' in r]
    assert len(lrs) == 20 and lrs[12] > lrs[11]
    assert strip(h[:len(reference[1])]) == reference[1]                    # the first 12 steps are kept as they were
    for kw in (dict(lr=1e-3), dict(warmup_steps=3), dict(min_lr=1e-4)):  # the rest of the schedule cannot change
        with pytest.raises(ValueError, match='different configuration'): quiet(lambda: trainer(out, max_steps=20, **kw))


# ---- 7. orphan temporary files -----------------------------------------------------------------------------------

def test_stale_temporary_files_are_removed(tmp_path):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=4))
    junk = [out / '.best.safetensors.tmp-123', out / 'ckpt-00000004' / '.state.pt.tmp-77', out / '.metrics.jsonl.tmp-5']
    for j in junk: j.write_bytes(b'\0' * 1000)
    (out / '.best.tmp-9').mkdir(); (out / '.best.tmp-9' / 'weights.pt').write_bytes(b'x')
    _, printed, _ = quiet(lambda: trainer(out))
    assert 'removed 4 temporary file(s)' in printed
    assert not [p for p in out.rglob('.*tmp-*')]


# ---- 8. validation data changed on resume ------------------------------------------------------------------------

def test_changed_validation_batches_are_refused(tmp_path):
    out = tmp_path / 'run'
    quiet(lambda: trainer(out).fit(stop_at=4))
    before = snapshot(out)
    with pytest.raises(ValueError, match='the validation batches differ'): quiet(lambda: trainer(out, val=val_batches(seed=5)))
    assert snapshot(out) == before


# ---- the Trainer with a module -----------------------------------------------------------------------------------

def test_module_trainer_resumes_exactly_and_saves_best_dir(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    full, _, _ = quiet(lambda: trainer(a, module=True).fit())
    quiet(lambda: trainer(b, module=True).fit(stop_at=4))
    resumed, _, _ = quiet(lambda: trainer(b, module=True).fit())
    assert strip(resumed) == strip(full)
    assert sorted(os.listdir(a / 'best')) == ['config.json', 'weights.pt'] and not (a / 'best.safetensors').exists()
    assert json.loads((a / 'config.json').read_text())['model'] == {'kind': 'tiny', 'd': 16}


# ---- 11. damaged data files ---------------------------------------------------------------------------------------

def test_damaged_data_files_are_named(tmp_path):
    from hdpl.data import load_documents, load_tokenizer
    (tmp_path / 'empty.parquet').write_bytes(b'')
    (tmp_path / 'text.parquet').write_text('id,text\n1,hello\n')
    (tmp_path / 'docs.jsonl').write_text('{"text": "one"}\n\n{"text": "two"}\n{"text": "thr\n')
    (tmp_path / 'list.jsonl').write_text('{"text": "one"}\n[1, 2]\n')
    (tmp_path / 'cp1252.txt').write_bytes('fine\nna\u00efve\n'.encode('cp1252'))
    cases = [(tmp_path / 'empty.parquet', 'empty.parquet is not a Parquet file (empty)'),
             (tmp_path / 'text.parquet', 'text.parquet is not a Parquet file'),
             (tmp_path / 'docs.jsonl', 'docs.jsonl, line 4: not valid JSON'),
             (tmp_path / 'list.jsonl', 'list.jsonl, line 2: a JSON list, not an object'),
             (tmp_path / 'cp1252.txt', 'cp1252.txt is not UTF-8 text: byte 0xef on line 2'),
             ('/dev/null', "'/dev/null' is not a regular file or folder")]
    for src, msg in cases:
        with pytest.raises(ValueError) as e: load_documents(src)
        assert msg in str(e.value), str(e.value)
    with pytest.raises(ValueError, match='is a file, not a folder'): load_tokenizer(tmp_path / 'docs.jsonl')


# ---- 12. the layer and the model ----------------------------------------------------------------------------------

def test_token_ids_out_of_range_and_integer_layer_input():
    m = HDPLForCausalLM(CFG)
    for bad in (CFG.vocab_size, CFG.vocab_size + 100, -1):
        with pytest.raises(ValueError, match=f'token id {bad} is outside the vocabulary'): m(torch.full((1, 4), bad))
    layer = HybridDualPathLinear(32, 32, rank=4, groups=4)
    for dt in (torch.long, torch.int32, torch.bool):
        with pytest.raises(TypeError, match='expects a floating-point tensor'): layer(torch.ones(2, 32, dtype=dt))

@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('kl_mode', KL_MODES)
def test_empty_batch_in_training(impl, kl_mode):
    m = HybridDualPathLinear(32, 64, rank=4, groups=4, impl=impl, kl_mode=kl_mode).train()
    x = torch.randn(0, 32, requires_grad=True)
    y = m(x); aux = m.aux_loss
    assert y.shape == (0, 64) and aux.item() == 0.0 and not math.isnan(aux.item())
    (y.sum() + aux).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.parameters())


# ---- SIGKILL at random moments, in the middle of every kind of write ---------------------------------------------

WRITES = ('state.pt', 'rank0.pt', 'latest', 'best.safetensors', 'config.json', 'metrics.jsonl')   # by atomic_write
KINDS = WRITES + ('metrics-append', 'best-dir', 'timer')

def _install(out: Path, kind: str, n: int, mode: str):
    "In a child: SIGKILL this process at the n-th write of `kind`, half-way through it ('during') or just after it ('after')."
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    count = [0]
    def hit():
        count[0] += 1; return count[0] == n
    if kind in WRITES:
        real = T.atomic_write
        def aw(path, fn):
            if Path(path).name != kind or not hit(): return real(path, fn)
            if mode == 'after': real(path, fn); die()
            def half(tmp): fn(tmp); os.truncate(tmp, os.path.getsize(tmp) // 2); die()
            return real(path, half)
        T.atomic_write = aw
    elif kind == 'metrics-append':
        real_log = T.Trainer._log
        def log(self, rec):
            if hit():
                line = json.dumps(rec) + '\n'
                with open(out / 'metrics.jsonl', 'a') as f: f.write(line if mode == 'after' else line[:len(line) // 2])
                die()
            return real_log(self, rec)
        T.Trainer._log = log
    elif kind == 'best-dir':
        real_swap, real_save = T._swap_dir, TinyLM.save_pretrained
        def swap(tmp, final):
            if not hit(): return real_swap(tmp, final)
            if final.exists(): final.rename(final.with_name(f".{final.name}.old-{os.getpid()}"))   # between the two renames
            die()
        def save(self, directory, state_dict=None):
            if mode == 'during' and count[0] + 1 == n:                   # killed while the module writes its files
                os.makedirs(directory, exist_ok=True); (Path(directory) / 'weights.pt').write_bytes(b'half'); die()
            return real_save(self, directory, state_dict)
        T._swap_dir, TinyLM.save_pretrained = swap, save

def _child(out: Path, module: bool, kind=None, n=0, mode='during'):
    code = 1
    try:
        if kind not in (None, 'timer'): _install(out, kind, n, mode)
        with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            trainer(out, module=module).fit()
        code = 0
    except BaseException: traceback.print_exc()
    finally: os._exit(code)

def _run(out: Path, module: bool, kind=None, n=0, mode='during', delay=None) -> bool:
    "Train in a forked process with one fault; True if it was killed, False if it finished (an error fails the test)."
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0: _child(out, module, kind, n, mode)
    done, status, t0 = 0, 0, time.perf_counter()
    if delay is not None:
        while not done and time.perf_counter() - t0 < delay:
            done, status = os.waitpid(pid, os.WNOHANG); time.sleep(0.002)
        if not done: os.kill(pid, signal.SIGKILL)
    if not done: _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, status
        return True
    assert os.WEXITSTATUS(status) == 0, f"training failed after a fault ({kind}, {n}, {mode}) in {out}"
    return False

def _weights(out: Path, module: bool) -> dict:
    last = checkpoint_dirs(out)[0]
    w = {'final:' + k: v for k, v in torch.load(last / 'state.pt', weights_only=False)['model'].items()}
    if module: best = torch.load(out / 'best' / 'weights.pt')
    else:
        from safetensors.torch import load_file
        best = load_file(out / 'best.safetensors')
    return {**w, **{'best:' + k: v for k, v in best.items()}, 'last': last.name}

def sigkill_anywhere(tmp: Path, rounds: int, seed: int = 1234) -> dict:
    "Train `rounds` runs, each killed up to 8 times (at random writes or random moments) and then finished; compare with uninterrupted runs."
    rng = random.Random(seed)
    t_start = time.perf_counter()
    refs, kills, by_kind = {}, 0, {k: 0 for k in KINDS}
    for module in (False, True):            # best.safetensors for an HDPLConfig, best/ via save_pretrained for a module
        out = tmp / f"ref-{module}"
        t0 = time.perf_counter(); assert not _run(out, module); refs[module] = (out, time.perf_counter() - t0)
    runs = []
    for r in range(rounds):
        module = r % 2 == 1
        out, life = tmp / f"run-{r}", refs[module][1]
        kinds = [k for k in KINDS if k not in ('config.json', 'best.safetensors' if module else 'best-dir')]
        for i in range(8):          # every kind in turn; config.json is written only when a run starts
            kind = 'config.json' if i == 0 and r % 3 == 0 else kinds[(r + i) % len(kinds)]
            mode = rng.choice(['during', 'after'])
            n = rng.randint(1, 6) if kind == 'metrics-append' else rng.choice([1, 1, 2])
            killed = _run(out, module, kind, n, mode, delay=rng.uniform(0, life) if kind == 'timer' else None)
            kills += killed; by_kind[kind] += killed
            if not killed: break
        else: assert not _run(out, module)     # the same command once more, without faults: it finishes
        runs.append((out, module))
    secs = time.perf_counter() - t_start
    # compared only now: this process runs no torch computation before it has forked its last child
    for module in (False, True):
        ref_out = refs[module][0]
        ref_m, ref_w = strip(read_metrics(ref_out)), _weights(ref_out, module)
        for out, mod in runs:
            if mod != module: continue
            assert strip(read_metrics(out)) == ref_m, out
            w = _weights(out, module)
            assert w.keys() == ref_w.keys() and all(w[k] == ref_w[k] if k == 'last' else torch.equal(w[k], ref_w[k]) for k in w), out
            assert not [p for p in out.rglob('*') if '.tmp-' in p.name or '.old-' in p.name], out
    return dict(kills=kills, rounds=rounds, by_kind=by_kind, seconds=round(secs, 1), seed=seed)

def test_sigkill_anywhere(tmp_path):
    "SIGKILL at random moments and in the middle of every kind of write; the resumed runs equal uninterrupted ones."
    rounds = int(os.environ.get('HDPL_FAULT_ROUNDS', '10'))
    # a fresh interpreter that forks its children before any torch computation (forking after one is not safe with OpenMP)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(root), os.environ.get('PYTHONPATH', '')])}
    p = subprocess.run([sys.executable, __file__, str(tmp_path), str(rounds)], capture_output=True, text=True, env=env, cwd=root)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"\n{res['kills']} SIGKILLs in {rounds} runs ({res['seconds']} s): {res['by_kind']}; "
          "every resumed run identical to the uninterrupted one")
    assert res['kills'] >= 3 * rounds and (rounds < 10 or all(res['by_kind'].values())), res

if __name__ == '__main__':
    import matplotlib.figure, matplotlib.backends.backend_agg   # imported once here, not in every child (plot_history at the end of fit)
    print(json.dumps(sigkill_anywhere(Path(sys.argv[1]), int(sys.argv[2]))))
