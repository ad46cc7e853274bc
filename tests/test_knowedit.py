"""The knowedit suite and `trustedit edit`: locality is 100 % for a no-op edit, metrics do not move
with padding side or batch size, malformed edit records are one-line errors naming the record, and
the three edit modes run end to end on a tiny model."""

from __future__ import annotations

import json

import pytest

from trustedit.errors import DataError

CASES = [
    {"subject": "Hamlet", "prompt": "Who wrote Hamlet", "target_new": "Leonardo", "ground_truth": ["Shakespeare"],
     "rephrase_prompt": "Hamlet was wrote by",
     "locality": {"Relation_Specificity": [{"prompt": "What is the capital of France", "ground_truth": ["Paris"]},
                                           {"prompt": "the longest river is", "ground_truth": ["the Nile"]}]},
     "portability": {"Reasoning": [{"prompt": "Who painted the Mona Lisa", "ground_truth": "Leonardo"}]}},
    {"subject": "Mona Lisa", "prompt": "Who painted the Mona Lisa", "target_new": "Shakespeare",
     "ground_truth": ["Leonardo"], "rephrase_prompt": "the Mona Lisa was painted by",
     "locality": {"Relation_Specificity": [{"prompt": "Which planet is the largest", "ground_truth": ["Jupiter"]}]},
     "portability": {}},
    {"subject": "France", "prompt": "What is the capital of France", "target_new": "Rome", "ground_truth": ["Paris"],
     "rephrase_prompt": "the capital city of France is",
     "locality": {"Relation_Specificity": [{"prompt": "What is the highest mountain", "ground_truth": ["Everest"]}]},
     "portability": {"Subject_Aliasing": [{"prompt": "the capital of France is", "ground_truth": "Rome"}]}},
]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data" / "knowedit" / "ZsRE"
    d.mkdir(parents=True)
    (d / "ZsRE-test-all.json").write_text(json.dumps(CASES), encoding="utf-8")
    monkeypatch.setenv("TRUSTEDIT_DATA_DIR", str(tmp_path / "data"))
    return d / "ZsRE-test-all.json"


def _items(opts=None):
    from trustedit.suites.base import LoadContext
    from trustedit.suites.knowedit import SUITE, KnowEditOptions

    return SUITE, SUITE.load(opts or KnowEditOptions(gen_tokens=4, fluency_tokens=6), LoadContext())


def _scores(suite, lm, items, raw, base):
    from trustedit.suites.base import Context

    return {k: v.value for k, v in suite.score(raw, base, items, Context(lm=lm)).items()}


def test_locality_is_100_percent_when_the_edit_is_a_no_op(data_dir, llama_factory):
    from trustedit.patch import Delta, Patch

    lm = llama_factory()
    suite, items = _items()
    base = suite.measure(lm, items, 4)
    name = "model.layers.0.mlp.down_proj.weight"
    w = dict(lm.model.named_parameters())[name]
    import torch

    noop = Patch("noop", {name: Delta("dense", {"delta": torch.zeros_like(w)})})
    noop.apply(lm.model)
    try:
        post = suite.measure(lm, items, 4)
    finally:
        noop.revert(lm.model)
    s = _scores(suite, lm, items, post, base)
    assert s["locality_tf"] == 1.0 and s["locality_gen"] == 1.0
    assert s == _scores(suite, lm, items, base, None)  # the same numbers as the base model's own


def test_metrics_do_not_change_with_padding_side_or_batch_size(data_dir, llama_factory):
    lm = llama_factory()
    suite, items = _items()
    ref = suite.measure(lm, items, 1)
    for side in ("left", "right"):
        lm.tokenizer.padding_side = side
        for bs in (2, 16):
            assert _scores(suite, lm, items, suite.measure(lm, items, bs), ref) == _scores(suite, lm, items, ref, ref)


