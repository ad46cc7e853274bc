"""REVS: unlearn memorised secrets by demoting their rarest tokens in the vocabulary projection of
a few MLP neurons (training-free, no gradients).

Ashuach, Tutek & Belinkov, "REVS: Unlearning Sensitive Information in Language Models via Rank
Editing in the Vocabulary Space" (Findings of ACL 2025; arXiv 2406.09325). Written from the paper's
description of the method (abstract, project page, README; Section 3, "Method": target-token
selection, localisation of layers and neurons, neuron editing) and the reference code
(github.com/technion-cs-nlp/REVS, mirrored as Tomertech/REVS), read for the defaults, not copied.

Notation: ``U`` is the unembedding seen from the residual stream (below), ``rank_t(x)`` the number
of tokens whose logit in ``U x`` is strictly higher than token ``t``'s (0 = top), ``V`` the
vocabulary size (the privacy suite's logit-lens attack counts from 1 instead). A neuron ``i`` of
layer ℓ is the ``i``-th column ``v_i`` of the MLP down projection (FF₂), the vector it writes into
the residual stream, scaled by its activation ``a_i``.

For each target secret, in pure steps:

1. **Target tokens** (:func:`target_tokens`; the paper's "rarest tokens" of the sequence): the
   ``tokens_per_secret`` secret tokens that are rarest in the fine-tuning corpus (``token_counts``),
   each token id once; recovering the secret needs every token, so demoting the rarest few is
   enough (the paper: 2). Token ``j`` of the secret is predicted at position ``len(prompt)+j−1``.
2. **Layer selection** (:func:`select_layers`; localisation): one forward pass; at the predicting
   position, the logit lens of every layer's residual stream (final norm, then the unembedding) and
   the vocabulary projection of its MLP output give the target's rank. Layers whose residual ranks
   the target within the top ``layer_rank`` of the vocabulary and whose MLP output ranks it within
   the top ``mlp_rank_max`` (the MLP promotes it) are edited, bottom-up; with ``max_layers`` only the
   layers whose MLP promotes it most. Before each layer's edit the states are recomputed (earlier
   edits change them) and a layer that no longer qualifies is skipped.
3. **Neuron selection** (:func:`select_neurons`; the paper's hybrid): the ``candidates`` neurons
   with the strongest activation ``|a_i|`` at the position, then among them the ``neurons`` whose
   vocabulary projection ranks the target highest (ties: stronger activation first). A neuron is
   projected as it writes at this position, ``sign(a_i)·v_i``.
4. **Neuron edit** (:func:`edit_neuron`; rank editing in the vocabulary space): project ``v_i`` to
   the vocabulary, lower the target's logit until its rank is ``neuron_rank`` (a fraction of ``V``),
   and map the change back with the pseudo-inverse: ``v_i' = v_i − sign(a_i)·δ_i U⁺e_t``. The step
   ``δ_i`` is the smallest (:func:`demotion_steps`: doubling, then bisection; ``max_iter``
   evaluations) that puts at least ``neuron_rank·V`` tokens above the target; every other logit
   moves by ``−δ_i (U U⁺)_{jt}``, the least-squares projection of that one-logit change onto what a
   hidden vector can express. All neurons edited for one token move along the same ``U⁺e_t``, so a
   layer's edit for one target token is of rank one.
5. **How many neurons**: the selected neurons are edited strongest-promoter first; the layer
   takes the fewest (binary search over the count) after which both its MLP output and its residual
   stream rank the target at ``layer_rank·V`` or lower (all selected if none suffices), the
   reference code's stopping rule without its upper margins (the fewest neurons is the smallest edit).
   The edit is applied before the next layer and the next secret are processed.

:func:`fit` returns a :class:`~trustedit.patch.Patch` of dense fp32 deltas on the edited
down-projection weights (nothing else is touched: the unembedding, often tied to the input
embedding as in SmolLM2, is only read) and leaves the model as it found it, bit for bit.

**Which projection.** The residual stream is read with the full logit lens (the final norm, then
the LM head), as the privacy suite's logit-lens attack reads it. A component (an MLP output, a
neuron) is projected with the final norm's *linear part* at frozen scale, ``U = W_U · J`` where
``J x = norm(x) − norm(0)`` up to the normalising scalar (obtained by running the norm on the
identity, so Gemma's ``1 + w`` scale is handled): for RMSNorm ``J = diag(γ)``, for LayerNorm
``J = diag(γ)(I − 11ᵀ/d)``. For RMSNorm models (Llama, SmolLM2) this orders tokens exactly as the
reference's ``lm_head(norm(v))`` on a single neuron does; for LayerNorm (GPT-2) it leaves out the
norm's bias ``β``, which belongs to the whole residual, not to one neuron. Being linear, it makes
the pseudo-inverse back-projection exact (``U⁺U`` is the identity on the row space), where the
reference undoes a norm it linearised by hand.

Deviations from the reference code, each deliberate:

* **Rarity from corpus counts.** The reference ranks a secret's tokens by (re-encoded) token id,
  a proxy for BPE merge order; we count tokens in the fine-tuning corpus (``token_counts``; a
  token missing from it counts 0, the rarest). Without counts every token counts the same and the
  earliest tokens of the secret are chosen (greedy extraction needs them first; the reference's
  ``first`` option). A token id is targeted once per secret (its neurons are edited for every
  position at once), so a secret of repeated digits still gets distinct tokens.
* **Ranks as fractions of the vocabulary.** The reference's demo (GPT-J, ``V`` = 50,400) edits a
  layer while its residual ranks the target above 1,000, stops when residual and MLP output rank
  it at 1,000 or below, skips layers whose MLP ranks it below 45,000, and pushes each neuron's
  target to 30,000-45,000; here 0.02, 0.9 and 0.6 of ``V`` (983, 44,237 and 29,491 of SmolLM2's
  49,152), so that tiny test vocabularies work too.
* **Exact step search.** The reference multiplies a logit offset by 1.3 (or 0.8) until the rank
  lands in a band; we find the smallest step reaching the target rank by doubling and bisection
  (no band needed), and grow the number of edited neurons by binary search instead of its ×1.6 /
  ×0.8 / ±1 schedule starting at 5.
* **Activation strength is a magnitude.** The reference takes the top-k activations by signed value
  and projects ``v_i`` itself. In a gated MLP (Llama, SmolLM2: ``silu(gate)·up``, and ``up`` has
  either sign) half of the strongly active neurons have negative activations and write ``−v_i``;
  we rank candidates by ``|a_i|``, project ``sign(a_i)·v_i`` and edit it (for GELU models, as GPT-J,
  the strong activations are positive and nothing changes). On a tiny Llama that memorised four
  secrets, the signed version lowered the secrets' probability from 0.97 to 0.53-0.87, the
  positive-only one to 0.94-0.97.
* **Selection as a cap.** The reference walks every layer; ``max_layers`` (0: no cap, the
  reference) optionally keeps the layers whose MLP output ranks the target highest.

Known problems in the reference code, not reproduced: the RMSNorm "inverse" used to map edited
logits back (``invert_llama_layer_norm``) multiplies by the neuron's standard deviation and adds
its mean, though RMSNorm neither centres nor divides by the standard deviation (a per-neuron affine
distortion of every edited Llama neuron); its LayerNorm inverse uses the unbiased variance where
LayerNorm divides by the biased one; ``restore_layer_edit`` hard-codes GPT-J's ``fc_out`` (restoring
fails on Llama); the knowledge-neuron scorer and an error path refer to an undefined global
``model``; the rank score's ``round(min(1, (V − rank) / threshold, 3))`` has a misplaced parenthesis
(the ``3`` becomes an argument of ``min``, so the score is rounded to 0 or 1).

For an architecture with a norm after the MLP (Gemma's ``post_feedforward_layernorm``) the edit acts
on the down projection's output before that norm, and the planned residual change (step 5) is an
approximation there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.errors import UsageError
from trustedit.methods.base import Method, MethodConfig, opt, set_seed


@dataclass
class REVSConfig(MethodConfig):
    tokens_per_secret: int = opt(2, "Target tokens per secret: its rarest tokens in the fine-tuning corpus, each token "
                                    "id once (the paper: 2; 0: every distinct token of the secret).", ge=0)
    layer_rank: float = opt(0.02, "Layer selection and goal, a fraction of the vocabulary: a layer is edited while the "
                                  "logit lens of its residual stream ranks the target within this top share, until "
                                  "its residual and MLP output rank it at or below it (adapted: the reference demo's "
                                  "1,000 of GPT-J's 50,400 tokens).", gt=0, lt=1)
    mlp_rank_max: float = opt(0.9, "Layers whose MLP output ranks the target below this share of the vocabulary are "
                                   "not edited (the MLP does not promote it; adapted: the demo's 45,000 of 50,400).",
                              gt=0, le=1)
    max_layers: int = opt(0, "Edit at most this many layers per target token: those whose MLP output ranks it highest "
                             "(0: every qualifying layer, as the reference walks all layers).", ge=0)
    candidates: int = opt(100, "Neuron selection, first stage: the neurons with the strongest activation |a| at the "
                               "predicting position (the reference's act_filter=top_100, of GPT-J's 16,384 neurons; "
                               "kept, of SmolLM2's 1,536).", ge=1)
    neurons: int = opt(30, "Neuron selection, second stage: of the candidates, at most this many whose vocabulary "
                           "projection ranks the target highest are edited per layer (the reference demo: 30).", ge=1)
    neuron_rank: float = opt(0.6, "The rank each edited neuron's vocabulary projection gives the target afterwards, a "
                                  "fraction of the vocabulary (adapted: the demo's 30,000 of 50,400).", gt=0, lt=1)
    max_iter: int = opt(100, "Evaluations of the target's rank when searching one neuron's step (doubling, then "
                             "bisection; the reference: 100 iterations).", ge=2)
    batch_size: int = opt(1, "Not used: REVS runs one forward pass per target token (and one more after each "
                             "edited layer).", ge=1)

    def __post_init__(self):
        super().__post_init__()
        if self.neurons > self.candidates:
            raise UsageError(f"REVSConfig option 'neurons' ({self.neurons}) must be at most 'candidates' "
                             f"({self.candidates}): the edited neurons are chosen among the candidates")
        if self.layer_rank >= self.neuron_rank:
            raise UsageError(f"REVSConfig option 'layer_rank' ({self.layer_rank}) must be below 'neuron_rank' "
                             f"({self.neuron_rank}): neurons are pushed further down than the layer's goal")


# ---- ranks and projections --------------------------------------------------------------------------


def token_rank(logits, token: int):
    """Number of entries of ``logits`` (last dimension) strictly above ``token``'s: 0 is the top."""
    return (logits > logits[..., token: token + 1]).sum(-1)


