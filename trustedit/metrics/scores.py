"""Per-item scores, their aggregation, and paired bootstrap comparisons.

A :class:`Score` keeps the per-item values of one metric on one model, so that:

* the headline value is one aggregation (``mean`` of values, or ``ppl`` =
  ``exp(sum(values) / sum(weights))`` for token-weighted negative log-likelihoods);
* before/after comparisons are *paired*: the same items are resampled for both models
  (bootstrap over items, 95 % percentile interval, fixed seed), which is the right interval
  for a delta measured on one test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

AGGREGATIONS = ("mean", "ppl")
# How a value is shown: "percent" (one decimal; values in units of "fraction" are multiplied by 100,
# values already in "%" or "percentage points" are not), "coefficient" (signed, 4 decimals) or "raw"
# (4 significant digits). The report decides by this, never by a metric's name.
DISPLAYS = ("percent", "coefficient", "raw")


@dataclass
class Score:
    """One metric measured on one model.

    ``values`` are per item (1.0/0.0 for accuracies, a rate in [0,1] for token accuracies,
    summed NLL in nats for ``ppl``). ``weights`` are per-item token counts for ``ppl``.
    """

    name: str
    protocol: str
    values: list[float]
    weights: list[float] | None = None
    aggregation: str = "mean"
    higher_is_better: bool = True
    unit: str = ""
    extra: dict = field(default_factory=dict)
    display: str = "raw"
    ideal: float | None = None  # the value an unbiased model has (SS 50, a_s 0), where "better" is "closer to it"

    def __post_init__(self):
        if self.display not in DISPLAYS:
            raise ValueError(f"display must be one of {DISPLAYS}, got {self.display!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.aggregation == "ppl" and (self.weights is None or len(self.weights) != len(self.values)):
            raise ValueError("a ppl score needs one weight (token count) per value")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def value(self) -> float:
        return aggregate(np.asarray(self.values, float), None if self.weights is None else np.asarray(self.weights, float), self.aggregation)

    def interval(self, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
        v = np.asarray(self.values, float)
        w = None if self.weights is None else np.asarray(self.weights, float)
        idx = _boot_indices(len(v), n_boot, seed)
        if idx is None:
            return (float("nan"), float("nan"))
        stats = _aggregate_rows(v, w, idx, self.aggregation)
        return _percentile(stats)

    def to_dict(self, n_boot: int = 1000, seed: int = 0) -> dict:
        lo, hi = self.interval(n_boot, seed)
        return {
            "value": _clean(self.value),
            "ci95": [_clean(lo), _clean(hi)],
            "n": self.n,
            "protocol": self.protocol,
            "aggregation": self.aggregation,
            "higher_is_better": self.higher_is_better,
            **({"unit": self.unit} if self.unit else {}),
            **({"extra": self.extra} if self.extra else {}),
        }

    def meta(self) -> dict:
        """What a results entry says about the metric itself (schema v1)."""
        return {"protocol": self.protocol, "unit": self.unit, "display": self.display,
                "higher_is_better": self.higher_is_better, "aggregation": self.aggregation,
                **({"ideal": self.ideal} if self.ideal is not None else {})}


def aggregate(values: np.ndarray, weights: np.ndarray | None, how: str) -> float:
    if len(values) == 0:
        return float("nan")
    if how == "mean":
        return float(np.mean(values))
    if how == "ppl":
        return float(math.exp(np.sum(values) / np.sum(weights)))
    raise ValueError(how)


def _aggregate_rows(v, w, idx, how):
    if how == "mean":
        return v[idx].mean(axis=1)
    return np.exp(v[idx].sum(axis=1) / w[idx].sum(axis=1))


def _boot_indices(n: int, n_boot: int, seed: int):
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def _percentile(stats) -> tuple[float, float]:
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def _clean(x: float):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else round(float(x), 6)


def single(score: Score, seed: int = 0) -> dict:
    """One model's value with its bootstrap interval, in the results.json layout of ``eval``."""
    return {"pre": score.to_dict(seed=seed), "protocol": score.protocol, "n": score.n,
            "aggregation": score.aggregation, "higher_is_better": score.higher_is_better}


def compare(pre: Score, post: Score, n_boot: int = 1000, seed: int = 0) -> dict:
    """Before, after and delta (after - before), each with a paired bootstrap 95 % interval.

    Pairing needs the same items in the same order; this is checked.
    """
    if pre.name != post.name or pre.aggregation != post.aggregation:
        raise ValueError(f"cannot compare {pre.name}/{pre.aggregation} with {post.name}/{post.aggregation}")
    if pre.n != post.n:
        raise ValueError(f"{pre.name}: pre has {pre.n} items, post has {post.n}; a paired comparison needs the same items")
    v0, v1 = np.asarray(pre.values, float), np.asarray(post.values, float)
    w0 = None if pre.weights is None else np.asarray(pre.weights, float)
    w1 = None if post.weights is None else np.asarray(post.weights, float)
    idx = _boot_indices(len(v0), n_boot, seed)
    dist = None
    if idx is None:
        d_lo = d_hi = float("nan")
    else:
        a0, a1 = _aggregate_rows(v0, w0, idx, pre.aggregation), _aggregate_rows(v1, w1, idx, post.aggregation)
        d_lo, d_hi = _percentile(a1 - a0)
        if post.ideal is not None:  # the change of the distance to the ideal, with its paired interval
            lo, hi = _percentile(np.abs(a1 - post.ideal) - np.abs(a0 - post.ideal))
            dist = {"pre": _clean(abs(pre.value - post.ideal)), "post": _clean(abs(post.value - post.ideal)),
                    "delta": _clean(abs(post.value - post.ideal) - abs(pre.value - post.ideal)),
                    "ci95": [_clean(lo), _clean(hi)]}
    out = {
        "protocol": post.protocol,
        "n": post.n,
        "aggregation": post.aggregation,
        "higher_is_better": post.higher_is_better,
        "pre": pre.to_dict(n_boot, seed),
        "post": post.to_dict(n_boot, seed),
        "delta": {"value": _clean(post.value - pre.value), "ci95": [_clean(d_lo), _clean(d_hi)]},
    }
    if dist is not None:
        out["distance_to_ideal"] = dist
    if pre.value and math.isfinite(pre.value) and pre.value != 0:
        out["relative_change"] = _clean((post.value - pre.value) / abs(pre.value))
    return out


