"""Inference speed of SmolLM2-135M-Instruct: dense vs surgical HDPL vs surgical HDPL fused for inference
(`hdpl.bench.fuse_for_inference`), timed in ONE run, interleaved; plus a profile of KV-cache decoding and the
per-group layer times.

Models: the shared GGUF dequantised to a float32 `LlamaForCausalLM` (dense); the same model `hdplify`'d surgical
(q, k, v, gate, up; R 128, k and v at R 48, K 8; the shapes of the converted SmolLM2 of chapter 14; speed does not depend
on the weights' values); and that model fused. Prefill: 1 × PROMPT tokens, logits of the last position only (as
`generate` asks for them). Decode: NEW tokens, one at a time with the KV cache, after a CONTEXT-token prompt, at batch
1 and 8. Medians of ROUNDS interleaved rounds (the order rotates each round) after one warm-up round; float32 at 2
and 1 threads, bfloat16 weights at 2 threads. Writes inference.json and inference.md next to this file.
Run from the repository root: `python results/bench/cpu/inference.py` (ROUNDS, NEW, THREADS, DTYPES may be set in the
environment; the committed run is the default).
"""
import copy, json, os, statistics, sys, time, warnings
os.environ.setdefault("TQDM_DISABLE", "1")
from pathlib import Path
import torch
import torch.nn as nn
import transformers
from hdpl.bench import device_info, fuse_for_inference, fused_groups
from hdpl.data import find_data_dir
from hdpl.hf import hdplify, load_causal_lm
from hdpl.layer import HybridDualPathLinear

ROUNDS, NEW, PROMPT, CONTEXT = int(os.environ.get('ROUNDS', 3)), int(os.environ.get('NEW', 32)), 512, 128
THREADS = {'float32': [int(t) for t in os.environ.get('THREADS', '2,1').split(',')],
           'bfloat16': [int(t) for t in os.environ.get('BF16_THREADS', '2').split(',')]}   # bf16 at 1 thread: 25+ minutes here
DTYPES = os.environ.get('DTYPES', 'float32,bfloat16').split(',')
OUT = Path(__file__).resolve().parent
warnings.simplefilter('ignore', FutureWarning)
transformers.utils.logging.disable_progress_bar()

def models_for(dtype):
    data = find_data_dir(required=True)
    dense = load_causal_lm(data / 'smollm2-135m-instruct' / 'SmolLM2-135M-Instruct.Q4_1.gguf').eval()
    hd = copy.deepcopy(dense)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        hdplify(hd, 'surgical', rank=128, groups=8, overrides={'k': {'rank': 48}, 'v': {'rank': 48}})
    hd.eval()
    fused = fuse_for_inference(copy.deepcopy(hd))
    ms = {'dense': dense, 'hdpl': hd, 'hdpl fused': fused}
    return {k: m.to(getattr(torch, dtype)) for k, m in ms.items()}

def param_mb(m, skip_logvar=False):
    n, seen = 0, set()
    for mod in m.modules():
        for name, p in mod.named_parameters(recurse=False):
            if id(p) in seen: continue                      # the tied head is the embedding: counted once
            seen.add(id(p)); k = p.numel()
            if skip_logvar and isinstance(mod, HybridDualPathLinear) and name in ('encoder_weight', 'encoder_bias'): k //= 2
            n += k * p.element_size()
    extra = sum(g.weight.numel() * g.weight.element_size() + g.bias.numel() * g.bias.element_size() for g in fused_groups(m))
    return n / 2**20, extra / 2**20

@torch.no_grad()
def prefill(m, ids): m(input_ids=ids, use_cache=True, logits_to_keep=1)

@torch.no_grad()
def decode(m, ids):
    out = m(input_ids=ids, use_cache=True, logits_to_keep=1)
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t = time.perf_counter()
    for _ in range(NEW):
        out = m(input_ids=tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t

def timed(ms, vocab):
    g = torch.Generator().manual_seed(0)
    p1 = torch.randint(0, vocab, (1, PROMPT), generator=g)
    ctx = {b: torch.randint(0, vocab, (b, CONTEXT), generator=g) for b in (1, 8)}
    names, times = list(ms), {n: {'prefill': [], 'decode_b1': [], 'decode_b8': []} for n in ms}
    for r in range(ROUNDS + 1):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter(); prefill(ms[n], p1); tp = time.perf_counter() - t
            d1, d8 = decode(ms[n], ctx[1]), decode(ms[n], ctx[8])
            if r: times[n]['prefill'].append(tp); times[n]['decode_b1'].append(d1); times[n]['decode_b8'].append(d8)
    res = {}
    for n in names:
        med = {k: statistics.median(v) for k, v in times[n].items()}
        res[n] = {'prefill_tok_s': PROMPT / med['prefill'], 'decode_b1_tok_s': NEW / med['decode_b1'],
                  'decode_b8_tok_s': 8 * NEW / med['decode_b8'], 'rounds_s': {k: [round(x, 4) for x in v] for k, v in times[n].items()}}
    for n in names:
        for k in ('prefill_tok_s', 'decode_b1_tok_s', 'decode_b8_tok_s'): res[n][k.replace('_tok_s', '_x_dense')] = res[n][k] / res['dense'][k]
    return res

@torch.no_grad()
def profile(ms, vocab, tokens=8):
    "Per decoded token at batch 1: calls and self CPU time by op, and the total, for each model."
    from torch.profiler import profile as prof, ProfilerActivity
    ids = torch.randint(0, vocab, (1, CONTEXT), generator=torch.Generator().manual_seed(1))
    out = {}
    for n, m in ms.items():
        o = m(input_ids=ids, use_cache=True, logits_to_keep=1); past, tok = o.past_key_values, o.logits[:, -1:].argmax(-1)
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(tokens):
                o = m(input_ids=tok, past_key_values=past, use_cache=True); past, tok = o.past_key_values, o.logits[:, -1:].argmax(-1)
        ev = [e for e in p.key_averages() if e.self_cpu_time_total > 0]
        tot = sum(e.self_cpu_time_total for e in ev)
        top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:10]
        out[n] = {'ops_per_token': sum(e.count for e in ev) / tokens, 'self_ms_per_token': tot / tokens / 1e3,
                  'top': [{'op': e.key, 'calls_per_token': e.count / tokens, 'ms_per_token': e.self_cpu_time_total / tokens / 1e3}
                          for e in top]}
    return out

