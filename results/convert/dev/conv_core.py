import copy, dataclasses, json, math, time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
import torch, torch.nn as nn, torch.nn.functional as F
from tqdm.auto import tqdm
from hdpl.layer import HybridDualPathLinear
from hdpl.hf import HDPLSettings, PROJECTION_PATHS, decoder_layers, hdplify

#### math
def block_mask(out_features:int, in_features:int, groups:int) -> torch.Tensor:
    "Boolean `(out, in)` mask of the K diagonal blocks."
    r = torch.arange(out_features) // (out_features // groups); c = torch.arange(in_features) // (in_features // groups)
    return r[:, None] == c[None, :]

def _wnorm2(a:torch.Tensor, cov=None) -> torch.Tensor:
    "tr(a C aᵀ), or ||a||_F² without C."
    return (a * a).sum() if cov is None else ((a @ cov) * a).sum()

def block_energy(w:torch.Tensor, groups:int, cov=None) -> float:
    "Share of W's squared Frobenius norm (C-weighted: of E||Wx||² when `cov` = E[x xᵀ]) that lies on its K diagonal blocks."
    w = w.double(); cov = None if cov is None else cov.double()
    m = block_mask(*w.shape, groups).double()
    return float(_wnorm2(w * m, cov) / _wnorm2(w, cov))

def _blocks_of(w:torch.Tensor, groups:int) -> torch.Tensor:
    "W's diagonal blocks in HybridDualPathLinear's `block_weight` layout, `(out, in/K)`."
    o, i = w.shape; go, gi = o // groups, i // groups
    return torch.cat([w[g * go:(g + 1) * go, g * gi:(g + 1) * gi] for g in range(groups)])

def _dense_of(b:torch.Tensor, in_features:int, groups:int) -> torch.Tensor:
    o = b.shape[0]; go, gi = o // groups, in_features // groups
    w = b.new_zeros(o, in_features)
    for g in range(groups): w[g * go:(g + 1) * go, g * gi:(g + 1) * gi] = b[g * go:(g + 1) * go]
    return w

def _ls_blocks(m:torch.Tensor, groups:int, cov) -> torch.Tensor:
    "Block-diagonal B minimising tr((M - B) C (M - B)ᵀ): block g is M C[:, g] C[g, g]⁻¹."
    if cov is None: return _blocks_of(m, groups)
    o, i = m.shape; go, gi = o // groups, i // groups
    out = []
    for g in range(groups):
        r, c = slice(g * go, (g + 1) * go), slice(g * gi, (g + 1) * gi)
        out.append(torch.linalg.solve(cov[c, c], (m[r] @ cov[:, c]).T).T)
    return torch.cat(out)

def fit_structured(target:torch.Tensor, groups:int, rank:int, cov:Optional[torch.Tensor]=None, iters:int=4, damp:float=1e-4,
                   ls_blocks:bool=True) -> dict:
    "Blocks B and a rank-R product D E with B + D E ≈ `target`, minimising tr(err C errᵀ); E is whitened (E C Eᵀ = I)."
    w = target.double(); o, i = w.shape
    c = None
    if cov is not None:
        c = cov.double(); c = c + damp * c.diagonal().mean() * torch.eye(i, dtype=c.dtype)
    s = torch.linalg.cholesky(c) if c is not None else None
    blocks = _ls_blocks(w, groups, c) if ls_blocks else _blocks_of(w, groups)
    for it in range(max(1, iters if ls_blocks else 1)):
        res = w - _dense_of(blocks, i, groups)
        u, sv, vh = torch.linalg.svd(res @ s if s is not None else res, full_matrices=False)
        dec = u[:, :rank] * sv[:rank]
        enc = vh[:rank] if s is None else torch.linalg.solve_triangular(s.T, vh[:rank].T, upper=True).T
        if ls_blocks and it < iters - 1: blocks = _ls_blocks(w - dec @ enc, groups, c)
    err = w - _dense_of(blocks, i, groups) - dec @ enc
    return dict(blocks=blocks, dec=dec, enc=enc, rel_err=float((_wnorm2(err, c) / _wnorm2(w, c)).sqrt()))

def silu_slope(t:float) -> float:
    s = 1 / (1 + math.exp(-t)); return s * (1 + t * (1 - s))

