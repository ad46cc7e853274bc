"""MEND: gradient decomposition editors trained to turn one fine-tuning gradient into an edit
(Mitchell, Lin, Bosselut, Finn & Manning, "Fast Model Editing at Scale", ICLR 2022).

Written from the paper (§3, eqs. 1-5; Appendix C for the editor's architecture and training). For
each edited weight ``W`` (``d_out x d_in``) of a linear layer, the gradient of a loss over a
sequence is a sum of rank-one terms, ``∇_W L = Σ_t δ_t u_tᵀ``, with ``u_t`` the layer's input at
token ``t`` and ``δ_t`` the gradient of the loss with respect to the layer's output there
(:func:`raw_factors` reads both with a forward hook and ``torch.autograd.grad`` on the captured
outputs; the hooks are removed afterwards). MEND never forms the gradient: a small network ``g``
maps each ``z_t = [u_t; δ_t]`` to ``[ũ_t; δ̃_t]`` and the edit is

    W' = W - α_ℓ Σ_t δ̃_t ũ_tᵀ,

with ``α_ℓ`` a learned per-weight step (the paper's learned edit learning rate). The update is kept
exactly as what it is, a low-rank :class:`~trustedit.patch.Delta` with ``B = -α δ̃ᵀ`` (stacked
``δ̃_t``) and ``A = ũ`` (stacked ``ũ_t``); GPT-2's Conv1D weights (stored ``d_in x d_out``) get
``B = ũᵀ``, ``A = -α δ̃``. Several requests in one fit give the sum of their updates, each computed
from the unedited model (MEND's batched editing).

The editor (:class:`Editor`, one per distinct weight shape, shared by every edited weight of that
shape): ``z_t`` is normalised per edited weight by a running mean and standard deviation of the
``z_t`` seen in training (frozen afterwards), then goes through ``blocks`` residual low-rank MLP
blocks ``h ← h + U relu(s_ℓ ⊙ (V h + b) + o_ℓ)`` with ``V`` (``rank x d``) random, ``U``
(``d x rank``) zero-initialised, so that the editor starts as the identity on the normalised
``z``; ``s_ℓ`` and ``o_ℓ`` are the per-weight scale and offset (the paper's layer conditioning).

Training (the paper's objective, eq. 4-5): one CounterFact train case per step (``batch_size``
cases per step); the edit is computed from the NLL of ``target_new`` after the edit prompt, applied
functionally (forward hooks that add ``x ΔWᵀ`` to the layer's output; the weights are never
written), and the editor is trained on ``L = c_edit · L_edit + L_loc``: ``L_edit`` the mean NLL of
``target_new`` after the edit prompt and after its rephrase, ``L_loc`` KL(base ‖ edited) of the
next-token distributions at every position of the case's locality prompt followed by its answer.
Adam on the editor's parameters (``lr``) and on the steps ``α`` (``alpha_lr``), gradient norm
clipped to ``grad_clip``. The trained editor is cached under
``cache_root()/mend/<hash>.safetensors`` (+ ``<hash>.json``: steps, losses, seconds), the hash
covering the model's fingerprint, the edited weights' shapes, every option of the config and the
training data's fingerprint; both files are written atomically (a temporary file renamed into
place, the record last). ``fit`` loads the editor when present, else trains and caches it.

Deviations, documented:

* Training length: the paper trains until the edit success on a validation split stops improving
  (on the order of 10⁵ edits, on a GPU). Here the default is ``steps=1500`` single-edit steps: on
  one CPU thread with SmolLM2-135M (30 layers; the 27 below the edited ones run once per step
  without gradient) that took 636 s (0.42 s per step; ``benchmarks/mend_training.py``), and lowered
  the post-edit NLL of the training edits from 3.90 (mean of the first 100 steps) to 0.96 (last 100;
  before the edit: 8.8) at a locality KL of 0.07. With so short a training, the learning
  rates are larger than the paper's (editor 1e-4 rather than 1e-6) and ``α`` starts at ``alpha_init``,
  which makes the untrained (identity) editor's first edit already move the target's NLL (measured
  on SmolLM2-135M: α = 1e-4 lowers it by ~2 nats at a locality KL of ~0.01; 1e-3 by ~6 nats at a KL
  of ~1; 1e-2 overshoots, KL ~ 20).
* The layer conditioning scales and offsets the hidden pre-activation of each block (``rank``
  units) rather than the ``d``-dimensional output: with the second factor zero-initialised (so the
  editor starts as the identity) the paper's ``σ(s ⊙ (U V z + b) + o)`` would start at ``relu(0)``,
  whose gradient is zero, and never train.
* ``L_edit`` averages the NLL after the edit prompt and after its rephrase (the paper scores the
  rephrase, the equivalence neighbourhood, only); ``L_loc`` is measured on CounterFact's
  neighbourhood prompt (a different subject, same relation), not on a random Natural Questions
  passage.
* The gradient that MEND transforms is the mean NLL of the target tokens (the paper: the
  fine-tuning loss of the edit example); the normalisation of ``z`` makes its scale immaterial.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trustedit.methods.base import Method, MethodConfig, opt, set_seed

ROLES = ("up", "down", "gate")  # MLP projections of the architecture table
FORMAT = "trustedit-mend-editor/1"


def _distinct_ints(v) -> str | None:
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return "a list of integer layer indices (negative counts from the top)"
    if len(set(v)) != len(v):
        return "a list of distinct layer indices"
    return None


def _distinct(v) -> str | None:
    return None if len(set(v)) == len(v) else "a list without repeats"


@dataclass
class MENDConfig(MethodConfig):
    batch_size: int = opt(1, "Training cases (edits) per editor step; each gets its own edit, the losses are "
                          "averaged (the paper: 10 on GPU; 1 here to fit a CPU).", ge=1)
    layers: list = opt([-3, -2, -1], "Decoder layers whose MLP weights are edited (int indices, negative count "
                       "from the top; the paper: the last 3).", min_items=1, check=_distinct_ints)
    roles: list = opt(["up", "down"], "MLP projections edited in each of those layers (up, down, gate).",
                      choices=ROLES, item="MEND role", min_items=1, check=_distinct)
    rank: int = opt(256, "Width of the editor's low-rank hidden layer.", ge=1)
    blocks: int = opt(2, "Residual low-rank blocks of the editor (the paper's eq. 3 has 2).", ge=1)
    steps: int = opt(1500, "Editor training steps (≈ 15 min on one CPU thread with SmolLM2-135M; the paper "
                     "trains on ~10^5 edits).", ge=1)
    lr: float = opt(1e-4, "Adam learning rate of the editor's parameters.", gt=0)
    alpha_lr: float = opt(1e-5, "Adam learning rate of the per-weight edit steps α.", gt=0)
    alpha_init: float = opt(1e-4, "Initial edit step α of every edited weight.", gt=0)
    c_edit: float = opt(0.1, "Weight of the edit loss against the locality KL (the paper's c_edit).", gt=0)
    grad_clip: float = opt(100.0, "Clip the editor's gradient norm to this (0: no clipping).", ge=0)
    train_cases: int = opt(0, "CounterFact train cases the editor is trained on (0: all 10,000).", ge=0)


# ---- the weights: which, and their raw gradient factors ----------------------------------------


@dataclass(frozen=True)
class Site:
    """One edited weight: its module name, parameter name, logical shape (``d_out x d_in``)."""

    module: str
    param: str
    layer: int
    role: str
    d_out: int
    d_in: int
    conv1d: bool

    @property
    def shape(self) -> tuple:
        return (self.d_out, self.d_in)


def sites(model, cfg: MENDConfig) -> list[Site]:
    """The edited weights, in config order (layers, then roles)."""
    from trustedit import arch
    from trustedit.errors import UsageError

    spec = arch.arch_for(model)
    n = arch.num_layers(model)
    mods = dict(model.named_modules())
    out = []
    for L in cfg.layers:
        if not -n <= L < n:
            raise UsageError(f"MENDConfig option 'layers': layer {L} out of range for a model of {n} layers")
        for role in cfg.roles:
            rel = getattr(spec, role)
            if rel is None:
                raise UsageError(f"MEND role {role!r}: architecture {model.config.model_type} has no {role} projection")
            name = arch.layer_path(model, L % n, rel)
            w = mods[name].weight
            d_out, d_in = (w.shape[1], w.shape[0]) if spec.conv1d else tuple(w.shape)
            out.append(Site(name, name + ".weight", L % n, role, int(d_out), int(d_in), spec.conv1d))
    if len({s.module for s in out}) != len(out):
        raise UsageError("MENDConfig option 'layers': two entries name the same layer")
    return out


@contextmanager
def _captured(model, names):
    """Forward hooks recording each named module's input (first positional) and output."""
    mods = dict(model.named_modules())
    store, handles = {}, []

    def hook(name):
        def f(m, inputs, out):
            store[name] = (inputs[0], out)
        return f

    try:
        for n in names:
            handles.append(mods[n].register_forward_hook(hook(n)))
        yield store
    finally:
        for h in handles:
            h.remove()


