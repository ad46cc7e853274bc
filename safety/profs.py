"""ProFS: project a toxic subspace out of the MLP value weights (training-free).

Uppaal, Dey, Zhou, Yang & Du, "Model editing as a robust and denoised variant of DPO: a case study on
toxicity" (ICLR 2025; first circulated as "DeTox").

For each edited layer ℓ, in pure steps:

1. **Embed** (:func:`sentence_embeddings`): ``N`` pairs (a toxic sentence and its non-toxic
   rewrite) run through the *unedited* model; a sentence's embedding at layer ℓ is the mean over its
   tokens of the residual stream after block ℓ. ``X⁺`` (non-toxic) and ``X⁻`` (toxic), ``N x D``.
2. **Difference** (:func:`toxic_basis`): ``T = (X⁺ − X⁻) / 2``.
3. **Centre**: ``μ`` = the mean of the non-toxic embeddings; ``T ← T (I − μ̂μ̂ᵀ)`` removes the
   direction every sentence shares (stop words, general style), which otherwise dominates the
   differences because the two sides have different norms along it. ``centre=False`` is the
   paper's ablation ("without centring, perplexity explodes").
4. **Subspace**: the top ``rank`` right singular vectors of ``T``, ``Q`` (``D x k``).
5. **Project** (:func:`trustedit.bias.dama.projection_delta`): the MLP down ("value") projection
   of layer ℓ, ``W`` (``D x d_ff``), becomes ``(I − QQᵀ) W``, so that the layer's MLP no longer
   writes along the toxic subspace. Stored as the projection's factors (``B = −Q``, ``A = QᵀW``),
   as DAMA's, so the Patch is small and reverts bit-exactly.

The paper's defaults: 500 pairs, centring on, value weights of the upper layers (GPT-2 medium: 10-23
of 24, k = 2; Mistral-7B: 15-31 of 32, k = 10); here ``first_layer=0.42`` (a fraction of depth, 12
of SmolLM2's 30 layers), ``last_layer=-1`` (the top) and ``rank=2``.

Deviations from the reference code (github.com/Uppaal/detox-edit), each deliberate:

* **Pairs**: ParaDetox (a toxic comment and a crowd-written neutral rewrite), the data the issue
  names; the paper's pairs are GPT-2 generations with and without a PPLM toxic steer, not available
  offline. Both sides are detokenised and sentence-cased (``normalize_text``, as Ext-Sub's) so that
  the pairs differ by toxicity, not by typography.
* **Padding and the first position**: the reference averages hidden states over every position,
  padding included; we average over the sentence's own tokens only (the attention mask) and leave
  out its first position. That position is the attention sink (a BOS token, or the first word when
  the tokenizer adds none, as SmolLM2's): its state carries massive activations (SmolLM2 layer 20:
  dimension 507 at ~2,600 against a typical ~1), and its weight 1/length in the mean made sentence
  length, not toxicity, the top singular direction: projecting it out raised perplexity 20-fold.
* **Centring direction**: the paper projects out the mean ``μ`` of the non-toxic embeddings; the
  reference code uses the top right singular vector of the uncentred non-toxic matrix, which is
  nearly the same direction when the mean dominates. We follow the paper.
* **Seeded** pair sample (the reference draws with an unseeded ``np.random.choice``).

For an architecture with a norm after the MLP (Gemma's ``post_feedforward_layernorm``) the projection
acts on the MLP output before that norm, as the reference's does on the value weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, opt, sample_items, set_seed


@dataclass
class ProFSConfig(MethodConfig):
    first_layer: float = opt(0.42, "First edited layer: an index, or a fraction of depth in [0,1) (0.42 of 24 -> 10, the "
                                   "paper's GPT-2 medium range; 12 of SmolLM2's 30).", layer=True)
    last_layer: float = opt(-1, "Last edited layer, inclusive: an index (-1: the top layer) or a fraction of depth.", layer=True)
    rank: int = opt(2, "k, the dimension of the toxic subspace projected out of each layer (the paper: 2 for GPT-2, 10 for Mistral-7B).",
                    ge=1)
    pairs: int = opt(500, "Toxic / non-toxic sentence pairs (a seeded sample of ParaDetox, one rewrite per toxic sentence; the paper: 500).",
                     ge=2)
    centre: bool = opt(True, "Project the mean non-toxic embedding out of the differences before the SVD (the paper's centring; "
                             "false: the ablation).")
    centre_directions: int = opt(1, "Shared directions projected out when centring: 1 = the mean (the paper); n > 1 adds the top n − 1 "
                                    "principal directions of the non-toxic embeddings (on SmolLM2 the outlier dimensions of the "
                                    "residual stream otherwise dominate the differences; RESULTS §15).", ge=1)
    normalize_text: bool = opt(True, "Detokenise and sentence-case both sides of every pair (ParaDetox's toxic side ships lower-cased).")
    max_length: int = opt(128, "Tokens per sentence at most (the reference: 128).", ge=2)
    batch_size: int = opt(32, "Sentences per forward pass.", ge=1)


# ---- data ---------------------------------------------------------------------------------------


def training_pairs(n: int, seed: int, normalize: bool = True) -> tuple[list[str], list[str], dict]:
    """``(toxic, non_toxic, provenance)``: ``n`` ParaDetox pairs, a seeded sample of the toxic
    sentences, each with its first neutral rewrite."""
    from trustedit.data.toxicity import load_paradetox, normalize_text

    data = load_paradetox()
    first = {}
    for p in data:
        first.setdefault(p.toxic, p.neutral)
    pairs = sample_items(sorted(first.items()), n, seed)
    tox, clean = [t for t, _ in pairs], [c for _, c in pairs]
    if normalize:
        tox, clean = [normalize_text(t) for t in tox], [normalize_text(c) for c in clean]
    prov = {"paradetox": data.fingerprint, "toxic_sentences_available": len(first), "pairs": len(pairs),
            "normalized": normalize, "rule": "seeded sample of toxic sentences, each with its first neutral rewrite"}
    return tox, clean, prov


@dataclass
class ProFSTrain:
    """ProFS's training pairs: ``toxic[i]`` and ``non_toxic[i]`` say the same thing."""

    toxic: list
    non_toxic: list

    def describe(self) -> dict:
        return {"name": "toxic / non-toxic sentence pairs", "pairs": len(self.toxic)}


