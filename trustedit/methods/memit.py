"""MEMIT: mass-editing memory in a transformer (Meng, Sharma, Andonian, Belinkov & Bau, ICLR 2023).

Written from the paper (§4, Algorithm 1, eqs. 9-16), in pure steps that reuse ROME's:

1. **Target residual** (:func:`compute_zs`): for every request, a vector ``δᵢ`` added to the
   *residual stream* after the last edited layer ``L`` at the subject's last token, optimised as in
   ROME (target NLL over the context templates + KL on "<subject> is a" + weight decay, norm
   clamp; :func:`trustedit.methods.rome.optimise_delta`) relative to the residual's norm; the goal
   is ``zᵢ = hᵢᴸ + δᵢ``.
2. **Spread over the layers** (Algorithm 1, lines 7-13), for each edited layer ``l`` from the
   lowest: the keys ``Kˡ`` (the down-projection's input at the subject's last token, averaged over
   the contexts, one column per request), the residual still missing ``R = Z − Hᴸ`` recomputed with
   the lower layers' edits in place, its share ``Rˡ = R / (L − l + 1)``
   (:func:`~trustedit.methods.closed_form.spread_residual`), and the update
   ``ΔWˡ = Rˡ Kˡᵀ (λCˡ + Kˡ Kˡᵀ)⁻¹`` (:func:`~trustedit.methods.closed_form.memit_update`), applied
   before the next layer.

``C`` is ``E[k kᵀ]`` on WikiText-2 (:mod:`trustedit.methods.key_stats`); ``λ`` (``mom2_weight``, by
default MEMIT's GPT-J value scaled to the key width: :func:`mom2_weight`)
plays the role of the paper's ``λ · n`` (the reference code's ``mom2_update_weight`` times its
sample count is folded into the normalised moment). All requests of a fit are one batch; for
sequential editing the driver calls ``fit`` once per batch on the edited model.

Deviations, documented: the value step is ROME's additive form (see :mod:`trustedit.methods.rome`)
with a scale-free weight decay; the default λ scales MEMIT's GPT-J setting by the key width
(:func:`mom2_weight`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, layer_index, opt, set_seed


def _layers_ok(v) -> str | None:
    if not isinstance(v, list) or not v:
        return "a non-empty list of layers (ints, or fractions of depth in [0,1))"
    return None


@dataclass
class MEMITConfig(MethodConfig):
    layers: list = opt([0.13, 0.17, 0.2, 0.23, 0.27], "Edited layers (ints, or fractions of depth in [0,1)); the "
                       "paper edits GPT-J's layers 3-8 of 28, EasyEdit Llama-7B's 4-8 of 32.", check=_layers_ok)
    mom2_weight: float = opt(0.0, "λ: weight of the preserved keys' second moment against the new keys; 0: auto, "
                             "MEMIT's 15,000 for GPT-J's 16,384-wide keys scaled to this model's key width "
                             "(1,406 for SmolLM2's 1,536).", ge=0)
    stats_tokens: int = opt(100_000, "Token positions of WikiText-2 for C (cached on disk).", ge=1000)
    templates: int = opt(10, "Context prefixes the model writes, besides the bare prompt.", ge=0)
    v_steps: int = opt(25, "Adam steps for each target residual.", ge=1)
    v_lr: float = opt(0.5, "Adam learning rate for the target residuals.", gt=0)
    kl_factor: float = opt(0.0625, "Weight of the essence-drift KL term.", ge=0)
    weight_decay: float = opt(0.01, "Weight of ||δ||² / ||h||².", ge=0)
    clamp_norm: float = opt(0.75, "Clamp ||δ|| to this multiple of the residual's norm (MEMIT: 0.75).", gt=0)
    nll_stop: float = opt(0.05, "Stop a target's optimisation once its mean NLL is below this.", gt=0)


GPTJ_KEY_WIDTH = 16384  # the key width MEMIT's λ = 15,000 was set for


def mom2_weight(cfg, key_width: int) -> float:
    """λ: ``cfg.mom2_weight``, or (0: auto) 15,000 × key_width / 16,384. ``λC`` competes with ``KKᵀ``,
    whose scale grows with the key width (‖k‖² ≈ d · E[k²]), so a λ fixed for GPT-J's 16,384-wide
    keys shrinks every update on a model with 1,536-wide keys about tenfold: measured on SmolLM2,
    one batch of 100 ZsRE edits at λ = 15,000 moved edit success from 21.0 % to 26.6 %
    (teacher-forced), a batch of 20 at λ = 1,500 to 93.6 % (benchmarks/RESULTS.md §17)."""
    return cfg.mom2_weight or 15000.0 * key_width / GPTJ_KEY_WIDTH


def layer_list(cfg, n_layers: int) -> list[int]:
    from trustedit.errors import UsageError

    # --set layers=4,5,6 arrives as floats (the default's items are fractions): integral values >= 1
    # are indices, as for a single layer option
    out = sorted({layer_index(int(x) if isinstance(x, float) and x.is_integer() and x >= 1 else x, n_layers)
                  for x in cfg.layers})
    if not out:
        raise UsageError("memit: no layer to edit")
    return out


def _residual_at(lm, layer: int, rows_per_request):
    """Mean residual output of decoder ``layer`` at the subject's last token, per request (d x n)."""
    from trustedit import arch

    from trustedit.methods.rome import mean_at

    return mean_at(lm, f"{arch.arch_for(lm.model).layers}.{layer}", rows_per_request, "output")


