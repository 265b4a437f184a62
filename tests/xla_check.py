"""Training on the XLA CPU device, run by tests/test_distributed.py with the XLA venv's python (torch_xla 2.9).

    PJRT_DEVICE=CPU .venv-xla/bin/python tests/xla_check.py single OUT_DIR   # compile counts, XLA vs eager, launch_tpu
    PJRT_DEVICE=CPU CPU_NUM_DEVICES=2 .venv-xla/bin/python tests/xla_check.py spmd OUT_DIR   # data parallel over 2 devices

Prints one line `RESULT {json}` with what it measured; the asserts are in the test. The batches are random tokens
(`hdpl.distributed.random_data`, `make_data`'s signature), so the XLA venv needs no datasets, transformers or tokenizer."""
import json, os, sys, time
from pathlib import Path
from dataclasses import replace
os.environ.setdefault('PJRT_DEVICE', 'CPU')
import torch
from hdpl.params import HDPLConfig
from hdpl.data import DataConfig
from hdpl.train import Device, TrainConfig, Trainer, latest_checkpoint, read_metrics
from hdpl.distributed import RunSpec, SPMDDevice, launch_tpu, random_data, train_spmd, xla_metrics

TINY = HDPLConfig.preset('surgical', vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=32, rank=8, groups=4)
DATA = DataConfig(source='random', tokenizer=None, seq_len=32, batch_size=8, val_batches=2)
TRAIN = TrainConfig(lr=3e-3, min_lr=3e-4, warmup_steps=2, max_steps=8, eval_interval=4, log_interval=1, progress=False)

def counting(cls):
    "`cls` (a Device) that records the XLA compile count after every training step."
    class Counting(cls):
        def step_end(self):
            super().step_end()
            if torch.is_grad_enabled(): self.compiles.append(xla_metrics()['compiles'])   # evaluate() runs under no_grad
    return Counting

def run(dev, model=TINY, train=TRAIN, data=DATA, out_dir=None):
    "Train with hdpl's Trainer on `dev`; returns per-step train ce / aux, the val losses, flat final weights, wall time."
    tr, val, _ = random_data(data, model.vocab_size, dev.rank, dev.world_size)
    t0 = time.perf_counter()
    t = Trainer(model, train, tr, val, out_dir=out_dir, device=dev)
    hist = t.fit()
    flat = torch.cat([p.detach().cpu().double().reshape(-1) for p in t.raw_model.parameters()])
    return dict(ce=[r['train_ce'] for r in hist if 'train_ce' in r], aux=[r['train_aux'] for r in hist if 'train_aux' in r],
                val=[r['val_ce'] for r in hist if 'val_ce' in r], wall_s=time.perf_counter() - t0), flat, t

def maxdiff(a, b): return max(abs(x - y) for x, y in zip(a, b))

def single(out_dir):
    import torch_xla.runtime as xr
    res = dict(world_size=xr.world_size())
    # (a) the real thing: bf16 autocast, HDPL noise on; compile count after each step
    dev = counting(Device)('xla'); dev.compiles = []
    c0 = xla_metrics()['compiles']
    m, _, t = run(dev, out_dir=os.path.join(out_dir, 'bf16'))
    ck = latest_checkpoint(t.out_dir)
    res['a'] = dict(precision=dev.precision, compiles_before=c0, compiles_after_step=dev.compiles, ce=m['ce'], val=m['val'],
                    wall_s=m['wall_s'], files=sorted(os.listdir(t.out_dir)), checkpoint=ck and ck.name,
                    fallbacks=xla_metrics()['fallbacks'])
    # (b) fp32, HDPL noise off (z = mu): the same model and batches eagerly on the CPU and on XLA
    det = replace(TINY, noise=False)
    dx = counting(Device)('xla', 'fp32'); dx.compiles = []
    mx, fx, _ = run(dx, det)
    mc, fc, _ = run(Device('cpu', 'fp32'), det)
    res['b'] = dict(xla=mx, cpu=mc, compiles_after_step=dx.compiles, max_dce=maxdiff(mx['ce'], mc['ce']),
                    max_daux=maxdiff(mx['aux'], mc['aux']), max_dval=maxdiff(mx['val'], mc['val']),
                    max_dparam=(fx - fc).abs().max().item())
    # (c) the TPU entry point, on the one XLA CPU device in this process
    c0, t0 = xla_metrics()['compiles'], time.perf_counter()
    spec = RunSpec(TINY, replace(TRAIN, max_steps=4, eval_interval=2), DATA, os.path.join(out_dir, 'launch'))
    d = launch_tpu(spec, nprocs=1, data_fn=random_data)
    rep = json.loads((d / 'replicas.json').read_text())
    res['c'] = dict(files=sorted(os.listdir(d)), replicas=rep, steps=[r['step'] for r in read_metrics(d) if 'train_ce' in r],
                    new_compiles=xla_metrics()['compiles'] - c0, wall_s=time.perf_counter() - t0)
    return res

def spmd(out_dir):
    import torch_xla
    dev = counting(SPMDDevice)('fp32'); dev.compiles = []   # first: use_spmd() must precede every XLA tensor
    det = replace(TINY, noise=False)
    x, _ = next(dev.feed(random_data(DATA, det.vocab_size)[0]))
    sharding = torch_xla._XLAC._get_xla_sharding_spec(x)
    ms, fs, t = run(dev, det)
    shards = [torch_xla._XLAC._get_local_shards([p])[0] for p in t.raw_model.parameters()]
    per_dev = [torch.cat([s[i][0].cpu().double().reshape(-1) for s in shards]) for i in range(dev.num_devices)]
    mc, fc, _ = run(Device('cpu', 'fp32'), det)    # the whole global batch on one device (after: see the notebook)
    c0 = xla_metrics()['compiles']
    d = Path(out_dir) / 'spmd'
    train_spmd(RunSpec(det, replace(TRAIN, precision='fp32'), DATA, str(d)), data_fn=random_data)   # the entry point
    entry = dict(replicas=json.loads((d / 'replicas.json').read_text()), files=sorted(os.listdir(d)),
                 ce=[r['train_ce'] for r in read_metrics(d) if 'train_ce' in r], new_compiles=xla_metrics()['compiles'] - c0)
    return dict(train_spmd=entry, num_devices=dev.num_devices, world_size=dev.world_size, input_sharding=sharding,
                compiles_after_step=dev.compiles, spmd=ms, cpu=mc, max_dce=maxdiff(ms['ce'], mc['ce']),
                max_dval=maxdiff(ms['val'], mc['val']), max_dparam=(fs - fc).abs().max().item(),
                max_ddevices=max((p - per_dev[0]).abs().max().item() for p in per_dev))

if __name__ == '__main__':
    t0 = time.perf_counter()
    res = (single if sys.argv[1] == 'single' else spmd)(sys.argv[2])
    res['total_s'] = time.perf_counter() - t0
    print('RESULT ' + json.dumps(res))