# ---- step 1: sentence embeddings --------------------------------------------------------------------


def sentence_embeddings(lm, texts, layers, max_length: int = 128, batch_size: int = 32, desc: str = "profs: embed",
                        first_position: bool = False):
    """``{layer: (N, D)}``: each text's mean residual stream after block ``layer`` over its own
    tokens (no padding; the first position, the attention sink, only with ``first_position``, as
    the reference code), fp32 on the CPU."""
    import torch
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.hooks import capture
    from trustedit.prompts import PromptFormat, pad_right

    model, tok = lm.model, lm.tokenizer
    fmt = PromptFormat(chat=False, plain_template="{question}")
    seqs = [fmt.prompt_ids(tok, t)[:max_length] for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    names = {L: arch.layer_path(model, L, "").rstrip(".") for L in layers}
    out = {L: [] for L in layers}
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    rows = [None] * len(seqs)
    with torch.inference_mode(), capture(model, list(names.values())) as store:
        for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[s: s + batch_size]
            ids, mask = pad_right([seqs[i] for i in idx], pad)
            keep = mask.clone().float()
            for r, i in enumerate(idx):
                if len(seqs[i]) > 1 and not first_position:  # the first position (BOS, or the first word): the sink
                    keep[r, 0] = 0.0
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            w = (keep / keep.sum(1, keepdim=True).clamp_min(1.0))[..., None]
            for L, n in names.items():
                h = store[n].pop().float().cpu()
                out[L].append((h * w).sum(1))
            for r, i in enumerate(idx):
                rows[i] = (s // batch_size, r)
    # back to the texts' order
    res = {}
    for L in layers:
        batches = out[L]
        res[L] = torch.stack([batches[b][r] for b, r in rows])
    return res


# ---- step 2-4: the toxic subspace -----------------------------------------------------------------


def shared_directions(X_clean, n: int = 1):
    """Orthonormal ``(D, n)``: the mean direction of the non-toxic embeddings, then the top ``n − 1``
    principal directions of their variation (what every sentence shares, not what makes it toxic)."""
    import torch

    Xc = X_clean.double()
    mu = Xc.mean(0)
    cols = [mu / mu.norm().clamp_min(1e-30)]
    if n > 1:
        _, _, Vh = torch.linalg.svd(Xc - Xc.mean(0), full_matrices=False)
        cols += [Vh[i] for i in range(min(n - 1, Vh.shape[0]))]
    Q, _ = torch.linalg.qr(torch.stack(cols, 1))
    return Q


def toxic_basis(X_toxic, X_clean, rank: int, centre: bool = True, centre_directions: int = 1):
    """``(Q, record)``: ``Q`` (D, k) orthonormal, the top right singular vectors of the (centred)
    half-differences ``(X_clean − X_toxic) / 2``; ``record`` has the singular values and the share
    of the differences' energy that ``Q`` spans. Centring projects :func:`shared_directions` out of
    the differences (``centre_directions`` = 1: the paper's mean direction)."""
    import torch

    Xc, Xt = X_clean.double(), X_toxic.double()
    T = (Xc - Xt) / 2
    rec = {"centred": bool(centre)}
    if centre:
        S = shared_directions(Xc, centre_directions)
        rec["mean_direction_share"] = float((T @ S[:, 0]).norm() ** 2 / (T.norm() ** 2).clamp_min(1e-30))
        rec["centre_directions"] = S.shape[1]
        T = T - (T @ S) @ S.t()
    _, S, Vh = torch.linalg.svd(T, full_matrices=False)
    k = min(int(rank), Vh.shape[0])
    Q = Vh[:k].t().float().contiguous()
    total = float((S ** 2).sum())
    rec.update({"rank": k, "singular_values": [round(float(x), 4) for x in S[: k + 3]],
                "energy_share": round(float((S[:k] ** 2).sum()) / total, 4) if total > 0 else 0.0})
    return Q, rec


def direction_tokens(lm, q, n: int = 6) -> dict:
    """The tokens whose output embeddings align most with ``q`` and with ``-q`` (a singular vector's
    sign is arbitrary), as the paper reads its subspaces."""
    import torch

    E = lm.model.get_output_embeddings().weight.detach().float()
    s = E @ q.to(E.device, torch.float32)
    dec = lambda ids: [lm.tokenizer.decode([int(i)]).strip() for i in ids]  # noqa: E731
    return {"+": dec(s.topk(n).indices), "-": dec((-s).topk(n).indices)}


# ---- the method -----------------------------------------------------------------------------------


def _pairs_for(data, cfg: ProFSConfig):
    if data is None:
        return training_pairs(cfg.pairs, cfg.seed, cfg.normalize_text)
    if isinstance(data, ProFSTrain):
        tox, clean = list(data.toxic), list(data.non_toxic)
    else:
        tox, clean = (list(x) for x in data)
    from trustedit.errors import UsageError

    if len(tox) != len(clean) or len(tox) < 2:
        raise UsageError(f"ProFS needs two or more (toxic, non-toxic) pairs of equal count, got {len(tox)} and {len(clean)}")
    pairs = sample_items(list(zip(tox, clean)), cfg.pairs, cfg.seed)
    return [t for t, _ in pairs], [c for _, c in pairs], {"pairs": len(pairs), "given": len(tox)}


def _embed(lm, cfg, layers, timer, data):
    from trustedit.bias.dama import _Timer

    timer = timer or _Timer()
    tox, clean, prov = _pairs_for(data, cfg)
    with timer("embed"):
        Xt = sentence_embeddings(lm, tox, layers, cfg.max_length, cfg.batch_size, "profs: embed toxic")
        Xc = sentence_embeddings(lm, clean, layers, cfg.max_length, cfg.batch_size, "profs: embed non-toxic")
    return Xt, Xc, prov


def project(lm, Xt, Xc, cfg: ProFSConfig, layers, timer=None):
    """Steps 2-5 for each layer: ``(deltas, per_layer)``."""
    from trustedit import arch
    from trustedit.bias.dama import _Timer, projection_delta

    timer = timer or _Timer()
    model = lm.model
    spec = arch.arch_for(model)
    params = dict(model.named_parameters())
    deltas, per_layer = {}, {}
    for L in layers:
        with timer("project"):
            Q, rec = toxic_basis(Xt[L], Xc[L], cfg.rank, cfg.centre, cfg.centre_directions)
            name = arch.layer_path(model, L, spec.down) + ".weight"
            deltas[name] = projection_delta(params[name], Q, spec.conv1d)
        rec["tokens"] = direction_tokens(lm, Q[:, 0])
        rec["top_dimensions"] = [int(i) for i in Q[:, 0].abs().topk(min(3, Q.shape[0])).indices]
        per_layer[str(L)] = rec
    return deltas, per_layer


def _patch(lm, cfg, layers, deltas, per_layer, prov, seconds, t_total):
    from trustedit.patch import Patch

    patch = Patch("profs", deltas)
    patch.manifest["training"] = {"layers": list(layers), "rank": cfg.rank, "centre": cfg.centre, "data": prov,
                                  "per_layer": per_layer, "timings_s": seconds, "seconds": round(t_total, 2)}
    return patch


def _layers(lm, cfg):
    from trustedit import arch
    from trustedit.bias.dama import resolve_layers

    return resolve_layers(cfg.first_layer, cfg.last_layer, arch.num_layers(lm.model))


def fit(lm, data=None, cfg: ProFSConfig | None = None, stages=None):
    """Fit ProFS on ``data`` (None: ParaDetox; a :class:`ProFSTrain` or ``(toxic, non_toxic)``)."""
    from trustedit.bias.dama import _Timer

    cfg = cfg or ProFSConfig()
    set_seed(cfg.seed)
    t0 = time.time()
    timer = _Timer(stages, "profs/")
    layers = _layers(lm, cfg)
    was = lm.model.training
    lm.model.eval()
    try:
        Xt, Xc, prov = _embed(lm, cfg, layers, timer, data)
        deltas, per_layer = project(lm, Xt, Xc, cfg, layers, timer)
    finally:
        lm.model.train(was)
    return _patch(lm, cfg, layers, deltas, per_layer, prov, timer.seconds, time.time() - t0)


SWEEPABLE = ("first_layer", "last_layer", "rank", "centre", "centre_directions")


def fit_sweep(lm, data, cfgs, stages=None):
    """One patch per config; configs that differ only in :data:`SWEEPABLE` share one embedding
    pass (every layer of every config). Each patch equals ``fit(lm, data, cfg)``."""
    from trustedit.bias.dama import _Timer
    from trustedit.methods.base import differ_beyond

    cfgs = list(cfgs)
    if differ_beyond(cfgs, SWEEPABLE):
        for c in cfgs:
            yield fit(lm, data, c, stages)
        return
    set_seed(cfgs[0].seed)
    grid = [_layers(lm, c) for c in cfgs]
    union = sorted({L for g in grid for L in g})
    timer = _Timer(stages, "profs/")
    t0 = time.time()
    was = lm.model.training
    lm.model.eval()
    try:
        Xt, Xc, prov = _embed(lm, cfgs[0], union, timer, data)
    finally:
        lm.model.train(was)
    shared = time.time() - t0
    for c, layers in zip(cfgs, grid):
        t1 = time.time()
        step = _Timer(stages, "profs/")
        deltas, per_layer = project(lm, Xt, Xc, c, layers, step)
        yield _patch(lm, c, layers, deltas, per_layer, prov, {**timer.seconds, **step.seconds}, shared + time.time() - t1)


def budget_grid(cfg: ProFSConfig) -> list[tuple[str, dict]]:
    """Strengths a fluency budget chooses from (``--max-ppl-increase``): the rank k, the first edited
    layer and the shared directions removed by centring (1: the paper's; 2: also the top principal
    direction, which keeps the residual stream's outlier dimensions out of the subspace)."""
    out = []
    for c in (1, 2):
        for first in (0.42, 0.66):
            for k in (2, 1):
                out.append((f"k={k} layers={first}:top centre={c}", {"rank": k, "first_layer": first, "centre_directions": c}))
    return out


CITATION = ("Uppaal et al. 2025, Model editing as a robust and denoised variant of DPO: a case study on toxicity "
            "(ICLR 2025)")

METHOD = Method(
    name="profs",
    config=ProFSConfig,
    fit=fit,  # fit(lm, data=None, cfg, stages=None) -> Patch
    citation=CITATION,
    summary="project a toxic subspace (centred SVD of toxic/non-toxic pair embeddings) out of the upper MLP value weights",
    fit_sweep=fit_sweep,
    budget_grid=budget_grid,
)
