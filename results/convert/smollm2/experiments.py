"""The SmolLM2-135M-Instruct conversion measurements of chapter 14, one experiment at a time:

    python results/convert/smollm2/experiments.py stages     # dense and the surgical conversion at each stage, balance, KL
    python results/convert/smollm2/experiments.py distil     # + distillation of the surgical conversion (time budget in DISTIL_S)
    python results/convert/smollm2/experiments.py pareto     # other placements and (R, K), stage 'local', no distillation
    python results/convert/smollm2/experiments.py distil-partial   # distillation of the last-15-blocks placement
    python results/convert/smollm2/experiments.py speed      # inference speed and memory, dense vs converted, interleaved
    python results/convert/smollm2/experiments.py recount    # both parameter counts in the JSONs above (arithmetic only)
    python results/convert/smollm2/experiments.py lowrank    # HDPL vs the low-rank pair at equal inference parameters: 4 budgets,
                                                             # local epochs, and the same distillation for both (blocks 20-29)
    python results/convert/smollm2/experiments.py lowrank-distil   # the same distillation at the other three budgets, both structures
                                                                   # (re-converted: stage 'local' is deterministic; checked against lowrank.json)

Each writes `<name>.json` beside this file (data from `find_data_dir()`, 2 threads). Run from the repository root."""
import copy, json, os, statistics, sys, time
from pathlib import Path
import torch
from hdpl.data import DataConfig, find_data_dir, load_tokenizer
from hdpl.hf import HDPLSettings, load_causal_lm
from hdpl.train import Trainer, TrainConfig, read_metrics
from hdpl.convert import (ConvertSettings, Distiller, convert, domain_windows, evaluate_domains, held_out_windows, kl_stats,
                          path_balance, dequantized, _param_counts, _hdpl_modules)
from hdpl.data import make_data

torch.set_num_threads(2)
HERE = Path(__file__).resolve().parent
DATA = find_data_dir(required=True)
GGUF = DATA / 'smollm2-135m-instruct' / 'SmolLM2-135M-Instruct.Q4_1.gguf'
ENWIKI0 = DATA / 'enwiki-2015' / 'part-0.parquet'
SURGICAL = dict(rank=128, groups=8, overrides={'k': {'rank': 48}, 'v': {'rank': 48}}, kl_mode='none')
DISTIL_S = float(os.environ.get('DISTIL_S', 1500))          # a time budget: the run stops there if its steps are not done
SURGICAL_STEPS, PARTIAL_STEPS = 150, 200                      # steps of 8 x 256 tokens; the cosine schedule ends at the last
PARETO = [('surgical, blocks 13-29', dict(SURGICAL, layers=tuple(range(13, 30)))),
          ('surgical, blocks 20-29', dict(SURGICAL, layers=tuple(range(20, 30)))),
          ('gate+up only', dict(SURGICAL, projections=('gate', 'up'), overrides=None)),
          ('q+k+v only', dict(SURGICAL, projections=('q', 'k', 'v'))),
          ('surgical, R 64 (k, v 32)', dict(SURGICAL, rank=64, overrides={'k': {'rank': 32}, 'v': {'rank': 32}})),
          ('surgical, K 4', dict(SURGICAL, groups=4))]
WORK = Path(os.environ.get('HDPL_CONVERT_WORK', '/tmp/hdpl-convert-work'))
LOWRANK_LAYERS = tuple(range(20, 30))
LOWRANK_BUDGETS = [(32, 12), (64, 24), (128, 48), (192, 72)]          # (R of q, gate, up; R of k, v), K 8
LOWRANK_EPOCHS = (1, 2, 8)                                           # local epochs beside the default 4, at R 128
LOWRANK_DISTIL_STEPS = int(os.environ.get('LOWRANK_DISTIL_STEPS', 40))

def budget(structure, r, rkv):
    return HDPLSettings(rank=r, groups=8, overrides={'k': {'rank': rkv}, 'v': {'rank': rkv}}, kl_mode='none', layers=LOWRANK_LAYERS,
                        structure=structure, match='inference')

def logvar_params(kw, n_blocks=30, d_in=576):
    "Parameters of the log-variance encoders (R x d_in weights + R biases per HDPL layer) of a conversion with settings `kw`."
    s = HDPLSettings(**kw)
    return sum(s.for_projection(p)['rank'] * (d_in + 1) for _ in (s.layers if s.layers is not None else range(n_blocks)) for p in s.projections)