def raw_factors(model, site_list, run) -> tuple[dict, object]:
    """``({module: (u, δ)}, loss)``: ``run()`` does a forward pass and returns the loss; ``u`` is each
    module's input and ``δ`` the loss's gradient with respect to its output (both ``batch x T x d``,
    detached), so that ``∇_W L = Σ_t δ_t u_tᵀ`` (summed over the batch too). Only the edited weights
    require grad within (no parameter gradient is accumulated)."""
    import torch

    from trustedit.hooks import only_trainable

    names = [s.module for s in site_list]
    with only_trainable(model, [s.param for s in site_list]), _captured(model, names) as st:
        loss = run()
        outs = [st[n][1] for n in names]
        grads = torch.autograd.grad(loss, outs, allow_unused=True)
    res = {}
    for n, g in zip(names, grads):
        u = st[n][0].detach()
        res[n] = (u, torch.zeros_like(st[n][1]) if g is None else g.detach())
    return res, loss.detach()


@contextmanager
def edited(model, updates: dict):
    """Within the block, each module ``m`` in ``updates`` (``m -> (Ũ, D̃, α)``, ``Ũ``: ``T x d_in``,
    ``D̃``: ``T x d_out``) computes as if its weight were ``W - α Σ_t δ̃_t ũ_tᵀ``: a forward hook adds
    ``-α (x Ũᵀ) D̃`` to its output. Weights are never written; the hooks are removed on exit."""
    mods = dict(model.named_modules())
    handles = []

    def hook(U, D, alpha):
        def f(m, inputs, out):
            x = inputs[0]
            return out + (-alpha) * ((x.to(U.dtype) @ U.T) @ D).to(out.dtype)
        return f

    try:
        for name, (U, D, alpha) in updates.items():
            handles.append(mods[name].register_forward_hook(hook(U, D, alpha)))
        yield
    finally:
        for h in handles:
            h.remove()


