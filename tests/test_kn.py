"""Knowledge neurons (KN) on tiny models, and the integrated gradients it shares with DEPN."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trustedit.errors import DataError, UsageError  # noqa: E402
from trustedit.methods.attribution import ig_attributions  # noqa: E402
from trustedit.methods.kn import (KNConfig, activation_signs, answer_tokens, attribute, fit, hit_at_k,  # noqa: E402
                                  next_token_probs, refine)
from trustedit.methods.requests import EditRequest  # noqa: E402

# the subject is the prompt's last token: on a tiny random model only that position's MLP reaches
# the next-token prediction directly (see tests/test_rome.py)
REQ = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="r1")
REQ2 = EditRequest("What is the capital of France", "France", "Berlin", id="r2")


def _ids(lm, n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, lm.model.config.vocab_size, (n,), generator=g).tolist()


def _plain_prob(lm, ids, positions, targets):
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    return float(sum(torch.softmax(logits[p], -1)[t] for p, t in zip(positions, targets)))


@pytest.mark.parametrize("factory", ["llama_factory", "gpt2_factory"])
@pytest.mark.parametrize("positions", [[8], [3, 6]])
def test_ig_completeness_joint_and_per_layer(factory, positions, request):
    """Completeness: attributions sum to p(observed) − p(zeroed) (all layers at once on the joint
    path, each layer on its own on the per-layer path). The sum is a right Riemann sum of the
    integral, whose error is O(1/m): at m = 400 the tiny models land within 1 % (measured), so 3 %
    of the largest difference is a margin, not a fit."""
    lm = request.getfixturevalue(factory)(**({"init": 0.3} if factory == "llama_factory" else {}), layers=3)
    ids = _ids(lm, 10)[:9]
    targets = [_ids(lm, 10)[p + 1] for p in positions]  # the next token of the text (after the last: not read)
    layers = [0, 1, 2]
    attr, p_obs, p_zero = ig_attributions(lm, ids, targets, layers, 400, positions, path="joint")
    assert p_obs == pytest.approx(_plain_prob(lm, ids, positions, targets), rel=1e-4)
    assert abs(p_obs - p_zero) > 1e-4  # not vacuous
    assert float(attr.sum()) == pytest.approx(p_obs - p_zero, abs=0.03 * abs(p_obs - p_zero))
    per, p_obs2, zeros = ig_attributions(lm, ids, targets, layers, 400, positions, path="per_layer", max_rows=400)
    assert p_obs2 == p_obs and len(zeros) == 3
    scale = max(abs(p_obs - z) for z in zeros)
    for l in range(3):
        assert float(per[l].sum()) == pytest.approx(p_obs - zeros[l], abs=0.03 * scale)
        # the per-layer path of layer l is the joint path of layer l alone (the batching changes nothing)
        alone = ig_attributions(lm, ids, targets, [l], 400, positions, path="joint")[0][0]
        assert torch.allclose(per[l], alone, atol=1e-7)


def test_depn_is_the_joint_path(llama_factory):
    from trustedit.data.privacy import SecretTokens
    from trustedit.privacy.depn import attributions

    lm = llama_factory(init=0.3)
    ids = _ids(lm, 10, seed=2)
    item = SecretTokens("s", ids[:6], ids[6:], ids)
    a, p_obs, p_zero = attributions(lm, item, [0, 1], steps=10)
    b, q_obs, q_zero = ig_attributions(lm, ids[:9], ids[6:], [0, 1], 10, [5, 6, 7, 8])
    assert torch.equal(a, b) and (p_obs, p_zero) == (q_obs, q_zero)


def _first_prob(lm, req):
    p, _, new = answer_tokens(lm, req)
    return float(next_token_probs(lm, p)[new])


def test_edit_raises_target_and_reverts_bit_exactly(llama_factory, weights):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    before = _first_prob(lm, REQ)
    patch = fit(lm, [REQ, REQ2], KNConfig(templates=2))
    weights.assert_same(lm.model, snap)  # fit leaves the model as it was
    tr = patch.manifest["training"]
    assert tr["layers"] == [0, 1] and len(tr["neurons"]) == 2 and len(tr["per_request"]) == 2
    first = tr["per_request"][0]
    assert first["id"] == "r1" and first["neurons"] == len(tr["neurons"][0]) >= 1
    assert first["target_prob_before"] == pytest.approx(before, abs=1e-6)
    assert first["target_prob_after"] > 10 * first["target_prob_before"]
    assert tr["converged"] == sum(r["converged"] for r in tr["per_request"])
    assert all(k.endswith("mlp.down_proj.weight") for k in patch.deltas)
    # only the value slots (columns) of the knowledge neurons change
    for L in tr["layers"]:
        name = f"model.layers.{L}.mlp.down_proj.weight"
        units = {u for found in tr["neurons"] for l, u, _ in found if l == L}
        if name in patch.deltas:
            cols = set(torch.nonzero(patch.deltas[name].tensors["delta"].abs().sum(0)).flatten().tolist())
            assert cols == units
    patch.apply(lm.model)
    try:
        assert _first_prob(lm, REQ) > 10 * before
    finally:
        patch.revert(lm.model)
    for k, v in lm.model.state_dict().items():  # every weight and buffer, bit for bit
        assert torch.equal(v, state[k]), k
    weights.assert_same(lm.model, snap)


def test_gpt2_conv1d_value_slot_is_a_row(gpt2_factory, weights):
    lm = gpt2_factory()
    snap = weights.snapshot(lm.model)
    cfg = KNConfig(templates=0, lam=3.0)
    patch = fit(lm, REQ, cfg)
    weights.assert_same(lm.model, snap)
    found = patch.manifest["training"]["neurons"][0]
    assert found
    p, old, new = answer_tokens(lm, REQ)
    E = lm.model.lm_head.weight.detach()
    signs = activation_signs(lm, p, [(L, u) for L, u, _ in found])
    for L in {l for l, _, _ in found}:
        d = patch.deltas[f"transformer.h.{L}.mlp.c_proj.weight"].tensors["delta"]
        assert d.shape == lm.model.transformer.h[L].mlp.c_proj.weight.shape == (64, 32)  # Conv1D: d_ff x d_model
        units = sorted(u for l, u, _ in found if l == L)
        assert sorted(torch.nonzero(d.abs().sum(1)).flatten().tolist()) == units  # rows, not columns
        for u in units:
            assert torch.allclose(d[u], cfg.lam * signs[(L, u)] * (E[new] - E[old]), atol=1e-6)
    # functionally: the MLP output at the prompt moves by activation × Δ(value slot)
    L, u, _ = found[0]
    mlp = lm.model.transformer.h[L].mlp.c_proj
    from trustedit.hooks import capture

    def out_and_in():
        with torch.no_grad(), capture(lm.model, [f"transformer.h.{L}.mlp.c_proj"], what="input") as st:
            lm.model(input_ids=torch.tensor([p]))
        a = st[f"transformer.h.{L}.mlp.c_proj"][0][0, -1]
        return mlp(a[None])[0], a
    y0, a = out_and_in()
    patch.apply(lm.model)
    try:
        y1 = mlp(a[None])[0].detach()
    finally:
        patch.revert(lm.model)
    d = patch.deltas[f"transformer.h.{L}.mlp.c_proj.weight"].tensors["delta"]
    assert torch.allclose(y1 - y0.detach(), a @ d, atol=1e-5)


def test_malformed_and_wrong_input(llama_factory):
    lm = llama_factory()
    with pytest.raises(DataError, match="'Macbeth' does not occur in the prompt"):
        fit(lm, EditRequest("Who wrote Hamlet", "Macbeth", "Leonardo", id="bad"), KNConfig())
    with pytest.raises(UsageError, match="kn edits requests"):
        fit(lm, ["Who wrote Hamlet"], KNConfig())
    with pytest.raises(UsageError, match="layers"):
        KNConfig(layers=["x"])
    with pytest.raises(UsageError, match="path"):
        KNConfig(path="both")
    assert KNConfig.resolve(sets=["layers=0,0.5"]).layers == ["0", "0.5"]


def test_refine_thresholds_and_share():
    A = torch.zeros(4, 2, 10)  # 4 prompts, 2 layers, 10 units
    A[:, 1, 7] = 1.0  # the top neuron in every prompt
    A[:3, 0, 2] = 0.5  # above 0.2 x max in 3 of 4 prompts (> half)
    A[:2, 0, 4] = 0.9  # in 2 of 4 only (not more than half)
    A[:, 0, 5] = 0.1  # everywhere, but below the threshold
    got = refine(list(A), threshold=0.2, share=0.5, max_neurons=5)
    assert [(l, u) for l, u, _ in got] == [(1, 7), (0, 2)]
    assert got[0][2] == pytest.approx(1.0) and got[1][2] == pytest.approx(0.375)
    assert [(l, u) for l, u, _ in refine(list(A), 0.2, 0.5, 1)] == [(1, 7)]
    assert refine(list(-A), 0.2, 0.5, 5) == []  # no positive attribution: no neuron


def test_hit_at_k(llama_factory, weights):
    lm = llama_factory(init=0.3)
    snap = weights.snapshot(lm.model)
    p, old, new = answer_tokens(lm, REQ)
    attr = attribute(lm, [p], old, [0, 1])[0]
    top = int(attr.flatten().argmax())
    best = (top // attr.shape[1], top % attr.shape[1])
    worst = int(attr.flatten().argmin())
    h = hit_at_k(lm, REQ, [best, (worst // attr.shape[1], worst % attr.shape[1])], k=1)
    assert h["old"] == 0.5 and h["new"] is None and h["neurons"] == 2
    patch = fit(lm, REQ, KNConfig(templates=0, max_neurons=1))
    found = patch.manifest["training"]["neurons"][0]
    h = hit_at_k(lm, REQ, found, k=1, patch=patch)
    assert h["old"] == 1.0  # with the bare prompt alone, the one knowledge neuron is the top attribution
    assert 0.0 <= h["new"] <= 1.0 and not patch.applied
    weights.assert_same(lm.model, snap)
    assert hit_at_k(lm, REQ, [], k=3)["old"] is None