def unembedding(model):
    """``(U, lens)``: ``U`` (V x d, fp32) projects a component written into the residual stream to
    the vocabulary (the LM head times the final norm's linear part at frozen scale; see the module
    docstring); ``lens(h)`` is the full logit lens of residual states ``h`` (..., d), fp32."""
    import torch

    from trustedit import arch

    spec = arch.arch_for(model)
    norm, head = arch.get_module(model, spec.final_norm), arch.get_module(model, spec.lm_head)
    W = head.weight.detach()
    d = W.shape[1]
    p = next(norm.parameters(), None)
    dtype = p.dtype if p is not None else W.dtype
    with torch.no_grad():
        probe = torch.cat([torch.eye(d, device=W.device, dtype=dtype), torch.zeros(1, d, device=W.device, dtype=dtype)])
        out = norm(probe).float()
        J = out[:d] - out[d:]  # row i: the image of e_i (diag(γ)·s for RMSNorm; centred for LayerNorm)
        U = W.float() @ J.t()

    def lens(h):
        with torch.no_grad():
            return head(norm(h.to(W.dtype))).float()

    return U, lens


def gram_pinv(U, chunk: int = 8192):
    """``(UᵀU)⁺`` (d x d, fp64), from which ``U⁺ = (UᵀU)⁺Uᵀ``; the Gram matrix accumulated in fp64
    over row chunks. Singular directions (LayerNorm's centring) are cut at 1e-8 of the largest."""
    import torch

    d = U.shape[1]
    G = torch.zeros(d, d, dtype=torch.float64, device=U.device)
    for s in range(0, U.shape[0], chunk):
        b = U[s: s + chunk].double()
        G += b.t() @ b
    return torch.linalg.pinv(G, rtol=1e-8, hermitian=True)


