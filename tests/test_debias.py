"""The debias job and `eval --suite bias,retention` end to end on a tiny model (real bias files when
available), through the one job skeleton."""

import argparse
import json
import os

import pytest

from trustedit.errors import UsageError
from trustedit.job import JobOptions, plan, run
from trustedit.jobs import JOBS

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")

SETS = ["max_prompts=8", "contexts_per_length=1", "context_lengths=3", "v_steps=2",
        # the tiny word-level tokenizer knows no pronouns: any three distinct known words do
        "targets=yes,no,know"]
SUITE_VALUES = dict(dama_test_limit=12, winobias_limit=3, stereoset_limit=6, crows_limit=6, retention=[])


def test_layers_and_rank_become_method_options():
    from trustedit.cli import _shortcut_sets

    ns = lambda **kw: argparse.Namespace(**{f"short__{k}": kw.get(k) for k in ("layers", "rank", "lam")})  # noqa: E731
    assert _shortcut_sets(ns(layers="0.5:0.9", rank="8"), "dama") == ["first_layer=0.5", "last_layer=0.9", "components=8"]
    assert _shortcut_sets(ns(layers="1"), "inlp") == ["layer=1"]
    with pytest.raises(UsageError, match="FIRST:LAST"):
        _shortcut_sets(ns(layers="3"), "dama")
    with pytest.raises(UsageError, match="--rank applies to dama"):
        _shortcut_sets(ns(rank="4"), "inlp")
    with pytest.raises(UsageError, match="--lambda applies to ext-sub, negation"):
        _shortcut_sets(ns(lam="2"), "dama")


def _plan(tmp_path, out="run", method="dama", sets=(), suites=None, **values):
    v = {**SUITE_VALUES, **values}
    return plan(JOBS["debias"] if method else None,
                JobOptions(out=str(tmp_path / out), batch_size=4, sets=[*SETS, *sets] if method else []),
                method, suites=suites, suite_values=v, explicit=set(v))


@pytest.fixture
def tiny(monkeypatch, tmp_path, llama_factory):
    import trustedit.models as models

    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    lm = llama_factory()
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    return lm


@needs_data
def test_eval_then_debias_write_the_standard_run_directories(tmp_path, tiny, llama_factory, weights):
    from trustedit.patch import Patch
    from trustedit.results import validate

    lm = tiny
    # eval: no edit, no patch; stores the base evaluation in the cache
    r0 = run(_plan(tmp_path, "eval", method=None, suites=["bias", "retention"]))
    assert sorted(os.listdir(tmp_path / "eval")) == ["results.json", "samples.jsonl", "summary.md"]
    assert r0["task"] == "eval" and r0["method"] is None and r0["protocol"] == "none"
    assert {s["cache"]["state"] for s in r0["suites"].values()} == {"miss (stored)"}
    validate(r0)

    r = run(_plan(tmp_path, sets=["first_layer=0", "last_layer=1", "components=2"]))
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    res = json.loads((out / "results.json").read_text())
    validate(res)
    assert res["task"] == "debias" and res["method"]["name"] == "dama" and res["schema_version"] == 1
    assert {s["cache"]["state"] for s in res["suites"].values()} == {"hit"}
    assert res["method"]["config"]["first_layer"] == 0 and res["method"]["config"]["components"] == 2
    for suite, k in (("dama-gender", "a_s"), ("dama-gender", "a_f"), ("winobias", "dama/acc"),
                     ("winobias", "loglik/delta_s"), ("stereoset", "ss"), ("stereoset", "lms"), ("stereoset", "icat"),
                     ("crows-pairs", "metric")):
        m = res["metrics"][suite][k]
        assert m["protocol"] and m["n"] > 0 and {"pre", "post", "delta", "unit", "display", "ci95"} <= set(m), k
        assert m["pre"]["value"] == r0["metrics"][suite][k]["pre"]["value"], k
    assert res["metrics"]["dama-gender"]["a_s"]["display"] == "coefficient"
    assert res["metrics"]["winobias"]["dama/acc"]["unit"] == "%"
    assert all(res["suites"][s]["dataset"]["fingerprint"] for s in ("dama-gender", "winobias", "stereoset", "crows-pairs"))
    assert res["patch"]["training"]["layers"] == [0, 1]
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    dama_rows = [x for x in rows if x["suite"] == "dama-gender"]
    assert len(dama_rows) == 12 and all("post_p_he_minus_p_she" in x for x in dama_rows)
    assert "## dama-gender" in (out / "summary.md").read_text()

    # the job left the patch applied; the saved patch on a fresh base model gives the same weights
    fresh = llama_factory()
    Patch.load(out / "patch").apply(fresh.model)
    weights.assert_same(fresh.model, lm.model)
    changed = [n for (n, a), b in zip(llama_factory().model.named_parameters(), lm.model.parameters()) if not (a == b).all()]
    assert changed and all("down_proj" in n for n in changed)
    assert r["metrics"]["winobias"]["loglik/acc"]["n"] == 12  # 3 sentences x 4 test files


