"""summary.md and the side-by-side comparison are built from results.json alone (schema v1), and
how a value prints comes from its Score's unit and display, never from its name."""

import json
import subprocess
import sys

import pytest

from trustedit.metrics.scores import Score, entry
from trustedit.report import compare_runs, fmt, summary


def _results(method, post_ks, fp="sha256:abc", task="erase"):
    pre = Score("K_S_idk_rate", "p", [0, 0, 0, 0], unit="fraction", display="percent")
    post = Score("K_S_idk_rate", "p", post_ks, unit="fraction", display="percent")
    loc0 = Score("locality", "q", [1, 1, 1, 1], unit="fraction", display="percent")
    loc1 = Score("locality", "q", [1, 0.5, 1, 1], unit="fraction", display="percent")
    return {
        "schema_version": 1, "trustedit_version": "0.1.0", "task": task, "created": "now", "argv": [],
        "versions": {"python": "3", "trustedit": "0.1.0", "torch": "2", "transformers": "5"},
        "method": {"name": method, "config": {"lr": 1}, "summary": "s", "citation": "c"}, "protocol": "whole",
        "model": {"fingerprint": "gguf-sha256:0", "spec": "m", "model_type": "llama", "num_parameters": 1e6,
                  "dtype": "float32", "device": "cpu"},
        "suites": {"sanitation": {"summary": "s", "citation": "c", "options": {}, "cache": {"state": "off"},
                                  "dataset": {"fingerprint": fp, "forgotten_answers": ["Paris"], "source": "x",
                                              "layout": "knowedit", "counts": {}}}},
        "evaluation": {"batch_size": 16, "limit": None, "eval_cache": True}, "seeds": {"seed": 0, "bootstrap_seed": 0,
                                                                                     "bootstrap_resamples": 1000},
        "metrics": {"sanitation": {"K_S_idk_rate": entry(pre, post), "locality": entry(loc0, loc1)}},
        "patch": {"path": "patch", "method": method},
        "timings_s": {"total": 3.0, "edit": 1.0}, "peak_memory_mb": {},
    }


def test_results_fixture_is_schema_v1():
    from trustedit.results import validate

    validate(_results("ft-m", [1, 1, 0, 0]))


def test_compare_runs_table():
    out = compare_runs([("a", _results("ft-m", [1, 1, 0, 0])), ("b", _results("sanitation-lora", [1, 1, 1, 1]))])
    assert "| sanitation/K_S_idk_rate (%) | 0.0 → 50.0 (50.0) | 0.0 → 100.0 (100.0) |" in out
    assert "| sanitation/locality (%) | 100.0 → 87.5 (-12.5) | 100.0 → 87.5 (-12.5) |" in out
    assert "Warning" not in out
    assert "Warning" in compare_runs([("a", _results("ft-m", [1, 1, 0, 0])), ("b", _results("ft-m", [1, 1, 0, 0], fp="sha256:x"))])


def test_summary_names_protocol_and_interval():
    s = summary(_results("ft-m", [1, 1, 0, 0]))
    assert "K_S_idk_rate (%) ↑ | 0.0 | 50.0 |" in s and "forgotten answers: Paris" in s
    # each distinct protocol once, under its table, referred to by number
    assert "| 4 | [1] |" in s and "| 4 | [2] |" in s and "[1] p  " in s and "[2] q  " in s


def test_summary_training_data_is_a_sentence_not_a_dict():
    r = _results("ft-m", [1, 1, 0, 0])
    r["training_data"] = {"name": "sanitation (train split)", "fingerprint": "sha256:3e9a2eda829fa29a1aacd404",
                          "source": "$TRUSTEDIT_DATA_DIR/sanitation/knowedit", "forget": 80, "retain": 453, "bad": None}
    line = next(x for x in summary(r).splitlines() if x.startswith("- training data:"))
    assert line == ("- training data: sanitation (train split), forget 80, retain 453, fingerprint "
                    "`sha256:3e9a2eda829fa29a1…`, from `$TRUSTEDIT_DATA_DIR/sanitation/knowedit`")


