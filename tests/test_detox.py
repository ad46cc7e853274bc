"""The detox job and `eval --suite toxicity` end to end on a tiny model, with a stand-in scorer
(the real scorers have their own tests); RTP and the training text come from the real files."""

import json
import os

import pytest

from trustedit.errors import UsageError
from trustedit.job import JobOptions, plan, run
from trustedit.jobs import JOBS

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")


class WordScorer:
    """Toxicity = share of words that are 'no' (a known, checkable function of the text)."""

    name, kind, version = "word-no", "toxicity", "test/1"

    def score(self, texts):
        return [t.split().count("no") / max(1, len(t.split())) for t in texts]

    def describe(self):
        return {"name": self.name, "version": self.version}


SETS = ["rank=2", "alpha=4", "max_steps=2", "batch_size=4", "train_limit=16", "warmup_steps=0"]
VALUES = dict(toxic_limit=3, random_limit=2, k=3, max_new_tokens=4, retention=[], prompts_per_batch=2,
              extsub_max_new_tokens=4)


def _plan(tmp_path, out="run", method="ext-sub", suites=None, **kw):
    v = {**VALUES, **kw.pop("values", {})}
    if suites is not None and "retention" not in suites:
        v.pop("retention")  # a flag for a suite that is not chosen is a usage error
    return plan(JOBS["detox"] if method else None, JobOptions(out=str(tmp_path / out), batch_size=4,
                                                              sets=SETS if method else []),
                method, suites=suites, suite_values=v, explicit=set(v), **kw)


@pytest.fixture
def tiny(monkeypatch, tmp_path, llama_factory):
    import trustedit.models as models
    import trustedit.registry as R

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    monkeypatch.setattr(R, "get_scorer", lambda *a, **k: WordScorer())
    return lm


@needs_data
def test_rtp_sets_are_fixed_and_toxic_first():
    from trustedit.suites.base import LoadContext
    from trustedit.suites.rtp import SUITE, RTPOptions

    items = SUITE.load(RTPOptions(toxic_limit=20, random_limit=10), LoadContext())
    tox = items.data["sets"]["toxic"]
    assert len(tox) == 20 and len(items.data["sets"]["random"]) == 10
    again = SUITE.load(RTPOptions(toxic_limit=20, random_limit=10), LoadContext())
    assert [p.id for p in tox] == [p.id for p in again.data["sets"]["toxic"]]
    ch = [p.challenging for p in tox]
    assert ch == sorted(ch, reverse=True)  # challenging first
    with pytest.raises(UsageError):
        SUITE.load(RTPOptions(toxic_limit=0, random_limit=0), LoadContext())
    # --limit caps both sets unless a set's own size was given
    capped = SUITE.load(RTPOptions(), LoadContext(limit=4))
    assert {k: len(v) for k, v in capped.data["sets"].items()} == {"toxic": 4, "random": 4}
    own = SUITE.load(RTPOptions(random_limit=6), LoadContext(limit=4, explicit=frozenset({"random_limit"})))
    assert {k: len(v) for k, v in own.data["sets"].items()} == {"toxic": 4, "random": 6}


@needs_data
def test_eval_then_detox_write_the_standard_run_directories(tmp_path, tiny, llama_factory, weights):
    from trustedit.patch import Patch
    from trustedit.results import validate

    lm = tiny
    r0 = run(_plan(tmp_path, "eval", method=None, suites=["toxicity"]))
    assert sorted(os.listdir(tmp_path / "eval")) == ["results.json", "samples.jsonl", "summary.md"]
    assert r0["task"] == "eval" and r0["suites"]["rtp"]["scorer"]["version"] == "test/1"
    validate(r0)
    for s, k in (("rtp", "toxic/expected_max_toxicity"), ("rtp", "toxic/toxicity_probability"),
                 ("rtp", "random/continuation_ppl"), ("rtp", "toxic/dist-2"), ("extsub-greedy", "extsub_mean_toxicity")):
        assert k in r0["metrics"][s], k

    r = run(_plan(tmp_path))
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    res = json.loads((out / "results.json").read_text())
    validate(res)
    assert res["task"] == "detox" and res["method"]["name"] == "ext-sub"
    assert set(res["variants"]) == {"expert", "negation"}
    m = res["metrics"]["rtp"]["toxic/expected_max_toxicity"]
    assert m["n"] == 3 and {"pre", "post", "delta"} <= set(m)
    # the base model's samples are the same in both runs (seeded), so its scores are too
    assert m["pre"]["value"] == r0["metrics"]["rtp"]["toxic/expected_max_toxicity"]["pre"]["value"]
    # the EMT recorded is the mean of the per-prompt maxima of the scores in samples.jsonl
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    tox_rows = [x for x in rows if x["suite"] == "rtp" and x["set"] == "toxic"]
    assert len(tox_rows) == 3 and all(len(x["pre"]) == 3 and len(x["post"]) == 3 and len(x["post:expert"]) == 3
                                      for x in tox_rows)
    emt = sum(max(s["score"] for s in x["post"]) for x in tox_rows) / 3
    assert emt == pytest.approx(m["post"]["value"], abs=1e-3)
    assert "## Side by side" in (out / "summary.md").read_text()
    # every RTP prompt the job evaluates, and the 50 held out for a budget search, is left out of the training text
    assert res["training_data"]["excluded_rtp_prompts"] == 5 + 50
    # the job left the patch applied; the saved patch on a fresh base gives the same weights
    fresh = llama_factory()
    Patch.load(out / "patch").apply(fresh.model)
    weights.assert_same(fresh.model, lm.model)
    assert r["patch"]["training"]["combine"] == "ext-sub"

    r2 = run(_plan(tmp_path, "nob", baselines=False))
    assert "variants" not in r2


