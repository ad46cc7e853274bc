"""Integrated-gradients attribution of MLP neurons, shared by DEPN (:mod:`trustedit.privacy.depn`)
and knowledge neurons (:mod:`trustedit.methods.kn`).

A *neuron* is one input unit of a layer's MLP down-projection (one FFN intermediate activation:
GPT-2's ``gelu(c_fc x)``, Llama's ``silu(gate x) * up x``). The attributed function is the summed
probability of some target tokens, each predicted at a given position of one sequence. The
activations of the chosen layers *at those positions* are replaced by ``alpha * observed`` for
``alpha = k/m``, ``k = 1..m`` (``m = steps``), and

    IG(neuron) = observed activation × mean over the m steps of d p / d activation

(summed over the positions): the right Riemann sum of Sundararajan et al.'s integral with a zero
baseline, as in Dai et al. 2022 (knowledge neurons) and Wu et al. 2023 (DEPN).

Two paths through activation space:

* ``joint`` (DEPN's): every layer's activations at every target position move along one path
  together; the m steps are the rows of one batch. Completeness holds for the one function:
  the attributions of all layers sum to ``p(observed) − p(all attributed activations zeroed)``
  as m grows (the Riemann sum's error is O(1/m)).
* ``per_layer`` (the knowledge-neurons paper's): one path per layer, the other layers' activations
  left live (so layers after the scaled one see its effect, as in the paper's per-layer loop).
  The ``len(layers) × m`` rows are batched, at most ``max_rows`` per forward/backward;
  completeness holds per layer: ``attr[l].sum() → p(observed) − p(layer l zeroed)``.

Positions before the first target position are computed once (a KV cache shared by all rows):
causal attention leaves them unchanged by the intervention. Positions between the target positions
(when they are not contiguous) keep their live activations.
"""

from __future__ import annotations

PATHS = ("joint", "per_layer")


