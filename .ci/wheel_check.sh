#!/usr/bin/env bash
# Build the sdist and the wheel, install the wheel (not editable) into a fresh venv OUTSIDE the repository and use it
# there, as a user who runs `pip install hdpl-*.whl` would:
#   - the wheel holds the `hdpl` package (every hdpl/*.py of the checkout) and its metadata, nothing else
#     (no notebooks, results, tests or CI files);
#   - from a directory outside the repository: import every module, `--help` of every console script that
#     settings.ini declares, and a forward + backward of a small HDPL model.
# Usage: bash .ci/wheel_check.sh   (from any directory; needs `python` with `build` installed; TORCH_SPEC may be set)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d "${TMPDIR:-/tmp}/hdpl-wheel-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
case "$WORK" in "$ROOT"/*) echo "!! the wheel check must run outside the repository" >&2; exit 1;; esac

# 1. sdist + wheel (the wheel is built from the sdist, so this also checks that the sdist is complete)
python -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log" >&2; exit 1; }
ls "$WORK"/dist/*.tar.gz >/dev/null
WHEEL=$(ls "$WORK"/dist/*.whl)
echo "built: $(cd "$WORK/dist" && ls)"

# 2. the wheel's contents: the package's modules and the metadata, nothing else
python - "$WHEEL" "$ROOT" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, root = sys.argv[1], Path(sys.argv[2])
names = zipfile.ZipFile(wheel).namelist()
meta = [n for n in names if n.split('/')[0].endswith('.dist-info')]
pkg = sorted(n for n in names if n not in meta)
want = sorted(f"hdpl/{p.name}" for p in (root / 'hdpl').glob('*.py'))
stray = [n for n in pkg if not (n.startswith('hdpl/') and n.endswith('.py') and n.count('/') == 1)]
missing = sorted(set(want) - set(pkg)); extra = sorted(set(pkg) - set(want))
if stray or missing or extra:
    sys.exit(f"!! wheel contents: stray {stray}, missing {missing}, not in the checkout {extra}")
print(f"wheel holds {len(pkg)} modules of hdpl/ and {len(meta)} metadata files, nothing else")
PY

# 3. a fresh venv outside the repository, the wheel installed into it (torch first: the CPU build, as in CI)
python -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$VPY" -m pip install -q "$WHEEL"

# 4. use it from a directory outside the repository
mkdir "$WORK/elsewhere"; cd "$WORK/elsewhere"
SCRIPTS=$(python - "$ROOT/settings.ini" <<'PY'
import configparser, sys
c = configparser.ConfigParser(delimiters=['=']); c.read(sys.argv[1])
print(' '.join(s.split('=')[0] for s in c['DEFAULT'].get('console_scripts', '').split()))
PY
)
"$VPY" - "$ROOT" <<'PY'
import importlib, pkgutil, sys
from pathlib import Path
import hdpl
where = Path(hdpl.__file__).resolve()
assert Path(sys.argv[1]) not in where.parents, f"hdpl was imported from the checkout: {where}"
mods = sorted(m.name for m in pkgutil.iter_modules(hdpl.__path__, 'hdpl.'))
for m in mods: importlib.import_module(m)
print(f"imported hdpl {hdpl.__version__} and its {len(mods)} modules from {where.parent.parent.name}/: {', '.join(mods)}")
import torch
from hdpl.model import HDPLConfig, HDPLForCausalLM
torch.manual_seed(0)
cfg = HDPLConfig.preset('surgical', vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=32, rank=16, groups=4)
model = HDPLForCausalLM(cfg)
idx = torch.randint(0, cfg.vocab_size, (2, 32))
out = model(idx, targets=idx)
out.loss.backward()
grads = [p.grad for p in model.parameters() if p.requires_grad]
assert torch.isfinite(out.loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
print(f"forward + backward of a {model.num_params():,}-parameter surgical model: loss {out.loss.item():.3f}")
PY
for s in $SCRIPTS; do
  test -x "$WORK/venv/bin/$s" || { echo "!! console script $s is not installed" >&2; exit 1; }
  "$WORK/venv/bin/$s" --help >/dev/null || { echo "!! $s --help failed" >&2; exit 1; }
done
echo "console scripts run (--help): $SCRIPTS"
