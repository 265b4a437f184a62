import torch, sys, time, json, copy
sys.path.insert(0, __import__('os').path.dirname(__file__))
from conv_core import *
from conv_core import _windows
from hdpl.hf import load_causal_lm, HDPLSettings
from hdpl.data import load_tokenizer
torch.set_num_threads(2)
D='/work/shared/data'
tok = load_tokenizer(D+'/smollm2-tokenizer')
held = {k: _windows(tok, v, 12, 257) for k, v in held_out_texts(D).items()}
calib = _windows(tok, calibration_texts(D), 32, 256)
base = load_causal_lm(D+'/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf').eval()
def ev(m): t=time.time(); r = {k: round(eval_ce(m, w), 4) for k, w in held.items()}; r['eval_s']=round(time.time()-t); return r
print('dense', ev(base), flush=True)
s = HDPLSettings(rank=128, groups=8, overrides={'k': {'rank': 48}, 'v': {'rank': 48}})
for stage, kw in [('closed', {}), ('refined', {}), ('refined', {'refit_dense': True}), ('refined', {'permute': True})]:
    m = copy.deepcopy(base)
    info = convert(m, s, calib, ConvertSettings(stage=stage, **kw), progress=False)
    import statistics
    errs = {}
    for p in info['projections']: errs.setdefault(p['name'], []).append(p['rel_err'])
    print(stage, kw, ev(m), 'conv_s', round(info['seconds']), {k: round(statistics.mean(v), 3) for k, v in errs.items()},
          'perm', [ (round(p['block_energy_before'],4), round(p['block_energy_after'],4)) for p in info['permuted'][:3]], flush=True)
    del m
