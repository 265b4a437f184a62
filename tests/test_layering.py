"""The package's internal imports run one way, bottom to top (chapter 16):

functional → layer → params → model → data → train → diagnostics → distributed → bench → compare → sweep → hf → convert → latent → cli → peft

Every `hdpl/*.py` is parsed (not imported) and every import in it is collected, at module level and inside functions
alike. The test fails if a module imports one at its own level or above, if the imports form a cycle, or if a module
is missing from the order (a new module must be given its place)."""
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'hdpl'
ORDER = ('functional', 'layer', 'params', 'model', 'data', 'train', 'diagnostics', 'distributed', 'bench', 'compare',
         'sweep', 'hf', 'convert', 'latent', 'cli', 'peft')
NOT_LAYERED = {'__init__', '_modidx'}     # the package's header (runs before any module: it may import any of them) and nbdev's index

def imports_of(path: Path) -> dict:
    "{imported hdpl module: first line number} of every import in the file at `path`."
    out = {}
    def add(name, node):
        if name: out.setdefault(name, node.lineno)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split('.')
                if parts[0] == 'hdpl': add(parts[1] if len(parts) > 1 else '__init__', node)
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or '').split('.')
            if node.level == 1:                                     # from .x import ... / from . import x
                if mod[0]: add(mod[0], node)
                else: [add(a.name, node) for a in node.names]
            elif node.level > 1: add(f"<relative level {node.level}>", node)
            elif mod[0] == 'hdpl':                                  # from hdpl.x import ... / from hdpl import x
                if len(mod) > 1: add(mod[1], node)
                else: [add(a.name, node) for a in node.names]
    return out

def graph() -> dict:
    return {p.stem: imports_of(p) for p in sorted(PKG.glob('*.py'))}

def test_parser_sees_every_kind_of_import(tmp_path):
    f = tmp_path / 'm.py'
    f.write_text("import hdpl.train\nfrom hdpl.data import x\nfrom hdpl import layer\nfrom .model import y\nfrom . import params\n"
                 "def f():\n    from hdpl.sweep import z\n    import hdpl.cli as c\nimport torch\nfrom torch import nn\n")
    assert set(imports_of(f)) == {'train', 'data', 'layer', 'model', 'params', 'sweep', 'cli'}

def test_every_module_has_a_place():
    g = graph()
    assert set(ORDER) - {'convert'} <= set(g), f"modules missing from hdpl/: {sorted(set(ORDER) - {'convert'} - set(g))}"
    unknown = sorted(set(g) - set(ORDER) - NOT_LAYERED)
    assert not unknown, f"hdpl modules without a place in the layering order {ORDER}: {unknown} (add them to ORDER here and in chapter 16)"

def test_imports_run_one_way():
    bad = []
    for m, deps in graph().items():
        if m == '_modidx': bad += [f"hdpl/_modidx.py:{line} imports hdpl.{d}" for d, line in deps.items()]
        if m in NOT_LAYERED: continue
        for d, line in deps.items():
            if d not in ORDER: bad.append(f"hdpl/{m}.py:{line} imports {d!r}, which is not a layered module")
            elif ORDER.index(d) >= ORDER.index(m): bad.append(f"hdpl/{m}.py:{line} imports hdpl.{d}, which is at its level or above it")
    assert not bad, "imports against the order " + ' -> '.join(ORDER) + ":\n" + '\n'.join(bad)

def test_no_cycles():
    g = {m: {d for d in deps if d in ORDER or d in NOT_LAYERED} for m, deps in graph().items()}
    state, path = {}, []
    def visit(m):
        state[m] = 'open'; path.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 'open': pytest.fail("import cycle: " + ' -> '.join(path[path.index(d):] + [d]))
            if d not in state: visit(d)
        state[m] = 'done'; path.pop()
    for m in sorted(g):
        if m not in state: visit(m)
