"""FT-M and FT-L as knowledge editors on tiny models: the cached lower layers, edits, the schedules,
the L∞ bound, reversibility and malformed requests."""

from __future__ import annotations

import pytest
import torch

from trustedit.errors import DataError, UsageError
from trustedit.methods.ft_edit import Row, Runner
from trustedit.methods.ft_l import METHOD as FTL
from trustedit.methods.ft_l import FTLConfig
from trustedit.methods.ft_l import fit as ftl_fit
from trustedit.methods.ft_m import METHOD, FTMConfig, fit
from trustedit.methods.requests import EditRequest, encode_request

# the subject is the prompt's last token: on a random tiny model a change reaches the next-token
# prediction most directly there (see tests/test_rome.py)
REQ = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="r1")
REQS = [REQ, EditRequest("What is the longest river", "river", "Everest", id="r2"),
        EditRequest("Who painted the Mona Lisa", "Lisa", "Jupiter Saturn", id="r3"),
        EditRequest("What is the capital of France", "France", "Berlin", id="r4")]
DOWN = "model.layers.{}.mlp.down_proj.weight"


def _prob(lm, req):
    """Mean teacher-forced probability of the target's tokens (what the manifest reports)."""
    p, t = encode_request(lm.tokenizer, req.prompt, req.target_new)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([p + t[:-1]])).logits[0]
    lp = torch.log_softmax(logits[len(p) - 1:], -1)
    return lp[torch.arange(len(t)), torch.tensor(t)].exp().mean().item()


@pytest.mark.parametrize("factory, L", [("llama_factory", 0), ("llama_factory", 2), ("gpt2_factory", 2)])
def test_cached_lower_layers_give_the_full_forward(factory, L, request):
    from trustedit import arch

    lm = request.getfixturevalue(factory)(layers=4)
    tok = lm.tokenizer
    layers = list(arch.layers(lm.model))
    rows = [Row(r.id, *encode_request(tok, r.prompt, r.target_new)) for r in REQS]
    run = Runner(lm.model, L, tok.pad_token_id)
    run.cache(rows)
    assert (rows[0].h is None) == (L == 0)
    for objective in ("target", "prompt_last"):
        b = run.batch(rows, objective)
        with torch.no_grad():
            full = lm.model(input_ids=b.ids, attention_mask=b.mask).logits[b.pos_b, b.pos_t]
            with run.upper_only():
                lp, _ = run.logp(b)
        assert torch.allclose(lp, torch.log_softmax(full, -1), atol=1e-5)
    assert all(a is b for a, b in zip(arch.layers(lm.model), layers))  # the real layers are back


def test_ftm_single_edit_writes_the_target_changes_one_weight_and_reverts(llama_factory, weights):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    before = _prob(lm, REQ)
    patch = fit(lm, REQ, FTMConfig(edit_lr=1e-2, edit_steps=50))
    weights.assert_same(lm.model, snap)  # fit leaves the model as it was
    rec = patch.manifest["training"]
    name = DOWN.format(1)  # 0.66 of 2 layers
    assert set(patch.deltas) == {name} and rec["parameters"] == [name] and rec["layer"] == 1
    assert rec["schedule"] == "single" and rec["converged"] == 1 and 0 < rec["steps"] <= 50
    (entry,) = rec["per_request"]
    assert entry["id"] == "r1" and entry["converged"] and set(entry) >= {"target_prob", "final_nll"}
    patch.apply(lm.model)
    after = _prob(lm, REQ)
    assert before < 0.2 and after > 0.5 and after == pytest.approx(entry["target_prob"], abs=1e-3)
    weights.assert_same(lm.model, snap, names=[n for n in snap if n != name])  # only the chosen weight moved
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)


@pytest.mark.parametrize("schedule", ["breadth-first", "depth-first"])
def test_ftm_edits_several_requests_in_one_fit(llama_factory, weights, schedule):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    cfg = FTMConfig(edit_lr=1e-2, edit_schedule=schedule, edit_batch_size=2, edit_epochs=60, edit_steps=50)
    patch = fit(lm, REQS, cfg)
    weights.assert_same(lm.model, snap)
    rec = patch.manifest["training"]
    assert rec["schedule"] == schedule and rec["requests"] == 4 and [e["id"] for e in rec["per_request"]] == \
        ["r1", "r2", "r3", "r4"]
    patch.apply(lm.model)
    after = [_prob(lm, r) for r in REQS]
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)
    if schedule == "breadth-first":  # depth-first may undo earlier edits: reported, not asserted
        assert rec["converged"] == 4 and min(after) > 0.5, after
    assert [e["target_prob"] for e in rec["per_request"]] == pytest.approx(after, abs=1e-3)


def test_ftl_respects_the_linf_bound_exactly(llama_factory, weights):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    eps = 1e-3
    before = _prob(lm, REQ)
    patch = ftl_fit(lm, [REQ], FTLConfig(layer=0, lr=1e-2, norm_constraint=eps, steps=20))
    weights.assert_same(lm.model, snap)
    rec = patch.manifest["training"]
    (delta,) = patch.deltas.values()
    m = delta.tensors["delta"].abs().max().item()
    assert m <= eps and m > 0.9 * eps and rec["max_abs_delta"] <= eps  # the bound holds and binds
    assert rec["objective"] == "prompt_last" and "objective_nll" in rec["per_request"][0]
    patch.apply(lm.model)
    assert _prob(lm, REQ) > before  # a move toward the target, however small the ball
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)


def test_ftl_unconstrained_writes_a_one_token_target(llama_factory):
    lm = llama_factory(init=0.3)
    patch = ftl_fit(lm, REQ, FTLConfig(lr=1e-2, norm_constraint=0, steps=50))
    assert patch.manifest["training"]["per_request"][0]["converged"]
    assert "max_abs_delta" not in patch.manifest["training"]


@pytest.mark.parametrize("editor", [fit, ftl_fit])
def test_malformed_requests_are_data_errors(tiny_llama, weights, editor):
    cfg = FTMConfig() if editor is fit else FTLConfig()
    snap = weights.snapshot(tiny_llama.model)
    with pytest.raises(DataError, match="record bad, field 'subject'"):
        editor(tiny_llama, [REQ, EditRequest("Who wrote Hamlet", "Macbeth", "Leonardo", id="bad")], cfg)
    with pytest.raises(DataError, match="field 'target_new': missing or empty"):
        editor(tiny_llama, EditRequest("Who wrote Hamlet", "Hamlet", " ", id="t"), cfg)
    with pytest.raises(UsageError, match="no edit request"):
        editor(tiny_llama, [], cfg)
    weights.assert_same(tiny_llama.model, snap)


def test_configs_validate_and_methods_are_per_instance():
    with pytest.raises(UsageError, match="edit_lr"):
        FTMConfig(edit_lr=0)
    with pytest.raises(UsageError, match="edit_schedule"):
        FTMConfig(edit_schedule="random")
    with pytest.raises(UsageError, match="norm_constraint"):
        FTLConfig(norm_constraint=-1e-4)
    with pytest.raises(UsageError, match="steps"):
        FTLConfig.resolve(sets=["steps=0"])
    # one method for both jobs: erase gives it TrainPairs (whole), edit gives it requests
    assert METHOD.protocol == "whole" and METHOD.edits_requests and METHOD.config is FTMConfig
    assert FTL.name == "ft-l" and FTL.edits_requests
