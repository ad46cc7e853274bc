"""GRACE: the codebook's deferral rule and update rules on hand-made keys, and the editor on a tiny LLaMA."""

from __future__ import annotations

import json

import pytest
import torch

from trustedit.errors import TrusteditError, UsageError
from trustedit.methods.grace import Codebook, GRACEConfig, fit
from trustedit.methods.requests import EditRequest, RequestBatch, encode_request
from trustedit.patch import Patch

# On a tiny random model the edited token must be the prompt's last token (see test_rome.py).
REQ = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="r0")
REQ2 = EditRequest("What is the longest river", "river", "Everest", id="r1")
CFG = dict(layer=1, eps_init=5.0, steps=100, lr=1.0, nll_stop=1.0)


@pytest.fixture
def lm(llama_factory):
    """A tiny LLaMA with weights large enough that one MLP output can steer the next token
    (at the default init 0.02 the logits span a few tenths)."""
    return llama_factory(init=0.5)


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)

    def forward(self, x):
        return self.lin(x)


def _book(eps_init=1.0):
    return Codebook.empty("lin", None, 2, 3, eps_init)


def _k(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_add_expand_split_and_the_radii_after_each():
    b = _book()
    assert b.update(_k(0.0, 0.0), "A", torch.ones(3), "e0") == ("add", 0, None)
    assert b.eps.tolist() == [1.0]
    # far from every key (d = 3 > eps_init + eps_0 = 2): a new entry with eps_init
    assert b.update(_k(3.0, 0.0), "B", torch.full((3,), 2.0), "e1") == ("add", 1, 3.0)
    assert b.eps.tolist() == [1.0, 1.0]
    # within eps_init + eps of entry 0, the same label: its radius grows to cover the new key
    action, entry, d = b.update(_k(0.0, 1.5), "A", torch.zeros(3), "e2")
    assert (action, entry, d) == ("expand", 0, 1.5) and b.eps.tolist() == [1.5, 1.0] and len(b) == 2
    # a key inside the radius with the same label: the radius never shrinks
    assert b.update(_k(0.0, 0.5), "A", torch.zeros(3))[0] == "expand" and b.eps.tolist() == [1.5, 1.0]
    # within reach of entry 1 with another label: both radii become d/2 (the old one a float step below)
    action, entry, d = b.update(_k(4.5, 0.0), "C", torch.full((3,), 3.0), "e3")
    assert (action, entry, d) == ("split", 2, 1.5)
    assert b.eps[2].item() == 0.75 and b.eps[1].item() == torch.nextafter(torch.tensor(0.75, dtype=torch.float64),
                                                                          torch.tensor(0.0, dtype=torch.float64)).item()
    assert b.labels == ["A", "B", "C"] and b.ids == ["e0", "e1", "e3"]
    assert b.counts == {"add": 2, "expand": 2, "split": 1}
    # the same key again with another label: the newer edit takes the entry over
    assert b.update(_k(4.5, 0.0), "D", torch.full((3,), 4.0), "e4") == ("split", 2, 0.0)
    assert b.labels[2] == "D" and b.values[2].tolist() == [4.0] * 3 and len(b) == 3
    # a key within float noise of an existing one is the same key (a split there would leave a radius
    # below the noise between two passes over the same prompt, which no training pass could hit)
    action, entry, d = b.update(_k(4.5, 1e-6), "E", torch.full((3,), 5.0), "e5")
    assert (action, entry) == ("split", 2) and 0 < d < 1e-5 and len(b) == 3 and b.labels[2] == "E"
    assert b.eps[2].item() >= d


def test_inside_is_replaced_outside_is_bit_identical():
    toy = _Toy()
    b = _book()
    b.update(_k(0.0, 0.0), "A", torch.full((3,), 7.0))
    b.update(_k(5.0, 0.0), "B", torch.full((3,), -7.0))
    x = torch.tensor([[[0.0, 0.9], [10.0, 10.0], [5.5, 0.0], [0.0, 1.0], [2.5, 0.0]]])
    base = toy(x)
    with b.attached(toy):
        assert b.installed
        out = toy(x)
        far = torch.tensor([[[10.0, 10.0], [2.5, 0.0]]])
        assert torch.equal(toy(far), toy.lin.forward(far))  # nothing inside: the base output, bit for bit
    assert not b.installed and not toy.lin._forward_hooks
    assert out[0, 0].tolist() == [7.0] * 3 and out[0, 2].tolist() == [-7.0] * 3
    assert out[0, 3].tolist() == [7.0] * 3  # exactly on the radius counts as inside
    assert torch.equal(out[0, 1], base[0, 1]) and torch.equal(out[0, 4], base[0, 4])
    assert b.stats["deferred"] == 3 and b.stats["positions"] == 7
    with pytest.raises(TrusteditError, match="lacks"):
        Codebook.empty("nope", None, 2, 3, 1.0).install(toy)
    with pytest.raises(TrusteditError, match="maps 2 -> 3"):
        Codebook.empty("lin", None, 4, 3, 1.0).install(toy)
    assert not toy.lin._forward_hooks


def _logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([ids])).logits[0]


def _ids(lm, req):
    p, t = encode_request(lm.tokenizer, req.prompt, req.target_new)
    return p, t


def _argmax_ok(lm, req):
    p, t = _ids(lm, req)
    logits = _logits(lm, p + t[:-1])
    return logits[len(p) - 1:].argmax(-1).tolist() == t


