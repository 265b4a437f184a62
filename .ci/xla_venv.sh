#!/usr/bin/env bash
# The second venv that tests/test_distributed.py runs the XLA CPU device in:
#   bash .ci/xla_venv.sh [VENV]        (default: .venv-xla in the repository root)
# torch 2.9.0 + torch_xla 2.9.0 (the newest torch_xla on PyPI), what hdpl's training loop imports at run time
# (numpy, safetensors, matplotlib, tqdm, fastcore), transformers (an hdplified transformers Llama is trained there), and
# this checkout's hdpl, editable, without its own requirements (the XLA tests use fixed random batches: no datasets). Idempotent: a VENV that already passes the
# check at the bottom is kept (seconds); otherwise it is (re)built (about 2 minutes, 6 GB). Prints one line.
#
# Why it is not a plain `pip install torch==2.9.0 torch_xla==2.9.0`: torch_xla 2.9.0 needs exactly torch 2.9.0 (C++
# ABI) but does not pin it, and the only Linux x86_64 torch 2.9.0 wheel on PyPI is the CUDA 12.8 build, which
# requires 15 nvidia-*-cu12 wheels and triton. 12 of those are load-time dependencies of libtorch (DT_NEEDED: without
# them `import torch` fails even on a machine without a GPU); the others (triton, nvrtc, cusolver, nvtx) are only
# dlopen-ed for GPU work, so LEAN=1 (the default) installs torch --no-deps plus exactly the 12. LEAN=0: every dep.
set -euo pipefail
T0=$SECONDS
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$REPO/.venv-xla}
PY=${PYTHON:-python3}
LEAN=${LEAN:-1}

check() {  # torch/torch_xla work on the XLA CPU device, the run-time deps import, `hdpl` is this checkout's (from /)
  (cd / && PJRT_DEVICE=CPU HDPL_REPO=$REPO "$VENV/bin/python" - <<'EOF'
import os, pathlib, torch, torch_xla, numpy, safetensors, matplotlib, tqdm, fastcore, transformers, hdpl.distributed, hdpl.hf
assert torch.__version__.startswith('2.9.0') and torch_xla.__version__.startswith('2.9.0'), (torch.__version__, torch_xla.__version__)
here = pathlib.Path(hdpl.__file__).resolve().parents[1]
assert here == pathlib.Path(os.environ['HDPL_REPO']).resolve(), f"hdpl is imported from {here}, not this checkout"
x = torch.ones(2, 2, device=torch_xla.device()) * 2
torch_xla.sync()
print(f"torch {torch.__version__} | torch_xla {torch_xla.__version__} | {x.device} | hdpl from {here}")
EOF
  )
}

# pip.conf here adds local indexes and pip warns once for each package they lack; pip also reports the requirements
# that are skipped on purpose (torch's nvidia/triton ones with LEAN=1, hdpl's datasets/transformers): all filtered out.
quiet() {
  "$@" 2>&1 | { grep -v -e '^WARNING: Location' -e 'requires nvidia-' -e 'requires triton' \
                        -e 'dependency resolver does not currently' -e '^hdpl [^ ]* requires' || true; }
  return "${PIPESTATUS[0]}"
}
PIP=(quiet "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)

if ok=$(check 2>/dev/null); then echo "== XLA venv $VENV: reused in $((SECONDS - T0))s ($ok)"; exit 0; fi

if ! PJRT_DEVICE=CPU "$VENV/bin/python" -c 'import torch, torch_xla' 2>/dev/null; then   # (re)build: the big part
  "$PY" -m venv --clear "$VENV"
  if [ "$LEAN" = 1 ]; then
    "${PIP[@]}" --no-deps torch==2.9.0 \
        nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90 nvidia-cublas-cu12==12.8.4.1 \
        nvidia-cudnn-cu12==9.10.2.21 nvidia-cufft-cu12==11.3.3.83 nvidia-curand-cu12==10.3.9.90 \
        nvidia-cusparse-cu12==12.5.8.93 nvidia-cusparselt-cu12==0.7.1 nvidia-nccl-cu12==2.27.5 \
        nvidia-nvshmem-cu12==3.3.20 nvidia-nvjitlink-cu12==12.8.93 nvidia-cufile-cu12==1.13.1.3
    # torch's pure-Python requirements, and torch_xla (it pulls absl-py, numpy, pyyaml, requests)
    "${PIP[@]}" filelock 'typing-extensions>=4.10.0' 'sympy>=1.13.3' 'networkx>=2.5.1' jinja2 'fsspec>=0.8.5' torch_xla==2.9.0
  else
    "${PIP[@]}" torch==2.9.0 torch_xla==2.9.0
  fi
fi
"${PIP[@]}" numpy safetensors matplotlib tqdm fastcore   # what hdpl's training loop imports at run time
"${PIP[@]}" transformers==5.24.0                           # hdpl.hf (tests/xla_hf_check.py): the newest version hdpl is tested with
"${PIP[@]}" --no-deps -e "$REPO"   # this checkout's hdpl, without datasets / transformers
ok=$(check)
echo "== XLA venv $VENV: set up in $((SECONDS - T0))s ($ok)"
