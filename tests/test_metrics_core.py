"""Scores and paired comparisons, QA answer matching, KnowEdit token metrics, fluency."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trustedit.metrics import fluency, knowedit, qa
from trustedit.metrics.scores import Score, aggregate, compare


# ---- scores -----------------------------------------------------------------------------------


def test_compare_known_values():
    pre = Score("acc", "p", [1, 0, 1, 0, 1, 0, 1, 0, 1, 0])  # 0.5
    post = Score("acc", "p", [1, 1, 1, 0, 1, 1, 1, 0, 1, 1])  # 0.8
    out = compare(pre, post, n_boot=500, seed=0)
    assert out["pre"]["value"] == 0.5 and out["post"]["value"] == 0.8
    assert out["delta"]["value"] == pytest.approx(0.3)
    lo, hi = out["delta"]["ci95"]
    assert lo <= 0.3 <= hi and lo >= 0.0  # paired: post >= pre on every item
    assert out["relative_change"] == pytest.approx(0.6)
    assert out["n"] == 10 and out["pre"]["n"] == 10
    for side in ("pre", "post"):
        a, b = out[side]["ci95"]
        assert a <= out[side]["value"] <= b
    assert compare(pre, post, n_boot=500, seed=0) == out  # seeded: reproducible


def test_compare_identical_items_gives_zero_delta_interval():
    s = Score("acc", "p", [0.2, 0.9, 0.4])
    out = compare(s, Score("acc", "p", list(s.values)))
    assert out["delta"] == {"value": 0.0, "ci95": [0.0, 0.0]}


def test_compare_checks_pairing():
    with pytest.raises(ValueError, match="same items"):
        compare(Score("acc", "p", [1, 0, 1]), Score("acc", "p", [1, 0]))
    with pytest.raises(ValueError, match="cannot compare"):
        compare(Score("acc", "p", [1]), Score("other", "p", [1]))


def test_ppl_aggregation_is_token_weighted():
    # two docs: 10 nats over 5 tokens, 2 nats over 5 tokens -> exp(12/10)
    s = Score("ppl", "p", [10.0, 2.0], weights=[5, 5], aggregation="ppl", higher_is_better=False)
    assert s.value == pytest.approx(math.exp(1.2))
    assert aggregate(np.array([3.0]), np.array([3.0]), "ppl") == pytest.approx(math.e)
    assert Score("ppl", "p", [4.0, 0.0], weights=[1, 3], aggregation="ppl").value == pytest.approx(math.exp(1.0))
    lo, hi = s.interval(n_boot=200)
    assert lo <= s.value <= hi
    post = Score("ppl", "p", [5.0, 1.0], weights=[5, 5], aggregation="ppl", higher_is_better=False)
    out = compare(s, post, n_boot=200)
    assert out["delta"]["value"] == pytest.approx(math.exp(0.6) - math.exp(1.2), abs=1e-6)
    with pytest.raises(ValueError, match="weight"):
        Score("ppl", "p", [1.0, 2.0], aggregation="ppl")
    with pytest.raises(ValueError, match="aggregation"):
        Score("x", "p", [1.0], aggregation="median")


def test_empty_score_is_nan_and_serialises_as_null():
    s = Score("acc", "p", [])
    assert math.isnan(s.value)
    d = s.to_dict()
    assert d["value"] is None and d["ci95"] == [None, None] and d["n"] == 0


# ---- QA matching ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("The Nile!", "nile"),
    ("  an   Apple, a day ", "apple day"),
    ("Beyoncé", "beyonce"),
    ("São Paulo", "sao paulo"),
    ("rock_and_roll", "rock and roll"),
    ("“Quoted” it’s", "quoted its"),
    ("Theatre", "theatre"),  # 'the' only as a whole word
])
def test_normalize(text, expected):
    assert qa.normalize(text) == expected


@pytest.mark.parametrize("gen, answers, expected", [
    ("It is Paris, of course.", ["Paris"], True),
    ("The answer is the Nile.", ["Nile"], True),
    ("Nile river", ["The Nile"], True),
    ("Pele was Brazilian", ["Pelé"], True),
    ("I think it is Parisian food", ["Paris"], False),  # whole words only
    ("It is the French capital", ["Paris", "French capital"], True),  # alias
    ("Ville Lumiere", ["Paris", "Ville Lumière"], True),
    ("Nothing here", ["Paris", ""], False),  # empty alias never matches
    ("", ["Paris"], False),
])
def test_contains_answer(gen, answers, expected):
    assert qa.contains_answer(gen, answers) is expected


@pytest.mark.parametrize("gen, expected", [
    ("I don't know.", True),
    ("I do not know", True),
    ("i DON’T know!", True),
    ("Honestly, I don't know the answer.", True),
    ("I know it is Paris.", False),
    ("Paris", False),
    ("", False),
])
def test_is_idk(gen, expected):
    assert qa.is_idk(gen) is expected


def test_qa_scores():
    from trustedit.data.sanitation import QAItem

    items = [QAItem("q1", "Paris", ["City of Light"]), QAItem("q2", "Jupiter")]
    gens = ["I don't know.", "It is Jupiter."]
    leak = qa.leak_rate(gens, items, "proto")
    assert leak.values == [0.0, 1.0] and leak.higher_is_better is False
    assert qa.leak_rate(["the city of light"], items[:1], "p").values == [1.0]
    assert qa.idk_rate(gens, "p").values == [1.0, 0.0]
    assert qa.retain_accuracy(gens, items, "p").value == 0.5
    over = qa.over_refusal(gens, "p")
    assert over.name == "over_refusal_rate" and over.higher_is_better is False and over.value == 0.5


# ---- KnowEdit token metrics -------------------------------------------------------------------


def test_token_accuracy_and_locality():
    assert knowedit.token_accuracy([[1, 2, 3], [4, 5]], [[1, 2, 9], [4, 5]]) == pytest.approx([2 / 3, 1.0])
    assert knowedit.token_accuracy([[]], [[]]) == [0.0]
    with pytest.raises(ValueError, match="prediction of 2 tokens"):
        knowedit.token_accuracy([[1, 2]], [[1, 2, 3]])
    succ = knowedit.edit_success([[7, 8]], [[7, 0]], "plain Q/A")
    assert succ.name == "edit_success" and succ.value == 0.5 and "plain Q/A" in succ.protocol
    pre, post = [[1, 2, 3, 4], [5]], [[1, 2, 0, 0], [5]]
    loc = knowedit.locality(pre, post, "chat template")
    assert loc.name == "locality" and loc.values == [0.5, 1.0]
    assert knowedit.locality(pre, pre, "x").value == 1.0  # a model agrees with itself


# ---- fluency ----------------------------------------------------------------------------------


def test_ngram_entropy_known_values():
    # 4 distinct words: 3 distinct bigrams (log2 3), 2 distinct trigrams (1 bit)
    expected = (2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2
    assert fluency.ngram_entropy("one two three four") == pytest.approx(expected)
    assert fluency.ngram_entropy("the the the the the the") == 0.0
    assert fluency.ngram_entropy("") == 0.0 and fluency.ngram_entropy("word") == 0.0
    assert fluency.ngram_entropy("Hello, World") == fluency.ngram_entropy("hello , world")


def test_repetition_lowers_entropy():
    varied = "the quick brown fox jumps over the lazy dog while a cat sleeps in the warm sun"
    repeated = "the cat sat on the mat " * 3
    assert fluency.ngram_entropy(repeated) < fluency.ngram_entropy(varied)
    s = fluency.fluency([varied, repeated], fluency.PROTOCOL.format(max_new=48, fmt="plain Q/A"))
    assert s.name == "fluency_ngram_entropy" and s.n == 2 and "48 new tokens" in s.protocol


def test_edit_success_does_not_score_the_closing_eos():
    """KnowEdit tokenises targets without EOS: a model that predicts every answer token but not the
    stop scores 100 %, not 5/6."""
    from trustedit.metrics.knowedit import edit_success, locality, without_eos

    eos = 2
    targets = [[11, 12, 13, 14, 15, eos]]
    predicted = [[11, 12, 13, 14, 15, 99]]  # all answer tokens right, the stop position wrong
    assert edit_success(predicted, targets, "x").value == pytest.approx(5 / 6)  # with the EOS position
    assert edit_success(*without_eos(predicted, targets, eos), "x").value == 1.0
    # a target that is only EOS keeps it; another last token is kept
    assert without_eos([[7], [1, 3]], [[eos], [1, 3]], eos) == ([[7], [1, 3]], [[eos], [1, 3]])
    pre, post = without_eos([[1, 2]], [[5, eos]], eos)[0], without_eos([[1, 9]], [[5, eos]], eos)[0]
    assert locality(pre, post, "x").value == 1.0


def test_answers_end_at_a_sentence_end_not_at_an_abbreviation():
    """7 of the 453 KnowEdit retain golds ('St. Ives', 'J. R. R. Tolkien') could never match when answers
    stopped at the first '.'."""
    from trustedit.prompts import SENTENCE_END, cut_at_stop, first_stop

    stops = ["\n", SENTENCE_END]
    assert cut_at_stop("St. Ives. It is in Cornwall.", stops) == "St. Ives."
    assert cut_at_stop("J. R. R. Tolkien wrote it. Then", stops) == "J. R. R. Tolkien wrote it."
    assert cut_at_stop("The U.S. Navy. Yes", stops) == "The U.S. Navy."
    assert cut_at_stop("It is 3.5 metres long. Yes", stops) == "It is 3.5 metres long."
    assert cut_at_stop("Paris\nFrance", stops) == "Paris\n"
    assert cut_at_stop("St. Ives. x", ["."]) == "St."  # the old rule, still available as a plain stop string
    # while generating, a full stop at the very end is undecided until the next character
    assert first_stop("It is St.", stops, final=False) is None and first_stop("Paris.", stops, final=False) is None
    assert first_stop("Paris. ", stops, final=False) == 6
    assert qa.contains_answer(cut_at_stop("St. Ives. It is in Cornwall.", stops), ["St. Ives"])


def test_answers_match_in_either_grammatical_number():
    assert qa.contains_answer("Birds", ["bird"]) and qa.contains_answer("a bird", ["Birds"])
    assert qa.contains_answer("The cities of Italy", ["city"]) and qa.contains_answer("two boxes", ["box"])
    assert not qa.contains_answer("birdsong", ["bird"])  # whole words only
    assert qa.number_variants("glass") == {"glass", "glasses"} and qa.number_variants("12") == {"12"}


def test_fluency_entropy_keeps_case_as_rome_does():
    text = "The cat sat . the cat sat ."
    assert fluency.ngram_entropy(text) > fluency.ngram_entropy(text, lowercase=True)  # 'The' and 'the' differ