# ---- the editor network -------------------------------------------------------------------------


def _editor_class():
    import torch
    from torch import nn

    class Editor(nn.Module):
        """MEND's gradient editor for the weights of one shape (``d_out x d_in``), shared by ``n``
        edited weights with per-weight conditioning, normalisation statistics and step ``α``."""

        def __init__(self, d_in: int, d_out: int, n: int, rank: int, blocks: int, alpha_init: float):
            super().__init__()
            d = d_in + d_out
            self.d_in, self.d_out, self.n = d_in, d_out, n
            self.V = nn.ParameterList([nn.Parameter(torch.empty(rank, d)) for _ in range(blocks)])
            self.U = nn.ParameterList([nn.Parameter(torch.zeros(d, rank)) for _ in range(blocks)])
            self.b = nn.ParameterList([nn.Parameter(torch.zeros(rank)) for _ in range(blocks)])
            self.scale = nn.ParameterList([nn.Parameter(torch.ones(n, rank)) for _ in range(blocks)])
            self.offset = nn.ParameterList([nn.Parameter(torch.zeros(n, rank)) for _ in range(blocks)])
            for v in self.V:
                nn.init.xavier_uniform_(v)
            self.alpha = nn.Parameter(torch.full((n,), float(alpha_init)))
            self.register_buffer("count", torch.zeros(n, dtype=torch.float64))
            self.register_buffer("mean", torch.zeros(n, d, dtype=torch.float64))
            self.register_buffer("m2", torch.zeros(n, d, dtype=torch.float64))

        @torch.no_grad()
        def observe(self, i: int, z) -> None:
            """Fold the rows of ``z`` (``T x d``) into weight ``i``'s running mean and variance (Chan et al.)."""
            z = z.detach().double().reshape(-1, z.shape[-1])
            m, n_b = z.shape[0], float(z.shape[0])
            if m == 0:
                return
            mu_b = z.mean(0)
            m2_b = ((z - mu_b) ** 2).sum(0)
            n_a = self.count[i].item()
            tot = n_a + n_b
            diff = mu_b - self.mean[i]
            self.mean[i] += diff * (n_b / tot)
            self.m2[i] += m2_b + diff ** 2 * (n_a * n_b / tot)
            self.count[i] = tot

        def normalise(self, i: int, z):
            c = self.count[i].item()
            if c < 2:
                return z
            std = (self.m2[i] / (c - 1)).clamp(min=0).sqrt().to(z.dtype)
            return (z - self.mean[i].to(z.dtype)) / (std + 1e-6)

        def forward(self, i: int, u, delta):
            """``(ũ, δ̃)`` for weight ``i``'s token rows ``u`` (``T x d_in``), ``delta`` (``T x d_out``)."""
            h = self.normalise(i, torch.cat([u, delta], -1).float())
            for V, U, b, s, o in zip(self.V, self.U, self.b, self.scale, self.offset):
                h = h + torch.relu(s[i] * (h @ V.T + b) + o[i]) @ U.T
            return h[:, :self.d_in], h[:, self.d_in:]

    return Editor