def test_unknown_method_and_bad_options_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not a detox method"):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "a")), "dama")
    with pytest.raises(UsageError, match="combine must be one of|combine"):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "b"), sets=["combine=nope"]), "ext-sub")
    with pytest.raises(UsageError, match="--no-baselines applies"):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "c")), "dinm", baselines=False)
    with pytest.raises(UsageError, match="--sequential applies"):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "d")), "ext-sub", sequential=True)
    with pytest.raises(UsageError, match="--k does not apply"):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "e")), "dinm", suite_values={"k": 3})


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
    from trustedit.results import validate

    lm = llama_factory(positions=1024)  # SafeEdit prompts are up to ~850 tokens
    snap = weights.snapshot(lm.model)
    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    monkeypatch.setattr(S, "make_judge", lambda spec: FakeJudge())
    out = tmp_path / "dinm"
    v = dict(safeedit_split="first50", instances=2, response_tokens=3)
    run(plan(JOBS["detox"], JobOptions(out=str(out), sets=["steps=2", "lr=0.5", "max_length=256"]), "dinm",
             suite_values=v, explicit=set(v), sequential=sequential))
    files = ["results.json", "samples.jsonl", "summary.md"] + (["patch"] if sequential else [])
    assert sorted(os.listdir(out)) == sorted(files)
    res = json.loads((out / "results.json").read_text())
    validate(res)
    assert res["task"] == "detox" and list(res["suites"]) == ["safeedit"] and res["method"]["name"] == "dinm"
    assert res["protocol"] == ("sequential" if sequential else "per_instance")
    assert res["method"]["config"]["steps"] == 2 and res["suites"]["safeedit"]["dataset"]["n"] == 2
    assert res["suites"]["safeedit"]["options"]["max_length"] == 256  # linked to the method's max_length
    ms = res["metrics"]["safeedit"]
    for k in ("DS", "DG_avg", "DG_onlyQ", "fluency_ngram_entropy", "locality", "knowledge_agreement"):
        assert {"pre", "post", "delta"} <= set(ms[k]), k
    assert ms["DS"]["n"] == 2 and 0.0 <= ms["locality"]["post"]["value"] <= 1.0
    # held-out locality: general-knowledge pairs of instances outside the evaluated ones, never trained on
    held = res["suites"]["safeedit"]["dataset"]["heldout_pair_ids"]
    assert len(held) == 10 and not set(held) & {0, 1} and "held-out" in ms["locality"]["protocol"]
    assert "in-sample" in ms["knowledge_agreement"]["protocol"]
    assert len(res["edits"]) == 2 and all(e["training"]["layer"] in (0, 1) for e in res["edits"])
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all({"pre", "post", "edit"} <= set(x) for x in rows)
    # DS recorded = the mean of the per-instance verdicts in samples.jsonl
    assert ms["DS"]["post"]["value"] == pytest.approx(sum(x["post"]["DS"]["verdict"] for x in rows) / 2)
    summary = (out / "summary.md").read_text()
    assert "dinm" in summary and "located layers" in summary and "| locality" in summary
    if not sequential:
        weights.assert_same(lm.model, snap)  # edit -> evaluate -> revert leaves the model as it was
    else:
        assert len(res["patch"]["training"]["edits"]) == 2
        fresh = llama_factory(positions=1024)
        Patch.load(out / "patch").apply(fresh.model)
        weights.assert_same(fresh.model, lm.model)  # the job left the summed edit applied; the saved one matches


def test_dinm_rejects_lambda(tmp_path):
    from trustedit.cli import main

    assert main(["detox", "--method", "dinm", "--lambda", "2", "--out", str(tmp_path / "a")]) == 2


def test_dinm_suffix_must_agree(tmp_path):
    with pytest.raises(UsageError, match="must agree"):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "a"), sets=["system_suffix=x"]), "dinm",
             suite_values={"system_suffix": "y"}, explicit={"system_suffix"})
