"""LoRA and AdaLoRA as knowledge editors on tiny models: edits become the argmax, the model is left as
it was, patches revert bit-exactly, AdaLoRA's low-rank deltas equal PEFT's merge, the schedules and
bad options."""

from __future__ import annotations

import copy

import pytest
import torch

from trustedit.errors import UsageError
from trustedit.methods import adalora, lora_edit
from trustedit.methods.adalora import AdaLoraEditConfig
from trustedit.methods.lora_edit import LoraEditConfig
from trustedit.methods.requests import EditRequest, encode_request

REQ = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="r1")
REQS = [REQ, EditRequest("What is the longest river", "river", "Everest", id="r2"),
        EditRequest("Who painted the Mona Lisa", "Lisa", "Jupiter Saturn", id="r3"),
        EditRequest("What is the capital of France", "France", "Berlin", id="r4")]
EDITORS = {"lora": (lora_edit.fit, LoraEditConfig), "adalora": (adalora.fit, AdaLoraEditConfig)}


def _model(request, factory):
    """A tiny model with weights of std 0.3: at the default 0.02 the tiny GPT-2's logits span under
    one nat, and no attention adapter can make a target likely (as ``init=0.3`` for the Llama)."""
    build = request.getfixturevalue(factory)
    if factory == "llama_factory":
        return build(init=0.3)
    lm = build()
    with torch.no_grad():
        for p in lm.model.parameters():
            if p.dim() == 2:
                p.mul_(15)
    return lm


def _argmax_ok(lm, req) -> bool:
    """Every target token is the teacher-forced argmax."""
    p, t = encode_request(lm.tokenizer, req.prompt, req.target_new)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([p + t[:-1]])).logits[0, len(p) - 1:]
    return bool((logits.argmax(-1) == torch.tensor(t)).all())


def _flags(model) -> dict:
    return {n: p.requires_grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("factory", ["llama_factory", "gpt2_factory"])
@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_single_edit_becomes_the_argmax_and_reverts(request, weights, factory, method):
    lm = _model(request, factory)
    fit, Config = EDITORS[method]
    lm.model.lm_head.weight.requires_grad_(False)  # an unusual flag, to see it restored
    flags, snap = _flags(lm.model), weights.snapshot(lm.model)
    assert not _argmax_ok(lm, REQ)
    patch = fit(lm, REQ, Config(lr=5e-2))
    weights.assert_same(lm.model, snap)  # fit leaves the model as it was
    assert _flags(lm.model) == flags and not lm.model.training
    assert not any("lora" in n for n, _ in lm.model.named_modules())  # the adapter is gone
    rec = patch.manifest["training"]
    assert patch.method == method and rec["schedule"] == "single" and rec["requests"] == 1
    assert rec["converged"] == 1 and 0 < rec["steps"] <= rec["step_budget"] == 70
    assert rec["config"]["lr"] == 5e-2 and rec["seconds"] > 0 and rec["modules"] == len(patch.deltas)
    proj = ("c_attn",) if factory == "gpt2_factory" else ("q_proj", "v_proj")  # roles, not names
    assert {n.split(".")[-2] for n in patch.deltas} == set(proj)
    assert all(d.kind == "lowrank" for d in patch.deltas.values())
    patch.apply(lm.model)
    assert _argmax_ok(lm, REQ)
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)