class EditorSet:
    """The editors of one model and config: one :class:`Editor` per distinct weight shape, and for
    each edited weight (:class:`Site`) its editor and index within it."""

    def __init__(self, site_list: list[Site], cfg: MENDConfig, device="cpu"):
        import torch

        Editor = _editor_class()
        self.sites = list(site_list)
        shapes = list(dict.fromkeys(s.shape for s in self.sites))
        self.where = {}
        self.editors = torch.nn.ModuleDict()
        for k, shp in enumerate(shapes):
            members = [s for s in self.sites if s.shape == shp]
            for j, s in enumerate(members):
                self.where[s.module] = (f"e{k}", j)
            self.editors[f"e{k}"] = Editor(shp[1], shp[0], len(members), cfg.rank, cfg.blocks, cfg.alpha_init)
        self.editors.to(device)

    def params(self):
        return [p for n, p in self.editors.named_parameters() if not n.endswith("alpha")]

    def alphas(self):
        return [e.alpha for e in self.editors.values()]

    def state(self) -> dict:
        return {k: v.detach().to("cpu").contiguous() for k, v in self.editors.state_dict().items()}

    def load(self, tensors: dict) -> None:
        self.editors.load_state_dict(tensors, strict=True)

    def alpha_of(self, s: Site):
        k, j = self.where[s.module]
        return self.editors[k].alpha[j]

    def transform(self, s: Site, u, delta, observe: bool = False):
        """``(Ũ, D̃)`` for one edited weight's rows (``T x d_in``, ``T x d_out``)."""
        import torch

        k, j = self.where[s.module]
        e = self.editors[k]
        if observe:
            e.observe(j, torch.cat([u, delta], -1))
        return e(j, u, delta)


# ---- rows ---------------------------------------------------------------------------------------


