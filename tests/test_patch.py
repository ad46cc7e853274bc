"""Patches: bit-exact revert, save/load/apply equivalence, guards, merged export."""

from __future__ import annotations

import json

import pytest
import torch

from trustedit.errors import TrusteditError
from trustedit.patch import PATCH_FORMAT, Delta, Patch, dense_patch_from, sum_patches
from trustedit.prompts import PromptFormat, make_pairs

IDK = "I don't know."


def _pairs(lm, qa):
    qs, ans = qa
    fmt = PromptFormat()
    forget = make_pairs(lm.tokenizer, fmt, qs[:3], [IDK] * 3)
    retain = make_pairs(lm.tokenizer, fmt, qs[3:], ans[3:])
    return forget, retain


def _ftm(lm, qa, **kw):
    from trustedit.methods.ft_m import FTMConfig, fit

    from trustedit.suites.sanitation import TrainPairs

    forget, retain = _pairs(lm, qa)
    return fit(lm, TrainPairs(forget, retain), FTMConfig(max_steps=2, batch_size=2, warmup_steps=0, lr=1e-2, **kw))


def _lora(lm, qa, **kw):
    from trustedit.privacy.sanitization import SanitizationConfig, fit

    from trustedit.suites.sanitation import TrainPairs

    forget, retain = _pairs(lm, qa)
    kw.setdefault("rank", 2)
    return fit(lm, TrainPairs(forget, retain), SanitizationConfig(max_steps=2, batch_size=2, warmup_steps=0, lr=1e-2, **kw))


def _param(model, name):
    return dict(model.named_parameters())[name]


def _nonzero(patch, model):
    """At least one delta materialises to a non-zero tensor (the test is not vacuous)."""
    return any(bool(d.materialise(_param(model, n)).abs().sum() > 0) for n, d in patch.deltas.items())


# ---- revert is bit-exact ----------------------------------------------------------------------


