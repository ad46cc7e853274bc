"""MEND on tiny random models: the gradient decomposition, the editor's training and cache, the patch."""

from __future__ import annotations

import pytest
import torch

from trustedit.data.knowedit import EditCase
from trustedit.errors import UsageError
from trustedit.methods import mend
from trustedit.methods.requests import EditRequest, encode_request

REQS = [EditRequest("Who wrote Hamlet ?", "Hamlet", "Leonardo", id="r0"),
        EditRequest("What is the capital of France ?", "France", "Rome", id="r1")]
CASES = [EditCase(id=f"c{i}", prompt=q, subject="x", target_new=a, rephrase=[r],
                  locality={"Neighborhood": [(lq, [la])]})
         for i, (q, a, r, lq, la) in enumerate([
             ("What is the capital of France ?", "Rome", "Which city is the capital of France ?",
              "Who wrote Hamlet ?", "Shakespeare"),
             ("What is the largest planet ?", "Mars", "Which planet is the largest ?",
              "What is the longest river ?", "the Nile"),
             ("Who painted the Mona Lisa ?", "Shakespeare", "Who is the Mona Lisa by ?",
              "What is the highest mountain ?", "Everest"),
             ("What is the longest river ?", "the Amazon", "Which river is the longest ?",
              "Who painted the Mona Lisa ?", "Leonardo")])]


def _cfg(**kw):
    base = dict(layers=[-2, -1], rank=16, steps=60, lr=1e-3, alpha_lr=1e-3, alpha_init=1e-2)
    return mend.MENDConfig(**{**base, **kw})


@pytest.fixture
def build(llama_factory, gpt2_factory):
    """``build(arch)``: a fresh 3-layer tiny model of that architecture."""
    return lambda arch: {"llama": llama_factory, "gpt2": gpt2_factory}[arch](layers=3)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mend, "default_train_data", lambda cfg: (CASES, "synthetic-cases#4"))
    return tmp_path / "cache"


