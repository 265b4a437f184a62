"""The paper's architecture at its scale, in one accelerator call: baseline, surgical, deterministic and lowrank
(Table 2 shapes: d 512, 4 layers, 8 heads, MLP 2048, seq 2048, R 128, K 8), trained on identical enwiki batches for as
many steps as fit, evaluated on held-out enwiki, FineWeb-Edu, WikiText-2 and ELTeC, plus `hdpl_bench`.

Two steps, from the repository root:

    python results/gpu/paper_scale.py prepare            # here, where the data folder is: writes runs/paper_scale/tokens.npz
    python results/gpu/paper_scale.py run --out $OUT     # on the accelerator; tokens.npz goes with it (runs/ is git-ignored:
                                                         # name it in the device call's carry, or copy it there)

`prepare` tokenises enwiki (18M training tokens by default, 36 MB as uint16) and 16 windows of 2,049 tokens of each
evaluation set with hdpl.data's `pack_tokens`. `run` measures the step time of the slowest variant first and sets one
step count for every run so that all of them fit in `--budget-s` (the same learning-rate schedule, warm-up and batches
for every run); it writes `paper_scale.json`, `table.md` (hdpl.sweep's table: mean ± std over seeds, paired differences
to the baseline), `curves.png` and `bench/` (`hdpl_bench` on the same device) into `--out`, the JSON after every run.
`run --dry-run` is the same code on a tiny model for a few steps on the CPU (tests/test_paper_scale.py runs it in CI).
"""
import argparse, json, math, os, subprocess, sys, time
from pathlib import Path
import torch

SETS = {'held_out': None, 'fineweb_edu': 'fineweb-edu-sample-10BT/head-1M-chars.txt', 'wikitext2': 'wikitext-2/valid.txt',
        'eltec': 'eltec-eng/novels.parquet'}                       # names as hdpl.sweep.EVAL_SETS
VARIANTS = ('baseline', 'surgical', 'deterministic', 'lowrank')
PAPER = dict(d_model=512, n_layers=4, n_heads=8, d_ff=2048, rank=128, groups=8, max_seq_len=2048)
TINY = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, rank=16, groups=4, max_seq_len=64)

def log(*a): print(time.strftime('%H:%M:%S'), *a, flush=True)

def prepare(a):
    from hdpl.data import find_data_dir, load_documents, load_tokenizer, pack_tokens, save_packed
    data = Path(a.data_dir) if a.data_dir else find_data_dir(required=True)
    tok = load_tokenizer(data / 'smollm2-tokenizer')
    L1 = a.seq_len + 1
    enwiki = load_documents(str(data / 'enwiki-2015'))
    arrays = {'held_out': pack_tokens(enwiki, tok, a.eval_windows * L1),                     # the first documents: held out
              'train': pack_tokens(enwiki, tok, a.train_tokens, skip_docs=a.held_out_docs)}
    for name, rel in SETS.items():
        if rel is None: continue
        split = 'file' if rel.endswith('head-1M-chars.txt') else 'wikitext' if rel.endswith('.txt') else 'line'
        arrays[name] = pack_tokens(load_documents(str(data / rel), txt_split=split), tok, a.eval_windows * L1)
    out = save_packed(a.tokens, len(tok), **arrays)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB):", {k: len(v) for k, v in arrays.items()})

def _ce(model, batches, device, bf16):
    model.eval(); tot = n = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for x, y in batches:
            o = model(x.to(device), targets=y.to(device)); tot += float(o.ce) * y.numel(); n += y.numel()
    return tot / n