@torch.no_grad()
def init_from_dense(layer:HybridDualPathLinear, weight:torch.Tensor, cov=None, bias=None, alpha:float=0.1, noise:float=0.01,
                    iters:int=4, damp:float=1e-4, ls_blocks:bool=True) -> dict:
    "Set `layer` (in place) so that, in eval, it computes ≈ x Wᵀ: closed-form blocks + whitened SVD, SiLU linearised around −α²/2."
    if tuple(weight.shape) != (layer.out_features, layer.in_features):
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit a layer {layer.in_features}→{layer.out_features}")
    if not 0 < alpha <= 1: raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    f = fit_structured(weight, layer.groups, layer.rank, cov, iters, damp, ls_blocks)
    R, b0 = layer.rank, -alpha ** 2 / 2
    cast = lambda t: t.to(layer.block_weight.dtype)
    layer.block_weight.copy_(cast(f['blocks']))
    layer.encoder_weight[:R].copy_(cast(alpha * f['enc'])); layer.encoder_bias[:R].fill_(b0)
    layer.encoder_weight[R:].zero_(); layer.encoder_bias[R:].fill_(2 * math.log(noise * alpha))
    layer.decoder_weight.copy_(cast(f['dec'] / (alpha * silu_slope(b0))))
    if layer.bias is not None: layer.bias.copy_(bias if bias is not None else torch.zeros_like(layer.bias))
    return dict(rel_err=f['rel_err'], block_energy=block_energy(weight.double(), layer.groups, cov))

#### running a Llama-family model block by block
class _Stop(Exception): pass

class BlockRunner:
    "Run a transformers Llama-family causal LM one decoder block at a time on fixed token windows (no cache, causal)."
    def __init__(self, model:nn.Module, ids:torch.Tensor, chunk:int=8):
        self.model, self.inner, self.blocks = model, model.model, decoder_layers(model)
        self.chunks = list(ids.split(chunk))
        pos = torch.arange(ids.shape[1])[None]
        with torch.no_grad():
            self.pos = pos; self.pe = self.inner.rotary_emb(self.inner.embed_tokens(self.chunks[0][:1]), position_ids=pos)
    @torch.no_grad()
    def embed(self) -> list: return [self.inner.embed_tokens(c) for c in self.chunks]
    def block(self, i:int, h:torch.Tensor, blocks=None) -> torch.Tensor:
        b = (blocks or self.blocks)[i]
        pe = tuple(t.expand(h.shape[0], *t.shape[1:]) for t in self.pe)
        out = b(h, attention_mask=None, position_ids=self.pos.expand(h.shape[0], -1), position_embeddings=pe)
        return out[0] if isinstance(out, tuple) else out
    @torch.no_grad()
    def logits(self, h:torch.Tensor) -> torch.Tensor: return self.model.lm_head(self.inner.norm(h))

@torch.no_grad()
def _inputs(runner:BlockRunner, blocks, i:int, hs:list, module_path:str) -> torch.Tensor:
    "The inputs `(tokens, d)` that the module at `module_path` of block i sees over every chunk (the block stops right there)."
    mod = blocks[i].get_submodule(module_path); got = []
    def hook(m, args): got.append(args[0].reshape(-1, args[0].shape[-1]).float()); raise _Stop
    hd = mod.register_forward_pre_hook(hook)
    try:
        for h in hs:
            try: runner.block(i, h, blocks)
            except _Stop: pass
    finally: hd.remove()
    return torch.cat(got)

#### the conversion of a model
INPUT_GROUPS = (('q', 'k', 'v'), ('o',), ('gate', 'up'), ('down',))   # projections of a block that read the same input
STAGES = ('paper', 'closed', 'refined')

@dataclass
class ConvertSettings:
    "How `convert` initialises the HDPL layers from the dense weights (`stage`), and the knobs of the closed form."
    stage: str = 'refined'      # 'paper' (ignore W), 'closed' (teacher statistics), 'refined' (fit layer by layer on the converted model's own inputs)
    alpha: float = 0.1          # encoder scale: SiLU's pre-activations stay near 0, where it is ≈ linear
    noise: float = 0.01         # initial sigma of z, relative to the whitened latent's unit scale
    iters: int = 4              # alternating rounds of least-squares blocks and the truncated SVD
    damp: float = 1e-4          # ridge on the input second moment, relative to its mean diagonal
    ls_blocks: bool = True      # activation-aware least-squares blocks (False: W's own diagonal blocks)
    permute: bool = False       # permute the MLP's hidden units (function-preserving) to raise the gate/up block energy
    refit_dense: bool = False   # 'refined': also refit the projections that stay dense (o, down) to the converted model's inputs
    chunk: int = 8              # calibration windows per forward call
    def __post_init__(self):
        if self.stage not in STAGES: raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not 0 < self.alpha <= 1: raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not self.noise > 0: raise ValueError(f"noise must be > 0, got {self.noise}")
        for k in ('iters', 'chunk'):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1: raise ValueError(f"{k} must be an integer >= 1, got {getattr(self, k)!r}")
        if not self.damp >= 0: raise ValueError(f"damp must be >= 0, got {self.damp}")

