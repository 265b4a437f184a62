"""Reproduce results/latent/cpu/: build the enwiki + ELTeC mix, train a surgical HDPL model and a dense baseline of the
same architecture with hdpl's Trainer, then measure reading (probes, active units, KL), steering and the PCA picture.

    OMP_NUM_THREADS=1 nice -n 19 python results/latent/run.py            # everything (about 25 min on a 2-core CPU)
    python results/latent/run.py --stage analyse                        # only the measurements (models already trained)

Checkpoints and the corpus go to $HDPL_LATENT_WORK (default /work/artifacts/latent), never into the repo."""
import argparse, json, os, sys, time
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
WORK = Path(os.environ.get('HDPL_LATENT_WORK', '/work/artifacts/latent'))
OUT = ROOT / 'results' / 'latent' / 'cpu'
D_MODEL, N_LAYERS, N_HEADS, D_FF, SEQ, RANK, GROUPS = 256, 4, 4, 1024, 128, 32, 8
BATCH, STEPS, BUDGET_S = 8, 320, 580

def chunks(text, n_chars=3000):
    "Paragraph-aligned passages of about `n_chars` characters."
    out, cur = [], ''
    for p in text.split('\n'):
        if not p.strip(): continue
        cur = f"{cur}\n{p}" if cur else p
        if len(cur) >= n_chars: out.append(cur); cur = ''
    if len(cur) > 500: out.append(cur)
    return out

def build_corpus(data):
    "train.parquet: wiki articles (part-0) and novel passages (novels 0..88) interleaved; held-out: wiki part-1, novels 89..98."
    import pyarrow as pa, pyarrow.parquet as pq
    WORK.mkdir(parents=True, exist_ok=True)
    if (WORK / 'heldout_novels.parquet').exists(): return
    nov = pq.read_table(data / 'eltec-eng/novels.parquet', columns=['text']).column('text').to_pylist()
    wiki_tr = pq.read_table(data / 'enwiki-2015/part-0.parquet', columns=['text']).column('text').to_pylist()
    wiki_te = pq.read_table(data / 'enwiki-2015/part-1.parquet', columns=['text']).column('text').to_pylist()
    nov_tr = [c for t in nov[:89] for c in chunks(t)]
    nov_te = [c for t in nov[89:] for c in chunks(t)]
    g = torch.Generator().manual_seed(0)
    nov_tr = [nov_tr[i] for i in torch.randperm(len(nov_tr), generator=g).tolist()]
    wiki_tr = [w[:6000] for w in wiki_tr]                      # about as long as two passages
    mix, labels = [], []
    for i in range(min(len(nov_tr), 2 * len(wiki_tr))):          # two passages per article: about equal characters
        if i % 2 == 0 and i // 2 < len(wiki_tr): mix.append(wiki_tr[i // 2]); labels.append('wiki')
        mix.append(nov_tr[i]); labels.append('novels')
    pq.write_table(pa.table({'text': mix, 'domain': labels}), WORK / 'train.parquet')
    pq.write_table(pa.table({'text': [w[:6000] for w in wiki_te[:400]]}), WORK / 'heldout_wiki.parquet')
    pq.write_table(pa.table({'text': nov_te[:800]}), WORK / 'heldout_novels.parquet')

def configs():
    from hdpl.params import HDPLConfig
    kw = dict(d_model=D_MODEL, n_layers=N_LAYERS, n_heads=N_HEADS, d_ff=D_FF, max_seq_len=SEQ, rank=RANK, groups=GROUPS, tie_embeddings=True)
    return {'surgical': HDPLConfig(hybrid='surgical', **kw), 'dense': HDPLConfig(hybrid=(), **kw)}

def train(data):
    from hdpl.data import DataConfig, make_data
    from hdpl.train import TrainConfig, Trainer
    torch.set_num_threads(1)
    dcfg = DataConfig(source=str(WORK / 'train.parquet'), tokenizer=str(data / 'smollm2-tokenizer'), seq_len=SEQ, batch_size=BATCH,
                      val_docs=60, val_batches=8, shuffle_buffer=1000, max_doc_tokens=2048)
    for name, mcfg in configs().items():
        out = WORK / name
        if (out / 'DONE').exists(): continue
        tr, val, _ = make_data(dcfg, vocab_size=mcfg.vocab_size)
        tcfg = TrainConfig(lr=2e-3, min_lr=2e-4, warmup_steps=40, max_steps=STEPS, eval_interval=100, log_interval=20,
                           device='cpu', time_budget_s=BUDGET_S, progress=False)
        t0 = time.perf_counter()
        Trainer(mcfg, tcfg, tr, val, out_dir=out, resume=True, run_info=dict(data={'source': 'enwiki+eltec mix'})).fit()
        (out / 'DONE').write_text(json.dumps(dict(wall_s=time.perf_counter() - t0)))