@torch.no_grad()
def layer_groups(repeats=7, copies=int(os.environ.get('COPIES', 30))):
    "One block's q, k, v (576 → 576, 192, 192; R 128, 48, 48) and gate, up (576 → 1536; R 128): µs per group, 30 copies so the weights leave the cache."
    res = []
    d = 576
    for name, specs in (('q, k, v', [(576, 128), (192, 48), (192, 48)]), ('gate, up', [(1536, 128), (1536, 128)])):
        for T in (1, 8, 512):
            x = torch.randn(T, d)
            sets = {'dense': [[nn.Linear(d, o, bias=False) for o, r in specs] for _ in range(copies)],
                    'hdpl': [[HybridDualPathLinear(d, o, rank=r, groups=8).eval() for o, r in specs] for _ in range(copies)]}
            sets['hdpl fused'] = copy.deepcopy(sets['hdpl'])
            names = ('q_proj', 'k_proj', 'v_proj') if len(specs) == 3 else ('gate_proj', 'up_proj')
            for ls in sets['hdpl fused']:
                holder = nn.Module()
                for n, l in zip(names, ls): setattr(holder, n, l)
                fuse_for_inference(holder)
            run = lambda ls_: [l(x) for ls in ls_ for l in ls]
            t = {k: [] for k in sets}
            for r in range(repeats + 1):
                for k, v in sets.items():
                    t0 = time.perf_counter(); run(v); dt = (time.perf_counter() - t0) / copies
                    if r: t[k].append(dt)
            med = {k: statistics.median(v) * 1e6 for k, v in t.items()}
            res.append({'group': name, 'tokens': T, **{f'{k} us': round(v, 1) for k, v in med.items()},
                        'hdpl x dense': med['dense'] / med['hdpl'], 'fused x dense': med['dense'] / med['hdpl fused']})
    return res

def memory():
    "Parameter memory only (no timing): `python results/bench/cpu/inference.py memory` rewrites that part of inference.json."
    ms = models_for('float32')
    mem = {n: dict(zip(('params', 'fused_copies'), param_mb(m))) for n, m in ms.items()}
    mem['hdpl, without log-variance rows'] = {'params': param_mb(ms['hdpl'], skip_logvar=True)[0], 'fused_copies': 0.0}
    return mem

def main():
    t0 = time.perf_counter()
    res = {'device': device_info('cpu'), 'settings': dict(rounds=ROUNDS, new_tokens=NEW, prompt=PROMPT, context=CONTEXT), 'runs': []}
    for dtype in DTYPES:
        ms = models_for(dtype)
        vocab = ms['dense'].config.vocab_size
        if dtype == 'float32': res['memory_mb'] = memory()
        for th in THREADS[dtype]:
            torch.set_num_threads(th)
            res['runs'].append({'dtype': dtype, 'threads': th, 'models': timed(ms, vocab)})
            print(dtype, th, {n: {k: round(v, 2) for k, v in r.items() if k.endswith('x_dense')} for n, r in res['runs'][-1]['models'].items()}, flush=True)
            if dtype == 'float32' and th == 2:
                res['profile_decode_b1'] = profile(ms, vocab)
                res['layer_groups'] = layer_groups()
        del ms
    res['wall_s'] = time.perf_counter() - t0
    (OUT / 'inference.json').write_text(json.dumps(res, indent=1))
    (OUT / 'inference.md').write_text(markdown(res))
    print(markdown(res))

def markdown(res):
    L = [f"# Inference speed, SmolLM2-135M: dense vs HDPL vs HDPL fused\n\n{res['device']['name']}; prefill 1 × {PROMPT} tokens; "
         f"decode {res['settings']['new_tokens']} tokens after {CONTEXT}; medians of {res['settings']['rounds']} interleaved rounds.\n",
         '| dtype | threads | model | prefill tok/s | × dense | decode b1 tok/s | × dense | decode b8 tok/s | × dense |', '|---|---|---|---|---|---|---|---|---|']
    for r in res['runs']:
        for n, m in r['models'].items():
            L.append(f"| {r['dtype']} | {r['threads']} | {n} | {m['prefill_tok_s']:.0f} | {m['prefill_x_dense']:.2f} | {m['decode_b1_tok_s']:.1f} | "
                     f"{m['decode_b1_x_dense']:.2f} | {m['decode_b8_tok_s']:.1f} | {m['decode_b8_x_dense']:.2f} |")
    return '\n'.join(L) + '\n'

if __name__ == '__main__':
    if sys.argv[1:] == ['memory']:                          # the committed run counted the tied head twice; recounted so
        res = json.loads((OUT / 'inference.json').read_text()); res['memory_mb'] = memory()
        (OUT / 'inference.json').write_text(json.dumps(res, indent=1)); print(res['memory_mb'])
    else: main()