def _moment(a:torch.Tensor, b:torch.Tensor) -> torch.Tensor:
    "E[a bᵀ] over tokens (rows), in float64."
    return a.double().T @ b.double() / a.shape[0]

@torch.no_grad()
def mlp_permutation(gate:torch.Tensor, up:torch.Tensor, groups:int) -> torch.Tensor:
    "An order of the MLP's hidden units that puts each unit in the row block whose input block holds most of its gate+up energy (greedy, balanced)."
    d_ff, d = gate.shape
    e = (gate.double() ** 2 + up.double() ** 2).view(d_ff, groups, d // groups).sum(-1)     # (d_ff, K)
    cap, left, taken = d_ff // groups, [d_ff // groups] * groups, torch.zeros(d_ff, dtype=torch.bool)
    members = [[] for _ in range(groups)]
    for flat in e.flatten().argsort(descending=True).tolist():
        j, g = divmod(flat, groups)
        if taken[j] or not left[g]: continue
        taken[j] = True; left[g] -= 1; members[g].append(j)
    return torch.tensor([j for g in members for j in g])

@torch.no_grad()
def permute_mlp_(block:nn.Module, perm:torch.Tensor):
    "Reorder the hidden units of a Llama MLP in place: rows of gate and up, columns of down. The block's function is unchanged."
    mlp = block.mlp
    for lin in (mlp.gate_proj, mlp.up_proj):
        lin.weight.copy_(lin.weight[perm])
        if lin.bias is not None: lin.bias.copy_(lin.bias[perm])
    mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, perm])

def _hdplify_kwargs(s:HDPLSettings) -> dict:
    return {('hybrid' if k == 'projections' else k): v for k, v in dataclasses.asdict(s).items()}

MIN_CALIB_TOKENS = 1024

@torch.no_grad()
def convert(model:nn.Module, settings:HDPLSettings, calib_ids:Optional[torch.Tensor]=None, cs:Optional[ConvertSettings]=None,
            progress:bool=True) -> dict:
    "Make the dense Llama-family `model` an HDPL model in place (`hdplify` with `settings`), initialised as `cs.stage` says; what was done, per projection."
    cs = cs or ConvertSettings()
    if getattr(type(model), '_hdpl_base', None) is not None: raise ValueError(f"{type(model).__name__} is already an HDPL model: convert the dense model")
    if cs.stage != 'paper':
        if calib_ids is None: raise ValueError(f"stage {cs.stage!r} needs calibration token ids (calib_ids)")
        if calib_ids.dim() != 2 or calib_ids.numel() < MIN_CALIB_TOKENS:
            raise ValueError(f"calibration data too small: {tuple(calib_ids.shape)} token ids; give (windows, seq_len) with at least "
                             f"{MIN_CALIB_TOKENS:,} tokens (a few thousand or more: the fit estimates d×d input second moments)")
    t0, was = time.perf_counter(), model.training
    model.eval()
    info = dict(stage=cs.stage, settings=dataclasses.asdict(cs), projections=[], permuted=[])
    blocks = decoder_layers(model)
    if cs.permute and cs.stage != 'paper':
        for i in (range(len(blocks)) if settings.layers is None else settings.layers):
            if not {'gate', 'up'} & set(settings.projections): break
            mlp, K = blocks[i].mlp, settings.for_projection('gate' if 'gate' in settings.projections else 'up')['groups']
            before = block_energy(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), K)
            permute_mlp_(blocks[i], mlp_permutation(mlp.gate_proj.weight, mlp.up_proj.weight, K))
            info['permuted'].append(dict(layer=i, block_energy_before=before, block_energy_after=block_energy(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), K)))
    teacher = copy.deepcopy(model) if cs.stage != 'paper' else None
    report = hdplify(model, **_hdplify_kwargs(settings))
    info['report'] = report.summary()
    if cs.stage == 'paper': model.train(was); info['seconds'] = time.perf_counter() - t0; return info
    seq = cs.stage == 'refined'
    runner, todo = BlockRunner(teacher, calib_ids, cs.chunk), {(r.layer, r.name) for r in report}
    tblocks, sblocks = decoder_layers(teacher), decoder_layers(model)
    ht = runner.embed(); hs = [h.clone() for h in ht] if seq else None
    last = max(i for i, _ in todo)
    for i in tqdm(range(last + 1), desc=f'convert ({cs.stage})', disable=not progress, leave=False):
        for group in INPUT_GROUPS:
            names = [n for n in group if (i, n) in todo]
            refit = seq and cs.refit_dense and not names and group in (('o',), ('down',))
            if not names and not refit: continue
            path = PROJECTION_PATHS[group[0]]
            xt = _inputs(runner, tblocks, i, ht, path)
            if seq:
                xs = _inputs(runner, sblocks, i, hs, path)
                css, cts = _moment(xs, xs), _moment(xt, xs)
                ridge = cs.damp * css.diagonal().mean() * torch.eye(css.shape[0], dtype=css.dtype)
                m = torch.linalg.solve(css + ridge, cts.T).T          # W_eff = W E[x_t x_sᵀ] E[x_s x_sᵀ]⁻¹
            else: css, m = _moment(xt, xt), None
            for n in (names or group):
                dense = tblocks[i].get_submodule(PROJECTION_PATHS[n])
                w = dense.weight.double() if m is None else dense.weight.double() @ m
                if refit: sblocks[i].get_submodule(PROJECTION_PATHS[n]).weight.copy_(w.float()); continue
                r = init_from_dense(sblocks[i].get_submodule(PROJECTION_PATHS[n]), w, css, dense.bias, cs.alpha, cs.noise, cs.iters, cs.damp, cs.ls_blocks)
                info['projections'].append(dict(layer=i, name=n, **r))
        ht = [runner.block(i, h, tblocks) for h in ht]
        if seq: hs = [runner.block(i, h, sblocks) for h in hs]
    model.train(was); info['seconds'] = time.perf_counter() - t0
    return info

