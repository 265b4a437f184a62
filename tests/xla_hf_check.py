"""An hdplified 🤗 transformers Llama trained by hdpl's Trainer on the XLA CPU device; run by tests/test_distributed.py
with the XLA venv's python (torch_xla 2.9 + transformers):

    PJRT_DEVICE=CPU .venv-xla/bin/python tests/xla_hf_check.py OUT_DIR

Prints one line `RESULT {json}` with what it measured (compile count after every training step, losses, files); the
asserts are in the test. Random-token batches, as tests/xla_check.py."""
import json, os, sys, time
os.environ.setdefault('PJRT_DEVICE', 'CPU')
import torch, transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from xla_check import counting, DATA, TRAIN
from hdpl.train import Device, Trainer
from hdpl.distributed import random_data, xla_metrics
from hdpl.hf import hdplify, CausalLM

def main(out_dir):
    "fp32 weights in fp32, then bf16 weights (no autocast): transformers' Llama does not run under XLA autocast (see 12_hf)."
    return {prec: run(out_dir, prec) for prec in ('fp32', 'bf16-weights')}

def run(out_dir, prec):
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=DATA.seq_len))
    rep = hdplify(lm, 'surgical', rank=8, groups=4)
    if prec == 'bf16-weights': lm.to(torch.bfloat16)
    dev = counting(Device)('xla', 'fp32'); dev.compiles = []
    train_iter, val, _ = random_data(DATA, 256)
    t0 = time.perf_counter()
    tr = Trainer(CausalLM(lm), TRAIN, train_iter, val, out_dir=os.path.join(out_dir, prec), device=dev)
    hist = tr.fit()
    best = AutoModelForCausalLM.from_pretrained(os.path.join(out_dir, prec, 'best'))
    return dict(model=type(lm).__name__, reloaded=type(best).__name__, hdpl_layers=len(rep), dtype=str(next(lm.parameters()).dtype),
                compiles_after_step=dev.compiles, ce=[r['train_ce'] for r in hist if 'train_ce' in r],
                aux=[r['train_aux'] for r in hist if 'train_aux' in r], val=[r['val_ce'] for r in hist if 'val_ce' in r],
                files=sorted(os.listdir(tr.out_dir)), fallbacks=xla_metrics()['fallbacks'], wall_s=time.perf_counter() - t0,
                transformers=transformers.__version__)

if __name__ == '__main__':
    t0 = time.perf_counter()
    res = main(sys.argv[1])
    res['total_s'] = time.perf_counter() - t0
    print('RESULT ' + json.dumps(res))