@pytest.mark.parametrize("factory", ["llama_factory", "gpt2_factory"])
def test_adalora_delta_equals_peft_merge(request, monkeypatch, factory):
    lm = _model(request, factory)
    merged, original = {}, adalora.adalora_deltas

    def read(peft_model, modules, conv1d, adapter="default"):
        out = original(peft_model, modules, conv1d, adapter)
        base = {n.replace(".base_layer", ""): p.detach().clone()
                for n, p in peft_model.base_model.model.named_parameters() if "lora_" not in n and "ranknum" not in n}
        model = copy.deepcopy(peft_model).merge_and_unload()
        merged.update({n: p.detach() - base[n] for n, p in model.named_parameters()})
        return out

    monkeypatch.setattr(adalora, "adalora_deltas", read)
    cfg = AdaLoraEditConfig(init_r=6, target_r=2, steps=12, nll_stop=0, lr=2e-2)  # every step: ranks get pruned
    patch = adalora.fit(lm, REQ, cfg)
    rec = patch.manifest["training"]
    assert rec["steps"] == 12 and rec["rank_total"] < 6 * rec["modules"]
    assert sorted(rec["ranks"]) == sorted(n[:-len(".weight")] for n in patch.deltas)
    names = {n for n, d in merged.items() if d.abs().max() > 0}
    assert names == {n for n in patch.deltas if rec["ranks"][n[:-len(".weight")]] > 0}  # all masked: zero
    for name, delta in patch.deltas.items():
        assert delta.tensors["A"].shape[0] == max(rec["ranks"][name[:-len(".weight")]], 1)
        assert torch.allclose(delta.full(), merged[name], rtol=1e-5, atol=1e-7), name


def test_several_requests_are_breadth_first_with_epochs(llama_factory, weights):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    patch = lora_edit.fit(lm, REQS, LoraEditConfig(lr=2e-2, batch_size=2, epochs=40))
    weights.assert_same(lm.model, snap)
    rec = patch.manifest["training"]
    assert rec["schedule"] == "breadth-first" and 1 <= rec["epochs"] <= 40 and rec["step_budget"] == 80
    assert rec["requests"] == 4 and [e["id"] for e in rec["per_request"]] == ["r1", "r2", "r3", "r4"]
    assert rec["converged"] == 4
    patch.apply(lm.model)
    assert all(_argmax_ok(lm, r) for r in REQS)
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)


def test_adalora_depth_first_budget_spans_the_requests(llama_factory, weights):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    patch = adalora.fit(lm, REQS[:2], AdaLoraEditConfig(lr=5e-2, schedule="depth-first", steps=20))
    weights.assert_same(lm.model, snap)
    rec = patch.manifest["training"]
    assert rec["schedule"] == "depth-first" and rec["step_budget"] == 40 and "epochs" not in rec
    assert rec["adapter"] == "AdaLoraConfig" and len(rec["per_request"]) == 2 and rec["total_step"] == 40


def test_first_layer_adapts_only_the_upper_layers(llama_factory, weights):
    lm = llama_factory(init=0.3, layers=4)
    snap = weights.snapshot(lm.model)
    patch = lora_edit.fit(lm, REQ, LoraEditConfig(lr=5e-2, first_layer=2, targets=["o", "down"]))
    weights.assert_same(lm.model, snap)
    assert sorted(patch.deltas) == [f"model.layers.{i}.{m}.weight" for i in (2, 3)
                                    for m in ("mlp.down_proj", "self_attn.o_proj")]
    assert patch.manifest["training"]["first_layer"] == 2


def test_bad_options_are_one_line_usage_errors(tiny_gpt2):
    for make, match in [(lambda: LoraEditConfig(rank=0), "rank"),
                        (lambda: LoraEditConfig(targets=["qkv"]), "qkv"),
                        (lambda: LoraEditConfig(schedule="random"), "schedule"),
                        (lambda: LoraEditConfig.resolve(sets=["lr=-1"]), "lr"),
                        (lambda: AdaLoraEditConfig(init_r=4, target_r=8), "target_r"),
                        (lambda: AdaLoraEditConfig(tinit=0.6, tfinal=0.5), "tinit"),
                        (lambda: lora_edit.fit(tiny_gpt2, REQ, LoraEditConfig(targets=["gate"])), "gate"),
                        (lambda: lora_edit.fit(tiny_gpt2, [], LoraEditConfig()), "no edit request"),
                        (lambda: adalora.fit(tiny_gpt2, {"prompt": "x"}, AdaLoraEditConfig()), "edit")]:
        with pytest.raises(UsageError, match=match) as e:
            make()
        assert "\n" not in str(e.value)
    assert lora_edit.METHOD.edits_requests and adalora.METHOD.name == "adalora"