def _logical_grad(lm, site, req):
    """Autograd's gradient of the request's mean target NLL for ``site``'s weight, as ``d_out x d_in``."""
    model = lm.model
    p, t = encode_request(lm.tokenizer, req.prompt, req.target_new)
    W = dict(model.named_parameters())[site.param]
    W.grad = None
    W.requires_grad_(True)
    try:
        logits = model(input_ids=torch.tensor([p + t[:-1]])).logits[0, len(p) - 1:]
        torch.nn.functional.cross_entropy(logits, torch.tensor(t)).backward()
        g = W.grad.detach().clone()
    finally:
        W.grad = None
        W.requires_grad_(False)
    return g.T if site.conv1d else g


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decomposed_gradient_equals_autograd_and_the_delta_is_the_update(arch, build, monkeypatch):
    lm = build(arch)
    for p in lm.model.parameters():
        p.requires_grad_(False)
    cfg = _cfg()
    site_list = mend.sites(lm.model, cfg)
    assert {s.role for s in site_list} == {"up", "down"} and len(site_list) == 4
    p, t = encode_request(lm.tokenizer, REQS[0].prompt, REQS[0].target_new)
    factors, _ = mend.request_factors(lm, site_list, p, t)
    es = mend.EditorSet(site_list, cfg)  # untrained, no statistics yet: the identity
    for s in site_list:
        u, d = factors[s.module]
        U, D = es.transform(s, u, d)
        assert torch.equal(U, u) and torch.equal(D, d)
        assert u.shape == (len(p) + len(t) - 1, s.d_in) and d.shape == (len(p) + len(t) - 1, s.d_out)
        torch.testing.assert_close(D.T @ U, _logical_grad(lm, s, REQS[0]), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in lm.model.parameters())

    # fit stores exactly W' - W = -α Σ δ̃ ũᵀ, in the parameter's own orientation (Conv1D: transposed)
    monkeypatch.setattr(mend, "editor_for", lambda lm_, cfg_, data=None: (es, {"file": None}))
    patch = mend.fit(lm, [REQS[0]], cfg)
    params = dict(lm.model.named_parameters())
    for s in site_list:
        u, d = factors[s.module]
        want = -float(es.alpha_of(s).detach()) * (d.T @ u)
        got = patch.deltas[s.param].full(params[s.param])
        torch.testing.assert_close(got.T if s.conv1d else got, want, rtol=1e-5, atol=1e-9)
        assert patch.deltas[s.param].kind == "lowrank"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_training_lowers_the_edit_loss_and_the_editor_is_cached(arch, build, cache):
    lm = build(arch)
    cfg = _cfg()
    es, info = mend.editor_for(lm, cfg)
    rec = info["record"]
    assert not info["loaded_from_cache"] and rec["steps"] == 60
    assert rec["final"]["edit_nll"] < rec["first"]["edit_nll"]
    assert rec["final"]["edit_nll"] < rec["final"]["edit_nll_before"]
    st, js = mend.cache_paths(mend.cache_key(lm, cfg, es.sites, "synthetic-cases#4"))
    assert st.is_file() and js.is_file() and str(st) == info["file"]
    assert not [p for p in st.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    es2, info2 = mend.editor_for(lm, cfg)
    assert info2["loaded_from_cache"] and info2["record"]["steps"] == 60
    a, b = es.state(), es2.state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # another config is another editor
    assert mend.cache_key(lm, _cfg(rank=8), es.sites, "synthetic-cases#4") != st.stem


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patch_reverts_bit_exactly_and_fit_leaves_the_model_unchanged(arch, build, weights, cache, tmp_path):
    from trustedit.patch import Patch

    lm = build(arch)
    flags = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    before = weights.snapshot(lm.model)
    cfg = _cfg(steps=20)
    patch = mend.fit(lm, REQS, cfg)
    weights.assert_same(lm.model, before)
    assert flags == {n: p.requires_grad for n, p in lm.model.named_parameters()}
    tr = patch.manifest["training"]
    assert tr["requests"] == 2 and [r["id"] for r in tr["per_request"]] == ["r0", "r1"]
    assert tr["editor"]["record"]["steps"] == 20 and len(tr["sites"]) == 4
    # the weights the patch writes give the scores fit measured with its hooks
    patch.apply(lm.model)
    for req, rec in zip(REQS, tr["per_request"]):
        p, t = encode_request(lm.tokenizer, req.prompt, req.target_new)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([p + t[:-1]])).logits[0, len(p) - 1:]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(t)).item()
        assert nll == pytest.approx(rec["nll_after"], abs=2e-3)
    changed = [s.param for s in mend.sites(lm.model, cfg)]
    assert all(not torch.equal(dict(lm.model.named_parameters())[n], before[n]) for n in changed)
    patch.revert(lm.model)
    weights.assert_same(lm.model, before)
    # saved and loaded, it applies the same weights
    loaded = Patch.load(patch.save(tmp_path / "p"))
    assert set(loaded.deltas) == set(changed)
    # the second fit reads the cached editor
    again = mend.fit(lm, REQS[:1], cfg)
    assert again.manifest["training"]["editor"]["loaded_from_cache"]


def test_bad_options_and_empty_requests_are_one_line_errors(cache, llama_factory):
    for kw, match in [(dict(rank=0), "'rank'"), (dict(roles=["qkv"]), "unknown MEND role 'qkv'"),
                      (dict(layers=[-1, -1]), "distinct"), (dict(c_edit=-1.0), "'c_edit'"),
                      (dict(layers=[1.5]), "integer")]:
        with pytest.raises(UsageError, match=match) as e:
            mend.MENDConfig(**kw)
        assert "\n" not in str(e.value)
    lm = llama_factory(layers=2)
    with pytest.raises(UsageError, match="no edit request"):
        mend.fit(lm, [], _cfg())
    with pytest.raises(UsageError, match="out of range") as e:
        mend.fit(lm, REQS, _cfg(layers=[-3]))
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match="--set steps=x"):
        mend.MENDConfig.resolve(None, ["steps=x"])
