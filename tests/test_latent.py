"""hdpl.latent: `steer` is exact when idle and acts inside cached `generate()` (every impl, hdpl's and HF-native models), in
training too; with impl='fast' only the edited layers leave the fused kernel; `capture_latents` changes no output and bounds
its memory; mistakes get clear errors. Small models only: the whole file runs in a few seconds on a CPU."""
import warnings
import pytest
import torch
import transformers
from hdpl.layer import IMPLS, HDPLFunction, HybridDualPathLinear
from hdpl.params import HDPLConfig
from hdpl.model import HDPLForCausalLM
from hdpl.hf import hdplify
from hdpl.latent import capture_latents, hdpl_layers, steer

def tiny(impl='fast', hybrid='surgical', seed=0):
    torch.manual_seed(seed)
    return HDPLForCausalLM(HDPLConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, rank=8,
                                      groups=4, impl=impl, hybrid=hybrid)).eval()

def tiny_llama(impl='fast'):
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=0))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')                     # R = 8 makes the tiny v projection larger than dense: expected here
        hdplify(m, 'surgical', rank=8, groups=4, impl=impl)
    return m.eval()

X = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))

def clean(m): return all('forward' not in l.__dict__ and not l.z_edits and not l._forward_pre_hooks
                         for l in hdpl_layers(m).values())

@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('family', ['hdpl', 'hf'])
@torch.no_grad()
def test_noop_exact(impl, family):
    m = tiny(impl) if family == 'hdpl' else tiny_llama(impl)
    run = (lambda: m(X).logits) if family == 'hdpl' else (lambda: m(input_ids=X).logits)
    y0 = run()
    with steer(m, {}): assert torch.equal(run(), y0)
    zero = {n: {'add': torch.zeros(8)} for n in hdpl_layers(m)}
    with steer(m, zero): y1 = run()
    if impl == 'fast': torch.testing.assert_close(y1, y0, rtol=0, atol=1e-5)     # edited layers leave the fused kernel
    else: assert torch.equal(y1, y0)
    with steer(m, {'model.layers.1.*': {'scale': 3.0}}): assert not torch.equal(run(), y0)
    assert torch.equal(run(), y0) and clean(m)

@torch.no_grad()
def test_edit_kinds_match_hand_written_layer():
    torch.manual_seed(0)
    lay = HybridDualPathLinear(32, 64, rank=8, groups=4, impl='fast').eval()
    net = torch.nn.Sequential(lay)
    x = torch.randn(3, 5, 32)
    mu, lv = lay.encode(x)
    assert mu.shape == lv.shape == (3, 5, 8)
    base = net(x)
    hand = lambda z: base - torch.nn.functional.silu(mu) @ lay.decoder_weight.T + torch.nn.functional.silu(z) @ lay.decoder_weight.T
    v = torch.randn(8)
    z = mu.clone(); z[..., [2, 5]] = 0.0
    for edit, want in [({'add': v}, mu + v), ({'scale': -1.0}, -mu), ({'clamp': (None, 0.0)}, mu.clamp(max=0)),
                       ({'set': 0.0, 'dims': [2, 5]}, z), ({'replace': lambda t: t * 0}, mu * 0), ({'replace': v}, v.expand_as(mu))]:
        with steer(net, {'0': edit}): torch.testing.assert_close(net(x), hand(want), rtol=0, atol=2e-5)

