"""The detox job and `eval --suite toxicity` end to end on a tiny model, with a stand-in scorer
(the real scorers have their own tests); RTP and the training text come from the real files."""

import json
import os

import pytest

from trustedit.detox import DetoxOptions, load_suite, run
from trustedit.errors import UsageError

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")


class WordScorer:
    """Toxicity = share of words that are 'no' (a known, checkable function of the text)."""

    name, kind, version = "word-no", "toxicity", "test/1"

    def score(self, texts):
        return [t.split().count("no") / max(1, len(t.split())) for t in texts]

    def describe(self):
        return {"name": self.name, "version": self.version}


def _opts(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), limit=3, random_limit=2, k=3, max_new_tokens=4, retention=[],
                batch_size=4, prompts_per_batch=2, extsub_max_new_tokens=4,
                sets=["rank=2", "alpha=4", "max_steps=2", "batch_size=4", "train_limit=16", "warmup_steps=0"])
    base.update(kw)
    return DetoxOptions(**base)


@needs_data
def test_rtp_sets_are_fixed_and_toxic_first():
    suite = load_suite(DetoxOptions(limit=20, random_limit=10))
    tox = suite["rtp_toxic"]
    assert len(tox) == 20 and len(suite["rtp_random"]) == 10
    assert [p.id for p in tox] == [p.id for p in load_suite(DetoxOptions(limit=20, random_limit=10))["rtp_toxic"]]
    ch = [p.challenging for p in tox]
    assert ch == sorted(ch, reverse=True)  # challenging first
    with pytest.raises(UsageError):
        load_suite(DetoxOptions(limit=0, random_limit=0))


@needs_data
def test_eval_then_detox_write_the_standard_run_directories(tmp_path, monkeypatch, llama_factory, weights):
    import trustedit.detox as D
    import trustedit.models as models
    from trustedit.patch import Patch

    lm = llama_factory()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    monkeypatch.setattr(D, "_scorer", lambda opts: WordScorer())

    r0 = run(_opts(tmp_path, out=str(tmp_path / "eval")), edit=False)
    assert sorted(os.listdir(tmp_path / "eval")) == ["results.json", "samples.jsonl", "summary.md"]
    assert r0["task"] == "eval" and r0["scorer"]["version"] == "test/1"
    for k in ("rtp_toxic/expected_max_toxicity", "rtp_toxic/toxicity_probability", "rtp_random/continuation_ppl",
              "rtp_toxic/dist-2", "extsub/extsub_mean_toxicity"):
        assert k in r0["metrics"], k

    r = run(_opts(tmp_path))
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "detox" and res["method"]["name"] == "ext-sub"
    assert set(res["side_by_side"]) == {"ext-sub", "expert", "negation"}
    m = res["metrics"]["rtp_toxic/expected_max_toxicity"]
    assert m["n"] == 3 and {"pre", "post", "delta"} <= set(m)
    # the base model's samples are the same in both runs (seeded), so its scores are too
    assert m["pre"]["value"] == r0["metrics"]["rtp_toxic/expected_max_toxicity"]["pre"]["value"]
    # the EMT recorded is the mean of the per-prompt maxima of the scores in samples.jsonl
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    tox_rows = [x for x in rows if x["set"] == "rtp_toxic"]
    assert len(tox_rows) == 3 and all(len(x["base"]) == 3 and len(x["ext-sub"]) == 3 for x in tox_rows)
    emt = sum(max(s["score"] for s in x["ext-sub"]) for x in tox_rows) / 3
    assert emt == pytest.approx(m["post"]["value"], abs=1e-3)
    assert "## Side by side" in (out / "summary.md").read_text()
    # the job left the patch applied; the saved patch on a fresh base gives the same weights
    fresh = llama_factory()
    Patch.load(out / "patch").apply(fresh.model)
    weights.assert_same(fresh.model, lm.model)
    assert r["patch"]["training"]["combine"] == "ext-sub"


def test_unknown_method_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not a detox method"):
        run(DetoxOptions(out=str(tmp_path / "a"), method="dama"))


class FakeJudge:
    """Safe iff the response contains 'the' (a known function of the text)."""

    def label(self):
        return "fake judge"

    def describe(self):
        return {"judge": "fake", "label": "fake judge"}

    def __call__(self, responses, safe, unsafe):
        return [1.0 if "the" in r.split() else 0.0 for r in responses]


@needs_data
@pytest.mark.parametrize("sequential", [False, True])
def test_detox_dinm_writes_the_standard_run_directory(tmp_path, monkeypatch, llama_factory, weights, sequential):
    import trustedit.metrics.safety as S
    import trustedit.models as models
    from trustedit.patch import Patch

    lm = llama_factory()
    snap = weights.snapshot(lm.model)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    monkeypatch.setattr(S, "make_judge", lambda spec: FakeJudge())
    out = tmp_path / "dinm"
    r = run(DetoxOptions(method="dinm", out=str(out), safeedit_split="first50", instances=2, response_tokens=3,
                         sequential=sequential, sets=["steps=2", "lr=0.5", "max_length=256"]))
    files = ["results.json", "samples.jsonl", "summary.md"] + (["patch"] if sequential else [])
    assert sorted(os.listdir(out)) == sorted(files)
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "detox" and res["suite"] == "safeedit" and res["method"]["name"] == "dinm"
    assert res["method"]["config"]["steps"] == 2 and res["dataset"]["n"] == 2 and res["dataset"]["fingerprint"]
    for k in ("DS", "DG_avg", "DG_onlyQ", "fluency_ngram_entropy"):
        assert {"pre", "post", "delta"} <= set(res["metrics"][k]), k
    assert res["metrics"]["DS"]["n"] == 2 and 0.0 <= res["locality"]["value"] <= 1.0
    assert sum(res["located_layers"].values()) == 2
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"pre", "post", "layer"} <= set(x) for x in rows)
    # DS recorded = the mean of the per-instance verdicts in samples.jsonl
    assert res["metrics"]["DS"]["post"]["value"] == pytest.approx(sum(x["post"]["DS"]["verdict"] for x in rows) / 2)
    summary = (out / "summary.md").read_text()
    assert "dinm on SafeEdit" in summary and "locality (after)" in summary
    if not sequential:
        weights.assert_same(lm.model, snap)  # edit -> evaluate -> revert leaves the model as it was
    else:
        assert res["patch"]["edits"] == 2
        fresh = llama_factory()
        Patch.load(out / "patch").apply(fresh.model)
        weights.assert_same(fresh.model, lm.model)  # the job left the summed edit applied; the saved one matches


def test_dinm_rejects_lambda(tmp_path):
    with pytest.raises(UsageError, match="lambda"):
        run(DetoxOptions(out=str(tmp_path / "a"), method="dinm", lam=2.0))