def _encode(tok, prompt: str, target: str, bos: bool):
    from trustedit.methods.requests import encode_request

    return encode_request(tok, prompt, target, bos)


@dataclass
class TrainCase:
    """One training edit as ids: (prompt, target) of the edit, of its rephrase, and the locality
    sequence (prompt + answer)."""

    edit: tuple
    rephrase: tuple
    loc: list


def train_cases(lm, cases) -> tuple[list[TrainCase], int]:
    """EditCases with a rephrase and a locality prompt as :class:`TrainCase`; and how many were skipped."""
    from trustedit.methods.requests import prompt_bos

    tok = lm.tokenizer
    bos = prompt_bos(tok)
    out, skipped = [], 0
    for c in cases:
        loc = [pa for rows in (c.locality or {}).values() for pa in rows]
        if not c.rephrase or not loc or not c.target_new or not c.target_new.strip():
            skipped += 1
            continue
        e = _encode(tok, c.prompt, c.target_new, bos)
        r = _encode(tok, c.rephrase[0], c.target_new, bos)
        lp, la = _encode(tok, loc[0][0], loc[0][1][0], bos)
        if not e[1] or not r[1]:
            skipped += 1
            continue
        out.append(TrainCase(e, r, lp + la))
    return out, skipped


def _pad(seqs, pad_id):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def _target_positions(rows):
    """For rows ``(row index, prompt ids, target ids)``: the batch/time indices of the positions that
    predict each target token, the token ids, and which of the rows each token belongs to."""
    b, t, ids, which = [], [], [], []
    for k, (i, p, tgt) in enumerate(rows):
        for j, tid in enumerate(tgt):
            b.append(i)
            t.append(len(p) + j - 1)
            ids.append(tid)
            which.append(k)
    return b, t, ids, which


def _row_nll(logits, tgt, which, n_rows):
    """Mean target NLL of each row (a vector of ``n_rows``) from the logits at its target positions."""
    import torch

    lp = torch.log_softmax(logits.float(), -1).gather(-1, tgt[:, None])[:, 0]
    s = torch.zeros(n_rows, device=logits.device).index_add(0, which, -lp)
    c = torch.zeros(n_rows, device=logits.device).index_add(0, which, torch.ones_like(lp))
    return s / c


# ---- one edit -----------------------------------------------------------------------------------


def request_factors(lm, site_list, prompt_ids, target_ids):
    """``({module: (u, δ)}, nll)`` of one request on the model as it is (``T x d`` each): the raw
    gradient factors of the mean NLL of ``target_ids`` after ``prompt_ids``."""
    import torch

    from trustedit.methods.rome import logits_at

    model = lm.model
    dev = next(model.parameters()).device
    seq = list(prompt_ids) + list(target_ids[:-1])
    ids = torch.tensor([seq], device=dev)
    mask = torch.ones_like(ids)
    b, t, tg, which = _target_positions([(0, prompt_ids, target_ids)])

    def run():
        logits = logits_at(model, ids, mask, torch.tensor(b, device=dev), torch.tensor(t, device=dev))
        return _row_nll(logits, torch.tensor(tg, device=dev), torch.tensor(which, device=dev), 1)[0]

    f, nll = raw_factors(model, site_list, run)
    return {k: (u[0], d[0]) for k, (u, d) in f.items()}, nll.item()


# ---- training -----------------------------------------------------------------------------------


