"""AlphaEdit: null-space constrained knowledge editing (Fang et al., "AlphaEdit: Null-Space
Constrained Knowledge Editing for Language Models", ICLR 2025).

Written from the paper (§3, eqs. 8-14): MEMIT's edit (:mod:`trustedit.methods.memit`: the same
target residuals, keys and residual spread over the layers), with the update projected onto the
null space of the preserved knowledge's keys, so that what the model knew is left unchanged to
first order, and with the keys of earlier edits in the objective, so that a long sequence of
batches does not undo itself:

* ``P = Û Ûᵀ`` per layer (:func:`~trustedit.methods.closed_form.null_space_projector`): ``Û`` the
  eigenvectors of ``C = E[k kᵀ]`` (WikiText-2, :mod:`trustedit.methods.key_stats`) with eigenvalue
  below ``threshold``; computed once per layer and kept for the whole sequence;
* ``Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + αI)⁻¹``, applied as ``ΔP``
  (:func:`~trustedit.methods.closed_form.alphaedit_update`), where ``K_p K_pᵀ`` sums the keys of
  every earlier batch of the same fit (:class:`~trustedit.methods.closed_form.EditedKeys`).

``fit`` edits the requests in batches of ``edit_batch`` one after another on the same model (the
paper's sequential protocol: 2,000 edits in batches of 100). An empty null space (every eigenvalue
of ``C`` above ``threshold``) is an error that names the layer, never a silent no-op; the
manifest records each layer's null-space dimension.

Deviation, documented: ``α`` defaults to 1 (the paper's identity); the reference code's Llama-3
settings use 10.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, opt, set_seed
from trustedit.methods.memit import MEMITConfig, layer_list


@dataclass
class AlphaEditConfig(MEMITConfig):
    threshold: float = opt(1e-2, "Null space: eigenvectors of C = E[kkᵀ] with eigenvalue below this (the paper's "
                           "1e-2).", gt=0)
    alpha: float = opt(1.0, "α of the αI term that keeps the solve well posed.", gt=0)
    edit_batch: int = opt(100, "Requests per batch; batches are applied one after another (sequential editing).",
                          ge=1)


def projectors(C: dict, threshold: float) -> tuple[dict, dict]:
    """``{layer: P}`` and ``{layer: null-space dimension}``; an empty null space is an error."""
    from trustedit.errors import UsageError
    from trustedit.methods.closed_form import null_space_projector

    P, dims = {}, {}
    for L, c in C.items():
        P[L] = null_space_projector(c, threshold)
        dims[L] = int(round(float(P[L].trace())))
        if dims[L] == 0:
            raise UsageError(f"alphaedit: layer {L} has no null space at threshold {threshold} (every eigenvalue of "
                             f"its key moment is larger); raise --set threshold=")
    return P, dims


def fit(lm, requests, cfg: AlphaEditConfig, stages=None):
    """Edit every request, ``edit_batch`` at a time, each batch on the model with the earlier ones
    in place; a :class:`~trustedit.patch.Patch` of the summed dense deltas (the model is left as it
    was, bit for bit)."""
    from trustedit import arch
    from trustedit.methods.closed_form import EditedKeys, alphaedit_update
    from trustedit.methods.key_stats import key_second_moments
    from trustedit.methods.memit import apply_batch
    from trustedit.methods.rome import context_templates, dense_patch, restored

    from trustedit.methods.requests import as_requests

    set_seed(cfg.seed)
    requests = as_requests(requests, "alphaedit")
    layers = layer_list(cfg, arch.num_layers(lm.model))
    t0 = time.time()
    # a sequential run keeps the statistics, the projectors and the edited keys across its fits
    state = requests.state.setdefault("alphaedit", {})
    if state.get("layers") not in (None, layers):
        from trustedit.errors import UsageError

        raise UsageError("alphaedit: the layers changed in the middle of a sequential run")
    if "P" not in state:
        C, stats = key_second_moments(lm, layers, cfg.stats_tokens)
        P, dims = projectors(C, cfg.threshold)
        state.update(layers=layers, C=C, stats=stats, P=P, dims=dims,
                     memory={L: EditedKeys(C[L].shape[0]) for L in layers})
    C, stats, P, dims, memory = state["C"], state["stats"], state["P"], state["dims"], state["memory"]
    t_stats = time.time() - t0
    templates = context_templates(lm, cfg.templates, cfg.seed)
    total = {L: None for L in layers}
    records, batches = [], []

    def update(W, K, R, layer):
        return alphaedit_update(W, K, R, P[layer], previous=memory[layer].matrix(), alpha=cfg.alpha)

    with restored(lm, layers):
        for b in range(0, len(requests), cfg.edit_batch):
            t1 = time.time()
            chunk = requests[b:b + cfg.edit_batch]
            deltas, recs, keys = apply_batch(lm, chunk, cfg, C, templates, update=update)
            for L, dW in deltas.items():
                total[L] = dW if total[L] is None else total[L] + dW
                memory[L].add(keys[L])  # the batch's keys join the memory of edited keys (K_p)
            records += recs
            batches.append({"requests": len(chunk), "seconds": round(time.time() - t1, 2)})
    patch = dense_patch(lm, total, "alphaedit")
    patch.manifest["training"] = {"layers": layers, "requests": len(requests), "null_space_dims": dims,
                                  "stats": stats, "stats_seconds": round(t_stats, 2), "batches": batches,
                                  "edited_keys_in_memory": {L: int(m.n) for L, m in memory.items()},
                                  "converged": sum(r["converged"] for r in records), "per_request": records,
                                  "seconds": round(time.time() - t0, 2)}
    return patch


METHOD = Method(
    name="alphaedit", config=AlphaEditConfig, fit=fit, edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",  # on `trustedit erase`: the forget questions
    citation="Fang et al. 2025, AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models (ICLR)",
    summary="MEMIT's update projected onto the null space of the preserved keys, for sequential editing")
