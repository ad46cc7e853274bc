"""Ext-Sub: the row-wise formula on hand-made matrices, the combined Patch on a tiny model."""

import pytest
import torch

from trustedit.safety import ext_sub as E


def test_orthogonal_rows_keep_half_of_the_difference():
    pos = torch.tensor([[2.0, 0.0]])
    neg = torch.tensor([[0.0, 4.0]])
    c = torch.tensor([[1.0, 1.0]]) / 2 ** 0.5
    shared = E.shared_component(pos, neg)
    torch.testing.assert_close(shared, (neg @ c.T) * c)  # (w-.c) c = 4/sqrt2 * c = [2, 2]
    torch.testing.assert_close(shared, torch.tensor([[2.0, 2.0]]))
    torch.testing.assert_close(E.ext_sub(pos, neg), torch.tensor([[4.0, -2.0]]))  # pos - (neg - shared)
    torch.testing.assert_close(E.ext_sub(pos, neg, lam=0.5), torch.tensor([[3.0, -1.0]]))


def test_parallel_rows_subtract_nothing_antiparallel_rows_are_negation():
    pos = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(E.ext_sub(pos, 5 * pos), pos)  # everything the anti-expert does is shared
    torch.testing.assert_close(E.ext_sub(pos, -2 * pos), E.negation(pos, -2 * pos))  # nothing is shared
    torch.testing.assert_close(E.negation(pos, -2 * pos), 3 * pos)


def test_zero_rows_give_no_nan():
    pos = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    neg = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    out = E.ext_sub(pos, neg)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]]), atol=1e-6, rtol=0)


def test_rows_are_independent_and_general_case_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    out = E.ext_sub(pos, neg, lam=0.7)
    for i in range(7):
        up, un = pos[i] / pos[i].norm(), neg[i] / neg[i].norm()
        c = (up + un) / (up + un).norm()
        want = pos[i] - 0.7 * (neg[i] - (neg[i] @ c) * c)
        torch.testing.assert_close(out[i], want, atol=1e-5, rtol=1e-5)
        # what is subtracted is orthogonal to the bisector
        assert abs(float((neg[i] - (neg[i] @ c) * c) @ c)) < 1e-5


def test_factor_is_the_truncated_svd():
    g = torch.Generator().manual_seed(1)
    D = torch.randn(6, 3, generator=g) @ torch.randn(3, 8, generator=g)
    B, A, err = E.factor(D, 3)
    assert B.shape == (6, 3) and A.shape == (3, 8) and err < 1e-5
    B2, A2, err2 = E.factor(D, 1)
    assert err2 > 0.05 and torch.linalg.matrix_rank(B2 @ A2) == 1


def test_combine_deltas_dense_and_factored_and_conv1d_rows():
    from trustedit.errors import UsageError
    from trustedit.patch import Delta

    g = torch.Generator().manual_seed(2)
    mk = lambda o, i: Delta("lowrank", {"B": torch.randn(o, 2, generator=g), "A": torch.randn(2, i, generator=g)}, 2.0)
    pos, neg = {"w": mk(4, 6)}, {"w": mk(4, 6)}
    out, rec = E.combine_deltas(pos, neg, "ext-sub")
    P = pos["w"].tensors["B"] @ pos["w"].tensors["A"] * 2
    N = neg["w"].tensors["B"] @ neg["w"].tensors["A"] * 2
    assert out["w"].kind == "dense"
    torch.testing.assert_close(out["w"].tensors["delta"], E.ext_sub(P, N))
    assert rec["w"]["expert_norm"] == pytest.approx(float(P.norm()), rel=1e-5)
    low, rec2 = E.combine_deltas(pos, neg, "negation", factor_rank=4)
    assert low["w"].kind == "lowrank" and low["w"].tensors["B"].shape == (4, 4)
    torch.testing.assert_close(low["w"].tensors["B"] @ low["w"].tensors["A"], P - N, atol=1e-4, rtol=1e-4)
    # Conv1D stores W^T (in x out): rows are still taken per output unit
    posT = {"w": Delta("lowrank", {"B": pos["w"].tensors["A"].t(), "A": pos["w"].tensors["B"].t()}, 2.0)}
    negT = {"w": Delta("lowrank", {"B": neg["w"].tensors["A"].t(), "A": neg["w"].tensors["B"].t()}, 2.0)}
    outT, _ = E.combine_deltas(posT, negT, "ext-sub", conv1d=True)
    torch.testing.assert_close(outT["w"].tensors["delta"], E.ext_sub(P, N).t())
    with pytest.raises(UsageError):
        E.combine_deltas(pos, {"v": mk(4, 6)}, "ext-sub")
    with pytest.raises(UsageError):
        E.combine_update(P, N, "sum")


