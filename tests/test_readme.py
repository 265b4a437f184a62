"The README's usage example runs, matches `nbs/index.ipynb`, and `import hdpl` stays light."
import json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _usage_blocks(md:str) -> list[str]:
    "Fenced python blocks under the `Usage` heading (up to the next heading of the same or higher level)."
    blocks, level, fence, buf = [], None, None, []
    for line in md.splitlines():
        if fence is None:
            h = re.match(r'(#+)\s+(.*)', line)
            if h:
                n = len(h.group(1))
                if level is not None and n <= level: break
                if level is None and h.group(2).strip().lower().startswith('usage'): level = n
                continue
            f = re.match(r'\s*(```+)\s*\{?\s*(\w*)', line)
            if f: fence, lang, buf = f.group(1), f.group(2).lower(), []
        elif line.strip() == fence:
            if level is not None and lang in ('python', 'py'): blocks.append('\n'.join(buf) + '\n')
            fence = None
        else: buf.append(line)
    return blocks

def test_readme_usage_runs():
    blocks = _usage_blocks((ROOT/'README.md').read_text(encoding='utf-8'))
    assert blocks, "README.md has no ```python block under a 'Usage' heading"
    for i, src in enumerate(blocks): exec(compile(src, f'README.md:usage[{i}]', 'exec'), {'__name__': '__readme__'})

def test_readme_matches_index_nb():
    "README.md is generated from nbs/index.ipynb: its usage code must be a code cell there (regenerate the README if not)."
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
    cells = {''.join(c['source']).strip() for c in nb['cells'] if c['cell_type'] == 'code'}
    for src in _usage_blocks((ROOT/'README.md').read_text(encoding='utf-8')):
        assert src.strip() in cells, f"README usage block is not a code cell of nbs/index.ipynb:\n{src}"

def test_import_is_light():
    code = "import sys, hdpl; heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules); assert not heavy, heavy"
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
