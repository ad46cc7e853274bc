"""The debias job and `eval --suite bias` end to end on a tiny model (real bias files when available)."""

import json
import os

import pytest

from trustedit.debias import DebiasOptions, _layer_sets, run
from trustedit.errors import UsageError

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")


def test_layers_and_rank_become_method_options():
    assert _layer_sets("dama", "0.5:0.9", 8) == ["first_layer=0.5", "last_layer=0.9", "components=8"]
    assert _layer_sets("inlp", "1", None) == ["layer=1"]
    with pytest.raises(UsageError, match="FIRST:LAST"):
        _layer_sets("dama", "3", None)
    with pytest.raises(UsageError, match="--rank applies to dama"):
        _layer_sets("inlp", None, 4)


def _opts(tmp_path, **kw):
    base = dict(out=str(tmp_path / "run"), dama_test_limit=12, winobias_limit=3, stereoset_limit=6, crows_limit=6,
                retention=[], batch_size=4, layers="0:1", rank=2,
                sets=["max_prompts=8", "contexts_per_length=1", "context_lengths=3", "v_steps=2",
                      # the tiny word-level tokenizer knows no pronouns: any three distinct known words do
                      "targets=yes,no,know"])
    base.update(kw)
    return DebiasOptions(**base)


@needs_data
def test_eval_then_debias_write_the_standard_run_directories(tmp_path, monkeypatch, llama_factory, weights):
    import trustedit.models as models
    from trustedit.patch import Patch

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))

    # eval: no edit, no patch; stores the base evaluation in the cache
    r0 = run(_opts(tmp_path, out=str(tmp_path / "eval")), edit=False)
    assert sorted(os.listdir(tmp_path / "eval")) == ["results.json", "samples.jsonl", "summary.md"]
    assert r0["task"] == "eval" and r0["method"] is None and r0["evaluation"]["base_eval_cache"]["state"] == "miss (stored)"

    r = run(_opts(tmp_path))
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "debias" and res["method"]["name"] == "dama"
    assert res["evaluation"]["base_eval_cache"]["state"] == "hit"
    assert res["method"]["config"]["first_layer"] == 0 and res["method"]["config"]["components"] == 2
    for k in ("dama_gender/a_s", "dama_gender/a_f", "winobias_dama/acc", "winobias_loglik/delta_s", "stereoset/ss",
              "stereoset/lms", "stereoset/icat", "crows_pairs/metric"):
        m = res["metrics"][k]
        assert m["protocol"] and m["n"] > 0 and {"pre", "post", "delta"} <= set(m), k
        assert m["pre"]["value"] == r0["metrics"][k]["pre"]["value"], k
    assert set(res["dataset"]["fingerprints"]) >= {"dama_gender/prompts", "winobias/items", "stereoset/all", "crows_pairs/all"}
    assert res["patch"]["training"]["layers"] == [0, 1]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    dama_rows = [x for x in rows if x["test"] == "dama_gender"]
    assert len(dama_rows) == 12 and all("post_p_he_minus_p_she" in x for x in dama_rows)
    assert "## Metrics" in (out / "summary.md").read_text()

    # the job left the patch applied; the saved patch on a fresh base model gives the same weights
    fresh = llama_factory()
    Patch.load(out / "patch").apply(fresh.model)
    weights.assert_same(fresh.model, lm.model)
    changed = [n for (n, a), b in zip(llama_factory().model.named_parameters(), lm.model.parameters()) if not (a == b).all()]
    assert changed and all("down_proj" in n for n in changed)
    assert r["metrics"]["winobias_loglik/acc"]["n"] == 12  # 3 sentences x 4 test files


def test_unknown_test_and_method_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown bias test"):
        run(DebiasOptions(out=str(tmp_path / "a"), tests=["nope"]), edit=False)
    with pytest.raises(UsageError, match="not a debias method"):
        run(DebiasOptions(out=str(tmp_path / "b"), method="ft-m"))


@needs_data
def test_sweep_maps_layers_by_rank_and_plots(tmp_path, monkeypatch, llama_factory, weights):
    import trustedit.models as models
    from trustedit.debias import parse_sweep, run_sweep

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory()
    before = llama_factory()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    opts = _opts(tmp_path, layers=None, rank=None, tests=["dama_gender", "winobias"], retention=["wikitext"],
                 wikitext_docs=1)
    specs, ranks = parse_sweep("0:1,1:1", "1,2")
    r = run_sweep(opts, specs, ranks)
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["results.json", "summary.md", "sweep.svg"]
    assert (out / "sweep.svg").read_text().lstrip().startswith("<?xml") and "<svg" in (out / "sweep.svg").read_text()
    assert [(p["layers"], p["components"]) for p in r["points"]] == [([0, 1], 1), ([0, 1], 2), ([1], 1), ([1], 2)]
    for p in r["points"]:
        assert p["metrics"]["dama_gender/a_s"]["pre"]["value"] == r["base"]["dama_gender/a_s"]["value"]
        assert "wikitext/ppl" in p["metrics"] and "winobias_dama/acc" in p["metrics"]
    # layer ranges give different edits (here the tiny value vectors' cross-covariance has rank 1, so d_c 1 and 2
    # coincide), every point records its ranks, and the model is left as it was
    ppl = [p["metrics"]["wikitext/ppl"]["post"]["value"] for p in r["points"]]
    assert ppl[0] != ppl[2]
    assert all(1 <= v["rank"] <= p["components"] for p in r["points"] for v in p["per_layer"].values())
    weights.assert_same(lm.model, before.model)
    assert "| base |" in (out / "summary.md").read_text()
    with pytest.raises(UsageError, match="--sweep-ranks"):
        parse_sweep(None, "a,b")
    with pytest.raises(UsageError, match="dama_gender"):
        run_sweep(_opts(tmp_path, layers=None, rank=None, out=str(tmp_path / "x")), specs, ranks)  # no wikitext
    with pytest.raises(UsageError, match="not to --method inlp|does not apply"):
        run_sweep(_opts(tmp_path, method="inlp", layers=None, rank=None, out=str(tmp_path / "y")), specs, ranks)
