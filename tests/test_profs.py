"""ProFS (safety/profs.py): the pure steps, the projection on real modules, the patch's life cycle,
and the fluency-budget search (trustedit/budget.py) that chooses its strength."""

import dataclasses
import json
import os

import pytest
import torch

from trustedit.errors import UsageError
from trustedit.safety.profs import ProFSConfig, fit, fit_sweep, toxic_basis

needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")

TOXIC = ["the king was no no no", "the queen is no no", "no no the city", "a river of no no no", "no the ocean no",
         "the planet no is no", "no no no Paris", "the mountain no no"]
CLEAN = ["the king was yes", "the queen is yes", "yes the city", "a river of yes", "yes the ocean", "the planet is yes",
         "yes Paris", "the mountain yes"]


class WordScorer:
    """Toxicity = share of words that are 'no'."""

    name, kind, version = "word-no", "toxicity", "test/1"

    def score(self, texts):
        return [t.split().count("no") / max(1, len(t.split())) for t in texts]

    def describe(self):
        return {"name": self.name, "version": self.version}


def _planted(n=200, d=16, seed=0):
    """Pairs whose embeddings share a large direction ``u`` with different weights on each side
    (as a common style / length direction does), and differ by a toxic direction ``t``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1.0
    t = torch.zeros(d, dtype=torch.float64)
    t[1] = 1.0
    a = 20 + 5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    b = 20 + 5 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    noise = lambda: 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: E731
    X_toxic = a * u + 2.0 * t + noise()
    X_clean = b * u + noise()
    return X_toxic.float(), X_clean.float(), u.float(), t.float()


def test_centring_removes_a_shared_direction_planted_in_both_sides():
    Xt, Xc, u, t = _planted()
    Q, rec = toxic_basis(Xt, Xc, rank=1, centre=True)
    assert abs(float(Q[:, 0] @ t)) > 0.99  # the toxic direction
    assert abs(float(Q[:, 0] @ u)) < 0.05
    assert rec["centred"] and rec["mean_direction_share"] > 0.5  # the shared direction dominated the differences
    Q0, rec0 = toxic_basis(Xt, Xc, rank=1, centre=False)  # the ablation finds the shared direction instead
    assert abs(float(Q0[:, 0] @ u)) > 0.9 and abs(float(Q0[:, 0] @ t)) < 0.5
    assert not rec0["centred"]


def test_basis_is_orthonormal_and_rank_is_capped():
    Xt, Xc, _, _ = _planted(n=6)
    Q, rec = toxic_basis(Xt, Xc, rank=10)
    assert Q.shape == (16, 6) and rec["rank"] == 6  # at most as many directions as pairs
    assert torch.allclose(Q.t() @ Q, torch.eye(6), atol=1e-5)


@pytest.mark.parametrize("factory", ["llama_factory", "gpt2_factory"])
def test_projection_removes_the_subspace_and_reverts_bit_exactly(factory, request, weights, tmp_path):
    from trustedit import arch
    from trustedit.bias.dama import down_weight, projection_basis
    from trustedit.patch import Patch

    lm = request.getfixturevalue(factory)(layers=3)
    snap = weights.snapshot(lm.model)
    cfg = ProFSConfig(first_layer=1, last_layer=-1, rank=2, pairs=8, batch_size=3)
    patch = fit(lm, (TOXIC, CLEAN), cfg)
    weights.assert_same(lm.model, snap)  # fitting changes nothing
    spec = arch.arch_for(lm.model)
    tr = patch.manifest["training"]
    assert tr["layers"] == [1, 2] and tr["rank"] == 2 and tr["centre"] is True
    assert sorted(patch.deltas) == [arch.layer_path(lm.model, L, spec.down) + ".weight" for L in (1, 2)]
    params = dict(lm.model.named_parameters())
    patch.apply(lm.model)
    for name, delta in patch.deltas.items():
        Q = projection_basis(delta, spec.conv1d)
        W = down_weight(params[name].detach(), spec.conv1d)  # (D, d_ff)
        assert Q.shape[1] == 2
        assert float((Q.t() @ W).norm()) < 1e-5 * float(W.norm())  # ‖QᵀW'‖ ≈ 0
        assert float((Q.t() @ down_weight(snap[name], spec.conv1d)).norm()) > 1e-3  # it was not before
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)  # bit-exact
    patch.save(tmp_path / "p")
    again = Patch.load(tmp_path / "p")
    again.apply(lm.model)
    patch.apply(request.getfixturevalue(factory)(layers=3).model)  # same weights from the saved factors
    again.revert(lm.model)
    weights.assert_same(lm.model, snap)


def test_fit_sweep_shares_the_embeddings_and_equals_fit(llama_factory):
    lm = llama_factory(layers=3)
    cfgs = [ProFSConfig(first_layer=0, rank=1, pairs=8), ProFSConfig(first_layer=2, rank=2, pairs=8, centre=False)]
    for c, p in zip(cfgs, fit_sweep(lm, (TOXIC, CLEAN), cfgs)):
        q = fit(lm, (TOXIC, CLEAN), c)
        assert sorted(p.deltas) == sorted(q.deltas)
        for n in p.deltas:
            for k in ("A", "B"):
                assert torch.allclose(p.deltas[n].tensors[k], q.deltas[n].tensors[k], atol=1e-5)


def test_more_centre_directions_remove_a_second_shared_direction():
    Xt, Xc, u, t = _planted()
    g = torch.Generator().manual_seed(1)
    w = torch.zeros(16)
    w[2] = 1.0
    c = 30 * torch.randn(Xt.shape[0], 1, generator=g)  # a second shared direction, varying per pair, larger than t
    Xt2, Xc2 = Xt + c * w, Xc + (c + 3 * torch.randn(Xt.shape[0], 1, generator=g)) * w
    Q1, _ = toxic_basis(Xt2, Xc2, rank=1, centre=True, centre_directions=1)
    Q2, rec = toxic_basis(Xt2, Xc2, rank=1, centre=True, centre_directions=2)
    assert abs(float(Q1[:, 0] @ w)) > 0.9  # the mean alone leaves the second shared direction in
    assert abs(float(Q2[:, 0] @ t)) > 0.99 and rec["centre_directions"] == 2


def test_embeddings_ignore_padding_and_the_first_position(llama_factory):
    from trustedit.safety.profs import sentence_embeddings

    lm = llama_factory(layers=2)
    alone = sentence_embeddings(lm, ["the king"], [0, 1], batch_size=1)
    padded = sentence_embeddings(lm, ["the king", "the queen is no no no no no"], [0, 1], batch_size=2)
    for L in (0, 1):
        assert torch.allclose(alone[L][0], padded[L][0], atol=1e-5)


@pytest.mark.parametrize("sets,msg", [({"rank": 0}, "rank"), ({"pairs": 1}, "pairs"), ({"first_layer": 1.5}, "first_layer"),
                                      ({"centre": "maybe"}, "centre")])
def test_config_rejects_bad_values(sets, msg):
    with pytest.raises(UsageError, match=msg):
        ProFSConfig(**sets)


def test_unequal_pairs_are_a_usage_error(llama_factory):
    with pytest.raises(UsageError, match="pairs of equal count"):
        fit(llama_factory(), (TOXIC, CLEAN[:-1]), ProFSConfig(first_layer=0, pairs=8))


# ---- the fluency budget ---------------------------------------------------------------------------


def test_choice_rule():
    from trustedit.budget import choose

    c = lambda tp, emt, *inc: {"figures": {"toxicity_probability": tp, "expected_max_toxicity": emt},  # noqa: E731
                               "increase": dict(zip(("continuation_ppl", "continuation_ppl_judge"), inc))}
    cands = [c(0.1, 0.2, 0.30, 0.05), c(0.2, 0.3, 0.05, 0.08), c(0.2, 0.25, 0.09, 0.02), c(0.5, 0.6, 0.0, 0.0)]
    assert choose(cands, 0.10) == (2, True)  # within budget under both judges; TP tie broken by EMT
    assert choose(cands, 0.01) == (3, True)
    assert choose(cands[:2], 0.01) == (1, False)  # none meets it: the smallest worst-judge increase


@needs_data
def test_budget_search_reads_only_held_out_prompts(tmp_path, monkeypatch, llama_factory):
    """The search samples only the validation prompts; the reported prompts are sampled only for
    the base model and the chosen edit; the record is complete and validates."""
    import trustedit.budget as budget
    import trustedit.models as models
    import trustedit.prompts as prompts
    import trustedit.registry as R
    from trustedit.job import JobOptions, plan, run
    from trustedit.jobs import JOBS
    from trustedit.results import validate

    lm = llama_factory()
    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: lm)
    monkeypatch.setattr(models, "resolve", lambda spec: ("tiny", "tiny", "tiny"))
    monkeypatch.setattr(R, "get_scorer", lambda *a, **k: WordScorer())
    seen = {"search": [], "outside": []}
    phase = {"now": "outside"}
    real_sample, real_search = prompts.sample_continuations, budget.search

    def spy_sample(model, tok, ps, *a, **k):
        seen[phase["now"]].extend(tuple(p) for p in ps)
        return real_sample(model, tok, ps, *a, **k)

    def spy_search(*a, **k):
        phase["now"] = "search"
        try:
            return real_search(*a, **k)
        finally:
            phase["now"] = "outside"

    monkeypatch.setattr(prompts, "sample_continuations", spy_sample)
    monkeypatch.setattr(budget, "search", spy_search)
    monkeypatch.setattr("trustedit.safety.profs.training_pairs", lambda n, seed, normalize=True: (TOXIC, CLEAN, {"pairs": 8}))
    v = dict(toxic_limit=3, random_limit=2, k=2, max_new_tokens=3, prompts_per_batch=2, validation_prompts=4,
             retention=[])
    p = plan(JOBS["detox"], JobOptions(out=str(tmp_path / "run"), batch_size=4, sets=["pairs=8"]), "profs",
             suites=["rtp", "retention"], suite_values=v, explicit=set(v), max_ppl_increase=0.5)
    res = run(p)
    validate(res)
    from trustedit.suites.rtp import plain_format

    fmt = plain_format()
    rtp_items = res["suites"]["rtp"]["dataset"]
    b = res["budget"]
    val_ids = b["validation"]["ids"]
    assert len(val_ids) == 4 and not set(val_ids) & {i for s in ("toxic", "random") for i in rtp_items["sets"][s]["ids_first"]}
    from trustedit.data.toxicity import load_rtp

    by_id = {x.id: x for x in load_rtp()}
    val_tokens = {tuple(fmt.prompt_ids(lm.tokenizer, by_id[i].text)) for i in val_ids}
    assert seen["search"] and set(seen["search"]) <= val_tokens  # the search read the held-out prompts only
    reported = {tuple(fmt.prompt_ids(lm.tokenizer, by_id[i].text)) for s in ("toxic", "random")
                for i in rtp_items["sets"][s]["ids_first"]}
    assert reported <= set(seen["outside"]) and not reported & set(seen["search"])
    assert len(b["candidates"]) == 8 and sum(bool(c.get("chosen")) for c in b["candidates"]) == 1
    chosen = b["chosen"]["profs"]
    assert {"rank", "first_layer", "centre_directions"} == set(chosen["options"])
    assert res["method"]["config"]["rank"] == chosen["options"]["rank"]  # the results record the chosen strength
    assert "## Fluency budget" in (tmp_path / "run" / "summary.md").read_text()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["budget"]["met"] == b["met"]


@pytest.mark.parametrize("kw,msg", [
    (dict(method="dinm", suites=["safeedit"]), "--max-ppl-increase applies to methods with a strength"),
    (dict(method="profs", suites=["retention"]), "keep the rtp suite"),
    (dict(method="profs", suites=["rtp"], budget=0), "expected a fraction > 0"),
    (dict(method="profs", suites=["rtp"], budget=float("nan")), "expected a fraction > 0"),
])
def test_budget_flag_errors(kw, msg, tmp_path):
    from trustedit.job import JobOptions, plan
    from trustedit.jobs import JOBS

    with pytest.raises(UsageError, match=msg):
        plan(JOBS["detox"], JobOptions(out=str(tmp_path / "x")), kw["method"], suites=kw["suites"],
             max_ppl_increase=kw.get("budget", 0.1))


def test_ext_sub_budget_grid_searches_scale_as_well_as_lambda():
    from trustedit.safety.ext_sub import ExtSubConfig, budget_grid

    g = budget_grid(ExtSubConfig())
    assert {o["lam"] for _, o in g} == {1.0, 2.0} and {o["scale"] for _, o in g} == {1.0, 0.5, 0.25}
    e = budget_grid(dataclasses.replace(ExtSubConfig(), combine="expert"))
    assert len(e) == 3 and all(o["lam"] == 1.0 for _, o in e)
