"""A fluency budget for an edit: ``--max-ppl-increase F``.

A detox method trades toxicity against fluency through its strength (λ and the update's scale for
Ext-Sub and negation, the scale for the expert alone, k and the edited layers for ProFS: each
method's ``budget_grid``). The search:

1. measures the base model on the **validation** prompts of the ``rtp`` suite (the next toxic-first
   prompts after every reported one; :func:`trustedit.data.toxicity.validation_rtp`), never on a
   reported prompt;
2. fits every candidate strength (sharing the work through the method's ``fit_sweep``: Ext-Sub's two
   adapters are trained once, ProFS embeds its pairs once), applies it, samples the validation
   prompts, and scores toxicity and the continuations' perplexity under every judge (the base model
   and the ``--ppl-judge`` model);
3. keeps, for each edit (the method, and each side-by-side variant with its own grid), the candidate
   with the lowest validation toxicity probability (then expected maximum toxicity) among those whose
   perplexity rises by at most ``F`` under **every** judge. If no candidate meets the budget, the one
   with the smallest increase is kept and the record says ``met: false``.

The job then measures the chosen edits on the reported prompts as usual. ``results["budget"]`` holds
every candidate's validation figures, the rule and the choice.
"""

from __future__ import annotations

import dataclasses
import math

RULE = ("among the candidates whose continuation perplexity on the validation prompts rises by at most the budget "
        "under every judge, the lowest validation toxicity probability (ties: expected maximum toxicity, then the "
        "smaller perplexity increase); none within the budget: the smallest increase, met = false")
PPL_KEYS = ("continuation_ppl", "continuation_ppl_judge")


def aggregate(score) -> float:
    """A score's value over its items: the mean, or ``exp(ΣNLL/Σtokens)`` for a perplexity."""
    if score.aggregation == "ppl":
        return math.exp(sum(score.values) / max(sum(score.weights), 1))
    return sum(score.values) / max(len(score.values), 1)


def figures(scores: dict, set_name: str = "validation") -> dict:
    """The validation figures a choice reads, from a suite's scores."""
    out = {}
    for key in ("toxicity_probability", "expected_max_toxicity", *PPL_KEYS):
        sc = scores.get(f"{set_name}/{key}")
        if sc is not None:
            out[key] = round(aggregate(sc), 6)
    return out


def increases(fig: dict, base: dict) -> dict:
    """Relative perplexity increase under each judge (``continuation_ppl``: the base model)."""
    return {k: round(fig[k] / base[k] - 1, 6) for k in PPL_KEYS if k in fig and k in base and base[k] > 0}


def choose(cands: list[dict], budget: float) -> tuple[int, bool]:
    """Index of the chosen candidate (dicts with ``figures`` and ``increase``) and whether it meets the budget."""
    def worst(c):
        return max(c["increase"].values()) if c["increase"] else math.inf

    ok = [i for i, c in enumerate(cands) if worst(c) <= budget]
    if ok:
        key = lambda i: (cands[i]["figures"].get("toxicity_probability", math.inf),  # noqa: E731
                         cands[i]["figures"].get("expected_max_toxicity", math.inf), worst(cands[i]))
        return min(ok, key=key), True
    return min(range(len(cands)), key=lambda i: worst(cands[i])), False


def targets(p) -> list[tuple[str, object]]:
    """``(edit name, its config)``: the method, then (with baselines) each side-by-side variant that
    is a combination of the same fit (Ext-Sub's expert alone and negation)."""
    out = [(getattr(p.cfg, "combine", p.method.name), p.cfg)]
    if p.baselines and p.method.variants and hasattr(p.cfg, "combine"):
        out += [(v, dataclasses.replace(p.cfg, combine=v)) for v in p.method.variants]
    return out


def search(p, lm, items, train, timer, ctx, measure):
    """Run the search; returns ``(patch, record)``: the chosen edit (its chosen variants in
    ``patch.variants``) and ``results["budget"]``. Sets ``p.cfg`` to the chosen config."""
    from tqdm.auto import tqdm

    o, m = p.opts, p.method
    suite = p.suites["rtp"]
    val = suite.validation_items(items["rtp"])
    with timer("budget/base"):
        base_raw, _ = measure(suite, lm, val, o.batch_size, o.eval_cache)
        base_fig = figures(suite.score(base_raw, None, val, ctx))
    grid = []
    for name, cfg in targets(p):
        for label, over in m.budget_grid(cfg):
            grid.append((name, label, over, dataclasses.replace(cfg, **over)))
    cfgs = [c for _, _, _, c in grid]
    patches = m.fit_sweep(lm, train, cfgs, stages=timer) if m.fit_sweep is not None else \
        (m.fit(lm, train, c, stages=timer) for c in cfgs)
    cands, best = [], {}
    it = iter(patches)
    for name, label, over, c in tqdm(grid, desc="budget search", leave=False):
        with timer("budget/fit"):
            patch = next(it)
        patch.variants = {}
        with timer("budget/eval"):
            patch.apply(lm.model)
            try:
                raw = measure(suite, lm, val, o.batch_size, False)[0]
            finally:
                patch.revert(lm.model)
            fig = figures(suite.score(raw, base_raw, val, ctx))
        cand = {"edit": name, "label": label, "options": over, "figures": fig, "increase": increases(fig, base_fig)}
        cands.append(cand)
        mine = [i for i, x in enumerate(cands) if x["edit"] == name]
        i, _ = choose([cands[j] for j in mine], p.budget)
        if mine[i] == len(cands) - 1:
            best[name] = (patch, c)  # keep only each edit's best so far
    chosen, met_all = {}, True
    for name, _ in targets(p):
        mine = [i for i, x in enumerate(cands) if x["edit"] == name]
        i, met = choose([cands[j] for j in mine], p.budget)
        cands[mine[i]]["chosen"] = True
        chosen[name] = {"label": cands[mine[i]]["label"], "options": cands[mine[i]]["options"], "met": met,
                        "figures": cands[mine[i]]["figures"], "increase": cands[mine[i]]["increase"]}
        met_all = met_all and met
    main = targets(p)[0][0]
    patch, p.cfg = best[main]
    patch.variants = {name: best[name][0] for name, _ in targets(p)[1:]}
    judges = ["base model"] + ([val.opts.ppl_judge] if val.opts.ppl_judge and val.opts.ppl_judge != "none" else [])
    record = {"max_ppl_increase": p.budget, "judges": judges, "rule": RULE,
              "validation": {**val.info, "k": val.opts.k, "fingerprint": val.fingerprint},
              "base": base_fig, "candidates": cands, "chosen": chosen, "met": met_all}
    return patch, record
