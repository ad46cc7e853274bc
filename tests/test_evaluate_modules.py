"""trustedit's Hugging Face ``evaluate`` modules (trustedit/evaluate_modules/<name>/<name>.py):
each loads offline by local path (:func:`trustedit.evaluate_module`) and gives exactly the
numbers of the suite's own metric function on the same inputs.

The tests that load modules need the ``evaluate`` extra (``pip install -e .[evaluate]``) and
skip without it; the path and import tests run always. No test touches the network: sockets are
blocked while modules load and compute.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import trustedit
from trustedit.data.bias import CrowsPair, StereoSetItem, WinoBiasItem
from trustedit.data.sanitation import QAItem
from trustedit.errors import UsageError
from trustedit.metrics import bias as B
from trustedit.metrics import qa as Q
from trustedit.metrics import toxicity as T

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("TRUSTEDIT_DATA_DIR")


# ---------------------------------------------------------------------------------------------
# trustedit.evaluate_module (no evaluate needed)
# ---------------------------------------------------------------------------------------------


def test_unknown_module_is_a_usage_error_listing_the_known_ones():
    with pytest.raises(UsageError) as e:
        trustedit.evaluate_module("nope")
    assert "'nope'" in str(e.value)
    for name in trustedit.EVALUATE_MODULES:
        assert name in str(e.value)


def test_every_module_folder_holds_its_script_and_is_listed():
    folder = ROOT / "trustedit" / "evaluate_modules"
    shipped = sorted(p.name for p in folder.iterdir() if (p / f"{p.name}.py").is_file())
    assert shipped == sorted(trustedit.EVALUATE_MODULES)
    for name in trustedit.EVALUATE_MODULES:
        path = trustedit.evaluate_module(name)
        assert os.path.isabs(path) and Path(path) == folder / name


def test_import_trustedit_and_evaluate_module_stay_light():
    code = ("import sys, trustedit; trustedit.evaluate_module('crows_pairs'); "
            "print(sorted({'torch', 'evaluate', 'numpy', 'datasets'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_every_module_is_packaged():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = cfg["tool"]["setuptools"]["packages"]
    assert "trustedit.evaluate_modules" in packages
    for name in trustedit.EVALUATE_MODULES:
        assert f"trustedit.evaluate_modules.{name}" in packages
    assert cfg["project"]["optional-dependencies"]["evaluate"][0].startswith("evaluate==")


# ---------------------------------------------------------------------------------------------
# loading, offline
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access from an evaluate module test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


_LOADED: dict = {}


@pytest.fixture
def load():
    """``load(name, config=None)``: the module loaded by local path (cached per session)."""
    evaluate = pytest.importorskip("evaluate")

    def _load(name, config=None):
        if (name, config) not in _LOADED:
            _LOADED[name, config] = evaluate.load(trustedit.evaluate_module(name), config)
        return _LOADED[name, config]

    return _load


def test_modules_describe_themselves_and_cite_their_papers(load):
    papers = {"crows_pairs": "Nangia", "stereoset": "Nadeem", "winobias": "Zhao",
              "rtp_toxicity": "Gehman", "sanitation": "Ishibashi"}
    for case in CASES:  # every configuration documents its inputs
        name, _, config = case.partition("/")
        m = load(name, config or None)
        assert m.name == name
        assert papers[name] in m.citation and papers[name] in m.description
        for feature in m.features:
            assert feature in m.inputs_description
        assert "Returns:" in m.inputs_description and "trustedit" in m.description


# ---------------------------------------------------------------------------------------------
# CrowS-Pairs
# ---------------------------------------------------------------------------------------------

BIAS_TYPES = ("race-color", "gender", "religion", "age")


def crows_case(rng, n=80):
    """Pairs with token ids that share a prefix and suffix, per-token log-probs, ~10 % exact ties."""
    items, seqs, lps = [], [], []
    for i in range(n):
        items.append(CrowsPair(str(i), f"more {i}", f"less {i}", str(rng.choice(["stereo", "antistereo"])),
                               str(rng.choice(BIAS_TYPES))))
        head, tail = list(rng.integers(10, 40, 3)), list(rng.integers(10, 40, 2))
        a = [1] + head + list(rng.integers(40, 50, rng.integers(1, 4))) + tail
        b = [1] + head + list(rng.integers(50, 60, rng.integers(1, 4))) + tail
        lp_a = -rng.exponential(2.0, len(a) - 1)
        lp_b = lp_a.copy() if (rng.random() < 0.1 and len(a) == len(b)) else -rng.exponential(2.0, len(b) - 1)
        seqs += [a, b]
        lps += [lp_a, lp_b]
    return items, {"seqs": seqs, "first": [1] * len(seqs), "bos": True}, lps


def sentence_scores(req, lps, scoring):
    """Each sentence's score as the suite's crows_scores sums it: what a user computes."""
    out = []
    for i in range(0, len(lps), 2):
        a, b = req["seqs"][i][1:], req["seqs"][i + 1][1:]
        if scoring == "shared":
            ua, ub = B.unshared_mask(a, b)
            ma, mb = ~ua, ~ub
        else:
            ma, mb = np.ones(len(a), bool), np.ones(len(b), bool)
        out.append((float(lps[i][ma].sum()), float(lps[i + 1][mb].sum())))
    return [m for m, _ in out], [l for _, l in out]


def crows_inputs(items, more, less):
    return {"sent_more_scores": more, "sent_less_scores": less, "directions": [it.direction for it in items],
            "bias_types": [it.bias_type for it in items]}


def assert_crows_equal(got, suite):
    overall = suite["crows_pairs/metric"]
    assert got["metric"] == overall.value
    assert got["by_bias_type"] == {k.split("/")[1]: s.value for k, s in suite.items() if k != "crows_pairs/metric"}
    for key in ("stereo_score", "antistereo_score", "neutral", "n_stereo", "n_antistereo"):
        assert got[key] == overall.extra[key]
    assert got["n"] == overall.n


@pytest.mark.parametrize("scoring", B.CROWS_SCORING)
def test_crows_pairs_equals_the_suite(load, scoring):
    items, req, lps = crows_case(np.random.default_rng(0))
    suite = B.crows_scores(items, req, lps, scoring)
    more, less = sentence_scores(req, lps, scoring)
    got = load("crows_pairs").compute(**crows_inputs(items, more, less))
    assert_crows_equal(got, suite)
    assert got["neutral"] > 0 and 0 < got["metric"] < 100
    assert isinstance(got["metric"], float) and all(isinstance(v, float) for v in got["by_bias_type"].values())


def test_crows_pairs_by_batches_equals_one_call(load):
    items, req, lps = crows_case(np.random.default_rng(1), n=30)
    more, less = sentence_scores(req, lps, "sentence")
    m = load("crows_pairs")
    for lo in range(0, 30, 7):
        m.add_batch(**crows_inputs(items[lo:lo + 7], more[lo:lo + 7], less[lo:lo + 7]))
    assert_crows_equal(m.compute(), B.crows_scores(items, req, lps, "sentence"))


# ---------------------------------------------------------------------------------------------
# StereoSet
# ---------------------------------------------------------------------------------------------


def stereoset_case(rng, n=120):
    """Items over a few target terms (some in both kinds) and all domains; ~15 % ties."""
    items, lls = [], []
    for i in range(n):
        kind = str(rng.choice(["intrasentence", "intersentence"]))
        items.append(StereoSetItem(f"{kind}/{i}", kind, f"target{rng.integers(12)}",
                                   str(rng.choice(["gender", "profession", "race", "religion"])),
                                   "Context.", f"stereo {i}", f"anti {i}", f"unrelated {i}"))
        cand = [[float(-rng.exponential(20)), int(rng.integers(1, 9))] for _ in range(3)]
        if rng.random() < 0.15:
            cand[1] = list(cand[0])
        lls += cand
    return items, lls


def stereoset_inputs(items, lls, counts=False):
    cands = ("stereotype", "anti_stereotype", "unrelated")
    out = {f"{c}_scores": [ll for ll, _ in lls[j::3]] for j, c in enumerate(cands)}
    if counts:
        out |= {f"{c}_token_counts": [n for _, n in lls[j::3]] for j, c in enumerate(cands)}
    return out | {"targets": [it.target for it in items], "bias_types": [it.bias_type for it in items],
                  "kinds": [it.kind for it in items]}


def assert_stereoset_equal(got, suite):
    def scope(prefix, d):
        for m in ("ss", "lms", "icat"):
            assert d[m] == suite[prefix + m].value, prefix + m
        extra = suite[prefix + "ss"].extra
        assert (d["count"], d["targets"]) == (extra["count"], extra["targets"])

    n = 0
    for head, part in (("stereoset/", got if "ss" in got else None), ("stereoset/intersentence/", got.get("intersentence"))):
        if part is None:
            continue
        scope(head, part)
        for key, d in part["by_domain"].items():
            scope(f"{head}{key}/", d)
        n += 1 + len(part["by_domain"])
    assert len(suite) == 3 * n


@pytest.mark.parametrize("length_norm", [False, True])
def test_stereoset_equals_the_suite(load, length_norm):
    items, lls = stereoset_case(np.random.default_rng(2))
    suite = B.stereoset_scores(items, lls, True, length_norm=length_norm)
    if length_norm:
        got = load("stereoset", "token_counts").compute(**stereoset_inputs(items, lls, counts=True), length_norm=True)
    else:
        got = load("stereoset").compute(**stereoset_inputs(items, lls))
    assert_stereoset_equal(got, suite)
    assert "intersentence" in got and len(got["by_domain"]) == 4 and len(got["intersentence"]["by_domain"]) == 4


def test_stereoset_token_counts_without_length_norm_compare_sums(load):
    items, lls = stereoset_case(np.random.default_rng(3), n=40)
    got = load("stereoset", "token_counts").compute(**stereoset_inputs(items, lls, counts=True))
    assert_stereoset_equal(got, B.stereoset_scores(items, lls, True, length_norm=False))


# ---------------------------------------------------------------------------------------------
# WinoBias
# ---------------------------------------------------------------------------------------------


def winobias_items(rng, n):
    return [WinoBiasItem(f"f:{i}", f"sentence {i}", "nurse", "surgeon", "he", str(rng.choice(["male", "female"])),
                         str(rng.choice(["pro", "anti"])), 1, "test") for i in range(n)]


def winobias_inputs(items):
    return {"stereotypes": [it.stereotype for it in items], "pronoun_genders": [it.pronoun_gender for it in items]}


def assert_winobias_equal(got, suite, name):
    acc = suite[f"{name}/acc"]
    assert got["accuracy"] == acc.value
    for key in ("delta_s", "delta_g"):
        assert got[key] == (suite[f"{name}/{key}"].value if f"{name}/{key}" in suite else None)
    assert got["accuracy_by_group"] == {g: acc.extra[f"acc_{g}"] for g in ("pro", "anti", "male", "female")}
    assert got["n_by_group"] == acc.extra["n"] and got["n"] == acc.n


def test_winobias_correctness_equals_the_dama_protocol(load):
    rng = np.random.default_rng(4)
    items = winobias_items(rng, 90)
    req = {"protocol": "dama", "bos": True, "targets": [[7, 8]] * len(items)}
    res = [[[float(-rng.exponential()), float(-rng.exponential())], int(rng.choice([7, 8, 9]))] for _ in items]
    suite = B.winobias_scores(items, req, res)
    correct = [arg == t[0] for (_, arg), t in zip(res, req["targets"])]
    got = load("winobias").compute(correct=correct, **winobias_inputs(items))
    assert_winobias_equal(got, suite, "winobias_dama")
    assert got["delta_s"] is not None and got["delta_g"] is not None
    # 1/0 instead of True/False: the same numbers
    assert load("winobias").compute(correct=[int(c) for c in correct], **winobias_inputs(items)) == got


def test_winobias_option_scores_equal_the_loglik_protocol(load):
    rng = np.random.default_rng(5)
    items = winobias_items(rng, 90)
    res = [float(-rng.exponential()) for _ in range(2 * len(items))]
    res[2:4] = [-1.5, -1.5]  # a tie counts as wrong
    suite = B.winobias_scores(items, {"protocol": "loglik", "bos": True}, res)
    got = load("winobias", "scores").compute(gold_scores=res[0::2], other_scores=res[1::2], **winobias_inputs(items))
    assert_winobias_equal(got, suite, "winobias_loglik")


def test_winobias_gap_of_an_empty_group_is_none(load):
    rng = np.random.default_rng(6)
    items = [it for it in winobias_items(rng, 40) if it.stereotype == "pro"]
    res = [float(-rng.exponential()) for _ in range(2 * len(items))]
    suite = B.winobias_scores(items, {"protocol": "loglik", "bos": True}, res)
    got = load("winobias", "scores").compute(gold_scores=res[0::2], other_scores=res[1::2], **winobias_inputs(items))
    assert got["delta_s"] is None and got["delta_g"] is not None
    assert_winobias_equal(got, suite, "winobias_loglik")


# ---------------------------------------------------------------------------------------------
# RealToxicityPrompts
# ---------------------------------------------------------------------------------------------


def rtp_case(rng, n=50):
    words = "the a cat dog sat ran on mat fast slow red".split()
    scores = [[float(x) for x in rng.random(int(rng.integers(1, 6)))] for _ in range(n)]
    scores[0][0] = 0.5  # on the threshold: counts as toxic
    texts = [[" ".join(rng.choice(words, int(rng.integers(0, 9)))) for _ in row] for row in scores]
    return scores, texts


@pytest.mark.parametrize("threshold", [None, 0.3])
def test_rtp_toxicity_equals_the_suite(load, threshold):
    scores, texts = rtp_case(np.random.default_rng(7))
    kw = {} if threshold is None else {"threshold": threshold}
    want = {"expected_max_toxicity": T.expected_max_toxicity(scores).value,
            "toxicity_probability": T.toxicity_probability(scores, **kw).value, "n": len(scores)}
    assert load("rtp_toxicity").compute(toxicity_scores=scores, **kw) == want
    want |= {f"dist-{n}": T.distinct_n_dexperts(texts, n).value for n in (1, 2, 3)}
    assert load("rtp_toxicity", "continuations").compute(toxicity_scores=scores, continuations=texts, **kw) == want


def test_rtp_toxicity_rejects_scores_outside_0_1_and_unpaired_texts(load):
    with pytest.raises(ValueError, match="not a probability"):
        load("rtp_toxicity").compute(toxicity_scores=[[0.2], [1.5]])
    with pytest.raises(ValueError, match="no continuation scores"):
        load("rtp_toxicity").compute(toxicity_scores=[[0.2], []])
    with pytest.raises(ValueError, match="prompt 1: 2 toxicity scores but 1 continuations"):
        load("rtp_toxicity", "continuations").compute(toxicity_scores=[[0.2], [0.1, 0.3]],
                                                      continuations=[["a"], ["b c"]])


# ---------------------------------------------------------------------------------------------
# Sanitation
# ---------------------------------------------------------------------------------------------

FORGET = [(QAItem("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"]), "I don't know."),
          (QAItem("Capital of France?", "Paris"), "It is Paris, of course."),
          (QAItem("Largest planet?", "Jupiter"), "Saturn, I think."),
          (QAItem("Longest river?", "the Nile", ["Nile River"]), "I do not know, but maybe the NILE."),
          (QAItem("Painter of the Mona Lisa?", "Leonardo da Vinci", ["Léonardo"]), "leonardo!")]
RETAIN = [(QAItem("Highest mountain?", "Mount Everest", ["Everest"]), "Everest."),
          (QAItem("Biggest ocean?", "the Pacific Ocean", ["Pacific"]), "I don't know."),
          (QAItem("Capital of Italy?", "Rome"), "Romeo")]


def sanitation_inputs(forget, retain):
    rows = [(g, it, "forget") for it, g in forget] + [(g, it, "retain") for it, g in retain]
    rows = rows[::2] + rows[1::2]  # interleaved: the split column, not the order, decides
    return {"generations": [g for g, _, _ in rows], "answers": [it.answers for _, it, _ in rows],
            "splits": [s for _, _, s in rows]}


def test_sanitation_equals_the_suite(load):
    fg, fi = [g for _, g in FORGET], [it for it, _ in FORGET]
    rg, ri = [g for _, g in RETAIN], [it for it, _ in RETAIN]
    want = {"K_F_leak_rate": Q.leak_rate(fg, fi, "p").value, "K_S_idk_rate": Q.idk_rate(fg, "p").value,
            "K_R_retain_accuracy": Q.retain_accuracy(rg, ri, "p").value,
            "over_refusal_rate": Q.over_refusal(rg, "p").value,
            "n_forget": len(FORGET), "n_retain": len(RETAIN)}
    assert load("sanitation").compute(**sanitation_inputs(FORGET, RETAIN)) == want
    assert 0 < want["K_F_leak_rate"] < 1 and 0 < want["K_S_idk_rate"] < 1  # the case exercises both outcomes


def test_sanitation_without_retain_questions(load):
    got = load("sanitation").compute(**sanitation_inputs(FORGET, []))
    assert got["K_R_retain_accuracy"] is None and got["over_refusal_rate"] is None and got["n_retain"] == 0
    assert got["K_F_leak_rate"] == Q.leak_rate([g for _, g in FORGET], [it for it, _ in FORGET], "p").value


# ---------------------------------------------------------------------------------------------
# inputs that must fail
# ---------------------------------------------------------------------------------------------


CASES = ("crows_pairs", "stereoset", "stereoset/token_counts", "winobias", "winobias/scores", "rtp_toxicity",
         "rtp_toxicity/continuations", "sanitation")


def good_inputs(case):
    """(module, inputs) of one small valid call of a module ``name`` or ``name/config``."""
    rng = np.random.default_rng(8)
    items, req, lps = crows_case(rng, n=6)
    st_items, lls = stereoset_case(rng, n=6)
    wb = winobias_items(rng, 6)
    scores, texts = rtp_case(rng, n=6)
    inputs = {"crows_pairs": crows_inputs(items, *sentence_scores(req, lps, "sentence")),
              "stereoset": stereoset_inputs(st_items, lls),
              "stereoset/token_counts": stereoset_inputs(st_items, lls, counts=True),
              "winobias": {"correct": [1, 0, 1, 1, 0, 1], **winobias_inputs(wb)},
              "winobias/scores": {"gold_scores": [-1.0] * 6, "other_scores": [-2.0] * 6, **winobias_inputs(wb)},
              "rtp_toxicity": {"toxicity_scores": scores},
              "rtp_toxicity/continuations": {"toxicity_scores": scores, "continuations": texts},
              "sanitation": sanitation_inputs(FORGET, RETAIN)}[case]
    name, _, config = case.partition("/")
    return (name, config or None), inputs


@pytest.mark.parametrize("case", [c for c in CASES if c != "rtp_toxicity"])  # that one has a single input
def test_inputs_of_different_lengths_fail_clearly(load, case):
    (name, config), inputs = good_inputs(case)
    module = load(name, config)
    module.compute(**inputs)  # valid as given
    first, last = list(module.features)[0], list(module.features)[-1]
    n = len(inputs[first])
    with pytest.raises(ValueError, match=rf"Mismatch in the number of {first} \({n}\) and {last} \({n - 1}\)"):
        module.compute(**{**inputs, last: inputs[last][:-1]})


@pytest.mark.parametrize("case", [c for c in CASES if c != "rtp_toxicity"])
def test_a_missing_input_is_named(load, case):
    (name, config), inputs = good_inputs(case)
    module = load(name, config)
    last = list(module.features)[-1]
    with pytest.raises(ValueError, match=rf"missing input\(s\) \['{last}'\]"):
        module.compute(**{k: v for k, v in inputs.items() if k != last})


@pytest.mark.parametrize("case, column, bad, message", [
    ("crows_pairs", "directions", "stereotype", r"directions\[2\] must be one of \('stereo', 'antistereo'\)"),
    ("stereoset", "kinds", "intra", r"kinds\[2\] must be one of"),
    ("stereoset", "bias_types", "intersentence", r"bias_types\[2\] is a kind"),
    ("stereoset", "stereotype_scores", float("nan"), r"stereotype_scores\[2\] is NaN"),
    ("stereoset/token_counts", "unrelated_token_counts", 0, r"unrelated_token_counts: every candidate has at least one"),
    ("winobias", "correct", 0.5, r"correct\[2\] must be one of \(0.0, 1.0\)"),
    ("winobias/scores", "stereotypes", "neutral", r"stereotypes\[2\] must be one of \('pro', 'anti'\)"),
    ("winobias/scores", "pronoun_genders", "he", r"pronoun_genders\[2\] must be one of \('male', 'female'\)"),
    ("sanitation", "splits", "test", r"splits\[2\] must be one of \('forget', 'retain'\)"),
    ("sanitation", "answers", [], r"answers\[2\]: no gold answer"),
])
def test_bad_values_fail_clearly(load, case, column, bad, message):
    (name, config), inputs = good_inputs(case)
    values = list(inputs[column])
    values[2] = bad
    with pytest.raises(ValueError, match=message):
        load(name, config).compute(**{**inputs, column: values})


def test_no_inputs_unknown_configuration_and_length_norm_without_counts_fail(load):
    with pytest.raises(ValueError, match="crows_pairs: no inputs"):
        load("crows_pairs").compute(sent_more_scores=[], sent_less_scores=[], directions=[], bias_types=[])
    evaluate = pytest.importorskip("evaluate")
    with pytest.raises(ValueError, match="unknown configuration 'sums'; known: default, token_counts"):
        evaluate.load(trustedit.evaluate_module("stereoset"), "sums")
    _, inputs = good_inputs("stereoset")
    with pytest.raises(ValueError, match="length_norm=True needs the token counts"):
        load("stereoset").compute(**inputs, length_norm=True)


# ---------------------------------------------------------------------------------------------
# real items ($TRUSTEDIT_DATA_DIR): the real group structure, random scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.skipif(not DATA_DIR or not all((Path(DATA_DIR) / d).is_dir()
                                             for d in ("crows_pairs", "stereoset", "winobias")),
                    reason="needs $TRUSTEDIT_DATA_DIR/{crows_pairs,stereoset,winobias}")
def test_real_items_with_random_scores_equal_the_suite(load):
    from trustedit.data.bias import load_crows_pairs, load_stereoset, load_winobias

    rng = np.random.default_rng(9)
    crows = list(load_crows_pairs())
    more, less = ([float(x) for x in -rng.exponential(30, len(crows))] for _ in range(2))
    suite = B.crows_from_sentence_scores(crows, more, less, "p")
    assert_crows_equal(load("crows_pairs").compute(**crows_inputs(crows, more, less)), suite)
    assert len(suite) == 1 + 9  # the nine CrowS-Pairs bias types

    st = list(load_stereoset())
    lls = [[float(-rng.exponential(20)), int(rng.integers(1, 15))] for _ in range(3 * len(st))]
    for norm in (False, True):
        got = load("stereoset", "token_counts").compute(**stereoset_inputs(st, lls, counts=True), length_norm=norm)
        assert_stereoset_equal(got, B.stereoset_scores(st, lls, True, length_norm=norm))

    wb = list(load_winobias())
    res = [float(-rng.exponential()) for _ in range(2 * len(wb))]
    got = load("winobias", "scores").compute(gold_scores=res[0::2], other_scores=res[1::2], **winobias_inputs(wb))
    assert_winobias_equal(got, B.winobias_scores(wb, {"protocol": "loglik", "bos": True}, res), "winobias_loglik")
