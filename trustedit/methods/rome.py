"""ROME: rank-one model editing of one MLP down-projection (Meng, Bau, Andonian & Belinkov,
"Locating and Editing Factual Associations in GPT", NeurIPS 2022).

Written from the paper (§3, eqs. 2-4; Appendix E for the optimisation's settings), in pure steps:

1. :func:`context_templates`: short texts the model itself writes (from "The", "Therefore",
   "Because", "I", "You"; half of 5 tokens, half of 10, seeded top-k 5 sampling) that precede the
   prompt, so that the key and value generalise beyond one context. The bare prompt is always one
   of them.
2. :func:`compute_key`: ``k*``, the mean over the contexts of the down-projection's input at the
   subject's last token (eq. 3).
3. :func:`compute_value`: ``v* = W k* + δ``, where ``δ``, added to the MLP's output at the subject's
   last token in every context, minimises the target's NLL (teacher-forced, averaged over contexts)
   + ``kl_factor`` × KL(base ‖ edited) of the next-token distribution after "<subject> is a" (the
   essence drift term) + a weight decay ``weight_decay · ‖δ‖² / ‖W k*‖²``; ``‖δ‖`` is clamped to
   ``clamp_norm · ‖W k*‖`` after every Adam step; it stops early when the NLL falls below
   ``nll_stop``.
4. :func:`trustedit.methods.closed_form.rome_update`: ``ΔW = Λ (C⁻¹k*)ᵀ``,
   ``Λ = (v* − W k*) / ((C⁻¹k*)ᵀ k*)``, with ``C`` the keys' second moment on WikiText-2
   (:mod:`trustedit.methods.key_stats`, cached on disk), or ``C = I`` with ``use_c=False``.

Deviations, documented:

* The paper's eq. 4 optimises a vector ``z`` that *replaces* the MLP output; the reference code
  adds ``δ`` to each context's own output and uses the bare prompt's key in the closed form. Here
  ``δ`` is added (the optimisation starts at the unedited model) and, by linearity,
  ``v* = W k* + δ`` exactly for the mean key ``k*`` that eq. 2 constrains, so ``Λ = δ``.
* The weight decay is the squared norm ratio ``‖δ‖²/‖W k*‖²`` with weight 0.01; the reference code
  uses ``0.5·‖δ‖/‖v‖²``, which is not scale-free and, at the norms of a real model's MLP output
  (tens), is negligible next to the NLL; at the clamp (``‖δ‖ = 4‖W k*‖``) the term here costs 0.16
  nats, a weak pull of the same kind.
* Several requests in one fit are applied one after another, each computed on the model with the
  earlier ones in place (as EasyEdit does for ROME); MEMIT is the batch editor.
* The result records, per request, whether the value optimisation *converged* (mean target-token
  probability ≥ 0.5 at the end): an edit that did not is reported, never silently counted.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, layer_index, opt, set_seed

TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")
KL_PROMPT = "{} is a"


@dataclass
class ROMEConfig(MethodConfig):
    layer: float = opt(0.17, "Edited layer: an int index, a fraction of depth in [0,1) (ROME: 17 of GPT-2 XL's "
                       "48 layers and 5 of Llama-7B's 32, both early-middle), or 'auto': the layer where causal "
                       "tracing of the requests puts the MLPs' largest indirect effect at the last subject token.",
                       layer=True, auto=True)
    trace_requests: int = opt(3, "layer=auto: requests traced (the first ones of the fit).", ge=1)
    trace_samples: int = opt(3, "layer=auto: noise draws per cell of the trace (the paper: 10).", ge=1)
    use_c: bool = opt(True, "Weight the rank-one update by the keys' second moment C (False: C = I).")
    stats_tokens: int = opt(100_000, "Token positions of WikiText-2 for C (cached on disk per model, layer and count).",
                            ge=1000)
    templates: int = opt(10, "Context prefixes the model writes (half of 5 tokens, half of 10), besides the bare "
                         "prompt; 0: the bare prompt only.", ge=0)
    v_steps: int = opt(25, "Adam steps for the value vector.", ge=1)
    v_lr: float = opt(0.5, "Adam learning rate for the value vector.", gt=0)
    kl_factor: float = opt(0.0625, "Weight of the essence-drift KL term.", ge=0)
    weight_decay: float = opt(0.01, "Weight of ||δ||² / ||W k*||² (scale-free; see the module docstring).", ge=0)
    clamp_norm: float = opt(4.0, "Clamp ||δ|| to this multiple of ||W k*|| after each step.", gt=0)
    nll_stop: float = opt(0.05, "Stop the value optimisation once the target's mean NLL is below this.", gt=0)


# ---- step 1: contexts ---------------------------------------------------------------------------


_TEMPLATES: dict = {}  # (model fingerprint, n, seed) -> templates, as EasyEdit keeps them for a run


def context_templates(lm, n: int, seed: int = 0) -> list[str]:
    """``["{}"]`` plus ``n`` texts the model writes, each ending in ``". {}"`` (written once per
    base model, count and seed in a process; the unedited model writes them)."""
    if n == 0:
        return ["{}"]
    key = (lm.fingerprint, n, seed)
    if lm.fingerprint.startswith("test:"):  # in-memory test models share fingerprints: never cached
        return _write_templates(lm, n, seed)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _write_templates(lm, n, seed)
    return list(_TEMPLATES[key])


def _write_templates(lm, n: int, seed: int) -> list[str]:
    import torch

    tok, model = lm.tokenizer, lm.model
    out = ["{}"]
    lengths = [5] * (n // 2) + [10] * (n - n // 2)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i, length in enumerate(lengths):
            start = TEMPLATE_STARTS[i % len(TEMPLATE_STARTS)]
            ids = tok(start, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            gen = model.generate(ids, do_sample=True, top_k=5, max_new_tokens=length, min_new_tokens=length,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            text = tok.decode(gen[0], skip_special_tokens=True)
            out.append(text.replace("{", " ").replace("}", " ").strip() + ". {}")
    return out


# ---- the rows the steps run on ------------------------------------------------------------------


@dataclass
class Row:
    prompt_ids: list
    target_ids: list
    subject_index: int


def request_rows(lm, request, templates: list[str]) -> list[Row]:
    """One row per context: the context + prompt as ids, the target's ids, the subject's last token."""
    from trustedit.methods.requests import encode_request, subject_last_index

    tok = lm.tokenizer
    bos = bool(getattr(tok, "add_bos_token", False))
    rows = []
    for t in templates:
        text = t.format(request.prompt)
        p, tgt = encode_request(tok, text, request.target_new, bos)
        rows.append(Row(p, tgt, subject_last_index(tok, text, request.subject, bos, start=len(t.split("{}")[0]))))
    return rows


def kl_rows(lm, request) -> list[Row]:
    from trustedit.methods.requests import subject_last_index

    tok = lm.tokenizer
    bos = bool(getattr(tok, "add_bos_token", False))
    text = KL_PROMPT.format(request.subject)
    ids = ([tok.bos_token_id] if bos and tok.bos_token_id is not None else []) + list(
        tok(text, add_special_tokens=False)["input_ids"])
    return [Row(ids, [], subject_last_index(tok, text, request.subject, bos))]


def _batch(rows: list[Row], pad_id: int, with_targets: bool):
    """Right-padded input ids (prompt + target minus its last token), attention mask, and for each
    row the positions that predict its target tokens."""
    import torch

    seqs = [r.prompt_ids + (r.target_ids[:-1] if with_targets else []) for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


@contextmanager
def _add_at(module, rows: list[Row], delta, which=None):
    """Within the block, ``delta`` is added to ``module``'s output (its hidden states) at each row's
    subject token; with ``which`` (one index per row), ``delta`` is a matrix and row ``i`` gets
    ``delta[which[i]]``."""
    import torch

    idx_b = torch.arange(len(rows))
    idx_t = torch.tensor([r.subject_index for r in rows])

    def hook(m, inputs, out):
        h = out[0] if isinstance(out, tuple) else out  # a decoder layer returns (hidden, ...) in some versions
        h = h.clone()
        d = delta if which is None else delta[which]
        h[idx_b, idx_t] = h[idx_b, idx_t] + d.to(h.dtype)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    h = module.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def _down(lm, layer: int):
    from trustedit import arch

    spec = arch.arch_for(lm.model)
    name = arch.layer_path(lm.model, layer, spec.down)
    return name, dict(lm.model.named_modules())[name], spec.conv1d


def _weight(lm, layer: int):
    """The down-projection's weight as ``d_out x d_in`` (a view for Linear, transposed for Conv1D)."""
    name, mod, conv1d = _down(lm, layer)
    return name + ".weight", (mod.weight.T if conv1d else mod.weight), conv1d


