"""Cross-check of trustedit's multiple-choice and CrowS-Pairs metrics against lm-evaluation-harness
(``benchmarks/lm_eval_crosscheck.py``; needs the ``crosscheck`` extra)."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("lm_eval")

from trustedit.benchmarks import lm_eval_crosscheck as X  # noqa: E402

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")


def test_task_yamls_match_lm_evals_own():
    """Prompt templates, choices, targets, delimiters and metrics equal lm-eval's installed YAMLs."""
    assert X.check_templates() == []


def test_template_drift_is_reported(tmp_path, monkeypatch):
    shutil.copytree(X.TASKS_DIR, tmp_path / "tasks")
    f = tmp_path / "tasks" / "piqa.yaml"
    f.write_text(f.read_text().replace('doc_to_text: "Question: {{goal}}\\nAnswer:"', 'doc_to_text: "Q: {{goal}}\\nA:"'))
    g = tmp_path / "tasks" / "crows_pairs_english.yaml"
    g.write_text(g.read_text().replace('target_delimiter: ""\n', ""))
    monkeypatch.setattr(X, "TASKS_DIR", tmp_path / "tasks")
    problems = X.check_templates(["piqa", "crows_pairs", "boolq"])
    assert len(problems) == 2
    assert "trustedit_piqa: doc_to_text" in problems[0] and "target_delimiter" in problems[1]


def test_prefix_token_follows_trustedit(monkeypatch, plain_tokenizer):
    from trustedit.metrics import retention as R

    monkeypatch.delattr(R, "prefix_token", raising=False)
    pid, src = X.prefix_token(plain_tokenizer, False)
    assert pid == plain_tokenizer.bos_token_id and "encode_pair" in src
    monkeypatch.setattr(R, "prefix_token", lambda tok: tok.eos_token_id, raising=False)
    pid, src = X.prefix_token(plain_tokenizer, False)
    assert pid == plain_tokenizer.eos_token_id and "prefix_token" in src


def _report(ours_acc, lm_acc, lls=None):
    """compare() on a synthetic 5-item, 2-choice task with identical requests."""
    from trustedit.data.retention import MCItem

    items = [MCItem(str(i), "Q:", [" a", " b"], 0) for i in range(5)]
    strings = [("Q:", " a"), ("Q:", " b")] * 5
    tokens = [([1], [2]), ([1], [3])] * 5
    lls = lls or [-1.0, -2.0] * 5
    ours = {"strings": strings, "tokens": tokens, "per_item": [2] * 5, "lls": lls,
            "metrics": {"acc": ours_acc, "acc_norm": ours_acc}}
    theirs = {"strings": strings, "lls": [x + 1e-6 for x in lls], "metrics": {"acc": lm_acc}}
    recorded = {s: (list(t[0]), list(t[1])) for s, t in zip(strings, tokens)}
    return X.compare("piqa", items, ours, theirs, recorded, None)


def test_compare_counts_agreement_and_flags_a_disagreement():
    r = _report([1.0] * 5, [1.0] * 5)
    assert r["meets_target"] and r["metrics"]["acc"]["agree"] == 5 and r["tokens_identical"] == 10
    assert list(r["metrics"]) == ["acc"]  # acc_norm only where lm-eval reports it
    r = _report([1.0] * 5, [1.0, 1.0, 0.0, 1.0, 1.0])
    assert not r["meets_target"]
    assert r["metrics"]["acc"] == {"agree": 4, "agree_pct": 80.0, "lm_eval": 80.0, "ours": 100.0, "diff_points": 20.0,
                                   "closest_call": pytest.approx(1.0)}
    (d,) = r["disagreements"]
    assert d["item"] == "2" and d["metrics"] == ["acc"] and "unexplained" in d["cause"]
    lls = [-1.0, -2.0] * 2 + [-1.0, -1.0 - 1e-5] + [-1.0, -2.0] * 2
    (d,) = _report([1.0] * 5, [1.0, 1.0, 0.0, 1.0, 1.0], lls)["disagreements"]
    assert d["cause"].startswith("near tie: the top two log-likelihoods are 1.0")


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "piqa,nope"], "unknown task(s) ['nope']"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--out", "/nonexistent-dir/x.json"], "no such directory"),
])
def test_user_mistakes_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        X.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@needs_data
def test_samples_select_our_items():
    from trustedit.data.retention import load_mc

    items = load_mc("mmlu", 12)  # round-robin: 9 subjects, the first 3 get a second row
    samples = X.lm_eval_samples("mmlu", items)
    assert len(samples) == 9 and sum(map(len, samples.values())) == 12
    assert samples["trustedit_mmlu_abstract_algebra"] == [0, 1] and samples["trustedit_mmlu_world_religions"] == [0]
    assert X.lm_eval_samples("piqa", load_mc("piqa", 4)) == {"trustedit_piqa": [0, 1, 2, 3]}


@pytest.mark.slow
@needs_data
def test_crosscheck_agrees_with_lm_eval_on_a_slice():
    """Both implementations on the first 5 items of two MC tasks (one with acc_norm) and CrowS-Pairs
    (whole-sentence scoring): same request strings, same token ids, log-likelihoods equal to float
    noise, every per-item value equal."""
    report = X.crosscheck(["arc_easy", "mmlu", "crows_pairs"], limit=5, batch_size=4)
    assert report["template_problems"] == []
    assert set(report["tasks"]) == {"arc_easy", "mmlu", "crows_pairs"}
    for t, r in report["tasks"].items():
        assert r["items"] == 5
        assert r["strings_identical"] == r["requests"] == r["tokens_identical"], (t, r["token_examples"])
        assert r["max_abs_dll_same_tokens"] < 1e-3, t
        for m, v in r["metrics"].items():
            assert v["agree"] == 5 and abs(v["diff_points"]) < 1e-9, (t, m, r["disagreements"])
    assert set(report["tasks"]["arc_easy"]["metrics"]) == {"acc", "acc_norm"}
    assert set(report["tasks"]["crows_pairs"]["metrics"]) == {"pct_stereotype"}
    assert report["meets_target"]
    assert "| crows_pairs | 5 | pct_stereotype | 5/5 (100.0 %)" in X.markdown(report)
