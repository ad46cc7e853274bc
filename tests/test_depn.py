"""DEPN for causal LMs: integrated gradients (completeness), the neuron selection, the zeroing patch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trustedit.data.privacy import SecretTokens  # noqa: E402
from trustedit.privacy.depn import DEPNConfig, attributions, fit, fit_random, select, zero_patch  # noqa: E402


class _Train:
    def __init__(self, targets):
        self.targets = targets


def _item(lm, seed=0, n_prompt=6, n_secret=4):
    g = torch.Generator().manual_seed(seed)
    V = lm.model.config.vocab_size
    ids = torch.randint(4, V, (n_prompt + n_secret,), generator=g).tolist()
    return SecretTokens(f"s{seed}", ids[:n_prompt], ids[n_prompt:], ids)


def _secret_prob(lm, item, zero=None):
    """Summed probability of the secret's tokens; ``zero``: {layer: [units]} zeroed at every position."""
    from trustedit import arch

    model = lm.model
    handles = []
    for l, units in (zero or {}).items():
        mod = arch.get_module(model, arch.layer_path(model, l, arch.arch_for(model).down))

        def hook(m, inp, units=units):
            x = inp[0].clone()
            x[..., units] = 0
            return (x,)
        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([item.input_ids])).logits[0].float()
    finally:
        for h in handles:
            h.remove()
    p0 = len(item.prompt_ids)
    probs = torch.softmax(logits[p0 - 1: p0 - 1 + len(item.secret_ids)], -1)
    return float(probs.gather(1, torch.tensor(item.secret_ids)[:, None]).sum())


@pytest.mark.parametrize("factory", ["llama_factory", "gpt2_factory"])
def test_completeness_and_observed_probability(factory, request):
    lm = request.getfixturevalue(factory)()
    item = _item(lm)
    layers = list(range(len(lm.model.model.layers if hasattr(lm.model, "model") else lm.model.transformer.h)))
    attr, p_obs, p_zero = attributions(lm, item, layers, steps=400)
    # the observed probability is the plain forward's
    assert p_obs == pytest.approx(_secret_prob(lm, item), rel=1e-4, abs=1e-7)
    # completeness: the attributions sum to p(observed) - p(every attributed activation zeroed)
    assert float(attr.sum()) == pytest.approx(p_obs - p_zero, rel=0.03, abs=1e-6)
    assert abs(p_obs - p_zero) > 1e-5  # the test is not vacuous


def test_zeroing_selected_neurons_moves_probability_as_predicted(llama_factory):
    lm = llama_factory()
    item = _item(lm, seed=3)
    layers = [0, 1]
    attr, p_obs, _ = attributions(lm, item, layers, steps=50)
    flat = attr.flatten()
    d = attr.shape[1]
    top_pos = [(int(i) // d, int(i) % d) for i in torch.topk(flat, 8).indices]
    top_neg = [(int(i) // d, int(i) % d) for i in torch.topk(-flat, 8).indices]
    base = _secret_prob(lm, item)
    down = _secret_prob(lm, item, {layers[l]: [u for ll, u in top_pos if ll == l] for l in (0, 1)})
    up = _secret_prob(lm, item, {layers[l]: [u for ll, u in top_neg if ll == l] for l in (0, 1)})
    assert down < base < up  # positive attribution: the neuron carries the secret; negative: it suppresses it
    # the patch zeroes exactly those units (at every position) in the weights
    patch, _ = zero_patch(lm.model, layers, top_pos, "depn")
    before = {k: v.detach().clone() for k, v in lm.model.state_dict().items()}
    patch.apply(lm.model)
    try:
        assert _secret_prob(lm, item) == pytest.approx(down, rel=1e-5)
    finally:
        patch.revert(lm.model)
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_select_adapts_thresholds_to_reach_target():
    g = torch.Generator().manual_seed(0)
    attrs = [torch.rand(3, 50, generator=g) * 0.01 for _ in range(10)]
    for a in attrs:  # neuron (1, 7) dominates in every item; (2, 3) in 3 items of 10
        a[1, 7] = 1.0
    for a in attrs[:3]:
        a[2, 3] = 0.9
    chosen, used = select(attrs, 0.1, 0.5, 1)
    assert chosen == [(1, 7)] and used["share"] == 0.5
    chosen, used = select(attrs, 0.1, 0.5, 2)
    assert chosen == [(1, 7), (2, 3)] and used["share"] < 0.5  # share lowered to let the second in
    chosen, used = select(attrs, 0.1, 0.5, 20)
    assert len(chosen) == 20 and used["item_threshold"] < 0.1  # then the item threshold
    assert chosen[:2] == [(1, 7), (2, 3)]


def test_fit_revert_bit_exact_and_random_ablation(llama_factory, weights):
    lm = llama_factory()
    train = _Train([_item(lm, seed=s) for s in range(4)])
    cfg = DEPNConfig(steps=8, neurons=10)
    snap = weights.snapshot(lm.model)
    patch = fit(lm, train, cfg)
    weights.assert_same(lm.model, snap)  # fit leaves the model as it was
    assert patch.manifest["training"]["neurons"] == 10
    assert all(k.endswith("mlp.down_proj.weight") for k in patch.deltas)
    patch.apply(lm.model)
    zeroed = sum(int((lm.model.get_parameter(k) == 0).all(0).sum()) for k in patch.deltas)
    assert zeroed == 10
    patch.revert(lm.model)
    weights.assert_same(lm.model, snap)
    rnd = fit_random(lm, train, cfg)
    assert rnd.manifest["training"]["per_layer"] == patch.manifest["training"]["per_layer"]
    patch.apply(lm.model)
    cols = {k: set(torch.nonzero((lm.model.get_parameter(k) == 0).all(0)).flatten().tolist()) for k in patch.deltas}
    patch.revert(lm.model)
    rnd.apply(lm.model)
    rcols = {k: set(torch.nonzero((lm.model.get_parameter(k) == 0).all(0)).flatten().tolist()) for k in rnd.deltas}
    rnd.revert(lm.model)
    weights.assert_same(lm.model, snap)
    assert cols != rcols


def test_config_errors():
    from trustedit.errors import UsageError

    with pytest.raises(UsageError, match="item_threshold"):
        DEPNConfig(item_threshold=0)
    with pytest.raises(UsageError, match="neurons"):
        DEPNConfig(neurons=0)
