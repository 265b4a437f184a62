"""`hdpl_train --init-from SRC`: hdpl's training loop on a 🤗 transformers checkpoint (chapter 12, `hdpl.hf.train_pretrained`).

A tiny random Llama is saved with `save_pretrained`; the command hdplifies it, trains it on the FineWeb-Edu sample in
shared/data, writes the best model as a `save_pretrained` folder, and resumes when run again."""
import json, math
import pytest, torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from hdpl.data import find_data_dir
from hdpl.train import read_metrics
from hdpl.cli import train_cli

@pytest.fixture(scope='module')
def data():
    d = find_data_dir()                       # under CI=true a missing shared/data is an error, not a skip
    if d is None: pytest.skip("no shared/data (set HDPL_DATA)")
    return d

@pytest.fixture(scope='module')
def src(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp('hf') / 'tiny-llama'
    LlamaForCausalLM(LlamaConfig(vocab_size=49_152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(d)
    return d

def argv(data, src, out, *extra):
    return ['--init-from', str(src), '--rank', '8', '--groups', '8', '--data', str(data / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'),
            '--tokenizer', str(data / 'smollm2-tokenizer'), '--seq-len', '32', '--batch-size', '2', '--val-docs', '8', '--val-batches', '2',
            '--max-steps', '6', '--eval-interval', '3', '--log-interval', '3', '--warmup-steps', '1', '--lr', '3e-3', '--min-lr', '3e-4',
            '--out-dir', str(out), '--device', 'cpu', '--no-progress', *extra]

def test_init_from_trains_saves_and_resumes(data, src, tmp_path, capsys):
    out = tmp_path / 'run'
    train_cli(argv(data, src, out))
    row = json.loads(capsys.readouterr().out)
    assert row['model'] == 'HDPLLlamaForCausalLM' and row['steps'] == 6 and row['final_val_ce'] < 11
    recs = read_metrics(out)
    assert [r['step'] for r in recs if 'val_ce' in r] == [0, 3, 6]
    assert [r['step'] for r in recs if 'train_ce' in r] == [3, 6]
    assert all(abs(r['train_aux'] - 10 * 1e-3 * math.log(2)) < 1e-5 for r in recs if 'train_aux' in r)   # 10 HDPL layers
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['init_from'] == str(src) and cfg['model']['model_type'] == 'hdpl_llama' and cfg['model']['hdpl_rank'] == 8
    best = AutoModelForCausalLM.from_pretrained(out / 'best')
    assert type(best).__name__ == 'HDPLLlamaForCausalLM' and best.config.hdpl_projections == ['q', 'k', 'v', 'gate', 'up']
    assert best.model.layers[0].mlp.gate_proj.rank == 8
    # the same command again: the run is complete, nothing is trained twice, the records stay as they were
    before = (out / 'metrics.jsonl').read_text()
    train_cli(argv(data, src, out))
    assert (out / 'metrics.jsonl').read_text() == before
    # --model baseline keeps the pretrained model dense
    dense = tmp_path / 'dense'
    train_cli(argv(data, src, dense, '--model', 'baseline', '--max-steps', '3'))
    assert type(AutoModelForCausalLM.from_pretrained(dense / 'best')).__name__ == 'LlamaForCausalLM'
    assert all(r['train_aux'] == 0 for r in read_metrics(dense) if 'train_aux' in r)

@pytest.mark.parametrize('extra, message', [
    (('--d-model', '32'), "--d-model does not apply with --init-from"),
    (('--init-from', '/nonexistent/model.gguf'), "does not exist"),
])
def test_init_from_errors(data, src, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e: train_cli(argv(data, src, tmp_path / 'run', *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith('hdpl_train: ') and message in err[0], err
    assert not (tmp_path / 'run').exists()