def pinv_direction(U, token: int, gram=None):
    """``U⁺e_t`` (d, U's dtype): the hidden-space change that lowers token ``t``'s logit by 1 in the
    least-squares sense. ``gram``: :func:`gram_pinv` of ``U``, when already computed."""
    G = gram_pinv(U) if gram is None else gram
    return (G @ U[token].double().to(G.device)).to(U.dtype)


def demotion_steps(Z, q, token: int, target_rank: int, max_iter: int = 100):
    """For each row ``z`` of ``Z`` (n x V logits), the smallest ``δ ≥ 0`` with
    ``rank_t(z − δq) ≥ target_rank`` (``q``: the logit change of a unit step), fp64, all rows at
    once: doubling from a step that lowers ``t`` by the row's whole logit range, then bisection to
    1e-4, at most ``max_iter`` rank evaluations; a 0.1 % margin keeps the rank when the logits are
    recomputed in fp32. 0 where the rank is already reached (or ``q_t ≤ 0``); where ``target_rank``
    is out of reach, the step with the best rank seen. An fp32 tensor of n steps."""
    import torch

    Z, q = Z.double(), q.double().to(Z.device)

    def ranks(steps):
        S = Z - steps[:, None] * q[None, :]
        return (S > S[:, token: token + 1]).sum(1)

    zero = torch.zeros(Z.shape[0], dtype=torch.float64, device=Z.device)
    active = ranks(zero) < target_rank
    if float(q[token]) <= 0 or not bool(active.any()):
        return zero.float().cpu()
    lo = zero.clone()  # rank(lo) < target_rank
    hi = (Z.max(1).values - Z.min(1).values).clamp_min(1e-12) / q[token]
    r = ranks(hi)
    best_r, best = r.clone(), hi.clone()
    n = 1
    while n < max_iter:
        need = active & (r < target_rank)
        if not bool(need.any()):
            break
        lo, hi = torch.where(need, hi, lo), torch.where(need, hi * 2, hi)
        r, n = ranks(hi), n + 1
        better = r > best_r
        best_r, best = torch.where(better, r, best_r), torch.where(better, hi, best)
    reached = r >= target_rank
    while n < max_iter:
        open_ = active & reached & (hi - lo > 1e-4 * hi)
        if not bool(open_.any()):
            break
        mid = (lo + hi) / 2
        ok = ranks(mid) >= target_rank
        hi, lo = torch.where(open_ & ok, mid, hi), torch.where(open_ & ~ok, mid, lo)
        n += 1
    out = torch.where(reached, hi * 1.001, best)
    return torch.where(active, out, zero).float().cpu()