def recount():
    "Add the inference counts (without the log-variance encoders, which inference never reads) to the JSONs written before they were recorded."
    settings = {'surgical': SURGICAL, **{label: kw for label, kw in PARETO}}
    def fix(params, kw):
        lv = logvar_params(kw) if kw else 0
        params.setdefault('total_inference', params['total'] - lv); params.setdefault('blocks_inference', params['blocks'] - lv)
    for name in ('stages', 'distil', 'distil-partial', 'pareto'):
        f = HERE / f'{name}.json'
        if not f.is_file(): continue
        d = json.loads(f.read_text())
        if name == 'stages':
            fix(d['dense']['params'], None)
            for st in ('paper', 'closed', 'refined', 'local'): fix(d[st]['params'], SURGICAL)
        elif name == 'distil': fix(d['distil']['params'], SURGICAL)
        elif name == 'distil-partial': fix(d['distil']['params'], settings[d['label']])
        else:
            for r in d['rows']: fix(r['params'], settings[r['label']])
        save(name, d)

def log(*a): print(time.strftime('%H:%M:%S'), *a, flush=True)

def save(name, obj):
    tmp = HERE / f'.{name}.json.tmp'; tmp.write_text(json.dumps(obj, indent=1)); tmp.replace(HERE / f'{name}.json')

def setup():
    tok = load_tokenizer(DATA / 'smollm2-tokenizer')
    held = held_out_windows(tok, DATA, n_windows=8, seq_len=256)
    import pyarrow.parquet as pq
    texts = pq.read_table(ENWIKI0, columns=['text']).column('text').to_pylist()
    calib = domain_windows(tok, texts[200:], 32, 255)           # 32 × 256 tokens; the first 200 articles are distillation's validation
    return tok, held, calib

def stats(model, held):
    hd = _hdpl_modules(model)
    pb = path_balance(model, held['fineweb-edu']) if hd else None
    ks = kl_stats(model, held['fineweb-edu'][:4]) if hd else None
    return dict(params=_param_counts(model), ce=evaluate_domains(model, held), balance=pb,
                kl=None if ks is None else dict(min=min(v['kl'] for v in ks.values()), median=statistics.median(v['kl'] for v in ks.values()),
                                                 max=max(v['kl'] for v in ks.values()), under_ln2=max(v['under_bound'] for v in ks.values())))

def one(base, held, calib, settings, stage, **cs):
    m = copy.deepcopy(base); torch.manual_seed(0)
    t = time.time(); info = convert(m, settings, calib, ConvertSettings(stage=stage, **cs), progress=False); dt = time.time() - t
    r = dict(stage=stage, seconds=dt, local=info['local'], projections=info['projections'], **stats(m, held))
    log(stage, settings.projections, settings.layers, f"{dt:.0f}s", r['ce'], 'params', r['params'])
    return m, r

def distil(base, model, tok, held, name, budget_s, steps, lr=5e-4):
    data = DataConfig(source=str(ENWIKI0), tokenizer=str(DATA / 'smollm2-tokenizer'), seq_len=256, batch_size=8, val_docs=200,
                      val_batches=2, shuffle_buffer=256, max_doc_tokens=4096, seed=0)
    train, val, _ = make_data(data, vocab_size=base.config.vocab_size)
    tc = TrainConfig(lr=lr, min_lr=lr / 10, warmup_steps=10, max_steps=steps, weight_decay=0.0, eval_interval=25, log_interval=5,
                     checkpoint_interval=25, time_budget_s=budget_s, progress=False, seed=0)
    out = WORK / name
    import shutil; shutil.rmtree(out, ignore_errors=True)
    d = Distiller(model, base, kd=0.9, temperature=1.0, trainable='blocks')
    t = time.time(); tr = Trainer(d, tc, train, val, out_dir=out); tr.fit(); dt = time.time() - t
    recs = read_metrics(out)
    return dict(seconds=dt, steps=tr.step, tokens=tr.step * 8 * 256, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                val_ce=[(r['step'], r['val_ce']) for r in recs if 'val_ce' in r],
                train=[(r['step'], r['train_ce'], r['train_aux']) for r in recs if 'train_ce' in r], **stats(model, held))

