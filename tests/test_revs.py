"""REVS (trustedit.privacy.revs): the pure steps on toy inputs, and fit on tiny models that have
memorised a few random secrets (a short fine-tune, so that the secrets' tokens are what the model
predicts and the MLPs carry them)."""

from __future__ import annotations

import json

import random
from collections import Counter
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from trustedit.data.privacy import SecretTokens  # noqa: E402
from trustedit.errors import UsageError  # noqa: E402
from trustedit.privacy import revs  # noqa: E402


# ---- pure steps ---------------------------------------------------------------------------------


def _others(x, t):
    return torch.cat([x[:t], x[t + 1:]])


def test_edit_neuron_demotes_the_target_and_spares_the_other_logits():
    g = torch.Generator().manual_seed(0)
    V, d, R = 500, 64, 300
    U = torch.randn(V, d, generator=g)
    for _ in range(5):
        v = torch.randn(d, generator=g)
        z = U @ v
        t = int(z.argmax())
        new = revs.edit_neuron(v, U, t, R)
        z2 = U @ new
        rank = int(revs.token_rank(z2, t))
        assert R <= rank < 0.8 * V  # demoted to the target rank, not far beyond (the smallest step)
        corr = torch.corrcoef(torch.stack([_others(z, t), _others(z2, t)]))[0, 1]
        assert corr > 0.9
        # the change is the pseudo-inverse direction of the target's logit
        step = v - new
        direction = revs.pinv_direction(U, t)
        assert torch.allclose(step / step.norm(), direction / direction.norm(), atol=1e-4)


def test_edit_neuron_leaves_a_neuron_that_already_ranks_the_target_low():
    g = torch.Generator().manual_seed(1)
    U = torch.randn(200, 16, generator=g)
    v = torch.randn(16, generator=g)
    t = int((U @ v).argmin())
    assert torch.equal(revs.edit_neuron(v, U, t, 100), v)


def test_target_tokens_are_the_rarest_distinct_tokens():
    secret = [5, 7, 5, 9, 3]
    counts = {5: 1, 7: 10, 9: 3, 3: 50}
    assert revs.target_tokens(secret, counts, 2) == [0, 3]  # 5 (count 1) and 9 (count 3), by position
    assert revs.target_tokens(secret, {7: 10, 9: 3, 3: 50}, 1) == [0]  # 5 missing from the corpus: rarest
    assert revs.target_tokens(secret, None, 2) == [0, 1]  # no counts: position order, 5 once
    assert revs.target_tokens(secret, counts, 0) == [0, 1, 3, 4]  # every distinct token


def test_select_layers_by_residual_and_mlp_rank():
    resid = [50, 3, 0, 1, 0]
    mlp = [0, 2, 95, 7, 1]
    assert revs.select_layers(resid, mlp, goal=5, mlp_max=90) == [1, 3, 4]  # 0: residual; 2: MLP demotes it
    assert revs.select_layers(resid, mlp, goal=5, mlp_max=90, max_layers=2) == [1, 4]  # best MLP ranks


def test_select_neurons_is_the_hybrid_of_activation_and_rank():
    U = torch.eye(8)  # token i's logit is coordinate i
    cols = torch.zeros(4, 8)
    cols[0, 1] = 1.0  # strongest activation, promotes token 1, not the target 0
    cols[1, 0] = 1.0  # promotes the target
    cols[2, 0] = 2.0  # promotes the target most, but barely active
    cols[3, 0] = -1.0  # negative activation: writes +e_0, promotes the target
    acts = torch.tensor([5.0, 2.0, 0.1, -4.0])
    idx, ranks = revs.select_neurons(acts, cols, U, 0, n_candidates=3, n_neurons=2)
    assert idx.tolist() == [3, 1]  # activation alone: [0, 3]; rank alone: [3, 1, 2] tied, 2 included
    assert ranks.tolist() == [0, 0]