def test_unknown_suite_and_method_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown suite 'nope'"):
        plan(None, JobOptions(out=str(tmp_path / "a")), None, suites=["nope"])
    with pytest.raises(UsageError, match="not a debias method"):
        plan(JOBS["debias"], JobOptions(out=str(tmp_path / "b")), "ft-m")
    with pytest.raises(UsageError, match="--k does not apply to the suite"):
        plan(None, JobOptions(out=str(tmp_path / "c")), None, suites=["bias"], suite_values={"k": 3})


@needs_data
def test_sweep_maps_layers_by_rank_and_plots(tmp_path, tiny, llama_factory, weights):
    from trustedit.cli import parse_sweep
    from trustedit.results import validate

    lm, before = tiny, llama_factory()
    pts = parse_sweep("0:1,1:1", "1,2")
    p = plan(JOBS["debias"], JobOptions(out=str(tmp_path / "run"), batch_size=4, sets=SETS), "dama",
             suites=["dama-gender", "winobias", "retention"],
             suite_values={"dama_test_limit": 12, "winobias_limit": 3, "retention": ["wikitext"], "wikitext_docs": 1},
             sweep=pts, task="debias-sweep")
    r = run(p)
    validate(r)
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["results.json", "samples.jsonl", "summary.md", "sweep.svg"]
    svg = (out / "sweep.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert [(pt["training"]["layers"], pt["training"]["components"]) for pt in r["points"]] == \
        [([0, 1], 1), ([0, 1], 2), ([1], 1), ([1], 2)]
    for pt in r["points"]:
        m = pt["metrics"]
        assert m["dama-gender"]["a_s"]["pre"]["value"] == r["metrics"]["dama-gender"]["a_s"]["pre"]["value"]
        assert "wikitext/ppl" in m["retention"] and "dama/acc" in m["winobias"]
    # layer ranges give different edits (here the tiny value vectors' cross-covariance has rank 1, so d_c 1 and 2
    # coincide), every point records its ranks, and the model is left as it was
    ppl = [pt["metrics"]["retention"]["wikitext/ppl"]["post"]["value"] for pt in r["points"]]
    assert ppl[0] != ppl[2]
    assert all(1 <= v["rank"] <= pt["training"]["components"] for pt in r["points"]
               for v in pt["training"]["per_layer"].values())
    weights.assert_same(lm.model, before.model)
    assert "| base |" in (out / "summary.md").read_text()
    with pytest.raises(UsageError, match="--sweep-ranks"):
        parse_sweep(None, "a,b")


@needs_data
def test_sweep_points_equal_separate_fits(tmp_path, tiny, llama_factory):
    """fit_sweep shares the value vectors; each point's patch equals a plain fit of its config."""
    import torch

    from trustedit.bias import dama

    cfgs = [dama.DAMAConfig.resolve(None, [*SETS, f"first_layer={a}", f"last_layer={b}", f"components={k}"])
            for a, b, k in ((0, 1, 1), (1, 1, 2))]
    swept = list(dama.fit_sweep(tiny, None, cfgs))
    for c, ps in zip(cfgs, swept):
        alone = dama.fit(llama_factory(), None, c)
        assert set(alone.deltas) == set(ps.deltas)
        for name in alone.deltas:
            assert torch.allclose(alone.deltas[name].full(), ps.deltas[name].full(), atol=1e-6), name


def test_sweep_cli_checks(tmp_path):
    from trustedit.cli import main

    assert main(["debias", "--sweep", "--method", "inlp", "--out", str(tmp_path / "x")]) == 2
    assert main(["debias", "--sweep", "--layers", "0:1", "--out", str(tmp_path / "y")]) == 2
    assert main(["debias", "--sweep", "--suites", "winobias,retention", "--out", str(tmp_path / "z")]) == 2
    assert main(["debias", "--sweep-ranks", "2", "--out", str(tmp_path / "w")]) == 2