#### data: calibration and held-out windows
def _windows(tok, texts, n:int, seq_len:int, max_doc_tokens:int=4096) -> torch.Tensor:
    "`(n, seq_len)` token ids: the texts (each + EOS) concatenated in order and cut into windows; an error if they are too short."
    from hdpl.data import encode_documents
    need, flat = n * seq_len, []
    for k in range(0, len(texts), 64):
        for d in encode_documents(tok, texts[k:k + 64], max_doc_tokens): flat.extend(d)
        if len(flat) >= need: break
    if len(flat) < need: raise ValueError(f"the text gives {len(flat):,} tokens, fewer than the {need:,} asked for ({n} windows of {seq_len})")
    return torch.tensor(flat[:need]).view(n, seq_len)

HELD_OUT = ('fineweb-edu', 'enwiki', 'eltec', 'wikitext-2')

def held_out_texts(data) -> dict:
    "Held-out text of each domain in `../shared/data`: FineWeb-Edu (head sample, one document a line), enwiki part-1, the last 10 ELTeC novels, WikiText-2 test."
    import pyarrow.parquet as pq
    from hdpl.data import load_documents
    data = Path(data)
    fw = load_documents(str(data / 'fineweb-edu-sample-10BT' / 'head-1M-chars.txt'), txt_split='line')
    wt = load_documents(str(data / 'wikitext-2' / 'test.txt'), txt_split='wikitext')
    col = lambda p: pq.read_table(p, columns=['text']).column('text').to_pylist()
    return {'fineweb-edu': [d['text'] if isinstance(d, dict) else d for d in list(fw)[:400]],
            'enwiki': col(data / 'enwiki-2015' / 'part-1.parquet')[:400],
            'eltec': [t[:20_000] for t in col(data / 'eltec-eng' / 'novels.parquet')[-10:]],
            'wikitext-2': [d['text'] if isinstance(d, dict) else d for d in list(wt)[:200]]}

def calibration_texts(data) -> list:
    "Calibration and distillation text, disjoint from every held-out set: enwiki part-0 articles."
    import pyarrow.parquet as pq
    return pq.read_table(Path(data) / 'enwiki-2015' / 'part-0.parquet', columns=['text']).column('text').to_pylist()

@torch.no_grad()
def eval_ce(model:nn.Module, windows:torch.Tensor, batch_size:int=8) -> float:
    "Mean next-token cross-entropy (nats/token, float32) of a transformers causal LM on `(n, seq_len)` windows, in eval mode."
    was = model.training; model.eval(); tot = n = 0
    try:
        for w in windows.split(batch_size):
            lg = model(input_ids=w[:, :-1], use_cache=False).logits.float()
            tot += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), w[:, 1:].reshape(-1), reduction='sum').item(); n += w[:, 1:].numel()
    finally: model.train(was)
    return tot / n