def entry(pre: Score, post: Score | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """One metric in the results layout of schema v1 (``docs/results-schema.md``)::

        {"pre": {"value", "ci95"}, "post": {"value", "ci95"} | None, "delta": {"value", "ci95"} | None,
         "ci95", "n", "protocol", "unit", "display", "higher_is_better", "aggregation", "extra"?,
         "ideal"?, "distance_to_ideal"?: {"pre", "post", "delta", "ci95"}}

    ``pre`` is the base model's score; ``post`` the edited model's on the same items (paired
    bootstrap for the delta). The top-level ``ci95`` is the headline interval: the delta's when
    there is a ``post``, else the value's. ``post`` None is an evaluation without an edit."""
    if post is None:
        d = pre.to_dict(n_boot, seed)
        out = {"pre": {"value": d["value"], "ci95": d["ci95"]}, "post": None, "delta": None, "ci95": d["ci95"],
               "n": pre.n, **pre.meta()}
        if pre.extra:
            out["extra"] = {"pre": pre.extra}
        return out
    c = compare(pre, post, n_boot, seed)
    out = {"pre": {"value": c["pre"]["value"], "ci95": c["pre"]["ci95"]},
           "post": {"value": c["post"]["value"], "ci95": c["post"]["ci95"]},
           "delta": c["delta"], "ci95": c["delta"]["ci95"], "n": post.n, **post.meta()}
    if "relative_change" in c:
        out["relative_change"] = c["relative_change"]
    if "distance_to_ideal" in c:
        out["distance_to_ideal"] = c["distance_to_ideal"]
    if pre.extra or post.extra:
        out["extra"] = {"pre": pre.extra, "post": post.extra}
    return out


# ---- an edit's effect, and how much of it a later change undoes (audits) -------------------------


def _goodness(a: np.ndarray, score: Score) -> np.ndarray:
    """Aggregated values turned so that larger is better: the value itself, its negative (lower is
    better), or minus its distance to the ideal."""
    if score.ideal is not None:
        return -np.abs(a - score.ideal)
    return a if score.higher_is_better else -a


def _rows(score: Score, idx):
    v = np.asarray(score.values, float)
    w = None if score.weights is None else np.asarray(score.weights, float)
    return _aggregate_rows(v, w, idx, score.aggregation)


def _check_paired(*scores: Score) -> None:
    n = {s.n for s in scores}
    if len(n) != 1:
        raise ValueError(f"{scores[0].name}: the scores cover different items ({sorted(n)}); effects need the same items")


def effect(pre: Score, post: Score, n_boot: int = 1000, seed: int = 0) -> dict:
    """How far an edit moved a metric in its good direction (positive: the edit did what it is
    for): ``post - pre`` for a higher-is-better metric, ``pre - post`` for a lower-is-better one,
    ``|pre - ideal| - |post - ideal|`` for one with an ideal; paired bootstrap 95 % interval."""
    _check_paired(pre, post)
    value = float(_goodness(np.array([post.value]), post)[0] - _goodness(np.array([pre.value]), post)[0])
    idx = _boot_indices(pre.n, n_boot, seed)
    if idx is None:
        return {"value": _clean(value), "ci95": [None, None]}
    e = _goodness(_rows(post, idx), post) - _goodness(_rows(pre, idx), post)
    lo, hi = _percentile(e)
    return {"value": _clean(value), "ci95": [_clean(lo), _clean(hi)]}


def relapse(pre: Score, post: Score, pre_c: Score, post_c: Score, n_boot: int = 1000, seed: int = 0) -> dict:
    """The share of an edit's effect that a change applied alike to the base and the edited model
    (quantization, fine-tuning) takes away: ``1 - effect(pre_c, post_c) / effect(pre, post)``.
    0 = the edit survives whole, 1 = it is gone, < 0 = the change strengthened it. The 95 %
    interval resamples the same items for all four models (paired); resamples where the edit's
    own effect is not positive are left out of it (their share is undefined), and ``resolved`` says
    whether the edit's effect interval excludes 0 (without that, the share means little)."""
    _check_paired(pre, post, pre_c, post_c)

    def eff(a0, a1):
        return _goodness(a1, post) - _goodness(a0, post)

    e0 = eff(np.array([pre.value]), np.array([post.value]))[0]
    e1 = eff(np.array([pre_c.value]), np.array([post_c.value]))[0]
    value = 1.0 - e1 / e0 if e0 > 0 else float("nan")
    out = {"value": _clean(value), "ci95": [None, None], "resolved": False}
    idx = _boot_indices(pre.n, n_boot, seed)
    if idx is None:
        return out
    E0 = eff(_rows(pre, idx), _rows(post, idx))
    E1 = eff(_rows(pre_c, idx), _rows(post_c, idx))
    ok = E0 > 0
    lo0, _ = _percentile(E0)
    out["resolved"] = bool(lo0 > 0)
    if ok.sum() >= 0.5 * len(E0):
        lo, hi = _percentile(1.0 - E1[ok] / E0[ok])
        out["ci95"] = [_clean(lo), _clean(hi)]
    return out