def test_unembedding_projects_components_as_the_logit_lens(tiny_llama, tiny_gpt2):
    from trustedit import arch

    g = torch.Generator().manual_seed(0)
    for lm in (tiny_llama, tiny_gpt2):
        norm = arch.get_module(lm.model, arch.arch_for(lm.model).final_norm)
        with torch.no_grad():  # a trained norm: the scale (and LayerNorm's bias) not all ones (zeros)
            norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=g))
            if getattr(norm, "bias", None) is not None:
                norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
        U, lens = revs.unembedding(lm.model)
        d = U.shape[1]
        x = torch.randn(6, d, generator=g)
        a, b = lens(x) - lens(torch.zeros(1, d)), x @ U.t()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        assert (cos > 0.9999).all(), (lm.spec, cos)
    U, lens = revs.unembedding(tiny_llama.model)  # RMSNorm: the very same token order as lens(v)
    x = torch.randn(6, U.shape[1], generator=g)
    for t in (4, 17, 40):
        assert torch.equal(revs.token_rank(x @ U.t(), t), revs.token_rank(lens(x), t))


# ---- fit ---------------------------------------------------------------------------------------


def _memorise(lm, n=4, seed=0, steps=150, counts=True):
    """``n`` random secrets (6 prompt tokens, BOS first, 5 secret tokens) fine-tuned into ``lm``."""
    rng = random.Random(seed)
    vocab = lm.model.config.vocab_size
    secrets = []
    for i in range(n):
        prompt = [1] + [rng.randrange(4, vocab) for _ in range(5)]
        secret = [rng.randrange(4, vocab) for _ in range(5)]
        secrets.append(SecretTokens(f"s{i}", prompt, secret, prompt + secret))
    model = lm.model
    x = torch.tensor([s.text_ids for s in secrets])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    c = Counter()
    for s in secrets:
        c.update(s.text_ids)
    return SimpleNamespace(targets=secrets, token_counts=dict(c) if counts else None)


def _target_probs(model, train, cfg):
    """Teacher-forced probability of each targeted secret token at the position that predicts it."""
    out = []
    with torch.no_grad():
        for s in train.targets:
            logits = model(input_ids=torch.tensor([s.prompt_ids + s.secret_ids])).logits[0].float()
            probs = torch.softmax(logits, -1)
            for j in revs.target_tokens(s.secret_ids, train.token_counts, cfg.tokens_per_secret):
                out.append(float(probs[len(s.prompt_ids) + j - 1, s.secret_ids[j]]))
    return torch.tensor(out)


def _down_weights(lm):
    from trustedit import arch

    spec = arch.arch_for(lm.model)
    return {arch.layer_path(lm.model, L, spec.down) + ".weight" for L in range(arch.num_layers(lm.model))}


def _check_fit(lm, train, weights, cfg=None):
    cfg = cfg or revs.REVSConfig()
    base = weights.snapshot(lm.model)
    before = _target_probs(lm.model, train, cfg)
    assert before.min() > 0.5  # memorised
    patch = revs.fit(lm, train, cfg)
    weights.assert_same(lm.model, base)  # fit leaves the model as it found it
    assert patch.deltas and set(patch.deltas) <= _down_weights(lm)
    tr = patch.manifest["training"]
    assert tr["layers"] and all(n > 0 for n in tr["neurons"].values()) and tr["seconds"] >= 0
    assert tr["token_positions"] == {s.id: revs.target_tokens(s.secret_ids, train.token_counts, 2)
                                     for s in train.targets}
    assert '"token":' not in json.dumps(tr["per_target"])  # positions only: no token id of a secret in the manifest
    patch.apply(lm.model)
    after = _target_probs(lm.model, train, cfg)
    patch.revert(lm.model)
    weights.assert_same(lm.model, base)  # revert is bit-exact
    assert (after < before).all(), (before, after)
    assert float((before - after).mean()) > 0.1, (before, after)
    return patch