def test_continuation_pairs_cut_at_word_boundaries(tiny_llama):
    tok = tiny_llama.tokenizer
    pairs = E.continuation_pairs(tok, ["the king is the queen of France and Paris", "too short"], 0.5, 6)
    assert len(pairs) == 1
    p = pairs[0]
    assert tok.decode(p.prompt, skip_special_tokens=True).split() == "the king is the".split()
    assert tok.decode(p.target, skip_special_tokens=True).split() == "queen of France and Paris".split()
    assert p.target[-1] != tok.eos_token_id  # a continuation does not end


def test_fit_trains_both_adapters_and_the_patch_reverts_bit_exact(tiny_llama):
    model = tiny_llama.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    good = ["the king is the queen of France and Paris"] * 8
    bad = ["I don ' t know the capital of France ? no"] * 8
    cfg = E.ExtSubConfig(rank=2, alpha=4, max_steps=3, batch_size=4, warmup_steps=0, lr=1e-2)
    patch = E.fit(tiny_llama, (good, bad), cfg)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # training leaves the base as it was
    names = sorted(patch.deltas)
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)
    tr = patch.manifest["training"]
    assert tr["combine"] == "ext-sub" and tr["expert"]["steps"] == 3 and tr["anti_expert"]["steps"] == 3
    assert all(d.kind == "dense" for d in patch.deltas.values())
    patch.apply(model)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    patch.revert(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_registry_and_negation_config():
    from trustedit.jobs import JOBS
    from trustedit.registry import get_method

    assert {"ext-sub", "negation"} <= set(JOBS["detox"].methods)
    assert get_method("negation").config().combine == "negation"
    assert get_method("ext-sub").config().combine == "ext-sub"
    assert get_method("ext-sub").config().rank == 16 and get_method("ext-sub").config().alpha == 32


@pytest.mark.skipif(not __import__("os").environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")
def test_rtp_training_pairs_follow_the_rule_and_leave_out_evaluated_prompts():
    from trustedit.data.toxicity import load_rtp, select_rtp

    data = load_rtp()
    evaluated = [p.id for p in select_rtp(data, 200, 0, "toxic-first")]
    good, bad, prov = E.rtp_training_pairs(0, 0, evaluated)
    by_pair = {(p.text, p.continuation): p for p in data}
    assert prov["excluded_prompts"] == 200 and len(good) == prov["non_toxic_available"] > 100
    assert all(by_pair[x].continuation_toxicity < E.RTP_CLEAN_MAX for x in good)
    assert all(by_pair[x].continuation_toxicity >= E.RTP_TOXIC_MIN for x in bad)
    assert not {by_pair[x].id for x in good + bad} & set(evaluated)
    assert len(E.rtp_training_pairs(50, 0, evaluated)[1]) == 50


def test_continuation_pairs_take_explicit_prompt_continuation_pairs(tiny_llama):
    pairs = E.continuation_pairs(tiny_llama.tokenizer, [("Who wrote", " the Hamlet."), "1 2 3 4 5 6 7"])
    assert len(pairs) == 2
    tok = tiny_llama.tokenizer
    assert tok.decode(pairs[0].target).strip() == "the Hamlet."


@pytest.mark.skipif(not __import__("os").environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")
def test_fit_through_the_api_leaves_out_the_evaluated_prompts(tiny_llama, monkeypatch):
    """ext_sub.fit(lm) without data trains on RTP text minus the prompts the RTP suites evaluate at
    their default sizes, and the prompts held out for a budget search (before, only the job left them out)."""
    from trustedit.data.toxicity import load_rtp, select_rtp, validation_rtp

    seen = {}

    def fake_train(lm, cfg, good=None, bad=None, stages=None, exclude_ids=()):
        seen["exclude"] = set(exclude_ids)
        raise RuntimeError("stop")

    monkeypatch.setattr(E, "train_adapters", fake_train)
    with pytest.raises(RuntimeError, match="stop"):
        E.fit(tiny_llama, None, E.ExtSubConfig(seed=3))
    data = load_rtp()
    expect = {p.id for p in select_rtp(data, 200, 3, "toxic-first")} | {p.id for p in select_rtp(data, 100, 3, "random")}
    held_out = {p.id for p in validation_rtp(data, expect, 50, 3)}
    assert len(held_out) == 50 and not held_out & expect
    assert seen["exclude"] == expect | held_out and len(expect) > 250
