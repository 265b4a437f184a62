"""End-to-end training speed of the dense baseline, the surgical model with the fused kernel (impl='fast') and the
surgical model in the paper's grouped-convolution form (impl='reference'), timed in ONE run, interleaved.

Same timing as `hdpl.bench.bench_model` (Table 2 shape, 1 x 2048 tokens per step, AdamW, blocks of
STEPS optimizer steps, median over ROUNDS interleaved rounds after one warm-up round), with a third contender. Writes model_impls.json and model_impls.md next to this file.
Run from the repository root: `OMP_NUM_THREADS=1 python results/bench/cpu/model_impls.py` (the committed run: one thread,
so that the timing holds up when other processes share the CPU; STEPS and ROUNDS may be set in the environment).
"""
import json, os, sys, time
from pathlib import Path
import torch
from hdpl.bench import MODEL_SHAPES, device_info, interleaved, medians
from hdpl.params import HDPLConfig
from hdpl.model import HDPLForCausalLM
from hdpl.train import Device, make_optimizer
from hdpl.distributed import RandomBatches

CONTENDERS = {'baseline': ('baseline', {}), 'surgical fast': ('surgical', {'impl': 'fast'}),
              'surgical reference': ('surgical', {'impl': 'reference'})}
SEQ, BATCH = 2048, 1
STEPS, ROUNDS, WARMUP = int(os.environ.get('STEPS', 1)), int(os.environ.get('ROUNDS', 7)), 1

def runs_for(precision):
    dev = Device('cpu', precision); runs = {}
    for name, (preset, kw) in CONTENDERS.items():
        cfg = HDPLConfig.preset(preset, **{**MODEL_SHAPES['paper'], 'max_seq_len': SEQ, **kw})
        torch.manual_seed(0); model = HDPLForCausalLM(cfg); opt = make_optimizer(model)
        data = RandomBatches(BATCH, SEQ, cfg.vocab_size, seed=0); batches = [next(data) for _ in range(STEPS)]
        def run(model=model, opt=opt, batches=batches, dev=dev):
            for x, y in batches:
                with dev.autocast(): loss = model(x, y).loss
                loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        runs[name] = (model.num_params(), run)
    return runs

t0 = time.perf_counter()
res = dict(device=device_info('cpu'), date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
           settings=dict(shape='paper', batch_size=BATCH, seq_len=SEQ, steps_per_block=STEPS, rounds=ROUNDS, warmup=WARMUP),
           load_avg_1min={'start': os.getloadavg()[0]}, rows=[])
for prec in ('fp32', 'bf16'):
    runs = runs_for(prec)
    times = interleaved({k: r for k, (_, r) in runs.items()}, ROUNDS, WARMUP, 'cpu')
    med = medians(times); tokens = STEPS * BATCH * SEQ
    for name, (n, _) in runs.items():
        res['rows'].append(dict(model=name, params=n, precision=prec, tokens_per_s=tokens / med[name],
                                tokens_per_s_all=[tokens / t for t in times[name]], vs_baseline=med['baseline'] / med[name],
                                vs_reference=med['surgical reference'] / med[name]))
    del runs
res['load_avg_1min']['end'] = os.getloadavg()[0]; res['wall_s'] = time.perf_counter() - t0
md = [f"Device: **{res['device']['name']}** (cpu), torch {res['device']['torch']}, {res['date']}; "
      f"one run, {ROUNDS} interleaved rounds of {STEPS} optimizer step(s) per contender, median; load average "
      f"{res['load_avg_1min']['start']:.1f} at the start, {res['load_avg_1min']['end']:.1f} at the end.", '',
      '| model | impl | params | batch × seq | precision | tokens/s | × baseline | × reference |', '|---|---|--:|---|---|--:|--:|--:|']
md += [f"| {r['model'].split()[0]} | {CONTENDERS[r['model']][1].get('impl', '–')} | {r['params']:,} | {BATCH} × {SEQ} | {r['precision']} | "
       f"{r['tokens_per_s']:,.0f} | {r['vs_baseline']:.3f} | {r['vs_reference']:.2f} |" for r in res['rows']]
here = Path(__file__).parent
(here / 'model_impls.json').write_text(json.dumps(res, indent=1)); (here / 'model_impls.md').write_text('\n'.join(md) + '\n')
print('\n'.join(md)); print(f"wall {res['wall_s']:.0f} s")