def test_fit_lowers_the_memorised_secrets_on_llama(tiny_llama, weights):
    train = _memorise(tiny_llama)
    patch = _check_fit(tiny_llama, train, weights)
    assert patch.method == "revs" and all(d.kind == "dense" for d in patch.deltas.values())
    # every edited neuron moved along one direction per (layer, token): a column of the delta
    name = next(iter(patch.deltas))
    delta = patch.deltas[name].tensors["delta"]  # Linear: d_model x d_ff
    assert delta.shape == dict(tiny_llama.model.named_parameters())[name].shape
    assert 0 < int((delta.abs().sum(0) > 0).sum()) <= delta.shape[1]


def test_fit_on_gpt2_conv1d_orientation_and_without_counts(tiny_gpt2, weights):
    train = _memorise(tiny_gpt2, counts=False)
    patch = _check_fit(tiny_gpt2, train, weights)
    assert all(".mlp.c_proj." in n for n in patch.deltas)  # never attn.c_proj
    assert patch.manifest["training"]["rarity"].startswith("position order")
    name = next(iter(patch.deltas))
    delta = patch.deltas[name].tensors["delta"]  # Conv1D: d_ff x d_model, a neuron is a row
    assert delta.shape == (tiny_gpt2.model.config.n_inner, tiny_gpt2.model.config.n_embd)


def test_fit_leaves_tokens_that_no_layer_promotes(tiny_llama):
    """A secret made of the tokens the model ranks lowest: no layer qualifies, nothing is edited."""
    from trustedit import arch

    model = tiny_llama.model
    U, lens = revs.unembedding(model)
    n = arch.num_layers(model)
    spec = arch.arch_for(model)
    names = {"down": [arch.layer_path(model, L, spec.down) for L in range(n)],
             "layer": [arch.layer_path(model, L, "").rstrip(".") for L in range(n)]}
    ids = [1, 20, 30, 40]
    for _ in range(3):
        _, _, resid = revs._states(model, ids, names, "cpu")
        ids.append(int(lens(resid[-1]).argmin()))
        ranks = revs.token_rank(lens(resid), ids[-1])
        assert (ranks >= 10).all()  # the precondition: every layer's lens ranks it low
    s = SecretTokens("low", ids[:4], ids[4:], ids)
    patch = revs.fit(tiny_llama, SimpleNamespace(targets=[s], token_counts=None), revs.REVSConfig(layer_rank=0.05))
    tr = patch.manifest["training"]
    assert not patch.deltas and tr["layers"] == [] and tr["target_tokens_unedited"] == tr["target_tokens"] == 2


def test_fit_refuses_an_empty_target_list(tiny_llama):
    with pytest.raises(UsageError):
        revs.fit(tiny_llama, SimpleNamespace(targets=[], token_counts=None), revs.REVSConfig())


# ---- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"neurons": -1}, {"tokens_per_secret": -1}, {"candidates": 0}, {"max_layers": -2},
                                 {"neuron_rank": 1.5}, {"layer_rank": 0.0}, {"max_iter": 1},
                                 {"neurons": 50, "candidates": 40}, {"layer_rank": 0.7, "neuron_rank": 0.6}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(UsageError):
        revs.REVSConfig(**bad)


def test_config_resolve_and_method_entry():
    cfg = revs.REVSConfig.resolve(sets=["neurons=10", "neuron_rank=0.5"])
    assert (cfg.neurons, cfg.neuron_rank, cfg.tokens_per_secret) == (10, 0.5, 2)
    with pytest.raises(UsageError):
        revs.REVSConfig.resolve(sets=["candidates=-3"])
    assert revs.METHOD.name == "revs" and revs.METHOD.config is revs.REVSConfig and revs.METHOD.fit is revs.fit
    assert revs.METHOD.train == "trustedit.suites.privacy:train_items"