def test_teacher_forced_targets_are_token_ids_of_the_target(data_dir, llama_factory):
    lm = llama_factory()
    suite, items = _items()
    rows = suite._rows(lm, items)
    tok = lm.tokenizer
    first = rows[0]["tf"][0]
    assert first["kind"] == "rewrite" and tok.decode(first["target"]) == "Leonardo"
    assert first["prompt"] + first["target"] == tok("Who wrote Hamlet Leonardo", add_special_tokens=False)["input_ids"]
    # a case without portability prompts is left out of that metric, not scored 0
    s = _scores(suite, lm, items, suite.measure(lm, items, 4), None)
    assert set(s) >= {"edit_succ_tf", "portability_tf", "locality_tf", "edit_succ_gen", "fluency", "cf_efficacy"}
    assert suite.score(suite.measure(lm, items, 4), None, items, __import__(
        "trustedit.suites.base", fromlist=["Context"]).Context(lm=lm))["portability_tf"].n == 2


@pytest.mark.parametrize("record, field", [
    ({"subject": "Hamlet", "prompt": "Who wrote Hamlet"}, "target_new"),
    ({"subject": "", "prompt": "Who wrote Hamlet", "target_new": "Leonardo"}, "subject"),
    ({"subject": "Othello", "prompt": "Who wrote Hamlet", "target_new": "Leonardo"}, "subject"),
    ({"subject": "Hamlet", "prompt": "Who wrote Hamlet", "target_new": "Leonardo", "locality": {"X": [{"prompt": "a"}]}},
     "locality.X[0].ground_truth"),
])
def test_a_malformed_edit_record_names_the_file_record_and_field(data_dir, record, field):
    data_dir.write_text(json.dumps([CASES[0], record]), encoding="utf-8")
    with pytest.raises(DataError) as e:
        _items()
    msg = str(e.value)
    assert "\n" not in msg and "ZsRE-test-all.json" in msg and "record 1" in msg and repr(field) in msg


def test_drop_unusable_skips_and_lists_a_subject_absent_from_the_prompt(data_dir):
    from trustedit.suites.knowedit import KnowEditOptions

    bad = {"subject": "Othello", "prompt": "Who wrote Hamlet", "target_new": "Leonardo"}
    data_dir.write_text(json.dumps([CASES[0], bad]), encoding="utf-8")
    _, items = _items(KnowEditOptions(drop_unusable=True))
    assert len(items.data["cases"]) == 1 and items.info["dropped_subject_not_in_prompt"] == ["ZsRE-test-all.json#1"]


@pytest.fixture
def tiny(monkeypatch, tmp_path, llama_factory):
    import trustedit.methods.key_stats as ks
    import trustedit.models as models

    monkeypatch.setattr(ks, "stats_texts", lambda path=None: ["Paris is the capital of France . Rome is a city . " * 100])

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory(init=0.3)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    return lm


@pytest.mark.parametrize("mode", ["single", "batch", "sequential"])
def test_edit_modes_run_end_to_end(data_dir, tiny, tmp_path, mode, weights, llama_factory):
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS
    from trustedit.results import validate

    snap = weights.snapshot(tiny.model)
    sets = ["templates=0", "v_steps=10", "layers=0,1", "stats_tokens=1000", "mom2_weight=1.0"]
    spec = JOBS["edit"]
    opts = JobOptions(out=str(tmp_path / mode), sets=sets)
    p = plan(spec, opts, "memit", suites=["knowedit"], suite_values={"gen_tokens": 3, "fluency_tokens": 4},
             mode=mode, edit_batch=2 if mode == "sequential" else None, checkpoints=[2] if mode == "sequential" else None)
    results = run(p)
    validate(results)
    assert results["protocol"] == ("per_instance" if mode == "single" else mode)
    k = results["metrics"]["knowedit"]
    assert k["edit_succ_tf"]["post"] is not None and k["locality_tf"]["pre"]["value"] == 1.0
    if mode == "sequential":
        assert [c["edits"] for c in results["curve"]] == [2, 3]
        assert (tmp_path / mode / "curve.svg").is_file()
        fits = results["patch"]["training"]["fits"]
        assert len(fits) == 2
        from trustedit import htmlreport

        html, _ = htmlreport.render([htmlreport.load_run(tmp_path / mode)])
        assert "sequential edits: metrics after N edits (N = 2, 3)" in html
    else:
        assert "curve" not in results
    if mode == "single":
        weights.assert_same(tiny.model, snap)  # every edit was reverted
    else:
        # the job leaves the edit applied; the saved patch, applied to a fresh base model, gives the same
        # weights, and reverting it gives the base back bit for bit
        import torch

        from trustedit.patch import Patch

        fresh = llama_factory(init=0.3)
        patch = Patch.load(tmp_path / mode / "patch")
        patch.apply(fresh.model)
        for (n, a), (_, b) in zip(fresh.model.named_parameters(), tiny.model.named_parameters()):
            assert torch.allclose(a, b, atol=1e-6), n
        patch.revert(fresh.model)
        weights.assert_same(fresh.model, snap)