def _train_step(lm, es: EditorSet, batch: list[TrainCase], cfg: MENDConfig, pad_id: int):
    """One editor step's loss terms, averaged over ``batch``; the backward pass is the caller's."""
    import torch
    import torch.nn.functional as F

    from trustedit.methods.ft_edit import frozen_below
    from trustedit.methods.rome import logits_at

    model = lm.model
    dev = next(model.parameters()).device
    L0 = min(s.layer for s in es.sites)
    tot_edit, tot_loc, tot_before = 0.0, 0.0, 0.0
    for case in batch:
        (pe, te), (pr, tr) = case.edit, case.rephrase
        seqs = [pe + te[:-1], pr + tr[:-1], case.loc]
        ids, mask = _pad(seqs, pad_id)
        ids, mask = ids.to(dev), mask.to(dev)
        b, t, tg, which = _target_positions([(0, pe, te), (1, pr, tr)])
        nt = len(b)
        lb = [2] * len(case.loc)
        lt = list(range(len(case.loc)))
        pos_b = torch.tensor(b + lb, device=dev)
        pos_t = torch.tensor(t + lt, device=dev)
        tg, which = torch.tensor(tg, device=dev), torch.tensor(which, device=dev)
        n0 = len(seqs[0])
        with frozen_below(model, L0, ids, mask):
            def run():
                logits = logits_at(model, ids, mask, pos_b, pos_t)
                run.base_loc = logits[nt:].detach()
                return _row_nll(logits[:nt], tg, which, 2)[0]

            f, before = raw_factors(model, es.sites, run)
            base_loc = torch.log_softmax(run.base_loc.float(), -1)
            updates = {}
            for s in es.sites:
                u, d = f[s.module]
                U, D = es.transform(s, u[0, :n0], d[0, :n0], observe=True)
                updates[s.module] = (U, D, es.alpha_of(s))
            with edited(model, updates):
                logits = logits_at(model, ids, mask, pos_b, pos_t)
        nll = _row_nll(logits[:nt], tg, which, 2)
        l_edit = nll.mean()
        l_loc = F.kl_div(torch.log_softmax(logits[nt:].float(), -1), base_loc, log_target=True,
                         reduction="none").sum(-1).mean()
        loss = (cfg.c_edit * l_edit + l_loc) / len(batch)
        if not torch.isfinite(loss):
            from trustedit.errors import NumericalError

            raise NumericalError(f"mend: the editor's training loss became {loss.item()}; lower lr / alpha_init")
        loss.backward()
        tot_edit += l_edit.item() / len(batch)
        tot_loc += l_loc.item() / len(batch)
        tot_before += before.item() / len(batch)
    return {"edit_nll_before": tot_before, "edit_nll": tot_edit, "loc_kl": tot_loc}