@pytest.mark.parametrize('impl', IMPLS)
def test_steer_inside_cached_generate(impl):
    prompt = torch.randint(0, 100, (1, 6), generator=torch.Generator().manual_seed(1))
    push = {'model.layers.*': {'add': 4 * torch.ones(8)}}
    m = tiny(impl)
    with steer(m, push):
        ours = m.generate(prompt, 8)
        idx = prompt
        with torch.no_grad():
            for _ in range(8): idx = torch.cat((idx, m(idx).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(ours, idx) and not torch.equal(ours, m.generate(prompt, 8))
    hf = tiny_llama(impl)
    kw = dict(max_new_tokens=8, do_sample=False)
    plain = hf.generate(prompt, **kw)
    with steer(hf, push): cached, uncached = hf.generate(prompt, **kw), hf.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached) and not torch.equal(cached, plain)
    with steer(hf, {}): assert torch.equal(hf.generate(prompt, **kw), plain)
    # the cached decode steps run through the edited layer too: the prompt once, then one token per step
    calls = []
    lay = hdpl_layers(hf)['model.layers.0.mlp.up_proj']
    h = lay.register_forward_pre_hook(lambda mod, a: calls.append(a[0].shape[-2]))
    with steer(hf, push): hf.generate(prompt, **kw)
    h.remove()
    assert calls[0] == 6 and set(calls[1:]) == {1} and len(calls) == 8 and clean(hf)

def test_errors():
    m = tiny()
    up = 'model.layers.0.mlp.up_proj'
    cases = [({'model.layers.0.mlp.down_proj': {'add': torch.zeros(8)}}, ValueError, 'unknown HDPL layer'),
             ({'nothing.*': {'add': torch.zeros(8)}}, ValueError, 'unknown HDPL layer'),
             ({up: {'add': torch.zeros(7)}}, ValueError, 'shape (8,), got shape (7,)'),
             ({up: {'scale': torch.ones(3), 'dims': [0, 1]}}, ValueError, 'shape (2,)'),
             ({up: {'shift': 1.0}}, ValueError, 'unknown edit'),
             ({up: {'add': torch.zeros(8), 'scale': 2.0}}, ValueError, 'exactly one of'),
             ({up: {'set': 0.0, 'dims': [-1]}}, ValueError, 'in [0, 8)'),
             ({up: {'replace': torch.zeros(8), 'dims': [0]}}, ValueError, "takes no 'dims'"),
             ({up: 'add'}, TypeError, 'is a dict such as')]
    for edits, exc, msg in cases:
        with pytest.raises(exc, match=None) as e, steer(m, edits): pass
        assert msg in str(e.value), (msg, str(e.value))
    with pytest.raises(TypeError): steer(m, [('a', 1)]).__enter__()
    with steer(m, {up: {'replace': lambda z: z[:, :3]}}):
        with pytest.raises(ValueError, match="z's shape"): m(X)
    with pytest.raises(ValueError, match='no HybridDualPathLinear'): hdpl_layers(tiny(hybrid=()))
    with pytest.raises(ValueError, match='encode expects'): hdpl_layers(m)[up].encode(torch.randn(2, 5))
    assert clean(m)

@torch.no_grad()
def test_capture_unchanged_and_bounded():
    for m, run in ((tiny(), lambda m: m(X).logits), (tiny_llama(), lambda m: m(input_ids=X).logits)):
        y0 = run(m)
        with capture_latents(m, max_tokens=12, stride=2, inputs=True) as cap:
            y1 = run(m); run(m)                                      # a second call: still 12 tokens per layer
        assert torch.equal(y0, y1) and clean(m)
        assert set(cap) == set(hdpl_layers(m))
        for n, r in cap.items():
            assert r['mu'].shape == r['logvar'].shape == (12, 8) and r['mu'].device.type == 'cpu' and r['mu'].dtype == torch.float32
            assert r['pos'].tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6] and r['seq'].tolist() == [0] * 8 + [1] * 4
            mu, lv = hdpl_layers(m)[n].encode(r['x'])
            torch.testing.assert_close(r['mu'], mu); torch.testing.assert_close(r['logvar'], lv)
    with capture_latents(m, 'model.layers.1.*', max_tokens=1000, logvar=False) as cap: run(m)
    assert len(cap) == 5 and all(r['mu'].shape == (32, 8) and 'logvar' not in r for r in cap.values())
    with pytest.raises(ValueError, match='stride must be a positive integer'): capture_latents(m, stride=0).__enter__()
    with pytest.raises(ValueError, match='unknown HDPL layer'): capture_latents(m, ['nope']).__enter__()

@torch.no_grad()
def test_fused_kernel_left_only_by_edited_layers(monkeypatch):
    "impl='fast': an edited layer runs the composed form (bitwise what impl='composed' gives), the others keep the fused kernel."
    calls = []
    fused = HDPLFunction.apply
    monkeypatch.setattr(HDPLFunction, 'apply', lambda *a: calls.append(1) or fused(*a))
    m, c = tiny('fast'), tiny('composed')
    n = len(hdpl_layers(m))
    m(X); assert len(calls) == n                                   # every layer through the fused kernel
    calls.clear()
    with steer(m, {}): m(X)
    assert len(calls) == n
    calls.clear()
    edit = {'model.layers.1.*': {'add': 2 * torch.ones(8)}}
    with steer(m, edit): m(X)
    assert len(calls) == n - len(hdpl_layers(m, 'model.layers.1.*'))   # only the unedited block-0 layers
    calls.clear()
    every = {'model.layers.*': {'scale': 0.5}}
    with steer(m, every), steer(c, every): assert torch.equal(m(X).logits, c(X).logits) and not calls
    assert clean(m) and clean(c)

@pytest.mark.parametrize('impl', IMPLS)
def test_steer_in_training(impl):
    "In training the edit acts on the sampled z and gradients flow through it; an edit that changes nothing changes no loss or gradient."
    m = tiny(impl).train()
    up = 'model.layers.1.mlp.up_proj'
    lay = hdpl_layers(m)[up]
    aux = []
    h = lay.register_forward_hook(lambda mod, a, o: aux.append(mod.aux_loss.item()))    # the model pops aux_loss after its forward
    def run(edits):
        m.zero_grad()
        with steer(m, edits):
            torch.manual_seed(3); out = m(X, X); out.loss.backward()
        return out.loss.item(), aux[-1], lay.encoder_weight.grad.clone()
    l1, a1, g1 = run({n: {'scale': 1.0} for n in hdpl_layers(m)})
    if impl != 'fast':                                             # the fused kernel draws its noise its own way
        l0, a0, g0 = run({})
        assert l1 == l0 and a1 == a0
        torch.testing.assert_close(g1, g0, rtol=0, atol=1e-6)
    l1, a1, g1 = run({up: {'scale': 1.0}})
    l2, a2, g2 = run({up: {'scale': 2.0}})
    assert l2 != l1 and not torch.equal(g2, g1)                    # the edit is in the graph: loss and encoder gradient change
    assert a2 == a1                                                # the KL term is of the unedited posterior
    h.remove()
    assert clean(m)