@contextmanager
def restored(lm, layers):
    """Within the block the editors change the down-projections of ``layers`` in place; on exit
    (also on error) they are put back bit for bit."""
    import torch

    originals = {L: _weight(lm, L)[1].detach().clone() for L in layers}
    try:
        yield
    finally:
        with torch.no_grad():
            for L, w in originals.items():
                _weight(lm, L)[1].copy_(w)


def dense_patch(lm, deltas: dict, method: str):
    """A :class:`~trustedit.patch.Patch` of ``{layer: ΔW}`` (``d_out x d_in``) on the down-projections,
    stored in each parameter's own orientation (transposed for Conv1D)."""
    from trustedit.patch import Delta, Patch

    out = {}
    for L, dW in deltas.items():
        pname, _, conv1d = _weight(lm, L)
        out[pname] = Delta("dense", {"delta": (dW.T if conv1d else dW).float().contiguous()})
    return Patch(method, out)


# ---- step 2: the key ----------------------------------------------------------------------------


def compute_key(lm, layer: int, rows: list[Row]):
    """Mean down-projection input at the subject's last token over ``rows`` (float64)."""
    return mean_at(lm, _down(lm, layer)[0], [rows], "input")[:, 0]


def mean_at(lm, name: str, rows_per_request, what: str, max_rows: int = 128):
    """Per request, the mean over its rows of module ``name``'s ``what`` ("input" or "output") at each
    row's subject token (d x n, float64); the rows of several requests share forward passes (right
    padding and the attention mask keep every row's states its own)."""
    import torch

    from trustedit.hooks import capture

    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    dev = next(lm.model.parameters()).device
    flat = [(j, r) for j, rows in enumerate(rows_per_request) for r in rows]
    sums = [None] * len(rows_per_request)
    for s in range(0, len(flat), max_rows):
        part = flat[s:s + max_rows]
        ids, mask = _batch([r for _, r in part], pad, with_targets=False)
        with torch.no_grad(), capture(lm.model, [name], what=what) as st:
            lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev))
        h = st[name][0]
        for i, (j, r) in enumerate(part):
            v = h[i, r.subject_index].double().cpu()
            sums[j] = v if sums[j] is None else sums[j] + v
    return torch.stack([x / len(rows) for x, rows in zip(sums, rows_per_request)], 1)