def test_revert_dense_and_lowrank_bit_exact(tiny_llama, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    g = torch.Generator().manual_seed(3)
    down = "model.layers.0.mlp.down_proj.weight"
    q = "model.layers.1.self_attn.q_proj.weight"
    out_f, in_f = _param(model, q).shape
    patch = Patch("test", {
        down: Delta("dense", {"delta": torch.randn(_param(model, down).shape, generator=g) * 1e-2}),
        q: Delta("lowrank", {"B": torch.randn(out_f, 3, generator=g), "A": torch.randn(3, in_f, generator=g)}, 0.37),
    })
    patch.apply(model)
    assert patch.applied
    assert not torch.equal(_param(model, down), base[down])
    assert not torch.equal(_param(model, q), base[q])
    patch.revert(model)
    assert not patch.applied
    weights.assert_same(model, base)
    with pytest.raises(TrusteditError):
        patch.revert(model)


def test_sum_patches_is_the_net_change_of_applying_them_in_turn(tiny_llama, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    g = torch.Generator().manual_seed(5)
    down = "model.layers.0.mlp.down_proj.weight"
    q = "model.layers.1.self_attn.q_proj.weight"
    out_f, in_f = _param(model, q).shape
    dense = lambda: Delta("dense", {"delta": torch.randn(_param(model, down).shape, generator=g) * 1e-2})  # noqa: E731
    parts = [Patch("a", {down: dense()}), Patch("b", {down: dense(), q: Delta("lowrank", {
        "B": torch.randn(out_f, 2, generator=g), "A": torch.randn(2, in_f, generator=g)}, 0.5)})]
    for p in parts:
        p.apply(model)
    in_turn = {k: _param(model, k).detach().clone() for k in (down, q)}
    for p in reversed(parts):
        p.revert(model)
    total = sum_patches(parts, "seq")
    assert total.method == "seq" and set(total.deltas) == {down, q}
    assert all(d.kind == "dense" for d in total.deltas.values())
    total.apply(model)
    for k in (down, q):
        assert torch.allclose(_param(model, k), in_turn[k], atol=1e-6)
    total.revert(model)
    weights.assert_same(model, base)


def test_ftm_fit_leaves_model_untouched_and_reverts_bit_exact(tiny_llama, qa, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    patch = _ftm(tiny_llama, qa)
    weights.assert_same(model, base)  # fit returns a patch; the model itself is restored
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert list(patch.deltas) == ["model.layers.1.mlp.down_proj.weight"]  # layer 0.66 of 2 layers
    assert all(d.kind == "dense" for d in patch.deltas.values())
    assert _nonzero(patch, model)
    patch.apply(model)
    patch.revert(model)
    weights.assert_same(model, base)


def test_sanitization_fit_leaves_model_untouched_and_reverts_bit_exact(tiny_llama, qa, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    patch = _lora(tiny_llama, qa)
    weights.assert_same(model, base)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not any("lora" in n for n, _ in model.named_modules()), "PEFT layers left in the model"
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all(d.kind == "lowrank" for d in patch.deltas.values())
    assert len(patch.deltas) == 3 * 2  # q, v, gate in both layers
    assert _nonzero(patch, model)
    patch.apply(model)
    patch.revert(model)
    weights.assert_same(model, base)


# ---- the low-rank patch reproduces the trained adapter exactly ---------------------------------


def _lora_equivalence(lm, qa, targets, monkeypatch):
    """Replace training by setting random LoRA weights; the merged patch must reproduce the
    adapter's own forward pass (catches transposed / wrongly scaled Conv1D deltas)."""
    import trustedit.methods.lora as san  # where the adapter is trained

    ids = torch.tensor([lm.tokenizer("What is the capital of France ?")["input_ids"]])
    seen = {}

    def fake_train(model, pairs, params, **kw):
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.eval()
        with torch.no_grad():
            seen["logits"] = model(input_ids=ids).logits.clone()
        return [0.0]

    monkeypatch.setattr(san, "train_pairs", fake_train)
    with torch.no_grad():
        base_logits = lm.model(input_ids=ids).logits.clone()
    patch = _lora(lm, qa, targets=targets, alpha=3.0)
    patch.apply(lm.model)
    with torch.no_grad():
        merged = lm.model(input_ids=ids).logits
    assert not torch.allclose(seen["logits"], base_logits, atol=1e-3), "adapter had no effect"
    torch.testing.assert_close(merged, seen["logits"], atol=1e-4, rtol=1e-4)
    return patch


def test_lora_patch_matches_adapter_llama(tiny_llama, qa, monkeypatch):
    _lora_equivalence(tiny_llama, qa, ["q", "v", "o", "gate", "up", "down"], monkeypatch)


def test_lora_patch_matches_adapter_gpt2_conv1d(tiny_gpt2, qa, monkeypatch):
    # GPT-2 has no separate q/k/v (fused c_attn): the roles it offers are o, up, down.
    patch = _lora_equivalence(tiny_gpt2, qa, ["o", "up", "down"], monkeypatch)
    assert "transformer.h.0.attn.c_proj.weight" in patch.deltas  # square: orientation not shape-checked


def test_sanitization_rejects_roles_gpt2_lacks(tiny_gpt2, qa):
    from trustedit.errors import UsageError

    with pytest.raises(UsageError, match="no separate q projection"):
        _lora(tiny_gpt2, qa, targets=["q"])
    with pytest.raises(UsageError, match="unknown LoRA target role"):
        _lora(tiny_gpt2, qa, targets=["qkv"])


def test_gpt2_conv1d_patches_revert_bit_exact(tiny_gpt2, qa, weights):
    model = tiny_gpt2.model
    base = weights.snapshot(model)
    lora = _lora(tiny_gpt2, qa, targets=["o", "up", "down"])
    ftm = _ftm(tiny_gpt2, qa)
    weights.assert_same(model, base)
    assert list(ftm.deltas) == ["transformer.h.1.mlp.c_proj.weight"]
    for patch in (lora, ftm):
        assert _nonzero(patch, model)
        patch.apply(model)
        patch.revert(model)
        weights.assert_same(model, base)


# ---- save / load / apply ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ft-m", "sanitation-lora"])
def test_saved_patch_applied_to_fresh_base_equals_in_memory_edit(method, llama_factory, qa, tmp_path, weights):
    lm = llama_factory()
    patch = (_ftm if method == "ft-m" else _lora)(lm, qa)
    patch.manifest["base_model"] = {"fingerprint": lm.fingerprint}
    patch.apply(lm.model)
    folder = patch.save(tmp_path / "patch")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "patch.safetensors"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == PATCH_FORMAT and manifest["method"] == method
    assert set(manifest["deltas"]) == set(patch.deltas)

    loaded = Patch.load(folder)
    assert loaded.method == method and not loaded.applied
    fresh = llama_factory()
    loaded.apply(fresh.model, check_fingerprint=fresh.fingerprint)
    weights.assert_same(fresh.model, lm.model)
    loaded.revert(fresh.model)
    weights.assert_same(fresh.model, llama_factory().model)


def test_save_does_not_leave_temporary_folders(tiny_llama, tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"
    p = Patch("t", {name: Delta("dense", {"delta": torch.zeros_like(_param(tiny_llama.model, name))})})
    p.save(tmp_path / "a")
    p.save(tmp_path / "a")  # overwrite in place
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a"]


def test_load_rejects_non_patch_folders(tmp_path):
    with pytest.raises(TrusteditError, match="missing"):
        Patch.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    (tmp_path / "patch.safetensors").write_bytes(b"")
    with pytest.raises(TrusteditError, match="invalid JSON"):
        Patch.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TrusteditError, match="format"):
        Patch.load(tmp_path)


# ---- guards -----------------------------------------------------------------------------------


def test_applying_twice_raises(tiny_llama, weights):
    model = tiny_llama.model
    name = "model.layers.0.mlp.down_proj.weight"
    patch = Patch("t", {name: Delta("dense", {"delta": torch.full_like(_param(model, name), 0.01)})})
    patch.apply(model)
    once = weights.snapshot(model)
    with pytest.raises(TrusteditError, match="already applied"):
        patch.apply(model)
    weights.assert_same(model, once)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_non_finite_delta_rejected_and_model_unchanged(tiny_llama, weights, bad, kind):
    model = tiny_llama.model
    base = weights.snapshot(model)
    good_name = "model.layers.0.mlp.down_proj.weight"
    bad_name = "model.layers.1.mlp.down_proj.weight"
    shape = _param(model, bad_name).shape
    if kind == "dense":
        d = torch.zeros(shape)
        d[0, 0] = bad
        bad_delta = Delta("dense", {"delta": d})
    else:
        B, A = torch.zeros(shape[0], 1), torch.ones(1, shape[1])
        B[1, 0] = bad
        bad_delta = Delta("lowrank", {"B": B, "A": A})
    # the good delta is applied first, so the failure must undo it too
    patch = Patch("t", {good_name: Delta("dense", {"delta": torch.full_like(_param(model, good_name), 0.5)}),
                        bad_name: bad_delta})
    with pytest.raises(TrusteditError, match="non-finite"):
        patch.apply(model)
    assert not patch.applied
    weights.assert_same(model, base)


def test_unknown_parameter_rejected_before_any_change(tiny_llama, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    good = "model.layers.0.mlp.down_proj.weight"
    patch = Patch("t", {good: Delta("dense", {"delta": torch.ones_like(_param(model, good))}),
                        "model.layers.9.mlp.down_proj.weight": Delta("dense", {"delta": torch.ones(2, 2)})})
    with pytest.raises(TrusteditError, match="lacks"):
        patch.apply(model)
    weights.assert_same(model, base)


def test_shape_mismatch_leaves_model_unchanged(tiny_llama, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    good = "model.layers.0.mlp.down_proj.weight"
    other = "model.layers.1.mlp.down_proj.weight"
    patch = Patch("t", {good: Delta("dense", {"delta": torch.ones_like(_param(model, good))}),
                        other: Delta("dense", {"delta": torch.ones(3, 3)})})
    with pytest.raises(TrusteditError, match="shape"):
        patch.apply(model)
    assert not patch.applied
    weights.assert_same(model, base)


def test_fingerprint_mismatch_raises(tiny_llama, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    name = "model.layers.0.mlp.down_proj.weight"
    patch = Patch("t", {name: Delta("dense", {"delta": torch.ones_like(_param(model, name))})},
                  {"base_model": {"fingerprint": "gguf-sha256:someone-else"}})
    with pytest.raises(TrusteditError, match="someone-else"):
        patch.apply(model, check_fingerprint=tiny_llama.fingerprint)
    assert not patch.applied
    weights.assert_same(model, base)
    patch.manifest["base_model"]["fingerprint"] = tiny_llama.fingerprint
    patch.apply(model, check_fingerprint=tiny_llama.fingerprint)  # the right base is accepted
    assert patch.applied


def test_dense_patch_from_restores_model(tiny_llama, weights):
    model = tiny_llama.model
    base = weights.snapshot(model)
    name = "model.layers.0.self_attn.o_proj.weight"
    with torch.no_grad():
        _param(model, name).add_(0.25)
    edited = weights.snapshot(model)
    patch = dense_patch_from(model, {name: base[name]}, "manual")
    weights.assert_same(model, base)
    patch.apply(model)
    torch.testing.assert_close(_param(model, name), edited[name], atol=1e-6, rtol=0)


# ---- merged export ----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_export_merged_loads_with_same_weights(which, llama_factory, gpt2_factory, qa, tmp_path, weights):
    from transformers import AutoModelForCausalLM

    lm = (llama_factory if which == "llama" else gpt2_factory)()
    base = weights.snapshot(lm.model)
    patch = _ftm(lm, qa)
    out = patch.export_merged(lm.model, lm.tokenizer, tmp_path / "merged")
    weights.assert_same(lm.model, base)  # applied only temporarily
    assert not patch.applied
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "training" in json.loads((out / "trustedit-patch.json").read_text())
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    patch.apply(lm.model)
    got, want = dict(merged.named_parameters()), dict(lm.model.named_parameters())
    assert set(got) == set(want)
    for n in want:
        assert torch.equal(got[n].detach(), want[n].detach()), n

    # the exported folder is also a valid trustedit model spec
    from trustedit.models import load_model

    again = load_model(str(out), "cpu", "float32")
    assert again.fingerprint.startswith("folder-sha256:")
    weights.assert_same(again.model, lm.model)


# ---- half precision: add in fp32, round once --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_apply_adds_in_fp32_and_rounds_once(dtype):
    g = torch.Generator().manual_seed(11)
    lin = torch.nn.Linear(48, 32, bias=False)
    dense_lin = torch.nn.Linear(48, 32, bias=False)
    model = torch.nn.ModuleDict({"a": lin, "b": dense_lin}).to(dtype)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    B, A = torch.randn(32, 4, generator=g) * 1e-2, torch.randn(4, 48, generator=g) * 1e-1
    D = torch.randn(32, 48, generator=g) * 3e-4
    patch = Patch("t", {"a.weight": Delta("lowrank", {"B": B, "A": A}, 0.7), "b.weight": Delta("dense", {"delta": D})})
    patch.apply(model)
    want_a = (base["a.weight"].float() + (B.float() @ A.float()) * 0.7).to(dtype)
    want_b = (base["b.weight"].float() + D.float()).to(dtype)
    assert torch.equal(model["a"].weight, want_a) and model["a"].weight.dtype == dtype
    assert torch.equal(model["b"].weight, want_b)
    # casting the delta to half precision first (the old behaviour) rounds twice and differs
    twice = base["b.weight"] + D.to(dtype)
    assert not torch.equal(twice, want_b)
    patch.revert(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, base[n]), n


# ---- digest, merged export metadata and the exact unmerge -------------------------------------


def _random_patch(model, seed=1, scale=1e-2):
    """Low-rank and dense deltas large enough that ``(w + d) - d != w`` on many elements."""
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for n, p in model.named_parameters():
        if p.dim() == 2 and ("q_proj" in n or "down_proj" in n):
            o, i = p.shape
            deltas[n] = Delta("lowrank", {"B": torch.randn(o, 2, generator=g) * scale, "A": torch.randn(2, i, generator=g)},
                              0.5)
        elif "up_proj" in n:
            deltas[n] = Delta("dense", {"delta": torch.randn(p.shape, generator=g) * scale / 10})
    return Patch("test", deltas, {"base_model": {"fingerprint": "test:base"}})


def test_digest_follows_content(tiny_llama, tmp_path):
    p = _random_patch(tiny_llama.model)
    assert p.digest() == _random_patch(tiny_llama.model).digest()
    assert p.digest() != _random_patch(tiny_llama.model, seed=2).digest()
    p.save(tmp_path / "p")
    assert Patch.load(tmp_path / "p").digest() == p.digest()  # survives save/load
    q = _random_patch(tiny_llama.model)
    next(iter(q.deltas.values())).scale = 0.25
    assert q.digest() != p.digest()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_records_fingerprints_and_unmerge_is_bit_exact(llama_factory, tmp_path, weights, dtype):
    from trustedit.models import folder_fingerprint, load_model
    from trustedit.patch import EXPORT_INFO, REVERT_FILE, read_export

    lm = llama_factory()
    lm.model.to(dtype)
    base = weights.snapshot(lm.model)
    patch = _random_patch(lm.model)
    out = patch.export_merged(lm.model, lm.tokenizer, tmp_path / "merged", base_fingerprint="test:the-base")
    weights.assert_same(lm.model, base)
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["merged"]["fingerprint"] == "folder-sha256:" + folder_fingerprint(out)
    assert info["base_model"]["fingerprint"] == "test:the-base" and info["patch_sha256"] == patch.digest()
    assert info["method"] == "test" and "deltas" not in info
    assert (out / REVERT_FILE).is_file() and not list(out.glob("trustedit*.safetensors"))
    again = load_model(str(out), "cpu", "bfloat16" if dtype == torch.bfloat16 else "float32")
    assert again.fingerprint == info["merged"]["fingerprint"]  # the same function load_model uses

    # subtracting alone is not exact: the export's revert data is needed (the test is not vacuous)
    plain = load_model(str(out), "cpu", str(dtype).replace("torch.", ""))
    patch.unmerge(plain.model)
    off = [n for n in patch.deltas if not torch.equal(_param(plain.model, n), base[n])]
    assert off, "every delta round-trips exactly: the test proves nothing"
    assert info["revert"]["corrections"] > 0

    info2, corrections = read_export(out)
    assert info2 == info
    sums = patch.unmerge(again.model, corrections)
    weights.assert_same(again.model, base)
    assert sums == {n: t["sha256"] for n, t in info["revert"]["tensors"].items()}


def test_read_export_rejects_damage(tiny_llama, tmp_path):
    from trustedit.patch import EXPORT_INFO, REVERT_FILE, read_export

    with pytest.raises(TrusteditError, match="not a folder written by `trustedit patch export`"):
        read_export(tmp_path)
    out = _random_patch(tiny_llama.model).export_merged(tiny_llama.model, tiny_llama.tokenizer, tmp_path / "m")
    data = (out / REVERT_FILE).read_bytes()
    (out / REVERT_FILE).write_bytes(data[:-4] + b"\0\0\0\0")
    with pytest.raises(TrusteditError, match="does not match the SHA-256"):
        read_export(out)
    (out / EXPORT_INFO).write_text(json.dumps({"method": "x"}))
    with pytest.raises(TrusteditError, match="records no merged fingerprint"):
        read_export(out)
    (out / EXPORT_INFO).write_text("{")
    with pytest.raises(TrusteditError, match="unreadable"):
        read_export(out)


@pytest.mark.parametrize("manifest, needle", [
    ([1, 2], "expected a JSON object"),
    ({"format": PATCH_FORMAT, "deltas": [1]}, "field 'deltas' must be an object"),
    ({"format": PATCH_FORMAT, "deltas": {"w": 3}}, "expected an object"),
    ({"format": PATCH_FORMAT, "deltas": {"w": {"kind": "sparse", "tensors": {}}}}, "unknown kind 'sparse'"),
    ({"format": PATCH_FORMAT, "deltas": {"w": {"kind": "dense", "scale": 1, "tensors": {"B": "d0.B"}}}},
     "a dense delta has tensors"),
    ({"format": PATCH_FORMAT, "deltas": {"w": {"kind": "dense", "scale": "x", "tensors": {"delta": "d0.delta"}}}},
     "field 'scale' must be a finite number"),
    ({"format": PATCH_FORMAT, "deltas": {"w": {"kind": "dense", "scale": 1, "tensors": {"delta": "nope"}}}},
     "refers to missing"),
    ({"format": PATCH_FORMAT, "deltas": {"w": {"kind": "lowrank", "scale": 1, "tensors": {"A": "d0.delta", "B": "d0.delta"}}}},
     "do not multiply"),
])
def test_tampered_manifest_is_one_line(tmp_path, manifest, needle):
    from safetensors.torch import save_file

    save_file({"d0.delta": torch.zeros(3, 4)}, str(tmp_path / "patch.safetensors"))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrusteditError) as e:
        Patch.load(tmp_path)
    assert needle in str(e.value) and "\n" not in str(e.value)