def edit_neuron(v, U, token: int, target_rank: int, *, direction=None, max_iter: int = 100):
    """The neuron vector ``v`` (d) edited so that its vocabulary projection ``U v'`` ranks ``token``
    at ``target_rank`` or lower: ``v' = v − δ U⁺e_t`` with the smallest such ``δ``
    (:func:`demotion_steps`). ``direction``: ``U⁺e_t``, when already computed."""
    g = pinv_direction(U, token) if direction is None else direction
    step = float(demotion_steps((U @ v.float())[None], U @ g.float(), token, target_rank, max_iter)[0])
    new = v - (step * g.float()).to(v.dtype)
    for _ in range(20):  # the margin was not enough after rounding (very rare): a little further
        if step == 0.0 or int(token_rank(U @ new.float(), token)) >= target_rank:
            break
        step *= 1.01
        new = v - (step * g.float()).to(v.dtype)
    return new


# ---- steps 1-3: what to edit ------------------------------------------------------------------------


def target_tokens(secret_ids, token_counts, k: int) -> list[int]:
    """Positions (indices into ``secret_ids``, ascending) of the ``k`` rarest tokens of the secret,
    each token id once (its first occurrence); rarity: the count in ``token_counts`` (a missing
    token counts 0), ties and ``token_counts=None`` by position. ``k=0``: every distinct token."""
    first = {}
    for j, t in enumerate(secret_ids):
        first.setdefault(int(t), j)
    rarity = (lambda t: token_counts.get(t, 0)) if token_counts is not None else (lambda t: 0)
    order = sorted(first.items(), key=lambda kv: (rarity(kv[0]), kv[1]))
    chosen = order if not k else order[:k]
    return sorted(j for _, j in chosen)