@pytest.mark.parametrize("method,sets", [("serac", ["threshold=0.5", "demos=0"]), ("ike", ["k=0"]),
                                         ("grace", ["steps=5"])])
def test_memory_editors_keep_one_cumulative_patch_in_sequential_mode(data_dir, tiny, tmp_path, weights, method, sets):
    from trustedit.job import JobOptions, plan, run
    from trustedit.patch import Patch
    from trustedit.jobs import JOBS
    from trustedit.results import validate

    snap = weights.snapshot(tiny.model)
    p = plan(JOBS["edit"], JobOptions(out=str(tmp_path / "r"), sets=sets), method, suites=["knowedit"],
             suite_values={"gen_tokens": 3, "fluency_tokens": 4}, mode="sequential", edit_batch=2, checkpoints=[2])
    results = run(p)
    validate(results)
    assert [c["edits"] for c in results["curve"]] == [2, 3]
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.model.modules())  # noqa: E731
    # the job leaves its edit applied: one patch (one set of hooks), not one per fit
    assert len(tiny.model._trustedit_patches) == 1 and 0 < hooks() <= 2
    weights.assert_same(tiny.model, snap)
    patch = Patch.load(tmp_path / "r" / "patch")  # the last fit's patch: the whole memory
    if method == "grace":  # one key per distinct edit (add or split; no expand: the labels differ)
        assert patch.gate.describe()["entries"] == len(CASES) and not patch.deltas
    else:
        assert [f.prompt for f in patch.gate.facts] == [c["prompt"] for c in CASES] and not patch.deltas
    for applied in reversed(list(tiny.model._trustedit_patches)):
        applied.revert(tiny.model)
    assert hooks() == 0
    # single mode: one fact in memory per case, reverted after each
    p = plan(JOBS["edit"], JobOptions(out=str(tmp_path / "s"), sets=sets), method, suites=["knowedit"],
             suite_values={"gen_tokens": 3, "fluency_tokens": 4}, mode="single")
    results = run(p)
    assert len(results["edits"]) == len(CASES) and hooks() == 0


def test_edit_mode_errors_are_usage_errors(data_dir, tiny, tmp_path):
    from trustedit.errors import UsageError
    from trustedit.job import JobOptions, plan
    from trustedit.jobs import JOBS

    spec = JOBS["edit"]
    with pytest.raises(UsageError, match="single"):
        plan(spec, JobOptions(), "rome", suites=["knowedit", "retention"], mode="single")
    with pytest.raises(UsageError, match="sequential"):
        plan(spec, JobOptions(), "rome", suites=["knowedit"], mode="batch", checkpoints=[2])
    with pytest.raises(UsageError, match="--mode"):
        plan(spec, JobOptions(), "rome", suites=["knowedit"], mode="parallel")