def train_editor(lm, cfg: MENDConfig, cases, desc: str = "mend editor") -> tuple[EditorSet, dict]:
    """Train the editors on ``cases`` (EditCases) for ``cfg.steps`` steps; ``(editors, record)``."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.errors import DataError
    from trustedit.hooks import only_trainable

    rows, skipped = train_cases(lm, cases)
    if not rows:
        raise DataError("mend training data", problem="no case has a rephrase, a locality prompt and a target")
    model = lm.model
    dev = next(model.parameters()).device
    set_seed(cfg.seed)
    es = EditorSet(sites(model, cfg), cfg, dev)
    optim = torch.optim.Adam([{"params": es.params(), "lr": cfg.lr},
                              {"params": es.alphas(), "lr": cfg.alpha_lr}])
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(rows), generator=g).tolist()
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    history, t0 = [], time.time()
    was_training = model.training
    model.eval()
    bar = tqdm(range(cfg.steps), desc=desc, unit="step")
    try:
        with only_trainable(model, []):
            for step in bar:
                batch = [rows[order[(step * cfg.batch_size + k) % len(rows)]] for k in range(cfg.batch_size)]
                optim.zero_grad(set_to_none=True)
                h = _train_step(lm, es, batch, cfg, pad)
                gnorm = torch.nn.utils.clip_grad_norm_(es.params(), cfg.grad_clip if cfg.grad_clip else math.inf)
                optim.step()
                h["grad_norm"] = float(gnorm)
                history.append(h)
                if step % 10 == 0:
                    bar.set_postfix(edit=f"{h['edit_nll']:.2f}", loc=f"{h['loc_kl']:.3f}")
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.time() - t0
    k = max(1, min(100, len(history) // 5))

    def avg(key, part):
        return round(sum(x[key] for x in part) / len(part), 4)

    first, last = history[:k], history[-k:]
    record = {
        "format": FORMAT, "steps": len(history), "batch_size": cfg.batch_size, "train_rows": len(rows),
        "skipped_cases": skipped, "seconds": round(seconds, 2), "seconds_per_step": round(seconds / len(history), 4),
        "window": k,
        "first": {key: avg(key, first) for key in ("edit_nll_before", "edit_nll", "loc_kl")},
        "final": {key: avg(key, last) for key in ("edit_nll_before", "edit_nll", "loc_kl")},
        "alpha": {s.module: float(es.alpha_of(s).detach()) for s in es.sites},
        "curve": [{"step": i, **{key: round(v, 4) for key, v in h.items()}}
                  for i, h in enumerate(history) if i % max(1, len(history) // 50) == 0 or i == len(history) - 1],
    }
    return es, record


# ---- the on-disk cache --------------------------------------------------------------------------


def cache_key(lm, cfg: MENDConfig, site_list, data_fingerprint: str) -> str:
    blob = {"format": FORMAT, "model": lm.fingerprint, "sites": [[s.module, s.d_out, s.d_in] for s in site_list],
            "config": cfg.to_dict(), "data": data_fingerprint}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]


def cache_paths(key: str) -> tuple[Path, Path]:
    from trustedit.models import cache_root

    d = cache_root() / "mend"
    return d / f"{key}.safetensors", d / f"{key}.json"


def save_editor(es: EditorSet, record: dict, key: str) -> Path:
    from safetensors.torch import save_file

    from trustedit.rundir import atomic_file

    st, js = cache_paths(key)
    atomic_file(st, lambda p: save_file(es.state(), str(p), metadata={"format": FORMAT}))
    atomic_file(js, lambda p: p.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8"))
    return st


def load_editor(lm, cfg: MENDConfig, site_list, key: str):
    """``(editors, record)`` from the cache, or None when absent or unusable (then it is retrained)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, js = cache_paths(key)
    if not (st.is_file() and js.is_file()):
        return None
    try:
        record = json.loads(js.read_text(encoding="utf-8"))
        es = EditorSet(site_list, cfg, next(lm.model.parameters()).device)
        es.load({k: v.to(next(lm.model.parameters()).device) for k, v in load_file(str(st)).items()})
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError):
        return None
    return es, record


def default_train_data(cfg: MENDConfig):
    """``(cases, fingerprint)`` of CounterFact's train split (the first ``train_cases``; 0: all)."""
    from trustedit.data.knowedit import load

    d = load("cf-train", limit=cfg.train_cases or None)
    return d.cases, d.fingerprint


def editor_for(lm, cfg: MENDConfig, data=None):
    """``(editors, info)``: the cached editor for this model, config and training data, trained (and
    cached) first when absent. ``data``: ``(cases, fingerprint)``; default :func:`default_train_data`."""
    site_list = sites(lm.model, cfg)
    cases, fp = data if data is not None else default_train_data(cfg)
    key = cache_key(lm, cfg, site_list, fp)
    st, js = cache_paths(key)
    got = load_editor(lm, cfg, site_list, key)
    if got is not None:
        es, record = got
        return es, {"file": str(st), "loaded_from_cache": True, "data": fp, "record": record}
    es, record = train_editor(lm, cfg, cases)
    record["data"] = fp
    record["model"] = lm.fingerprint
    save_editor(es, record, key)
    return es, {"file": str(st), "loaded_from_cache": False, "data": fp, "record": record}


# ---- fit ----------------------------------------------------------------------------------------