def texts(data):
    "Training text per domain (for the steering directions: documents after the validation ones) and held-out text per domain."
    import pyarrow.parquet as pq
    t = pq.read_table(WORK / 'train.parquet').slice(200, 2000)
    tr = {d: [x for x, l in zip(t.column('text').to_pylist(), t.column('domain').to_pylist()) if l == d] for d in ('wiki', 'novels')}
    ev = {d: pq.read_table(WORK / f'heldout_{d}.parquet').column('text').to_pylist() for d in ('wiki', 'novels')}
    return tr, ev

def summary(run_dir):
    from hdpl.train import read_metrics
    recs = read_metrics(run_dir)
    vals = [r['val_ce'] for r in recs if 'val_ce' in r]
    tps = [r['tokens_per_s'] for r in recs if 'tokens_per_s' in r]
    return dict(steps=recs[-1]['step'], min_val_ce=min(vals), final_val_ce=vals[-1], tokens=recs[-1]['step'] * BATCH * SEQ,
                tokens_per_s=sorted(tps)[len(tps) // 2], wall_s=json.loads((run_dir / 'DONE').read_text())['wall_s'])

def analyse(data):
    from hdpl.data import load_tokenizer
    from hdpl.diagnostics import load_run_model
    from hdpl.latent import latent_demo, plot_read, plot_steer, plot_pca
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(data / 'smollm2-tokenizer')
    tr, ev = texts(data)
    models = {k: load_run_model(WORK / k, 'best')[0] for k in ('surgical', 'dense')}
    res = latent_demo(models['surgical'], tok, tr, ev, dense=models['dense'], seq_len=SEQ)
    info = {k: dict(summary(WORK / k), params=m.num_params()) for k, m in models.items()}
    res['models'] = info
    res['setup'] = (f"2-core CPU, torch {torch.__version__}, 1 thread. Models: d {D_MODEL}, {N_LAYERS} blocks, {N_HEADS} heads, d_ff {D_FF}, "
                    f"seq {SEQ}, tied embeddings; surgical HDPL (q,k,v,gate,up) R {RANK}, K {GROUPS} vs dense; trained with hdpl's Trainer "
                    f"on the enwiki+ELTeC mix, batch {BATCH}x{SEQ}: surgical {info['surgical']['steps']} steps "
                    f"(val CE {info['surgical']['min_val_ce']:.3f}, {info['surgical']['wall_s']:.0f} s), dense {info['dense']['steps']} steps "
                    f"(val CE {info['dense']['min_val_ce']:.3f}, {info['dense']['wall_s']:.0f} s). Held out, per domain, windows of {SEQ} tokens: "
                    f"{res['select_windows']} to choose each steering strength and {res['eval_windows']} others to report it; probes on the first "
                    f"{res['probe_windows']} (every 2nd position, a quarter of the windows held out).")
    (OUT / 'latent.json').write_text(json.dumps(res, indent=1))
    plot_read(res, OUT / 'read.png'); plot_steer(res, OUT / 'steer.png'); plot_pca(res, OUT / 'pca.png')
    conv = Path('/work/artifacts/convert/smollm2-surgical')
    if (conv / 'DONE').exists():          # a converted pretrained model, if one has been written: the same measurement, no dense twin
        import hdpl  # noqa: F401  (registers the HF-native HDPL classes)
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(str(conv)).eval()
        r2 = latent_demo(hf, tok, tr, ev, seq_len=SEQ, curve_blocks=())
        (OUT / 'smollm2_latent.json').write_text(json.dumps(r2, indent=1))
        plot_read(r2, OUT / 'smollm2_read.png'); plot_steer(r2, OUT / 'smollm2_steer.png'); plot_pca(r2, OUT / 'smollm2_pca.png')
    print(res['setup'])

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--stage', default='all', choices=['all', 'train', 'analyse'])
    a = ap.parse_args()
    from hdpl.data import find_data_dir
    data = find_data_dir(required=True)
    if a.stage in ('all', 'train'): build_corpus(data); train(data)
    if a.stage in ('all', 'analyse'):
        analyse(data)
