"Shared pytest setup: run from anywhere, import `hdpl` from this checkout, and tell notebooks they are under test."
import os, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ['IN_TEST'] = '1'  # nbdev convention: notebooks may check it to shorten demos
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