def compute_updates(lm, es: EditorSet, requests) -> tuple[dict, list]:
    """``({module: (Ũ, D̃)}, records)``: every request's transformed factors stacked (the sum of the
    requests' updates), each computed on the model as it is."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.hooks import only_trainable
    from trustedit.methods.requests import prompt_bos

    tok = lm.tokenizer
    bos = prompt_bos(tok)
    parts = {s.module: ([], []) for s in es.sites}
    records = []
    with only_trainable(lm.model, []):
        for r in tqdm(requests, desc="mend", unit="edit"):
            t1 = time.time()
            p, t = _encode(tok, r.prompt, r.target_new, bos)
            f, nll = request_factors(lm, es.sites, p, t)
            with torch.no_grad():
                for s in es.sites:
                    U, D = es.transform(s, *f[s.module])
                    parts[s.module][0].append(U)
                    parts[s.module][1].append(D)
            records.append({"id": r.id, "target_tokens": len(t), "tokens": len(p) + len(t) - 1,
                            "nll_before": round(nll, 4), "seconds": round(time.time() - t1, 3), "ids": (p, t)})
    return {k: (torch.cat(u), torch.cat(d)) for k, (u, d) in parts.items()}, records


def _score(lm, records, updates) -> None:
    """Each request's target NLL and mean target-token probability with ``updates`` applied."""
    import torch

    from trustedit.methods.rome import logits_at

    model = lm.model
    dev = next(model.parameters()).device
    with torch.no_grad(), edited(model, updates):
        for rec in records:
            p, t = rec.pop("ids")
            ids = torch.tensor([p + t[:-1]], device=dev)
            b, tt, tg, which = _target_positions([(0, p, t)])
            logits = logits_at(model, ids, torch.ones_like(ids), torch.tensor(b, device=dev),
                               torch.tensor(tt, device=dev))
            lp = torch.log_softmax(logits.float(), -1)
            tg = torch.tensor(tg, device=dev)
            tok_lp = lp.gather(-1, tg[:, None])[:, 0]
            prob = tok_lp.exp().mean().item()
            rec.update(nll_after=round(-tok_lp.mean().item(), 4), target_prob=round(prob, 4),
                       argmax_match=bool((lp.argmax(-1) == tg).all().item()), converged=prob >= 0.5)


def fit(lm, requests, cfg: MENDConfig, stages=None):
    """Edit every request with the (cached, else trained) MEND editor; a
    :class:`~trustedit.patch.Patch` holding, per edited weight, the low-rank sum of the requests'
    updates (the model is left as it was, bit for bit: its weights are never written)."""
    import torch

    from trustedit.methods.requests import as_requests
    from trustedit.patch import Delta, Patch

    requests = as_requests(requests, "mend", subject=False)
    t0 = time.time()
    es, info = editor_for(lm, cfg)
    t_editor = time.time() - t0
    for e in es.editors.values():
        e.eval()
    factors, records = compute_updates(lm, es, requests)
    deltas, updates = {}, {}
    with torch.no_grad():
        for s in es.sites:
            U, D = factors[s.module]
            alpha = es.alpha_of(s).detach()
            updates[s.module] = (U, D, alpha)
            B = (-alpha * D).T.float().contiguous()  # d_out x T
            A = U.float().contiguous()  # T x d_in
            deltas[s.param] = Delta("lowrank", {"B": A.T.contiguous().cpu(), "A": B.T.contiguous().cpu()} if s.conv1d
                                    else {"B": B.cpu(), "A": A.cpu()})
    _score(lm, records, updates)
    patch = Patch("mend", deltas)
    patch.manifest["training"] = {
        "requests": len(requests), "sites": [{"param": s.param, "layer": s.layer, "role": s.role,
                                              "alpha": float(es.alpha_of(s).detach())} for s in es.sites],
        "rank_per_weight": sum(r["tokens"] for r in records),
        "converged": sum(r["converged"] for r in records), "per_request": records,
        "editor": info, "editor_seconds": round(t_editor, 2), "config": cfg.to_dict(),
        "seconds": round(time.time() - t0, 2)}
    return patch


METHOD = Method(
    name="mend", config=MENDConfig, fit=fit, edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",
    citation="Mitchell et al. 2022, Fast Model Editing at Scale (ICLR)",
    summary="a learned editor turns the edit's gradient factors (u, δ) of the last MLPs into a low-rank update")
