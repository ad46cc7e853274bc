"""Toxicity metrics on hand-computed score tables."""

from __future__ import annotations

import math

import pytest

from trustedit.metrics import toxicity as M
from trustedit.metrics.scores import Score, compare

# 4 prompts x 3 continuations; per-prompt maxima 0.9, 0.3, 0.5, 0.81
TABLE = [[0.1, 0.9, 0.2], [0.3, 0.0, 0.1], [0.5, 0.49, 0.2], [0.81, 0.8, 0.05]]


def test_expected_max_toxicity():
    s = M.expected_max_toxicity(TABLE)
    assert isinstance(s, Score) and s.name == "expected_max_toxicity" and not s.higher_is_better
    assert s.values == [0.9, 0.3, 0.5, 0.81]
    assert s.value == pytest.approx((0.9 + 0.3 + 0.5 + 0.81) / 4)
    assert "k=3" in s.protocol and "max" in s.protocol
    lo, hi = s.interval()
    assert 0.3 <= lo <= s.value <= hi <= 0.9
    assert M.expected_max_toxicity([[0.2], [0.4, 0.6]]).protocol.count("k=1..2") == 1


def test_toxicity_probability_threshold_is_inclusive():
    s = M.toxicity_probability(TABLE)
    assert s.values == [1.0, 0.0, 1.0, 1.0]  # 0.5 counts (>= 0.5), 0.49 alone would not
    assert s.value == 0.75 and s.extra["threshold"] == 0.5
    assert M.toxicity_probability(TABLE, threshold=0.85).values == [1.0, 0.0, 0.0, 0.0]
    assert ">= 0.5" in s.protocol


def test_extsub_protocol():
    out = M.extsub_protocol(TABLE)
    mean, ratio = out["extsub_mean_toxicity"], out["extsub_toxicity_ratio"]
    flat = [v for r in TABLE for v in r]
    assert mean.value == pytest.approx(sum(flat) / 12) and mean.n == 12
    assert ratio.values.count(1.0) == 2 and ratio.value == pytest.approx(2 / 12)  # 0.9, 0.81; 0.8 is not > 0.8
    assert all(s.protocol.startswith("Ext-Sub protocol") for s in out.values())
    # a flat list is one continuation per prompt
    assert M.extsub_protocol([0.9, 0.1])["extsub_toxicity_ratio"].values == [1.0, 0.0]


def test_profanity_kind_renames_every_metric():
    assert M.expected_max_toxicity(TABLE, kind="profanity").name == "expected_max_profanity"
    p = M.toxicity_probability(TABLE, kind="profanity")
    assert p.name == "profanity_probability" and "toxicity" not in p.protocol
    assert set(M.extsub_protocol(TABLE, kind="profanity")) == {"extsub_mean_profanity", "extsub_profanity_ratio"}
    with pytest.raises(ValueError):
        M.expected_max_toxicity(TABLE, kind="rudeness")


def test_paired_comparison_works_on_the_scores():
    before, after = M.expected_max_toxicity(TABLE), M.expected_max_toxicity([[v / 2 for v in r] for r in TABLE])
    c = compare(before, after)
    assert c["delta"]["value"] == pytest.approx(after.value - before.value)
    assert c["delta"]["ci95"][1] < 0


@pytest.mark.parametrize("bad", [[[]], [[1.2]], [[float("nan")]], [0.5], "abc"])
def test_bad_scores_rejected(bad):
    with pytest.raises(ValueError):
        M.expected_max_toxicity(bad)


def test_distinct_n_pooled():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique / 7; bigrams: ab ba ab | ab bc -> {ab, ba, bc} 3 / 5
    d1, d2, d3 = (M.distinct_n(texts, n) for n in (1, 2, 3))
    assert (d1.unique, d1.total, d1.value) == (3, 7, pytest.approx(3 / 7))
    assert (d2.unique, d2.total, d2.value) == (3, 5, pytest.approx(3 / 5))
    assert (d3.unique, d3.total) == (3, 3) and d3.value == 1.0  # aba bab | abc
    assert "pooled" in d2.protocol and d2.name == "dist-2"
    assert math.isnan(M.distinct_n(["one"], 2).value)
    assert M.distinct_n(["x  y\ty"], 1).total == 3  # any whitespace separates tokens
    with pytest.raises(ValueError):
        M.distinct_n(texts, 0)


def test_distinct_n_dexperts_divides_by_words_per_prompt():
    gens = [["a b a b", "a b c"], ["x y", "x y"]]
    # prompt 1: bigrams {ab, ba, bc} / 7 words; prompt 2: {xy} / 4 words
    s = M.distinct_n_dexperts(gens, 2)
    assert s.values == pytest.approx([3 / 7, 1 / 4])
    assert s.value == pytest.approx((3 / 7 + 1 / 4) / 2)
    assert M.distinct_n_dexperts(gens, 1).values == pytest.approx([3 / 7, 2 / 4])
    assert "DExperts" in s.protocol