def test_fit_makes_the_target_the_argmax_and_reverts_exactly(lm, weights, tmp_path):
    snap = weights.snapshot(lm.model)
    p, t = _ids(lm, REQ)
    base = _logits(lm, p + t[:-1])
    other = lm.tokenizer("What is the capital of France ?", add_special_tokens=False)["input_ids"]
    base_other = _logits(lm, other)
    assert not _argmax_ok(lm, REQ)
    patch = fit(lm, [REQ], GRACEConfig(**CFG))
    weights.assert_same(lm.model, snap)
    assert all(not m._forward_hooks for m in lm.model.modules())  # fit leaves no hook behind
    tr = patch.manifest["training"]
    assert tr["converged"] == 1 and tr["per_request"][0]["action"] == "add" and tr["entries"] == 1
    assert patch.deltas == {} and len(patch.gate) == 1
    patch.apply(lm.model)
    assert _argmax_ok(lm, REQ)
    edited = _logits(lm, p + t[:-1])
    assert torch.equal(_logits(lm, other), base_other)  # far from the key: bit-identical
    # generation with a KV cache writes the target (the per-position rule needs no prompt boundary)
    with torch.no_grad():
        gen = lm.model.generate(torch.tensor([p]), max_new_tokens=len(t), do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    assert gen[0, len(p):].tolist() == t
    patch.revert(lm.model)
    assert torch.equal(_logits(lm, p + t[:-1]), base) and not patch.applied
    weights.assert_same(lm.model, snap)
    # save -> load -> apply: identical outputs
    patch.save(tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["gate"]["kind"] == "grace" and manifest["gate"]["labels"] == ["Leonardo"]
    loaded = Patch.load(tmp_path / "p")
    assert loaded.digest() == patch.digest()
    loaded.apply(lm.model)
    assert torch.equal(_logits(lm, p + t[:-1]), edited)
    loaded.revert(lm.model)
    with pytest.raises(TrusteditError, match="GRACE's key-value codebook") as e:
        loaded.export_merged(lm.model, lm.tokenizer, tmp_path / "merged")
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "merged").exists()


def test_sequential_state_accumulates_entries(lm):
    state: dict = {}
    cfg = GRACEConfig(**CFG)
    p1 = fit(lm, RequestBatch([REQ], state), cfg)
    p2 = fit(lm, RequestBatch([REQ2], state), cfg)
    assert len(p1.gate) == 1 and len(p2.gate) == 2 and len(state["grace"]) == 2
    assert p2.gate.labels == ["Leonardo", "Everest"]
    assert p2.gate is not state["grace"]  # the patch holds a copy
    p2.apply(lm.model)
    try:
        assert _argmax_ok(lm, REQ) and _argmax_ok(lm, REQ2)
    finally:
        p2.revert(lm.model)
    with pytest.raises(UsageError, match="keep layer and eps_init fixed"):
        fit(lm, RequestBatch([REQ2], state), GRACEConfig(**{**CFG, "eps_init": 2.0}))
    # a fresh state (a single edit) starts an empty codebook
    assert len(fit(lm, [REQ2], cfg).gate) == 1


def test_malformed_saved_codebook_is_a_one_line_error(tmp_path):
    b = _book()
    b.update(_k(0.0, 0.0), "A", torch.ones(3))
    Patch("grace", {}, {}, gate=b).save(tmp_path / "p")
    mpath = tmp_path / "p" / "manifest.json"
    good = json.loads(mpath.read_text())
    assert len(Patch.load(tmp_path / "p").gate) == 1
    for change, msg in [({"labels": ["A", "B"]}, "1 keys"), ({"labels": "A"}, "list of strings"),
                        ({"eps_init": -1}, "positive number"), ({"module": None}, "module name")]:
        mpath.write_text(json.dumps({**good, "gate": {**good["gate"], **change}}))
        with pytest.raises(TrusteditError, match=msg) as e:
            Patch.load(tmp_path / "p")
        assert len(str(e.value).splitlines()) == 1 and "manifest.json" in str(e.value)
    g = dict(good["gate"])
    del g["module"]
    mpath.write_text(json.dumps({**good, "gate": g}))
    with pytest.raises(TrusteditError, match="field or tensor 'module' missing"):
        Patch.load(tmp_path / "p")


def test_config_rejects_bad_values():
    with pytest.raises(UsageError):
        GRACEConfig(eps_init=0)
    with pytest.raises(UsageError):
        GRACEConfig(value_init="warm")


def test_gpt2_conv1d_module_and_left_padding(tiny_gpt2):
    lm = tiny_gpt2
    req = EditRequest("Who wrote Hamlet", "Hamlet", "Leonardo", id="g")
    patch = fit(lm, [req], GRACEConfig(layer=1, eps_init=0.5, steps=3))
    assert patch.gate.module == "transformer.h.1.mlp.c_proj" and patch.gate.keys.shape == (1, 64)
    p, t = _ids(lm, req)
    patch.apply(lm.model)
    try:
        one = _logits(lm, p)[-1]
        # the same prompt left-padded in a batch: its last position is deferred the same way
        pad = lm.tokenizer.pad_token_id
        ids = torch.tensor([[pad, pad] + p, p + p[-1:] + p[-1:]])
        mask = torch.tensor([[0, 0] + [1] * len(p), [1] * (len(p) + 2)])
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, -1]
        assert patch.gate.stats["deferred"] >= 2
        assert torch.allclose(out, one, atol=1e-4)
    finally:
        patch.revert(lm.model)