def ig_attributions(lm, prompt_ids, target_ids, layers, steps: int = 20, positions=None, *, path: str = "joint",
                    max_rows: int = 256):
    """Integrated gradients of ``sum_j p(target_ids[j] | prompt_ids[:positions[j] + 1])`` with
    respect to the down-projection inputs of ``layers`` at ``positions``.

    ``prompt_ids``: the ids the model reads (one sequence; add BOS yourself if wanted).
    ``target_ids``: one token per position; the logits at ``positions[j]`` score ``target_ids[j]``.
    ``positions``: strictly increasing indices into ``prompt_ids``; default: the last
    ``len(target_ids)`` positions. ``path``: ``joint`` or ``per_layer`` (module docstring).
    ``max_rows``: at most this many sequences per forward/backward (``per_layer`` batches
    ``len(layers) × steps`` rows; ``joint`` always runs its ``steps`` rows at once).

    Returns ``(attr, p_observed, p_zero)``: ``attr`` a float32 CPU tensor ``[len(layers), d_ff]``
    (the attributions summed over the positions); ``p_observed`` the summed target probability of
    the unmodified forward; ``p_zero`` the same with every attributed activation zeroed (a float) for
    ``joint``, and for ``per_layer`` a list with one float per layer (that layer zeroed alone)."""
    import torch

    from trustedit import arch
    from trustedit.prompts import PrefixCache, cache_kwarg

    if path not in PATHS:
        from trustedit.errors import UsageError

        raise UsageError(f"integrated-gradients path must be one of {PATHS}, got {path!r}")
    ids_all, target = list(prompt_ids), list(target_ids)
    if positions is None:
        positions = list(range(len(ids_all) - len(target), len(ids_all)))
    positions = [int(p) for p in positions]
    if (not target or len(positions) != len(target) or positions[0] < 0 or positions[-1] >= len(ids_all)
            or any(b <= a for a, b in zip(positions, positions[1:]))):
        raise ValueError(f"need one strictly increasing position in [0, {len(ids_all)}) per target token; "
                         f"got positions {positions} for {len(target)} target(s)")
    model = lm.model
    spec = arch.arch_for(model)
    mods = [arch.get_module(model, arch.layer_path(model, l, spec.down)) for l in layers]
    device = next(model.parameters()).device
    head = ids_all[:positions[0]]
    cont = ids_all[positions[0]:positions[-1] + 1]  # later tokens cannot change these predictions
    rel = [p - positions[0] for p in positions]
    full = rel == list(range(len(cont)))  # every continuation position is a target position
    rel_t = torch.tensor(rel, device=device)
    target_t = torch.tensor(target, device=device)
    m = steps
    alphas = torch.arange(1, m + 1, device=device, dtype=torch.float32) / m
    obs: list = [None] * len(mods)
    cache = PrefixCache(model, head) if head else None

    def place(x, rows, value):
        """``x`` with the target positions of ``rows`` (a slice) replaced by ``value`` (0: zeroed)."""
        if full and rows == slice(None):
            return torch.zeros_like(x) if isinstance(value, int) else value
        y = x.clone()
        if full:
            y[rows] = value
        else:
            y[rows, rel_t] = value
        return y

    def run(rows, hook_for):
        """Summed target probability per row, with ``hook_for(j)`` (a forward pre-hook or None) on layer j."""
        ids = torch.tensor([cont] * rows, device=device)
        kw = {}
        if cache is not None:
            kw = {cache_kwarg(model): cache.expand(rows), "use_cache": True,
                  "attention_mask": torch.ones((rows, len(head) + len(cont)), dtype=torch.long, device=device)}
        handles = [mod.register_forward_pre_hook(h) for mod, h in ((mod, hook_for(j)) for j, mod in enumerate(mods))
                   if h is not None]
        try:
            logits = model(input_ids=ids, **kw).logits.float()
        finally:
            for h in handles:
                h.remove()
        if not full:
            logits = logits[:, rel_t]
        probs = torch.softmax(logits, -1)
        return probs.gather(-1, target_t.view(1, -1, 1).expand(rows, -1, 1)).squeeze(-1).sum(-1)

    def observe(j):
        def hook(module, inputs):
            x = inputs[0]
            obs[j] = (x.detach()[0] if full else x.detach()[0, rel_t]).float()
        return hook

    def zero_all(j):
        def hook(module, inputs):
            x = inputs[0]
            return (place(x, slice(None), 0),)
        return hook

    was = model.training
    model.eval()
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            p_obs = float(run(1, observe)[0])
            if path == "joint":
                p_zero = float(run(1, zero_all)[0])
            else:
                def zero_one(j):
                    def hook(module, inputs):
                        x = inputs[0]
                        return (place(x, slice(j, j + 1), 0),)
                    return hook
                p_zero = [float(v) for v in run(len(mods), zero_one)]
        if path == "joint":
            groups = [list(range(len(mods)))]
        else:
            g = max(1, max_rows // m)
            groups = [list(range(s, min(s + g, len(mods)))) for s in range(0, len(mods), g)]
        attr = [None] * len(mods)
        for group in groups:
            repl: dict = {}

            def ig(j, group=group, repl=repl):
                if j not in group:
                    return None
                block = slice(None) if path == "joint" else slice(group.index(j) * m, (group.index(j) + 1) * m)

                def hook(module, inputs):
                    x = inputs[0]
                    r = alphas.view(-1, 1, 1) * obs[j].unsqueeze(0)
                    r.requires_grad_(True)
                    repl[j] = r
                    return (place(x, block, r.to(x.dtype)),)
                return hook

            with torch.enable_grad():
                rows = m if path == "joint" else m * len(group)
                probs = run(rows, ig)
                grads = torch.autograd.grad(probs.sum(), [repl[j] for j in group])
            for j, gr in zip(group, grads):
                attr[j] = (obs[j] * gr.mean(0)).sum(0)  # [d_ff]
        attr = torch.stack(attr)  # [layers, d_ff]
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
        model.train(was)
    return attr.detach().float().cpu(), p_obs, p_zero