def main(what):
    t0 = time.time()
    tok, held, calib = setup()
    base = dequantized(load_causal_lm(GGUF).eval())
    res = dict(what=what, device=f'CPU, {torch.get_num_threads()} threads, torch {torch.__version__}', calib_tokens=calib.numel(),
               held_out={k: list(v.shape) for k, v in held.items()})
    surg = HDPLSettings(**SURGICAL)
    if what == 'stages':
        if (HERE / 'stages.json').is_file(): res = {**json.loads((HERE / 'stages.json').read_text()), **res}   # continue a stopped run
        if 'dense' not in res: res['dense'] = stats(base, held); log('dense', res['dense']['ce']); save(what, res)
        for stage in ('paper', 'closed', 'refined', 'local'):
            if stage in res: continue
            m, res[stage] = one(base, held, calib, surg, stage); save(what, res)
            if stage == 'local': m.save_pretrained(WORK / 'surgical-local')
    elif what == 'distil':
        from transformers import AutoModelForCausalLM
        m = AutoModelForCausalLM.from_pretrained(WORK / 'surgical-local')
        res['distil'] = distil(base, m, tok, held, 'distil-surgical', DISTIL_S, steps=SURGICAL_STEPS); log('distil', res['distil']['ce'])
        m.save_pretrained(WORK / 'surgical-distil')
    elif what == 'pareto':
        res['rows'] = []
        for label, kw in PARETO:
            m, r = one(base, held, calib, HDPLSettings(**kw), 'local'); r['label'] = label
            for k in ('projections', 'local'): r.pop(k)
            res['rows'].append(r); save(what, res)
            m.save_pretrained(WORK / f"pareto-{label.replace(' ', '_').replace(',', '')}")
    elif what == 'distil-partial':                 # the placement with >= 15% fewer block parameters that kept the most
        from transformers import AutoModelForCausalLM
        rows = json.loads((HERE / 'pareto.json').read_text())['rows']
        dense_blocks = json.loads((HERE / 'stages.json').read_text())['dense']['params']['blocks']
        ok = [r for r in rows if r['params']['blocks'] <= 0.85 * dense_blocks]
        best = min(ok, key=lambda r: statistics.mean(r['ce'].values()))
        log('distil-partial picks', best['label'])
        m = AutoModelForCausalLM.from_pretrained(WORK / f"pareto-{best['label'].replace(' ', '_').replace(',', '')}")
        res['label'] = best['label']
        res['distil'] = distil(base, m, tok, held, 'distil-partial', DISTIL_S, steps=PARTIAL_STEPS); log('distil-partial', res['distil']['ce'])
    elif what == 'lowrank':
        if (HERE / 'lowrank.json').is_file(): res = {**json.loads((HERE / 'lowrank.json').read_text()), **res}   # continue a stopped run
        res.setdefault('rows', [])
        done = {r['label'] for r in res['rows']}
        plan = [(f"{st} R {r} (k, v {rkv}), local 4", st, r, rkv, 4) for r, rkv in LOWRANK_BUDGETS for st in ('hdpl', 'lowrank')]
        plan += [(f"{st} R 128 (k, v 48), local {e}", st, 128, 48, e) for e in LOWRANK_EPOCHS for st in ('hdpl', 'lowrank')]
        for label, st, r, rkv, e in plan:
            if label in done: continue
            m, row = one(base, held, calib, budget(st, r, rkv), 'local', local_epochs=e)
            row.update(label=label, structure=st, rank=r, rank_kv=rkv, local_epochs=e,
                       ranks=sorted({(p['name'], p.get('rank')) for p in row['projections']}) if st == 'lowrank' else None)
            for k in ('projections', 'local'): row.pop(k)
            res['rows'].append(row); save(what, res)
            if e == 4 and r == 128: m.save_pretrained(WORK / f'lowrank-{st}-local')
        for st in ('hdpl', 'lowrank'):                 # the same distillation budget for both: steps, tokens, lr, data order
            key = f'distil-{st}'
            if key in res: continue
            from transformers import AutoModelForCausalLM
            m = AutoModelForCausalLM.from_pretrained(WORK / f'lowrank-{st}-local')
            res[key] = distil(base, m, tok, held, key, None, steps=LOWRANK_DISTIL_STEPS); log(key, res[key]['ce']); save(what, res)
    elif what == 'lowrank-distil':                 # budgets R 32, 64, 192 (R 128 is distilled by 'lowrank'), into lowrank.json
        res = json.loads((HERE / 'lowrank.json').read_text())
        rows = {r['label']: r for r in res['rows']}
        res.setdefault('distil_budgets', {})
        for r, rkv in LOWRANK_BUDGETS:
            for st in ('hdpl', 'lowrank'):
                key = f"{st} R {r} (k, v {rkv})"
                if r == 128 or key in res['distil_budgets']: continue
                m, row = one(base, held, calib, budget(st, r, rkv), 'local', local_epochs=4)
                ref = rows[f"{key}, local 4"]['ce']
                d = distil(base, m, tok, held, f'distil-{st}-{r}', None, steps=LOWRANK_DISTIL_STEPS)
                res['distil_budgets'][key] = dict(structure=st, rank=r, rank_kv=rkv, local_ce=row['ce'], local_ce_recorded=ref,
                                                  local_max_abs_diff=max(abs(row['ce'][k] - ref[k]) for k in ref),
                                                  **{k: d[k] for k in ('seconds', 'steps', 'tokens', 'trainable', 'val_ce', 'params', 'ce')})
                log(key, 'local', row['ce'], 'distil', d['ce']); save('lowrank', res)
        return
    elif what == 'speed':
        from hdpl.convert import inference_speed
        from transformers import AutoModelForCausalLM
        models = {'dense': base, 'surgical': AutoModelForCausalLM.from_pretrained(WORK / 'surgical-local').eval()}
        res['speed'] = inference_speed(models, prompt_len=512, new_tokens=32, batch_sizes=(1, 8), repeats=3)
    res['wall_s'] = time.time() - t0
    save(what, res); log('done', what, f"{res['wall_s']:.0f}s")

if __name__ == '__main__':
    for w in sys.argv[1:]: recount() if w == 'recount' else main(w)