def test_compare_cli(tmp_path):
    for name, ks in (("r1", [1, 0, 0, 0]), ("r2", [1, 1, 1, 0])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results("ft-m", ks)))
    r = subprocess.run([sys.executable, "-m", "trustedit", "compare", str(tmp_path / "r1"), str(tmp_path / "r2"),
                        "--out", str(tmp_path / "cmp.md")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "25.0" in (tmp_path / "cmp.md").read_text() and "75.0" in r.stdout
    # --out never overwrites silently
    r = subprocess.run([sys.executable, "-m", "trustedit", "compare", str(tmp_path / "r1"), "--out", str(tmp_path / "cmp.md")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr and "75.0" in (tmp_path / "cmp.md").read_text()
    r = subprocess.run([sys.executable, "-m", "trustedit", "compare", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "results.json" in r.stderr


@pytest.mark.parametrize("content, needle", [
    ("{", "invalid JSON"), ("[]", "expected a JSON object"),
    (json.dumps({"schema_version": 7}), "schema_version"),
    (json.dumps({"schema_version": 1, "task": "erase"}), "not a valid schema-1 results file"),
    (json.dumps({"task": "erase", "metrics": {"mystery": {"pre": {"value": 1}}}}), "before schema v1"),
])
def test_malformed_results_are_one_line_errors(tmp_path, content, needle):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(content)
    r = subprocess.run([sys.executable, "-m", "trustedit", "compare", str(tmp_path / "r")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_results_from_before_schema_v1_are_read():
    from trustedit.results import upgrade_legacy

    old = {"task": "debias", "model": {"fingerprint": "f"}, "method": {"name": "dama"},
           "metrics": {"dama_gender/a_s": {"pre": {"value": 0.1, "ci95": [0, 0.2]}, "post": {"value": 0.05, "ci95": [0, 0.1]},
                                           "delta": {"value": -0.05, "ci95": [-0.1, 0]}, "n": 3, "protocol": "p",
                                           "aggregation": "mean", "higher_is_better": False},
                       "winobias_loglik/acc": {"pre": {"value": 60.0, "unit": "%"}, "post": {"value": 70.0},
                                               "delta": {"value": 10.0, "ci95": [0, 20]}, "n": 3, "protocol": "p",
                                               "aggregation": "mean", "higher_is_better": True}}}
    r = upgrade_legacy(old)
    assert r["metrics"]["dama-gender"]["a_s"]["post"]["value"] == 0.05
    assert r["metrics"]["winobias"]["loglik/acc"]["display"] == "percent"
    table = compare_runs([("old", r)])
    assert "0.1 → 0.05" in table and "10.0 → 5.0" not in table  # a coefficient is not shown as a percentage


def test_display_comes_from_the_score_not_the_name():
    assert fmt(0.5, {"display": "percent", "unit": "fraction"}) == "50.0"
    for unit in ("%", "percentage points"):  # WinoBias, StereoSet and CrowS scores are in percent already
        assert fmt(62.5, {"display": "percent", "unit": unit}) == "62.5"
    assert fmt(0.01234, {"display": "coefficient"}) == "0.0123"
    assert fmt(19.6789, {"display": "raw"}) == "19.68"
    # the same name with another display prints differently
    assert fmt(0.5, {"display": "raw"}) == "0.5"


def test_an_overshoot_is_not_an_improvement():
    """SS 60 -> 35 lowers SS but moves it farther from its ideal 50: reported as farther, not better."""
    from trustedit.metrics.scores import Score, entry
    from trustedit.report import metric_table

    pre = Score("ss", "p", [60.0] * 10, unit="%", display="percent", ideal=50.0, higher_is_better=False)
    post = Score("ss", "p", [35.0] * 10, unit="%", display="percent", ideal=50.0, higher_is_better=False)
    e = entry(pre, post)
    assert e["ideal"] == 50.0 and e["delta"]["value"] == -25.0
    assert e["distance_to_ideal"]["pre"] == 10.0 and e["distance_to_ideal"]["post"] == 15.0
    assert e["distance_to_ideal"]["delta"] == 5.0 and e["distance_to_ideal"]["ci95"] == [5.0, 5.0]
    t = metric_table({"ss": e})
    assert "ss (%) → 50" in t and "5.0 [5.0, 5.0] (farther)" in t
    closer = entry(pre, Score("ss", "p", [52.0] * 10, unit="%", display="percent", ideal=50.0))
    assert closer["distance_to_ideal"]["delta"] == -8.0 and "(closer)" in metric_table({"ss": closer})
    r = _results("ft-m", [1, 1, 0, 0])
    r["metrics"]["stereoset"] = {"ss": e}
    from trustedit.results import validate

    validate(r)
    assert "60.0 → 35.0 (|·−50| 5.0)" in compare_runs([("a", r)])


def test_retention_summary_states_its_resolution():
    from trustedit.metrics.scores import Score, entry

    pre = Score("pooled/acc", "p", [1.0, 0.0] * 15, unit="fraction", display="percent")
    post = Score("pooled/acc", "p", [1.0, 0.0] * 14 + [0.0, 1.0], unit="fraction", display="percent")
    r = _results("ft-m", [1, 1, 0, 0])
    r["metrics"]["retention"] = {"pooled/acc": entry(pre, post)}
    s = summary(r)
    lo, hi = r["metrics"]["retention"]["pooled/acc"]["delta"]["ci95"]
    assert f"±{100 * (hi - lo) / 2:.1f} points" in s and "not resolved" in s
