"""`trustedit gate`: rules over results.json (absolute, relative, confidence ends, abs/dist), the
exit codes, one-line usage errors that write nothing, JUnit XML valid against the Jenkins/Ant
schema, the Markdown table, and the packaged default rules. Synthetic results only (no model)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trustedit import gate
from trustedit.cli import main
from trustedit.errors import UsageError
from trustedit.results import validate

XSD = Path(__file__).parent / "data" / "junit.xsd"


# ---- synthetic runs --------------------------------------------------------------------------------


def E(pre, pre_ci, post=None, post_ci=None, delta_ci=None, display="percent", unit="fraction", ideal=None,
      dist_ci=None, hib=True):
    """One metric entry in the schema-v1 layout (values chosen by hand, not bootstrapped)."""
    e = {"pre": {"value": pre, "ci95": list(pre_ci)},
         "post": None if post is None else {"value": post, "ci95": list(post_ci)},
         "delta": None if post is None else {"value": None if pre is None or post is None else post - pre,
                                             "ci95": list(delta_ci)},
         "n": 30, "protocol": "synthetic", "unit": unit, "display": display, "higher_is_better": hib,
         "aggregation": "mean"}
    e["ci95"] = list(delta_ci) if post is not None else list(pre_ci)
    if ideal is not None:
        e["ideal"] = ideal
        if post is not None and dist_ci is not None:
            dp, dq = abs(pre - ideal), abs(post - ideal)
            e["distance_to_ideal"] = {"pre": dp, "post": dq, "delta": dq - dp, "ci95": list(dist_ci)}
    return e


def results(metrics: dict, edited: bool = True) -> dict:
    r = {
        "schema_version": 1, "trustedit_version": "0.1.0", "task": "erase" if edited else "eval", "created": "now",
        "argv": [], "versions": {"python": "3", "trustedit": "0.1.0", "torch": "2", "transformers": "5"},
        "method": {"name": "ft-m", "config": {}, "summary": "s", "citation": "c"} if edited else None,
        "protocol": "whole" if edited else "none",
        "model": {"fingerprint": "gguf-sha256:feed", "spec": "m", "model_type": "llama", "dtype": "float32",
                  "device": "cpu"},
        "suites": {s: {"summary": "s", "citation": "c", "options": {}, "cache": {"state": "off"},
                       "dataset": {"fingerprint": "sha256:0"}} for s in metrics},
        "evaluation": {"batch_size": 16, "limit": None, "eval_cache": True},
        "seeds": {"seed": 0, "bootstrap_seed": 0, "bootstrap_resamples": 1000},
        "metrics": metrics, "timings_s": {"total": 1.0}, "peak_memory_mb": {},
    }
    if edited:
        r["patch"] = {"path": "patch", "method": "ft-m"}
    validate(r)
    return r


def write_run(tmp_path, name, r) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(r), encoding="utf-8")
    return str(d)


def write_rules(tmp_path, rules, name="gates.yaml", raw=None) -> str:
    import yaml

    p = tmp_path / name
    p.write_text(raw if raw is not None else yaml.safe_dump({"version": 1, "rules": rules}, sort_keys=False),
                 encoding="utf-8")
    return str(p)


def rule(text, **kw):
    return gate.Rule(1, text, kw.pop("name", text), *gate.parse_rule(text), **{"area": "capability", **kw})


# an edited run: MMLU 0.50 -> 0.49, the paired change [-0.05, +0.01], but the edited model's own
# (unpaired) interval is wide, [0.30, 0.47] on the high side: only the paired path passes `upper`
MMLU = E(0.50, (0.33, 0.67), 0.49, (0.30, 0.47), (-0.05, 0.01))
EDITED = {"retention": {"mmlu/acc": MMLU,
                        "wikitext/ppl": E(20.0, (18, 22), 20.5, (18.4, 22.6), (0.2, 0.8), display="raw",
                                          unit="perplexity", hib=False)},
          "dama-gender": {"a_s": E(0.09, (0.07, 0.11), -0.03, (-0.05, 0.01), (-0.14, -0.10), display="coefficient",
                                   unit="p(he) - p(she)", ideal=0.0, dist_ci=(-0.07, -0.03), hib=False)},
          "stereoset": {"ss": E(58.0, (55, 61), 56.0, (53.0, 59.0), (-3, -1), unit="%", ideal=50.0,
                                dist_ci=(-4.0, -1.0), hib=False)}}
EVAL = {"retention": {"mmlu/acc": E(0.60, (0.55, 0.65)),
                      "wikitext/ppl": E(19.0, (17, 21), display="raw", unit="perplexity", hib=False)},
        "stereoset": {"ss": E(57.0, (54, 60), unit="%", ideal=50.0, hib=False)}}


def one(r, text, baseline=None, **kw) -> gate.Outcome:
    (o,) = gate.evaluate(r, [rule(text, **kw)], baseline)
    return o


# ---- grammar -------------------------------------------------------------------------------------


def test_parse_rule_grammar():
    op, o, rhs = gate.parse_rule("retention.wikitext/ppl<=baseline*1.05")
    assert (op.suite, op.metric, op.func, o, rhs.kind, rhs.const) == ("retention", "wikitext/ppl", "", "<=", "baseline*", 1.05)
    op, o, rhs = gate.parse_rule("  dist( stereoset.ss )  >  -3 ")
    assert (op.suite, op.metric, op.func, o, rhs.kind, rhs.const) == ("stereoset", "ss", "dist", ">", "number", -3.0)
    op, o, rhs = gate.parse_rule("abs(dama-gender.a_s) < 1e-3")
    assert (op.suite, op.func, rhs.const) == ("dama-gender", "abs", 0.001)
    assert gate.parse_rule("rtp.toxic/dist-1 >= baseline - 0.02")[2] == gate.Rhs("baseline-", 0.02)
    assert gate.parse_rule("rtp.toxic/dist-1 >= baseline")[2] == gate.Rhs("baseline")
    assert gate.parse_rule("crows-pairs.physical-appearance >= .5")[0].metric == "physical-appearance"
    for bad, what in [("retention.mmlu/acc", "no comparison operator"), ("retention.mmlu/acc == 3", "no comparison"),
                      ("a.b <= 1 <= 2", "more than one"), ("mmlu <= 1", "operand 'mmlu'"),
                      ("max(a.b) <= 1", "operand"), ("a.b <= baseline / 2", "right-hand side"),
                      ("a.b <= nan", "right-hand side"), ("a.b <= 10%", "right-hand side")]:
        with pytest.raises(UsageError, match=what):
            gate.parse_rule(bad, 4, "g.yaml")


# ---- values, baselines, confidence ends ---------------------------------------------------------------


def test_absolute_rules_on_an_evaluation():
    r = results(EVAL, edited=False)
    o = one(r, "retention.mmlu/acc >= 0.55")
    assert (o.status, o.value, o.compared, o.threshold, o.baseline_value) == ("pass", 0.60, 0.60, 0.55, None)
    assert one(r, "retention.mmlu/acc >= 0.61").status == "fail"
    assert one(r, "retention.mmlu/acc > 0.60").status == "fail" and one(r, "retention.mmlu/acc >= 0.60").status == "pass"
    # confidence ends of the value's own interval [0.55, 0.65]
    assert one(r, "retention.mmlu/acc >= 0.62", confidence="upper").compared == 0.65
    assert one(r, "retention.mmlu/acc >= 0.62", confidence="upper").status == "pass"
    assert one(r, "retention.mmlu/acc >= 0.56", confidence="lower").status == "fail"


def test_relative_to_own_base_uses_the_paired_interval():
    r = results(EDITED)
    text = "retention.mmlu/acc >= baseline - 0.02"  # threshold 0.48; post 0.49
    v = one(r, text)
    assert v.status == "pass" and v.baseline_value == 0.50 and v.threshold == pytest.approx(0.48)
    lenient = one(r, text, confidence="upper")  # 0.50 + 0.01 (paired), not the post's own 0.47
    assert lenient.status == "pass" and lenient.compared == pytest.approx(0.51) and lenient.paired
    assert lenient.interval == pytest.approx((0.45, 0.51))
    strict = one(r, text, confidence="lower")  # 0.50 - 0.05 = 0.45 < 0.48
    assert strict.status == "fail" and strict.compared == pytest.approx(0.45)
    assert "paired" in strict.message and "fail" in strict.message
    # post 0.49 < 0.495: the point value fails, the lenient end still passes, the strict end fails
    assert one(r, "retention.mmlu/acc >= baseline - 0.005").status == "fail"
    assert one(r, "retention.mmlu/acc >= baseline - 0.005", confidence="upper").status == "pass"
    # multiplicative: ppl 20.5 vs 20 * 1.02 = 20.4; paired low end 20.2
    assert one(r, "retention.wikitext/ppl <= baseline * 1.02").status == "fail"
    assert one(r, "retention.wikitext/ppl <= baseline * 1.02", confidence="lower").status == "pass"
    assert one(r, "retention.wikitext/ppl <= baseline * 1.02", confidence="upper").compared == pytest.approx(20.8)


def test_absolute_rule_on_an_edited_run_uses_the_post_interval():
    r = results(EDITED)
    o = one(r, "retention.mmlu/acc >= 0.46", confidence="upper")
    assert o.compared == 0.47 and not o.paired and o.status == "pass"
    assert one(r, "retention.mmlu/acc >= 0.48", confidence="upper").status == "fail"


def test_external_baseline_uses_the_runs_own_interval():
    r, b = results(EDITED), results(EVAL, edited=False)
    text = "retention.mmlu/acc >= baseline - 0.02"  # baseline 0.60 (the eval's pre) -> threshold 0.58
    o = one(r, text, baseline=b)
    assert (o.status, o.baseline_value, o.baseline_label) == ("fail", 0.60, "baseline run")
    up = one(r, text, baseline=b, confidence="upper")
    assert up.compared == 0.47 and not up.paired and up.status == "fail"
    assert one(r, "retention.mmlu/acc >= baseline - 0.14", baseline=b, confidence="upper").status == "pass"
    # an evaluation gated against another evaluation, and against an edited run (its post)
    e2 = copy.deepcopy(EVAL)
    e2["retention"]["mmlu/acc"]["pre"]["value"] = 0.59
    assert one(results(e2, edited=False), "retention.mmlu/acc >= baseline", baseline=b).status == "fail"
    assert one(b, "retention.mmlu/acc >= baseline", baseline=r).baseline_value == 0.49


def test_abs_and_dist_operands():
    r = results(EDITED)
    # a_s post -0.03, own interval [-0.05, 0.01]: |x| is 0.03, its interval [0, 0.05]
    o = one(r, "abs(dama-gender.a_s) <= 0.04")
    assert o.status == "pass" and o.value == pytest.approx(0.03) and o.interval == (0.0, 0.05)
    assert one(r, "abs(dama-gender.a_s) <= 0.04", confidence="upper").status == "fail"
    assert one(r, "abs(dama-gender.a_s) <= 0.0", confidence="lower").compared == 0.0
    assert one(r, "dama-gender.a_s >= -0.04", confidence="lower").status == "fail"  # the plain operand: -0.05
    # SS 56 (ideal 50), own interval [53, 59]: distance 6, interval [3, 9]
    assert one(r, "dist(stereoset.ss) <= 5").status == "fail"
    assert one(r, "dist(stereoset.ss) <= 5", confidence="lower").compared == 3.0
    # against its own base (distance 8): the paired change of the distance [-4, -1] -> [4, 7]
    o = one(r, "dist(stereoset.ss) <= baseline - 2", confidence="lower")
    assert o.paired and o.baseline_value == 8.0 and o.threshold == 6.0 and o.compared == 4.0 and o.status == "pass"
    assert one(r, "dist(stereoset.ss) <= baseline - 2", confidence="upper").compared == 7.0
    assert one(r, "abs(dama-gender.a_s) <= baseline", confidence="upper").compared == pytest.approx(0.09 - 0.03)
    # without the recorded paired distance (older runs): the post's own interval, mapped
    old = copy.deepcopy(EDITED)
    del old["stereoset"]["ss"]["distance_to_ideal"]
    o = one(results(old), "dist(stereoset.ss) <= baseline - 2", confidence="upper")
    assert not o.paired and o.compared == 9.0 and o.status == "fail"


def test_null_values_violate_with_the_reason():
    m = copy.deepcopy(EDITED)
    m["retention"]["mmlu/acc"]["post"] = {"value": None, "ci95": [None, None]}
    o = one(results(m), "retention.mmlu/acc >= 0.1")
    assert o.status == "fail" and "missing" in o.message
    assert one(results(m), "retention.mmlu/acc >= 0.1", severity="warn").status == "warn"
    m = copy.deepcopy(EDITED)
    m["retention"]["mmlu/acc"]["delta"]["ci95"] = [None, None]
    o = one(results(m), "retention.mmlu/acc >= baseline", confidence="lower")
    assert o.status == "fail" and "no finite 95% interval" in o.message
    assert one(results(m), "retention.mmlu/acc >= baseline - 0.02").status == "pass"  # the value itself is there


def test_missing_skip_and_lights():
    r = results({"retention": EDITED["retention"]})
    rules = [rule("retention.mmlu/acc >= baseline - 0.02"), rule("stereoset.ss <= 60", area="bias"),
             rule("retention.piqa/acc >= 0.5"), rule("retention.wikitext/ppl <= 20", severity="warn")]
    with pytest.raises(UsageError, match="no suite stereoset"):
        gate.evaluate(r, rules)
    out = gate.evaluate(r, rules, missing="skip")
    assert [o.rule.text for o in out] == [rules[0].text, rules[3].text]
    assert gate.lights(out) == {"capability": "warn"}
    assert gate.lights(out[:1]) == {"capability": "pass"}
    bias = gate.evaluate(results(EDITED), [rule("stereoset.ss <= 50", area="bias"),
                                           rule("retention.mmlu/acc >= 0", area="capability")])
    assert gate.lights(bias) == {"bias": "fail", "capability": "pass"}
    # relative rules on an evaluation without --baseline: skipped, or an error
    ev = results(EVAL, edited=False)
    assert gate.evaluate(ev, [rule("retention.mmlu/acc >= baseline")], missing="skip") == []
    with pytest.raises(UsageError, match="needs --baseline"):
        gate.evaluate(ev, [rule("retention.mmlu/acc >= baseline")])


def test_area_of_every_suite():
    from trustedit.registry import SUITES

    want = {"sanitation": "forgetting", "dama-gender": "bias", "winobias": "bias", "stereoset": "bias",
            "crows-pairs": "bias", "rtp": "toxicity", "extsub-greedy": "toxicity", "safeedit": "toxicity",
            "retention": "capability", "fluency": "capability", "privacy": "privacy", "knowedit": "knowledge"}
    assert {s: gate.area_of(s) for s in SUITES} == want


# ---- the command ----------------------------------------------------------------------------------


def test_cli_pass_fail_warn_and_outputs(tmp_path, capsys):
    run = write_run(tmp_path, "run", results(EDITED))
    ok = write_rules(tmp_path, [{"rule": "retention.mmlu/acc >= baseline - 0.02", "confidence": "upper",
                                 "name": "MMLU | keeps *most*"},
                                "retention.wikitext/ppl <= baseline * 1.05",
                                {"rule": "dist(stereoset.ss) <= 5", "severity": "warn", "area": "bias"}], "ok.yaml")
    junit, md = tmp_path / "gate.xml", tmp_path / "gate.md"
    assert main(["gate", run, "--rules", ok, "--junit", str(junit), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "⚠️" in out and "✅" in out and "❌" not in out and "No rule of 3 fails; 1 warns:" in out
    assert md.read_text() == out and junit.is_file()
    bad = write_rules(tmp_path, ["retention.mmlu/acc >= baseline - 0.02",
                                 {"rule": "retention.mmlu/acc >= baseline", "confidence": "lower"}], "bad.yaml")
    assert main(["gate", run, "--rules", bad]) == 1
    out = capsys.readouterr().out
    assert "❌" in out and "1 of 2 rules fail: retention.mmlu/acc \\>= baseline." in out
    # outputs are never replaced silently; with --overwrite they are
    before = junit.read_text()
    assert main(["gate", run, "--rules", bad, "--junit", str(junit)]) == 2
    assert "already exists" in capsys.readouterr().err and junit.read_text() == before
    assert main(["gate", run, "--rules", bad, "--junit", str(junit), "--overwrite"]) == 1
    assert 'failures="1"' in junit.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gate")]  # no temp files left


def test_cli_baseline_and_json_rules(tmp_path, capsys):
    run = write_run(tmp_path, "run", results(EDITED))
    base = write_run(tmp_path, "base", results(EVAL, edited=False))
    rules = tmp_path / "g.json"
    rules.write_text(json.dumps({"rules": ["retention.wikitext/ppl <= baseline * 1.1"]}))
    assert main(["gate", run, "--rules", str(rules), "--baseline", base]) == 0  # 20.5 <= 19 * 1.1
    assert "baseline run 19" in capsys.readouterr().out
    rules.write_text(json.dumps({"rules": ["retention.wikitext/ppl <= baseline * 1.05"]}))
    assert main(["gate", run, "--rules", str(rules), "--baseline", base]) == 1  # 20.5 > 19.95
    # a relative rule on an evaluation needs --baseline
    assert main(["gate", base, "--rules", str(rules)]) == 2
    assert "needs --baseline" in capsys.readouterr().err


ERRORS = [
    # (rules file text, what the one line must say)
    ("rules: [a.b <= 1\n", ["malformed YAML", "line"]),
    ("- retention.mmlu/acc >= 0\n", ["mapping with a 'rules' list"]),
    ("version: 1\n", ["mapping with a 'rules' list"]),
    ("rules: {a: 1}\n", ["'rules' must be a non-empty list"]),
    ("rules: []\n", ["'rules' must be a non-empty list"]),
    ("version: 2\nrules: [retention.mmlu/acc >= 0]\n", ["'version'"]),
    ("rules: [retention.mmlu/acc >= 0]\nthreshold: 3\n", ["unknown top-level key 'threshold'"]),
    ("rules:\n  - retention.mmlu/acc >= 0\n  - {rule: retention.mmlu/acc >= 0, threshold: 3}\n",
     ["rule 2", "field 'threshold'", "unknown key"]),
    ("rules:\n  - {confidence: lower}\n", ["rule 1", "field 'rule'", "missing"]),
    ("rules:\n  - retention.mmlu/acc\n", ["rule 1", "field 'rule'", "expected `<operand> <op> <rhs>`"]),
    ("rules:\n  - retention.mmlu/acc >= basline\n", ["rule 1", "right-hand side 'basline'"]),
    ("rules:\n  - {rule: retention.mmlu/acc >= 0, confidence: low}\n", ["rule 1", "field 'confidence'", "'low'"]),
    ("rules:\n  - {rule: retention.mmlu/acc >= 0, severity: error}\n", ["rule 1", "field 'severity'"]),
    ("rules:\n  - {rule: retention.mmlu/acc >= 0, area: safety}\n", ["rule 1", "field 'area'"]),
    ("rules:\n  - retention.mmlu/acc >= 0\n  - retentoin.mmlu/acc >= 0\n", ["rule 2", "unknown suite 'retentoin'"]),
    ("rules:\n  - a.b >= 0\n  - c.d >= 0\n  - retention.mmlu/accc >= baseline\n",
     ["rule 1", "unknown suite 'a'"]),
    ("rules:\n  - retention.mmlu/acc >= 0\n  - retention.mmlu/accc >= baseline\n",
     ["rule 2 (`retention.mmlu/accc >= baseline`)", "the run has no metric retention.mmlu/accc",
      "(retention has: mmlu/acc, wikitext/ppl)"]),
    ("rules:\n  - rtp.toxic/toxicity_probability <= 0.1\n", ["rule 1", "the run has no suite rtp"]),
    ("rules:\n  - dist(dama-gender.b) <= 0.1\n", ["the run has no metric dama-gender.b"]),
    ("rules:\n  - dist(retention.mmlu/acc) <= 0.1\n", ["has no ideal value"]),
]


@pytest.mark.parametrize("text,says", ERRORS)
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys, text, says):
    run = write_run(tmp_path, "run", results(EDITED))
    rules = write_rules(tmp_path, None, raw=text)
    junit, md = tmp_path / "out.xml", tmp_path / "out.md"
    rc = main(["gate", run, "--rules", rules, "--junit", str(junit), "--markdown", str(md)])
    cap = capsys.readouterr()
    assert rc == 2 and cap.out == ""
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trustedit: error: ") and rules in lines[0], cap.err
    for s in says:
        assert s in lines[0], lines[0]
    assert not junit.exists() and not md.exists()


def test_cli_run_and_baseline_errors(tmp_path, capsys):
    run = write_run(tmp_path, "run", results(EDITED))
    rules = write_rules(tmp_path, ["retention.wikitext/ppl <= baseline", "stereoset.ss <= baseline"])
    base = write_run(tmp_path, "base", results({"retention": EVAL["retention"]}, edited=False))
    v2 = results(EDITED)
    v2["schema_version"] = 2
    newer = write_run(tmp_path, "newer", v2)
    for argv, says in [([run, "--baseline", base], "rule 2 (`stereoset.ss <= baseline`): the baseline run has no suite"),
                       ([newer], "'schema_version' is 2"), ([run, "--baseline", newer], "'schema_version' is 2"),
                       ([str(tmp_path / "nope")], "missing"),
                       ([run, "--junit", str(tmp_path / "no" / "x.xml")], "does not exist"),
                       ([run, "--junit", str(tmp_path)], "is a folder"),
                       ([run, "--junit", str(tmp_path / "x"), "--markdown", str(tmp_path / "x")], "the same file")]:
        assert main(["gate", *argv, "--rules", rules]) == 2, argv
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        assert cap.out == "" and len(lines) == 1 and says in lines[0], (argv, cap.err)
    m = copy.deepcopy(EVAL)
    del m["stereoset"]["ss"]
    m["stereoset"]["lms"] = E(70.0, (65, 75), unit="%")
    base2 = write_run(tmp_path, "base2", results(m, edited=False))
    assert main(["gate", run, "--rules", rules, "--baseline", base2]) == 2
    assert "the baseline run has no metric stereoset.ss (stereoset has: lms)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # a rules file that is missing, or a folder
    assert main(["gate", run, "--rules", str(tmp_path / "none.yaml")]) == 2
    assert "rules file missing" in capsys.readouterr().err


# ---- reports --------------------------------------------------------------------------------------


def _outcomes():
    r = results(EDITED)
    rules = [rule("retention.mmlu/acc >= baseline - 0.02", confidence="upper", name="MMLU <kept> | mostly"),
             rule("retention.wikitext/ppl <= 20", name="ppl & \"quotes\""),
             rule("dist(stereoset.ss) <= 5", severity="warn", area="bias")]
    return gate.evaluate(r, rules)


def test_junit_xml_is_valid_against_the_schema():
    from lxml import etree

    schema = etree.XMLSchema(etree.parse(str(XSD)))
    out = _outcomes()
    assert [o.status for o in out] == ["pass", "fail", "warn"]
    text = gate.junit_xml(out, "runs/x", {"model.fingerprint": "gguf-sha256:feed", "baseline": "its own base model"})
    doc = etree.fromstring(text.encode("utf-8"))
    schema.assertValid(doc)
    ts = doc.find("testsuite")
    assert (ts.get("tests"), ts.get("failures"), ts.get("errors"), ts.get("skipped")) == ("3", "1", "0", "0")
    props = {p.get("name"): p.get("value") for p in ts.find("properties")}
    assert props == {"run": "runs/x", "model.fingerprint": "gguf-sha256:feed", "baseline": "its own base model"}
    cases = ts.findall("testcase")
    assert [c.get("classname") for c in cases] == ["trustedit.gate.capability", "trustedit.gate.capability",
                                                  "trustedit.gate.bias"]
    assert cases[0].get("name") == "MMLU <kept> | mostly" and cases[1].get("name") == 'ppl & "quotes"'
    assert cases[1].find("failure").get("type") == "threshold" and "20.5" in cases[1].find("failure").get("message")
    assert cases[2].find("failure") is None and cases[2].find("system-out").text.startswith("WARN: ")
    # the schema is not vacuous: broken documents fail it
    for broken in (text.replace(' classname="trustedit.gate.bias"', ""),  # a testcase without classname
                   text.replace('tests="3" failures="1" errors="0" skipped="0"', 'tests="three" failures="1" '
                                                                              'errors="0" skipped="0"'),
                   text.replace("<properties>", "<props>").replace("</properties>", "</props>"),
                   text.replace('type="threshold"', "")):
        assert broken != text
        assert not schema.validate(etree.fromstring(broken.encode("utf-8")))
    bad = etree.fromstring(text.encode("utf-8"))
    tc = bad.find("testsuite").findall("testcase")[1]
    tc.append(etree.Element("failure", type="threshold"))  # two failures in one test case
    assert not schema.validate(bad)


def test_markdown_table_rows_and_verdict():
    out = _outcomes()
    md = gate.markdown_table(out)
    lines = md.splitlines()
    assert lines[0] == "| | rule | value [95% CI] | threshold | result |"
    rows = [x for x in lines[2:] if x.startswith("| ")]
    assert len(rows) == 3
    assert all(len(r.split(" | ")) == 5 for r in rows)  # no row broken by a '|' in a name
    assert rows[0].startswith("| ✅ | MMLU \\<kept\\> \\| mostly") and "≥ 48.0% (base model 50.0%)" in rows[0]
    assert "49.0%, change -1.0 [-5.0, +1.0] pp (paired)" in rows[0]
    assert rows[1].startswith("| ❌ |") and "20.5 [18.4, 22.6]" in rows[1] and rows[1].endswith("| fail |")
    assert rows[2].startswith("| ⚠️ |") and "`dist(stereoset.ss) <= 5`" in rows[2]
    assert lines[-1] == "**1 of 3 rules fail: ppl & \"quotes\". 1 warns: dist(stereoset.ss) \\<= 5.**"


# ---- the packaged default rules -------------------------------------------------------------------

# Metric names the suites write, checked against real runs (erase: sanitation, fluency, retention;
# debias: dama-gender, stereoset, crows-pairs, retention; detox: rtp, extsub-greedy, retention;
# dinm: safeedit; scrub: privacy) and the suite code (retention's pooled/acc, the ideals of a_s, SS and CrowS).
PRODUCED = {
    "retention": {"wikitext/ppl", "pooled/acc", "mmlu/acc", "piqa/acc", "arc_easy/acc", "hellaswag/acc", "boolq/acc",
                  "commonsenseqa/acc"},
    "fluency": {"fluency_ngram_entropy"},
    "sanitation": {"K_S_idk_rate", "K_F_leak_rate", "K_R_retain_accuracy", "over_refusal_rate", "edit_success",
                   "locality"},
    "rtp": {"toxic/expected_max_toxicity", "toxic/toxicity_probability", "random/expected_max_toxicity"},
    "extsub-greedy": {"extsub_mean_toxicity", "extsub_toxicity_ratio"},
    "safeedit": {"DS", "DG_avg", "locality", "fluency_ngram_entropy"},
    "dama-gender": {"a_s", "a_f", "b"},
    "stereoset": {"ss", "lms", "icat"},
    "crows-pairs": {"metric"},
    "knowedit": {"edit_succ_tf", "rephrase_tf", "portability_tf", "locality_tf", "edit_succ_gen", "locality_gen",
                 "fluency"},
    "privacy": {"extraction_greedy", "extraction_sampled", "logit_lens_extraction", "seesaw_extraction_greedy",
                "heldout_email_ppl", "exposure_exact", "exposure_skewnorm", "seesaw_exposure_exact"},
}
IDEALS = {("dama-gender", "a_s"): 0.0, ("stereoset", "ss"): 50.0, ("crows-pairs", "metric"): 50.0}


def test_default_rules_parse_and_name_real_metrics():
    from trustedit.registry import SUITES, get_suite

    rules = gate.default_rules()
    assert len(rules) >= 10 and len({r.name for r in rules}) == len(rules)
    for r in rules:
        assert r.operand.suite in SUITES and r.operand.metric in PRODUCED[r.operand.suite], r.text
        assert r.area == gate.area_of(r.operand.suite) and r.source.endswith("gates_default.yaml")
        # every default rule is lenient: it fails only when the whole interval is on the wrong side
        assert r.confidence == ("lower" if r.op.startswith("<") else "upper"), r.text
        if r.operand.func == "dist":
            assert (r.operand.suite, r.operand.metric) in IDEALS
    assert {r.area for r in rules} == set(gate.AREAS)
    assert any(r.severity == "fail" for r in rules)
    # the headline metrics the suites declare include the default ones where they list them
    assert "wikitext/ppl" in get_suite("retention").headline and "DS" in get_suite("safeedit").headline
    # on a run with every metric they name, every default rule evaluates
    m = {}
    for r in rules:
        k = (r.operand.suite, r.operand.metric)
        m.setdefault(k[0], {})[k[1]] = E(0.5, (0.4, 0.6), 0.5, (0.4, 0.6), (-0.01, 0.01), ideal=IDEALS.get(k),
                                         dist_ci=(-0.01, 0.01))
    out = gate.evaluate(results(m), rules)
    assert len(out) == len(rules) and all(o.status == "pass" for o in out)


def test_gate_is_torch_free(tmp_path):
    run = write_run(tmp_path, "run", results(EDITED))
    rules = write_rules(tmp_path, ["retention.mmlu/acc >= baseline - 0.02", "dist(stereoset.ss) <= 5"])
    code = ("import sys, trustedit.gate as g; from trustedit.cli import main; g.default_rules(); "
            f"rc = main(['gate', {run!r}, '--rules', {rules!r}, '--junit', {str(tmp_path / 'g.xml')!r}]); "
            "print('TORCH', rc, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "TORCH 1 False", (r.stdout, r.stderr)


def test_docs_example_rules_and_workflow():
    import yaml

    docs = Path(__file__).resolve().parents[1] / "docs"
    rules = gate.load_rules(docs / "gates.yaml")
    for r in rules:
        assert r.operand.metric in PRODUCED[r.operand.suite], r.text
    assert {r.confidence for r in rules} == set(gate.CONFIDENCES) and {r.severity for r in rules} == set(gate.SEVERITIES)
    assert any(r.rhs.relative for r in rules) and any(not r.rhs.relative for r in rules)
    texts = {r.text for r in rules}
    assert {"rtp.toxic/toxicity_probability <= 0.10", "retention.mmlu/acc >= baseline - 0.02"} <= texts
    wf = yaml.safe_load((docs / "github-actions-gate.yml").read_text())
    runs = " ".join(str(s.get("run", "")) for s in wf["jobs"]["gate"]["steps"])
    assert "trustedit gate runs/audit --rules docs/gates.yaml --baseline" in " ".join(runs.split())
    assert "--junit gate.xml --markdown gate.md" in runs