def select_layers(resid_ranks, mlp_ranks, goal: int, mlp_max: int, max_layers: int = 0) -> list[int]:
    """Layers (ascending) whose residual ranks the target above ``goal`` (``rank < goal``) and whose
    MLP output ranks it above ``mlp_max``; with ``max_layers`` only those with the best MLP ranks."""
    layers = [L for L, (r, m) in enumerate(zip(resid_ranks, mlp_ranks)) if int(r) < goal and int(m) < mlp_max]
    if max_layers and len(layers) > max_layers:
        layers = sorted(sorted(layers, key=lambda L: (int(mlp_ranks[L]), L))[:max_layers])
    return layers


def select_neurons(acts, cols, U, token: int, n_candidates: int, n_neurons: int, with_logits: bool = False):
    """``(indices, ranks)``, best first: of the ``n_candidates`` neurons with the strongest
    activation ``|a_i|`` in ``acts`` (d_ff), the ``n_neurons`` whose vocabulary projection
    (``U sign(a_i) v_i``, ``v_i`` their row of ``cols``, d_ff x d) ranks ``token`` highest; ties go
    to the stronger activation. ``with_logits``: also those projections (n x V), for the edit."""
    import torch

    live = (acts != 0).nonzero().flatten()
    if live.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return (empty, empty, torch.zeros(0, U.shape[0])) if with_logits else (empty, empty)
    top = live[acts[live].abs().topk(min(n_candidates, live.numel())).indices]  # |activation|, descending
    written = cols[top].float() * torch.sign(acts[top]).float()[:, None]  # what each neuron writes, up to |a_i|
    logits = written @ U.t()
    ranks = token_rank(logits, token)
    order = torch.sort(ranks, stable=True).indices[:n_neurons]
    out = (top[order].cpu(), ranks[order].cpu())
    return out + (logits[order],) if with_logits else out


# ---- the method -------------------------------------------------------------------------------------


def _states(model, ids, names, device):
    """At the last position of ``ids``: per layer, the down projection's input (activations) and
    output (MLP output) and the layer's output (residual), fp32, as three (L, ·) tensors."""
    import torch

    from trustedit.hooks import capture

    x = torch.tensor([ids], device=device)
    with torch.no_grad(), capture(model, names["down"], what="input") as a, \
            capture(model, names["down"], what="output") as m, capture(model, names["layer"]) as r:
        model(input_ids=x, use_cache=False)
    pick = lambda store, ns: torch.stack([store[n][-1][0, -1].float() for n in ns])  # noqa: E731
    return pick(a, names["down"]), pick(m, names["down"]), pick(r, names["layer"])


def _columns(W, conv1d: bool):
    """The neuron vectors of a down projection as rows (d_ff x d), a view."""
    return W if conv1d else W.t()