def compute_zs(lm, last_layer: int, requests, rows, cfg, group: int = 16):
    """``(Z, records)``: for every request the residual ``z = h + δ`` after ``last_layer`` at the subject
    that makes the model write the target (``Z`` is d x n), ``δ`` optimised as ROME's value; the
    optimisations of ``group`` requests share their forward passes
    (:func:`trustedit.methods.rome.optimise_deltas`: the same result per request as alone, in larger
    matrix products), and the layers below ``last_layer`` run once."""
    import torch
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.methods.rome import kl_rows, optimise_deltas

    name = f"{arch.arch_for(lm.model).layers}.{last_layer}"
    module = dict(lm.model.named_modules())[name]
    H = _residual_at(lm, last_layer, rows)
    zs, records = [], []
    for s in tqdm(range(0, len(requests), group), desc="memit targets", unit="group"):
        t1 = time.time()
        idx = range(s, min(s + group, len(requests)))
        res = optimise_deltas(lm, module, [(rows[i], kl_rows(lm, requests[i]), H[:, i].norm().item()) for i in idx], cfg,
                              below=last_layer)
        secs = round((time.time() - t1) / len(idx), 3)
        for i, (delta, rec) in zip(idx, res):
            rec.update(id=requests[i].id, seconds=secs)
            zs.append(H[:, i] + delta)
            records.append(rec)
    return torch.stack(zs, 1), records


def apply_batch(lm, requests, cfg, C: dict, templates, update=None, edited=None):
    """Edit ``requests`` as one batch on the model *in place*; returns ``(deltas, records, keys)``
    where ``deltas[layer] = ΔW`` (d_out x d_in, float64) and ``keys[layer]`` the batch's keys there. ``update(W, K, R, layer)`` computes
    a layer's ΔW (default: MEMIT's closed form with ``C[layer]``); AlphaEdit passes its own."""
    import torch

    from trustedit.methods.closed_form import memit_update, spread_residual
    from trustedit.methods.rome import _down, _weight, mean_at, request_rows

    from trustedit import arch

    layers = layer_list(cfg, arch.num_layers(lm.model))
    last = layers[-1]
    rows = [request_rows(lm, r, templates) for r in requests]
    Z, records = compute_zs(lm, last, requests, rows, cfg)
    if update is None:
        def update(W, K, R, layer):
            return memit_update(W, K, R, C[layer], mom2_weight(cfg, K.shape[0]))
    deltas, keys = {}, {}
    for pos, layer in enumerate(layers):
        K = mean_at(lm, _down(lm, layer)[0], rows, "input")  # d_in x n: each request's key, as ROME's
        R = Z - _residual_at(lm, last, rows)  # what is still missing at the last layer
        Rl = spread_residual(R, pos, len(layers))
        _, W, _ = _weight(lm, layer)
        dW = update(W.detach().double().cpu(), K, Rl, layer).double()
        with torch.no_grad():
            W.add_(dW.to(W.dtype).to(W.device))
        deltas[layer] = dW
        keys[layer] = K
    return deltas, records, keys


def fit(lm, requests, cfg: MEMITConfig, stages=None):
    """One batch edit of every request; a :class:`~trustedit.patch.Patch` of dense deltas on the
    edited down-projections (the model is left as it was, bit for bit)."""
    from trustedit import arch
    from trustedit.methods.key_stats import key_second_moments
    from trustedit.methods.rome import context_templates, dense_patch, restored

    from trustedit.methods.requests import as_requests

    set_seed(cfg.seed)
    requests = as_requests(requests, "memit")
    layers = layer_list(cfg, arch.num_layers(lm.model))
    t0 = time.time()
    C, stats = key_second_moments(lm, layers, cfg.stats_tokens)
    t_stats = time.time() - t0
    templates = context_templates(lm, cfg.templates, cfg.seed)
    with restored(lm, layers):
        deltas, records, _ = apply_batch(lm, requests, cfg, C, templates)
    patch = dense_patch(lm, deltas, "memit")
    patch.manifest["training"] = {"layers": layers, "requests": len(requests), "stats": stats,
                                  "stats_seconds": round(t_stats, 2), "templates": len(templates),
                                  "converged": sum(r["converged"] for r in records), "per_request": records,
                                  "seconds": round(time.time() - t0, 2)}
    return patch


METHOD = Method(
    name="memit", config=MEMITConfig, fit=fit, edits_requests=True,
    train="trustedit.suites.sanitation:edit_requests",  # on `trustedit erase`: the forget questions
    citation="Meng et al. 2023, Mass-Editing Memory in a Transformer (ICLR)",
    summary="batch edits spread over several MLP down-projections, ΔW = R Kᵀ(λC + KKᵀ)⁻¹")
