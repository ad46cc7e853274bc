"""DEPN: Detecting and Editing Privacy Neurons (Wu et al., EMNLP 2023, arXiv:2310.20138), for causal LMs.

Steps (pure functions below):

1. :func:`attributions` — integrated gradients (:func:`trustedit.methods.attribution.ig_attributions`,
   shared with knowledge neurons) of the probability of each private token. The
   *target positions* are the ones that predict the secret's tokens (the last prompt token and
   every secret token but the last). A *neuron* is one input unit of a layer's MLP
   down-projection. The activation vectors at the target positions are replaced by
   ``alpha * observed`` for ``alpha = k/m``, ``k = 1..m`` (m = ``steps``, 20 as in the paper);
   IG = observed × mean gradient (the paper's Riemann sum).
2. :func:`select` — per item, keep the neurons whose attribution is at least ``item_threshold`` ×
   the item's largest (0.1 in the paper); across items, keep those kept for at least ``share``
   of the items (50 %); the thresholds loosen (share first, then the item threshold) until
   ``neurons`` neurons qualify, those of stricter thresholds first.
3. :func:`zero_patch` — zero the selected columns of each down-projection: a reversible Patch.

Deviations, documented:

* **one path for every layer and position at once.** The paper (and its BERT code) integrates one
  layer at a time, for one token at a time. Here every layer's activations at every target position
  move along the path together, and the m steps are the rows of one batch: one forward/backward
  per item instead of L × T × m. The attributions are IG of one function, the summed probability
  of the secret's tokens, with respect to all those activations jointly; completeness holds for it
  (attributions sum to p(observed) − p(all zeroed); tested). The reference code's per-layer loop
  is where it spends hours.
* the prompt before the first target position is computed once (KV cache) and shared by the m rows:
  causal attention leaves it unchanged by the intervention, so nothing is lost.
* the reference code's bugs are not reproduced: its aggregator compares attribution scores with
  string thresholds (and crashes), its name-MRR ranks the wrong token, its exposure is a
  teacher-forced digit-wise proxy (see :mod:`trustedit.suites.privacy` for ours).

``depn-random`` is the paper's ablation: as many neurons in the same layers, drawn at random.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trustedit.methods.base import Method, MethodConfig, layer_index, opt, set_seed


@dataclass
class DEPNConfig(MethodConfig):
    steps: int = opt(20, "Integrated-gradient steps m (the activations go 0 -> observed in m steps).", ge=1)
    first_layer: float = opt(0, "First layer whose neurons are attributed (index, or fraction of depth).", layer=True)
    last_layer: float = opt(-1, "Last layer whose neurons are attributed (index, negative from the top).", layer=True)
    item_threshold: float = opt(0.1, "Per item, keep neurons with attribution >= this x the item's largest.",
                                gt=0, le=1)
    share: float = opt(0.5, "Keep neurons kept for at least this share of the items (then adapted to reach "
                       "`neurons`).", gt=0, le=1)
    neurons: int = opt(200, "Neurons to zero; the thresholds adapt until this many qualify.", ge=1)


def _layers(model, cfg):
    from trustedit import arch

    n = arch.num_layers(model)
    a, b = layer_index(cfg.first_layer, n), layer_index(cfg.last_layer, n)
    if a > b:
        from trustedit.errors import UsageError

        raise UsageError(f"DEPN first_layer ({a}) is above last_layer ({b})")
    return list(range(a, b + 1))


def attributions(lm, item, layers, steps: int = 20):
    """IG attributions of one secret (:class:`trustedit.data.privacy.SecretTokens`):
    ``(tensor [len(layers), d_ff], p_observed, p_zero)``; ``p_*`` are the summed probabilities of
    the secret's tokens with the observed activations and with all of them zeroed. The joint path of
    :func:`trustedit.methods.attribution.ig_attributions` over the target positions."""
    from trustedit.methods.attribution import ig_attributions

    prompt, secret = list(item.prompt_ids), list(item.secret_ids)
    ids = prompt + secret[:-1]
    # the target positions: the last prompt token and every secret token but the last, each predicting
    # the next secret token (a secret at the very start of its text has no position predicting its first)
    n = len(ids) - max(0, len(prompt) - 1)
    return ig_attributions(lm, ids, secret[len(secret) - n:], layers, steps, path="joint")


def select(attrs, item_threshold: float, share: float, neurons: int):
    """Neurons to zero from per-item attributions (each ``[layers, d_ff]``): a list of
    ``(layer position, unit)`` and the thresholds finally used.

    The thresholds loosen along a ladder (the share of items first, in steps of 0.1 down to one
    item, then the item threshold halved) until ``neurons`` neurons qualify; neurons that qualify
    at a stricter rung come first, and within a rung the larger summed attribution."""
    import torch

    A = torch.stack(attrs)  # [items, layers, d_ff]
    n_items, d = A.shape[0], A.shape[2]
    total = A.sum(0).flatten()
    peak = A.flatten(1).max(1).values.clamp_min(1e-30).view(-1, 1, 1)
    chosen: list = []
    taken = torch.zeros_like(total, dtype=torch.bool)
    t, s = item_threshold, share
    while True:
        kept = (A >= t * peak).sum(0).flatten()  # items for which each neuron is kept
        ok = (kept >= max(1, -(-s * n_items // 1))) & ~taken & (total > 0)
        new = torch.nonzero(ok).flatten()
        new = new[torch.argsort(total[new], descending=True)]
        for i in new[: neurons - len(chosen)].tolist():
            chosen.append((i // d, i % d))
            taken[i] = True
        if len(chosen) >= neurons or (t < 1e-6 and s <= 1.0 / n_items):
            break
        if s > 1.0 / n_items + 1e-9:
            s = max(1.0 / n_items, round(s - 0.1, 10))
        else:
            t, s = t / 2, share
    return chosen, {"item_threshold": t, "share": s, "qualifying": len(chosen)}


def zero_patch(model, layers, chosen, method: str):
    """A Patch that zeroes the chosen down-projection input units (columns; rows for Conv1D)."""
    import torch

    from trustedit import arch
    from trustedit.patch import Delta, Patch

    spec = arch.arch_for(model)
    params = dict(model.named_parameters())
    by_layer: dict = {}
    for li, unit in chosen:
        by_layer.setdefault(layers[li], []).append(unit)
    deltas = {}
    for l, units in sorted(by_layer.items()):
        name = arch.layer_path(model, l, spec.down) + ".weight"
        W = params[name].detach()
        d = torch.zeros_like(W, dtype=torch.float32)
        idx = torch.tensor(sorted(units))
        if spec.conv1d:
            d[idx, :] = -W[idx, :].float()
        else:
            d[:, idx] = -W[:, idx].float()
        deltas[name] = Delta("dense", {"delta": d})
    return Patch(method, deltas), {str(l): len(u) for l, u in sorted(by_layer.items())}


def detect(lm, train, cfg: DEPNConfig, stages=None):
    """Attributions for every target, then the selection: ``(layers, chosen, record)``."""
    from tqdm.auto import tqdm

    layers = _layers(lm.model, cfg)
    attrs, t0 = [], time.time()
    for item in tqdm(train.targets, desc="depn: integrated gradients", leave=False):
        a, _, _ = attributions(lm, item, layers, cfg.steps)
        attrs.append(a)
    seconds = time.time() - t0
    chosen, used = select(attrs, cfg.item_threshold, cfg.share, cfg.neurons)
    record = {"items": len(attrs), "layers": [layers[0], layers[-1]], "neurons": len(chosen), "thresholds": used,
              "detect_seconds": round(seconds, 2), "seconds_per_item": round(seconds / max(1, len(attrs)), 3)}
    return layers, chosen, record


def fit(lm, train, cfg: DEPNConfig, stages=None):
    set_seed(cfg.seed)
    t0 = time.time()
    layers, chosen, record = detect(lm, train, cfg, stages)
    patch, per_layer = zero_patch(lm.model, layers, chosen, "depn")
    patch.manifest["training"] = {**record, "per_layer": per_layer, "seconds": round(time.time() - t0, 2)}
    return patch


def fit_random(lm, train, cfg: DEPNConfig, stages=None):
    """The paper's ablation: as many neurons per layer as DEPN selects, at random (seeded)."""
    import torch

    t0 = time.time()
    layers, chosen, record = detect(lm, train, cfg, stages)
    from trustedit import arch

    d_ff = arch.get_module(lm.model, arch.layer_path(lm.model, layers[0], arch.arch_for(lm.model).down))
    d_ff = d_ff.weight.shape[0 if arch.arch_for(lm.model).conv1d else 1]
    g = torch.Generator().manual_seed(cfg.seed)
    count: dict = {}
    for li, _ in chosen:
        count[li] = count.get(li, 0) + 1
    rand = [(li, int(u)) for li, c in sorted(count.items()) for u in torch.randperm(d_ff, generator=g)[:c]]
    patch, per_layer = zero_patch(lm.model, layers, rand, "depn-random")
    patch.manifest["training"] = {**record, "per_layer": per_layer, "random_seed": cfg.seed,
                                  "seconds": round(time.time() - t0, 2)}
    return patch


CITATION = "Wu et al. 2023, DEPN: Detecting and Editing Privacy Neurons in Pretrained Language Models (EMNLP)"
METHOD = Method(name="depn", config=DEPNConfig, fit=fit, citation=CITATION,
                summary="zero the MLP neurons whose integrated gradients carry the secrets (privacy neurons)",
                train="trustedit.suites.privacy:train_items")
RANDOM = Method(name="depn-random", config=DEPNConfig, fit=fit_random, citation=CITATION + " (random-neuron ablation)",
                summary="DEPN's ablation: as many random neurons in the same layers, zeroed",
                train="trustedit.suites.privacy:train_items")