class _Editor:
    """Applies REVS edits to the model while fitting, keeping the originals and the fp32 deltas."""

    def __init__(self, model, spec):
        self.model, self.spec = model, spec
        self.params = dict(model.named_parameters())
        self.backup, self.delta = {}, {}

    def weight(self, name):
        return self.params[name]

    def add(self, name, idx, steps, g):
        """Neuron ``idx[i]`` of ``name`` moves by ``−steps[i]·g``."""
        import torch

        p = self.params[name]
        if name not in self.backup:
            self.backup[name] = p.detach().clone()
            self.delta[name] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
        upd = -steps.to(p.device)[:, None] * g.to(p.device, torch.float32)[None, :]  # n x d
        if self.spec.conv1d:
            self.delta[name][idx.to(p.device)] += upd
        else:
            self.delta[name][:, idx.to(p.device)] += upd.t()
        with torch.no_grad():
            p.copy_((self.backup[name].float() + self.delta[name]).to(p.dtype))

    def restore(self):
        import torch

        with torch.no_grad():
            for name, saved in self.backup.items():
                self.params[name].copy_(saved)


def fit(lm, train, cfg: REVSConfig | None = None, stages=None):
    """Fit REVS on ``train.targets`` (:class:`trustedit.data.privacy.SecretTokens`) with rarity from
    ``train.token_counts`` (None: position order). Returns a Patch; the model is left unchanged."""
    import torch
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.bias.dama import _Timer
    from trustedit.patch import Delta, Patch

    cfg = cfg or REVSConfig()
    set_seed(cfg.seed)
    targets = list(getattr(train, "targets", None) or [])
    if not targets:
        raise UsageError("REVS needs at least one target secret (train.targets is empty)")
    counts = getattr(train, "token_counts", None)
    t0 = time.time()
    timer = _Timer(stages, "revs/")
    model = lm.model
    spec = arch.arch_for(model)
    n_layers = arch.num_layers(model)
    device = next(model.parameters()).device
    names = {"down": [arch.layer_path(model, L, spec.down) for L in range(n_layers)],
             "layer": [arch.layer_path(model, L, "").rstrip(".") for L in range(n_layers)]}
    wnames = [n + ".weight" for n in names["down"]]
    with timer("unembedding"):
        U, lens = unembedding(model)
        gram = gram_pinv(U)
    V = U.shape[0]
    goal = max(1, round(cfg.layer_rank * V))
    mlp_max = max(1, round(cfg.mlp_rank_max * V))
    neuron_target = min(V - 1, max(goal, round(cfg.neuron_rank * V)))

    editor = _Editor(model, spec)
    edited: dict[int, set] = {}
    per_target, skipped = [], 0
    was = model.training
    model.eval()
    try:
        for s in tqdm(targets, desc="revs", leave=False):
            ids = list(s.prompt_ids) + list(s.secret_ids)
            start = 0 if len(s.prompt_ids) else 1  # without a prompt nothing predicts the first token
            chosen = [j + start for j in target_tokens(list(s.secret_ids)[start:], counts, cfg.tokens_per_secret)]
            rec = {"id": s.id, "tokens": []}
            for j in chosen:
                t, p = int(s.secret_ids[j]), len(s.prompt_ids) + j - 1
                prefix = ids[: p + 1]
                with timer("forward"):
                    acts, mlp, resid = _states(model, prefix, names, device)
                with timer("locate"):
                    r_ranks = token_rank(lens(resid), t).tolist()
                    m_ranks = token_rank(mlp @ U.t(), t).tolist()
                    layers = select_layers(r_ranks, m_ranks, goal, mlp_max, cfg.max_layers)
                    g = pinv_direction(U, t, gram)
                    q = U @ g
                # the secret's position only: a token id would write part of the secret into the manifest
                tok_rec = {"position": j, "layers": {}}
                dirty = False
                for L in layers:
                    if dirty:
                        with timer("forward"):
                            acts, mlp, resid = _states(model, prefix, names, device)
                        dirty = False
                    r_rank = int(token_rank(lens(resid[L]), t))
                    m_rank = int(token_rank(U @ mlp[L], t))
                    if r_rank >= goal or m_rank >= mlp_max:
                        continue
                    with timer("edit"):
                        W = editor.weight(wnames[L]).detach()
                        cols = _columns(W, spec.conv1d)
                        idx, _, Z = select_neurons(acts[L], cols, U, t, cfg.candidates, cfg.neurons, with_logits=True)
                        if idx.numel() == 0:
                            continue
                        a = acts[L][idx.to(acts.device)].cpu()
                        sign = torch.sign(a)
                        steps = demotion_steps(Z, q, t, neuron_target, cfg.max_iter)
                        keep = steps > 0
                        idx, steps, a, sign = idx[keep], steps[keep], a[keep], sign[keep]
                        if idx.numel() == 0:
                            continue
                        k = _neurons_needed(a.abs() * steps, mlp[L], resid[L], g, q, U, lens, t, goal)
                        editor.add(wnames[L], idx[:k], (sign * steps)[:k], g)
                    dirty = True
                    edited.setdefault(L, set()).update(int(i) for i in idx[:k])
                    tok_rec["layers"][str(L)] = {"neurons": int(k), "residual_rank_before": r_rank,
                                                 "mlp_rank_before": m_rank}
                if not tok_rec["layers"]:
                    skipped += 1
                rec["tokens"].append(tok_rec)
            per_target.append(rec)
        deltas = {n: Delta("dense", {"delta": d.to("cpu").clone()}) for n, d in editor.delta.items()}
    finally:
        editor.restore()
        model.train(was)

    patch = Patch("revs", deltas)
    patch.manifest["training"] = {
        "layers": sorted(edited), "neurons": {str(L): len(v) for L, v in sorted(edited.items())},
        "neurons_total": sum(len(v) for v in edited.values()),
        "token_positions": {r["id"]: [x["position"] for x in r["tokens"]] for r in per_target},
        "targets": len(targets), "target_tokens": sum(len(r["tokens"]) for r in per_target),
        "target_tokens_unedited": skipped,
        "rarity": "fine-tuning corpus token counts" if counts is not None else "position order (no token counts)",
        "ranks": {"vocabulary": V, "layer_goal": goal, "mlp_max": mlp_max, "neuron": neuron_target},
        "per_target": per_target, "timings_s": timer.seconds, "seconds": round(time.time() - t0, 2)}
    return patch