def _step_time(cfg, batch, device, bf16, n=5):
    "Seconds of one fwd + bwd + AdamW step of the model of `cfg` (median of `n` after 3 warm-up steps)."
    from hdpl.model import HDPLForCausalLM
    m = HDPLForCausalLM(cfg).to(device); opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x, y = (t.to(device) for t in batch); ts = []
    for i in range(3 + n):
        if device.type == 'cuda': torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16): loss = m(x, targets=y).loss
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if device.type == 'cuda': torch.cuda.synchronize()
        if i >= 3: ts.append(time.perf_counter() - t)
    del m, opt
    return sorted(ts)[len(ts) // 2]

def run(a):
    from hdpl.data import PackedBatches, load_packed
    from hdpl.params import param_counts
    from hdpl.sweep import aggregate, format_table, plot_curves, variant_config
    from hdpl.train import TrainConfig, Trainer
    t0 = time.time()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    device = torch.device(a.device if a.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu'))
    bf16 = device.type == 'cuda' and not a.fp32
    if device.type == 'cuda': torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    tokens = load_packed(a.tokens)
    shape = TINY if a.dry_run else PAPER
    seq = shape['max_seq_len']
    base = dict(shape, vocab_size=tokens['vocab_size'])
    evals = {k: [b for b, _ in zip(PackedBatches(tokens[k], seq, a.eval_batch), range(max(1, (len(tokens[k]) // (seq + 1)) // a.eval_batch)))]
             for k in SETS}
    seeds = [int(s) for s in a.seeds.split(',')]
    variants = a.variants.split(',')
    cfgs = {v: variant_config(v, base, 1) for v in variants}
    first = next(PackedBatches(tokens['train'], seq, a.batch_size))
    if a.steps: steps, times = a.steps, {}
    else:                                      # one step count for all runs, from the slowest variant's step time
        times = {v: _step_time(cfgs[v], first, device, bf16) for v in variants}
        per_run = (a.budget_s - (time.time() - t0) - a.reserve_s) / (len(variants) * len(seeds))
        steps = max(10, int(per_run * 0.85 / max(times.values())))
        log('step times (s):', {k: round(v, 4) for k, v in times.items()}, f'-> {steps} steps per run')
    warm = min(1000, max(1, steps // 10))
    res = dict(device=torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads',
               torch=torch.__version__, shape=base, batch_size=a.batch_size, seq_len=seq, steps=steps, warmup_steps=warm,
               tokens_per_step=a.batch_size * seq, train_tokens_available=len(tokens['train']), precision='bf16' if bf16 else 'fp32',
               step_times_s=times, dry_run=a.dry_run, runs=[])
    save = lambda: (out / 'paper_scale.json').write_text(json.dumps(res, indent=1, default=str))
    for seed in seeds:
        for v in variants:
            mcfg = variant_config(v, base, steps)
            tc = TrainConfig(lr=8e-4, min_lr=8e-5, warmup_steps=warm, max_steps=steps, eval_interval=max(1, steps // 4 if a.dry_run else steps // 8),
                             log_interval=max(1, steps // 20), seed=seed, device=device.type, precision='bf16' if bf16 else 'fp32',
                             progress=False)
            t = time.time()
            tr = Trainer(mcfg, tc, PackedBatches(tokens['train'], seq, a.batch_size), evals['held_out'][:4])   # identical batches
            hist = tr.fit(); dt = time.time() - t
            ev = {k: _ce(tr.raw_model, evals[k], device, bf16) for k in SETS}
            tps = [r['tokens_per_s'] for r in hist if 'tokens_per_s' in r]
            res['runs'].append(dict(variant=v, seed=seed, params=param_counts(mcfg)['total'], params_inference=param_counts(mcfg)['total_inference'],
                                    steps=tr.step, tokens_per_step=a.batch_size * seq, eval=ev, diag={}, diag_ce={},
                                    curve=[(r['step'], r['val_ce']) for r in hist if 'val_ce' in r],
                                    tokens_per_s=sorted(tps)[len(tps) // 2] if tps else None, train_s=round(dt, 1)))
            log(v, seed, f'{dt:.0f}s', {k: round(x, 4) for k, x in ev.items()}); save()
            del tr
            if device.type == 'cuda': torch.cuda.empty_cache()
    runs = res['runs']
    note = (f"{steps} steps of {a.batch_size} x {seq} tokens per run ({steps * a.batch_size * seq:,} training tokens), {res['precision']}, "
            f"on {res['device']}; evaluation on {len(evals['held_out'])} batches of {a.eval_batch} x {seq} tokens per set. Model seeds {seeds}; "
            "every run reads the same batches in the same order.")
    (out / 'table.md').write_text(format_table(aggregate(runs, variants), note))
    plot_curves(runs, out / 'curves.png')
    if not a.no_bench:
        cmd = [sys.executable, '-c', 'from hdpl.cli import bench_cli; bench_cli()', '--device', device.type, '--out-dir', str(out / 'bench'),
               '--model-compile', 'no', '--repeats', '5']
        if a.dry_run: cmd += ['--tokens', '256', '--seq-len', '64', '--shapes', '64x128', '--dtypes', 'float32', '--sweep', '',
                              '--repeats', '1', '--warmup', '0', '--no-model']
        r = subprocess.run(cmd, capture_output=True, text=True)
        res['bench_rc'] = r.returncode
        if r.returncode: res['bench_error'] = r.stderr[-2000:]
    res['wall_s'] = round(time.time() - t0, 1); save()
    log('done', f"{res['wall_s']:.0f}s", out)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='what', required=True)
    q = sub.add_parser('prepare', help='tokenise the data here into one .npz file')
    q.add_argument('--data-dir', default=None); q.add_argument('--tokens', default='runs/paper_scale/tokens.npz')
    q.add_argument('--train-tokens', type=int, default=18_000_000); q.add_argument('--seq-len', type=int, default=2048)
    q.add_argument('--eval-windows', type=int, default=16); q.add_argument('--held-out-docs', type=int, default=2000)
    r = sub.add_parser('run', help='train and evaluate the variants, then hdpl_bench')
    r.add_argument('--tokens', default='runs/paper_scale/tokens.npz'); r.add_argument('--out', required=True)
    r.add_argument('--device', default='auto'); r.add_argument('--variants', default=','.join(VARIANTS))
    r.add_argument('--seeds', default='0,1'); r.add_argument('--batch-size', type=int, default=16)
    r.add_argument('--eval-batch', type=int, default=4); r.add_argument('--steps', type=int, default=None, help='default: as many as fit in --budget-s')
    r.add_argument('--budget-s', type=float, default=480, help='wall time of the whole command')
    r.add_argument('--reserve-s', type=float, default=150, help='of --budget-s, kept for start-up, evaluation and hdpl_bench')
    r.add_argument('--fp32', action='store_true'); r.add_argument('--no-bench', action='store_true')
    r.add_argument('--dry-run', action='store_true', help='a tiny model (d 64, 2 layers, seq 64): the same code, for CI')
    a = p.parse_args(argv)
    (prepare if a.what == 'prepare' else run)(a)

if __name__ == '__main__': main()