# ---- step 3: the value --------------------------------------------------------------------------


def compute_value(lm, layer: int, rows: list[Row], kl: list[Row], key, cfg: ROMEConfig):
    """``(δ, record)``: the change of the MLP output at the subject that makes the model write the
    target (see the module docstring); ``v* = W k* + δ``."""
    _, module, _ = _down(lm, layer)
    _, W, _ = _weight(lm, layer)
    v0 = (W.detach().double() @ key.to(W.device)).float()
    return optimise_delta(lm, module, rows, kl, v0.norm().item(), cfg, below=layer)


def logits_at(model, input_ids, attention_mask, b_idx, t_idx):
    """The LM's logits (float32) at positions ``(b_idx[i], t_idx[i])`` only: the decoder runs on the
    whole batch, the vocabulary projection only where a loss reads it (at SmolLM2's 49k vocabulary
    that projection is a third of a step's compute). Final logit soft-capping (Gemma) is applied."""
    import torch

    h = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(h[b_idx, t_idx]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def optimise_delta(lm, module, rows: list[Row], kl: list[Row], ref_norm: float, cfg, below: int = 0):
    """``(δ, record)``: the vector added to ``module``'s output at each row's subject token that
    minimises the target NLL + ``kl_factor`` x KL(base ‖ edited) on ``kl``'s last token +
    ``weight_decay`` x ``‖δ‖²/ref_norm²``, clamped to ``clamp_norm`` x ``ref_norm`` after each Adam
    step (``cfg``: ``v_steps``, ``v_lr``, ``kl_factor``, ``weight_decay``, ``clamp_norm``,
    ``nll_stop``). ROME adds it to an MLP output, MEMIT to a layer's residual output. One request of
    :func:`optimise_deltas`."""
    return optimise_deltas(lm, module, [(rows, kl, ref_norm)], cfg, below=below)[0]


def optimise_deltas(lm, module, groups, cfg, max_rows: int = 96, below: int = 0):
    """:func:`optimise_delta` for several requests at once: ``groups`` is a list of ``(rows, kl rows,
    ref_norm)``, one per request, each with its own ``δ``. The requests share the forward passes
    (up to ``max_rows`` rows per pass: larger matrix products, the same arithmetic); the loss is the
    *sum* of the per-request losses, so each ``δ`` gets exactly its own gradient, and Adam works per
    coordinate, so each request follows the trajectory it would follow alone. A request stops (its
    ``δ`` frozen) once its NLL is below ``nll_stop``, as it would alone. ``below``: the decoder layers
    under this index do not depend on ``δ`` and run once per chunk, not once per step
    (:func:`trustedit.methods.ft_edit.frozen_below`). Returns ``[(δ, record)]``."""
    out = []
    chunk, size = [], 0
    for g in groups:
        n = len(g[0]) + len(g[1])
        if chunk and size + n > max_rows:
            out += _optimise_chunk(lm, module, chunk, cfg, below)
            chunk, size = [], 0
        chunk.append(g)
        size += n
    if chunk:
        out += _optimise_chunk(lm, module, chunk, cfg, below)
    return out


def _optimise_chunk(lm, module, groups, cfg, below: int = 0):
    import torch
    import torch.nn.functional as F

    from trustedit.hooks import only_trainable

    model = lm.model
    device = next(model.parameters()).device
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    n = len(groups)
    rows = [r for g in groups for r in g[0]]
    kl = [r for g in groups for r in g[1]]
    row_req = torch.tensor([j for j, g in enumerate(groups) for _ in g[0]] + [j for j, g in enumerate(groups) for _ in g[1]])
    ids, mask = _batch(rows, pad, with_targets=True)
    kids, kmask = _batch(kl, pad, with_targets=False)
    width = max(ids.shape[1], kids.shape[1])
    ids = F.pad(ids, (0, width - ids.shape[1]), value=pad)
    mask = F.pad(mask, (0, width - mask.shape[1]))
    kids = F.pad(kids, (0, width - kids.shape[1]), value=pad)
    kmask = F.pad(kmask, (0, width - kmask.shape[1]))
    inp = torch.cat([ids, kids]).to(device)
    att = torch.cat([mask, kmask]).to(device)
    # target positions: row i's token j is predicted at len(prompt)+j-1
    pos_b, pos_t, tgt = [], [], []
    for i, r in enumerate(rows):
        for j, t in enumerate(r.target_ids):
            pos_b.append(i)
            pos_t.append(len(r.prompt_ids) + j - 1)
            tgt.append(t)
    pos_b, pos_t, tgt = torch.tensor(pos_b), torch.tensor(pos_t), torch.tensor(tgt, device=device)
    counts = torch.tensor([len(r.target_ids) for r in rows], dtype=torch.float32, device=device)
    rows_per_req = torch.bincount(row_req[:len(rows)], minlength=n).float().to(device)
    kl_per_req = torch.bincount(row_req[len(rows):], minlength=n).float().clamp(min=1).to(device)
    req_of_row = row_req[:len(rows)].to(device)
    req_of_kl = row_req[len(rows):].to(device)
    kl_b = torch.arange(len(rows), len(rows) + len(kl))
    kl_t = torch.tensor([len(r.prompt_ids) - 1 for r in kl])
    ref = torch.tensor([max(g[2], 1e-8) for g in groups], device=device)
    n_t = len(pos_b)
    all_b = torch.cat([pos_b, kl_b]).to(device)
    all_t = torch.cat([pos_t, kl_t]).to(device)
    with torch.no_grad():
        base_kl = torch.log_softmax(logits_at(model, inp, att, all_b, all_t)[n_t:], -1)
        hidden = getattr(model.config, "hidden_size", None) or model.config.n_embd
    delta = torch.zeros(n, hidden, device=device, requires_grad=True)
    optim = torch.optim.Adam([delta], lr=cfg.v_lr)
    active = torch.ones(n, dtype=torch.bool, device=device)
    history = [[] for _ in range(n)]
    subject_rows = rows + kl

    def losses(logits):
        logp = torch.log_softmax(logits[:n_t], -1).gather(-1, tgt[:, None])[:, 0]
        per_row = torch.zeros(len(rows), device=device).index_add(0, pos_b.to(device), -logp) / counts
        nll = torch.zeros(n, device=device).index_add(0, req_of_row, per_row) / rows_per_req
        kl_rows = F.kl_div(torch.log_softmax(logits[n_t:], -1), base_kl, log_target=True, reduction="none").sum(-1)
        klr = torch.zeros(n, device=device).index_add(0, req_of_kl, kl_rows) / kl_per_req
        return nll, klr

    from trustedit.methods.ft_edit import frozen_below

    with only_trainable(model, []), frozen_below(model, below, inp, att), \
            _add_at(module, subject_rows, delta, row_req.to(device)):
        for step in range(cfg.v_steps):
            optim.zero_grad()
            nll, klr = losses(logits_at(model, inp, att, all_b, all_t))
            decay = (delta.norm(dim=1) / ref) ** 2
            loss = nll + cfg.kl_factor * klr + cfg.weight_decay * decay
            if not torch.isfinite(loss).all():
                from trustedit.errors import NumericalError

                raise NumericalError(f"the value loss became {loss.tolist()} at step {step}")
            for j in range(n):
                if active[j]:
                    history[j].append({"step": step, "nll": round(nll[j].item(), 4), "kl": round(klr[j].item(), 5),
                                       "delta_ratio": round((delta[j].norm() / ref[j]).item(), 4)})
            active &= nll.detach() >= cfg.nll_stop
            if not active.any():
                break
            (loss * active).sum().backward()
            frozen = delta.detach()[~active].clone()
            optim.step()
            with torch.no_grad():
                delta[~active] = frozen  # a request that stopped keeps its δ, as it would alone
                cap = cfg.clamp_norm * ref
                norms = delta.norm(dim=1)
                scale = torch.where(norms > cap, cap / norms.clamp(min=1e-12), torch.ones_like(norms))
                delta.mul_(scale[:, None])
    with torch.no_grad(), _add_at(module, subject_rows, delta, row_req.to(device)):
        logits = logits_at(model, inp, att, all_b, all_t)
        logp = torch.log_softmax(logits[:n_t], -1).gather(-1, tgt[:, None])[:, 0]
    token_req = req_of_row[pos_b.to(device)]
    prob_sum = torch.zeros(n, device=device).index_add(0, token_req, logp.exp())
    prob = prob_sum / torch.bincount(token_req, minlength=n).float()
    out = []
    for j in range(n):
        h = history[j] or [{"nll": float("nan")}]
        p = prob[j].item()
        out.append((delta[j].detach().double().cpu(),
                    {"steps": len(history[j]), "final_nll": h[-1]["nll"], "target_prob": round(p, 4),
                     "converged": p >= 0.5, "delta_norm_ratio": round((delta[j].norm() / ref[j]).item(), 4)}))
    return out


# ---- step 4 and the driver ----------------------------------------------------------------------


def edit_one(lm, request, layer: int, templates, C, cfg: ROMEConfig):
    """``(u, Λ, record)`` for one request on the model as it is: ``ΔW = Λ uᵀ``."""
    from trustedit.methods.closed_form import rome_factors

    rows = request_rows(lm, request, templates)
    key = compute_key(lm, layer, rows)
    delta, record = compute_value(lm, layer, rows, kl_rows(lm, request), key, cfg)
    _, W, _ = _weight(lm, layer)
    W64 = W.detach().double().cpu()
    lam, u = rome_factors(W64, key, W64 @ key + delta, C)  # Λ = δ / (uᵀk*) up to rounding
    record["key_norm"] = round(key.norm().item(), 4)
    return u, lam, record


def fit(lm, requests, cfg: ROMEConfig, stages=None):
    """Edit every request in turn; a :class:`~trustedit.patch.Patch` holding the low-rank sum of the
    rank-one updates (the model is left as it was, bit for bit)."""
    import torch
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.methods.key_stats import key_second_moments
    from trustedit.patch import Delta, Patch

    from trustedit.methods.requests import as_requests

    set_seed(cfg.seed)
    requests = as_requests(requests, "rome")
    t0 = time.time()
    located = None
    if cfg.layer == "auto":
        from trustedit.locate import auto_layer

        L, located = auto_layer(lm, requests, kind="mlp", limit=cfg.trace_requests, samples=cfg.trace_samples,
                                seed=cfg.seed)
    else:
        L = layer_index(cfg.layer, arch.num_layers(lm.model))
    C, stats = (None, None)
    if cfg.use_c:
        Cs, stats = key_second_moments(lm, [L], cfg.stats_tokens)
        C = Cs[L]
    t_stats = time.time() - t0
    templates = context_templates(lm, cfg.templates, cfg.seed)
    pname, W, conv1d = _weight(lm, L)
    us, lams, records = [], [], []
    with restored(lm, [L]):
        for req in tqdm(requests, desc="rome", unit="edit"):
            t1 = time.time()
            u, lam, rec = edit_one(lm, req, L, templates, C, cfg)
            with torch.no_grad():
                W.add_(torch.outer(lam, u).to(W.dtype).to(W.device))
            rec.update(id=req.id, seconds=round(time.time() - t1, 3))
            us.append(u)
            lams.append(lam)
            records.append(rec)
    B = torch.stack(lams, 1).float()  # d_out x n
    A = torch.stack(us, 0).float()  # n x d_in
    delta = Delta("lowrank", {"B": A.T.contiguous(), "A": B.T.contiguous()} if conv1d else {"B": B, "A": A})
    patch = Patch("rome", {pname: delta})
    patch.manifest["training"] = {"layer": L, "layer_from_trace": located, "requests": len(requests),
                                  "use_c": cfg.use_c, "stats": stats,
                                  "stats_seconds": round(t_stats, 2), "templates": len(templates),
                                  "converged": sum(r["converged"] for r in records), "per_request": records,
                                  "seconds": round(time.time() - t0, 2)}
    return patch


METHOD = Method(
    name="rome", config=ROMEConfig, fit=fit, edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",  # on `trustedit erase`: the forget questions
    citation="Meng et al. 2022, Locating and Editing Factual Associations in GPT (NeurIPS)",
    summary="rank-one update of one MLP down-projection from a key at the subject and an optimised value")
