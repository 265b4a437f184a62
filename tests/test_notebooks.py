"""Every notebook in `nbs/` is a test: each is executed top to bottom, one pytest test per notebook.

Unlike a plain `nbdev_test`, cells flagged with the settings' `tst_flags` (e.g. `#| slow`) DO run here,
exactly as `nbdev_test --flags "slow"` would: pytest (and so CI) runs everything."""
import io, os
from contextlib import redirect_stderr
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb  # renamed so pytest does not collect nbdev's function

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

def test_notebooks_found():
    assert (ROOT/'nbs'/'index.ipynb') in NBS, f"no notebooks collected from {ROOT/'nbs'}"

@pytest.mark.parametrize('nb', NBS, ids=[p.name for p in NBS])
def test_notebook(nb):
    os.environ['IN_TEST'] = '1'
    flags = get_config(path=ROOT).tst_flags.split()  # skipped by plain `nbdev_test` ...
    err = io.StringIO()
    with redirect_stderr(err):  # nbdev writes the notebook's traceback to stderr
        ok, secs = run_nb(nb, skip_flags=flags, force_flags=flags, basepath=ROOT)  # ... forced back on here
    if not ok: pytest.fail(f"{nb.name} failed after {secs:.1f}s\n{err.getvalue()}", pytrace=False)