def _neurons_needed(contrib, mlp, resid, g, q, U, lens, token: int, goal: int) -> int:
    """Step 5: the fewest leading neurons (their ``a_i·δ_i`` in ``contrib``) after whose edit both
    the MLP output and the residual stream rank ``token`` at ``goal`` or lower (all when none
    suffices). The edit moves both along ``−g`` by the cumulative sum; binary search."""
    c = contrib.cumsum(0).tolist()
    zm = U @ mlp

    def ok(k):
        s = c[k - 1]
        return int(token_rank(zm - s * q, token)) >= goal and int(token_rank(lens(resid - s * g), token)) >= goal

    n = len(c)
    if not ok(n):
        return n
    lo, hi = 0, n  # ok(hi); lo: not known ok (0: nothing edited)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


CITATION = ("Ashuach, Tutek & Belinkov 2025, REVS: Unlearning Sensitive Information in Language Models via Rank "
            "Editing in the Vocabulary Space (Findings of ACL 2025; arXiv 2406.09325)")

METHOD = Method(
    name="revs",
    config=REVSConfig,
    fit=fit,  # fit(lm, train, cfg, stages=None) -> Patch
    citation=CITATION,
    summary="demote each secret's rarest tokens in the vocabulary projection of the MLP neurons that promote them "
            "(training-free rank editing of down-projection columns)",
    train="trustedit.suites.privacy:train_items",
)