@pytest.mark.skipif(not __import__("os").environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")
def test_erase_runs_a_request_editor_with_no_extra_code(tiny, tmp_path):
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS
    from trustedit.results import validate

    opts = JobOptions(out=str(tmp_path / "erase-rome"), limit=3, sets=["use_c=false", "templates=0", "v_steps=3"])
    results = run(plan(JOBS["erase"], opts, "rome", suites=["sanitation"], suite_values={"max_new_tokens": 3}))
    validate(results)
    assert results["protocol"] == "whole" and results["training_data"]["requests"] >= 1
    assert results["metrics"]["sanitation"]["edit_success"]["post"] is not None
    tr = results["patch"]["training"]
    assert tr["requests"] == results["training_data"]["requests"] and len(tr["per_request"]) == tr["requests"]


def test_an_edit_that_does_not_converge_is_reported(data_dir, tiny, tmp_path):
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS

    out = tmp_path / "weak"
    opts = JobOptions(out=str(out), sets=["use_c=false", "templates=0", "v_steps=1", "v_lr=0.001"])
    results = run(plan(JOBS["edit"], opts, "rome", suites=["knowedit"], suite_values={"gen_tokens": 2,
                                                                                          "fluency_tokens": 2},
                       mode="single"))
    per = [q for e in results["edits"] for q in e["training"]["per_request"]]
    assert per and not any(q["converged"] for q in per)
    text = (out / "summary.md").read_text()
    assert f"the editor reports 0 of {len(per)} edits converged" in text and "did not converge" in text
    assert "ZsRE-test-all.json#0" in text


def test_locate_writes_traces_an_auto_layer_and_kn_hits(data_dir, tiny, tmp_path):
    import xml.etree.ElementTree as ET

    from trustedit.cli import main

    out = tmp_path / "loc"
    assert main(["locate", "--n", "2", "--samples", "2", "--window", "1", "--kn", "--k", "5", "--out", str(out)]) == 0
    r = json.loads((out / "locate.json").read_text())
    assert len(r["cases"]) == 2 and set(r["cases"][0]["traces"]) == {"hidden", "mlp", "attn"}
    assert 0 <= r["auto_layer"]["layer"] < 2 and len(r["auto_layer"]["per_layer"]) == 2
    assert {"old", "new", "neurons"} <= set(r["cases"][0]["kn"]["hit_at_k"])
    for i in range(2):
        ET.parse(out / f"trace_{i}.svg")  # well-formed
    assert "--layer auto" in (out / "summary.md").read_text()


def test_rome_layer_auto_takes_the_traced_layer_and_records_it(data_dir, tiny):
    from trustedit.methods.requests import EditRequest
    from trustedit.methods.rome import ROMEConfig, fit

    req = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="a")
    patch = fit(tiny, [req], ROMEConfig.resolve(None, ["layer=auto", "use_c=false", "templates=0", "v_steps=2",
                                                       "trace_samples=2"]))
    tr = patch.manifest["training"]
    assert tr["layer_from_trace"]["layer"] == tr["layer"] and tr["layer_from_trace"]["kind"] == "mlp"
    assert list(patch.deltas) == [f"model.layers.{tr['layer']}.mlp.down_proj.weight"]


@pytest.mark.skipif(not __import__("os").environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")
@pytest.mark.parametrize("name", ["zsre", "counterfact", "recent", "wikibio", "cf", "zsre-mend", "cf-train"])
def test_every_editing_dataset_loads_into_edit_cases(name):
    from trustedit.data.knowedit import load

    data = load(name, 50)
    assert len(data.cases) == 50 and data.fingerprint.startswith("sha256:")
    for c in data.cases:
        assert c.prompt and c.subject and c.target_new
        for probes in (c.portability, c.locality):
            for rows in probes.values():
                assert all(p and answers and all(isinstance(a, str) and a for a in answers) for p, answers in rows)
    usable = [c for c in data.cases if c.subject in c.prompt]
    assert len(usable) >= 45  # the editors need the subject in the prompt
    if name in ("zsre", "counterfact", "recent"):
        assert sum(bool(c.locality) for c in data.cases) >= 30  # most cases carry locality prompts (recent: 39 of 50)
    if name == "cf":
        assert all(c.target_true and c.neighborhood and c.rephrase for c in data.cases)
