"""The command line, run as a separate process: help and listings, one-line errors with exit
code 2 that fail before any expensive work, and a tiny end-to-end erase."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# ``python -c WRAP args`` behaves exactly like ``python -m trustedit args`` and reports at exit
# whether torch was imported.
WRAP = ("import atexit, runpy, sys; "
        "atexit.register(lambda: print('\\nTORCH_IMPORTED=' + str('torch' in sys.modules))); "
        "runpy.run_module('trustedit', run_name='__main__', alter_sys=True)")


def _env(tmp_path):
    env = dict(os.environ)
    env.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                "TRUSTEDIT_CACHE": str(tmp_path / "cache")})
    if env.get("TRUSTEDIT_DATA_DIR"):  # the CLI runs in tmp_path: a relative data dir must be made absolute
        env["TRUSTEDIT_DATA_DIR"] = os.path.abspath(env["TRUSTEDIT_DATA_DIR"])
    return env


def run_cli(tmp_path, *args, timeout=120):
    """Run the CLI; return (returncode, stdout without the marker, stderr, torch_imported)."""
    p = subprocess.run([sys.executable, "-c", WRAP, *args], capture_output=True, text=True, cwd=tmp_path,
                       env=_env(tmp_path), timeout=timeout)
    out, _, marker = p.stdout.rpartition("\nTORCH_IMPORTED=")
    return p.returncode, out, p.stderr, marker.strip() == "True"


def one_error_line(rc, err):
    lines = err.strip().splitlines()
    assert rc == 2, f"exit code {rc}, stderr:\n{err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("trustedit: error: ")
    return lines[0]


def torch_equal(a, b):
    import torch

    return torch.equal(a.detach(), b.detach())


def _erase(*extra):
    return ["erase", "--no-hub", "--retention", "none", *extra]


# ---- help and listings ------------------------------------------------------------------------


def test_help_exits_zero_without_torch(tmp_path):
    p = subprocess.run([sys.executable, "-m", "trustedit", "--help"], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, timeout=60)
    assert p.returncode == 0 and "erase" in p.stdout and not p.stderr
    for args in (["--help"], ["erase", "--help"], ["--version"]):
        rc, out, err, torch_imported = run_cli(tmp_path, *args)
        assert rc == 0, err
        assert not torch_imported, f"`trustedit {' '.join(args)}` imported torch"
    # the module itself is torch-free too
    code = "import sys; from trustedit.cli import main, _parser; _parser(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), timeout=60).returncode == 0


@pytest.mark.parametrize("what, expect", [("methods", ["sanitation-lora", "ft-m", "rank="]), ("datasets", ["sanitation"])])
def test_ls(tmp_path, what, expect):
    p = subprocess.run([sys.executable, "-m", "trustedit", "ls", what], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr
    for word in expect:
        assert word in p.stdout
    rc, _, _, torch_imported = run_cli(tmp_path, "ls", what)
    assert rc == 0 and not torch_imported


# ---- errors: exit code 2, one line, before any expensive work ---------------------------------


def test_plain_module_error_is_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "trustedit", *_erase("--method", "nope")], capture_output=True,
                       text=True, env=_env(tmp_path), cwd=tmp_path, timeout=60)
    assert "'nope' is not an erase method" in one_error_line(p.returncode, p.stderr)


@pytest.mark.parametrize("args, needle", [
    (("--method", "dama"), "'dama' is not an erase method"),
    (("--dataset", "zsre"), "unknown dataset 'zsre'"),
    (("--set", "nonsense=1"), "unknown ScopeConfig option 'nonsense'"),
    (("--method", "sanitation-lora", "--set", "nonsense=1"), "unknown SanitizationConfig option 'nonsense'"),
    (("--method", "ft-m", "--set", "layer=abc"), "--set layer=abc: expected float"),
    (("--set", "rank"), "expected key=value"),
    (("--config", "absent.json"), "--config absent.json: no such file"),
    (("--data", "no/such/dir"), "--data no/such/dir: no such file or directory"),
])
def test_usage_errors_fail_fast(tmp_path, args, needle):
    rc, _, err, torch_imported = run_cli(tmp_path, *_erase(*args))
    assert needle in one_error_line(rc, err)
    assert not torch_imported, "failed only after importing torch"


def test_out_not_empty_without_overwrite(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    rc, _, err, torch_imported = run_cli(tmp_path, *_erase("--out", "run"))
    assert "--out run: already exists and is not empty" in one_error_line(rc, err)
    assert not torch_imported
    assert (tmp_path / "run" / "results.json").read_text() == "{}"  # untouched


def test_malformed_data_names_file_record_field(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    row = {"question": "Who wrote Hamlet?", "ground_truth": "Shakespeare"}
    (folder / "trivia_qa_train.json").write_text(json.dumps({"K_F": [row, {"question": 7, "ground_truth": "x"}],
                                                             "K_R": [row]}))
    (folder / "trivia_qa_test.json").write_text(json.dumps({"success": [row], "locality": [row]}))
    rc, _, err, torch_imported = run_cli(tmp_path, *_erase("--data", "bad"))
    line = one_error_line(rc, err)
    assert "trivia_qa_train.json" in line and "record K_F[1]" in line and "field 'question'" in line
    assert "expected str, got int" in line
    assert not torch_imported
    (folder / "trivia_qa_train.json").write_text("{")
    rc, _, err, _ = run_cli(tmp_path, *_erase("--data", "bad"))
    assert "trivia_qa_train.json: invalid JSON" in one_error_line(rc, err)


def test_missing_gguf(tmp_path):
    rc, _, err, _ = run_cli(tmp_path, *_erase("--model", "missing/model.gguf"))
    assert "missing/model.gguf: no such GGUF file" in one_error_line(rc, err)
    # NOTE: today this imports transformers/torch first (load_model imports it before resolve()).


def test_model_spec_resolution(tmp_path):
    """The spec checks behind --model, in process (no model is loaded)."""
    from trustedit.errors import TrusteditError
    from trustedit.models import resolve

    (tmp_path / "empty").mkdir()
    with pytest.raises(TrusteditError, match="folder has no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(TrusteditError, match="no such GGUF file"):
        resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(TrusteditError, match="not a .gguf file or a model folder"):
        resolve(str(tmp_path / "file.bin"))
    with pytest.raises(TrusteditError, match="no such file, folder"):
        resolve(str(tmp_path / "nothing"))
    assert resolve("HuggingFaceTB/SmolLM2-135M")[0] == "hub"
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert resolve(str(tmp_path / "empty"))[0] == "folder"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A loadable tiny BERT (an architecture trustedit does not support)."""
    import torch
    from transformers import BertConfig, BertLMHeadModel

    from trustedit.models import save_plain

    folder = tmp_path_factory.mktemp("bert")
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=64, is_decoder=True)
    torch.manual_seed(0)
    save_plain(BertLMHeadModel(cfg), tok, folder)
    return folder


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate("<pad> <s> </s> <unk> I don ' t know . ? Who wrote Hamlet".split())}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def test_unknown_architecture(tmp_path, bert_folder):
    rc, _, err, _ = run_cli(tmp_path, *_erase("--model", str(bert_folder)))
    line = one_error_line(rc, err)
    assert "unsupported architecture model_type='bert'" in line and "llama" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_model_type_unknown_to_transformers(tmp_path, bert_folder):
    folder = tmp_path / "foo"
    folder.mkdir()
    for f in bert_folder.iterdir():
        if f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps({"model_type": "foo"}))
    rc, _, err, _ = run_cli(tmp_path, *_erase("--model", "foo"))
    assert "foo" in one_error_line(rc, err)


def test_patch_command_errors(tmp_path):
    rc, _, err, _ = run_cli(tmp_path, "patch", "show", "nowhere")
    assert "not a trustedit patch folder" in one_error_line(rc, err)


# ---- a whole (tiny) erase run -----------------------------------------------------------------


def test_erase_end_to_end_tiny_llama(tmp_path, tiny_llama):
    from trustedit.models import save_plain

    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    save_plain(tiny_llama.model, tiny_llama.tokenizer, model_dir)
    rc, out, err, _ = run_cli(tmp_path, *_erase("--model", "tiny", "--method", "ft-m", "--limit", "3",
                                                "--set", "max_steps=1", "--set", "batch_size=2", "--out", "run",
                                                "--batch-size", "4"), timeout=300)
    assert rc == 0, err
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["patch", "results.json", "samples.jsonl", "summary.md"]
    res = json.loads((run / "results.json").read_text())
    assert res["method"]["name"] == "ft-m" and res["method"]["config"]["max_steps"] == 1
    san = res["suites"]["sanitation"]
    assert san["dataset"]["limit"] == 3 and san["prompt_format"]["chat_template"] is True
    assert res["metrics"]["sanitation"]["locality"]["pre"]["value"] == 1.0
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["suite"] == "sanitation"]) == 6  # 3 forget + 3 retain test questions
    assert len([r for r in rows if r["suite"] == "fluency"]) == 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"

    rc, _, err, _ = run_cli(tmp_path, *_erase("--model", "tiny", "--out", "run"))
    assert "already exists" in one_error_line(rc, err)

    manifest = json.loads((run / "patch" / "manifest.json").read_text())
    assert manifest["base_model"]["fingerprint"].startswith("folder-sha256:") and manifest["method"] == "ft-m"
    rc, out, err, _ = run_cli(tmp_path, "patch", "export", "run/patch", "--model", "tiny", "--out", "merged")
    assert rc == 0, err
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    from safetensors.torch import load_file

    from trustedit.patch import Patch

    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    patch = Patch.load(run / "patch")
    patch.apply(tiny_llama.model)
    for name in patch.deltas:
        assert torch_equal(merged[name], dict(tiny_llama.model.named_parameters())[name])


@pytest.mark.parametrize("args, needle", [
    (("detox", "--set", "combine=bogus"), "--set combine=bogus: ExtSubConfig option 'combine' must be one of 'ext-sub'"),
    (("detox", "--method", "dinm", "--set", "kl_direction=x"), "DINMConfig option 'kl_direction' must be one of"),
    (_erase("--method", "sanitation-lora", "--set", "epochs=-1"),
     "--set epochs=-1: SanitizationConfig option 'epochs' must be an integer >= 1"),
    (_erase("--set", "max_over_refusal=2"), "--set max_over_refusal=2: ScopeConfig option 'max_over_refusal' must be"),
    (_erase("--set", "features=tfidf"), "ScopeConfig option 'features' must be one of 'minilm', 'hidden'"),
    (_erase("--method", "sanitation-scope+lora", "--set", "rank=0"), "ScopeLoraConfig option 'rank' must be an integer"),
    (_erase("--method", "ft-m", "--set", "lr=nan"), "FTMConfig option 'lr' must be a finite number > 0, got nan"),
    (("debias", "--set", "components=inf"), "DAMAConfig option 'components' must be a finite number > 0"),
    (("debias", "--method", "inlp", "--set", "classifier=tree"), "INLPConfig option 'classifier' must be one of"),
])
def test_bad_method_options_fail_when_the_config_is_built(tmp_path, args, needle):
    """An invalid --set fails before any data or model is loaded (ext-sub's combine used to fail
    only after both adapters were trained)."""
    rc, _, err, torch_imported = run_cli(tmp_path, *args)
    assert needle in one_error_line(rc, err)
    assert not torch_imported, "failed only after importing torch"
    assert not list(tmp_path.glob("runs*")), "left a run directory behind"


def test_config_file_type_error_names_the_file(tmp_path):
    (tmp_path / "opts.json").write_text(json.dumps({"lr": "abc"}))
    rc, _, err, torch_imported = run_cli(tmp_path, *_erase("--method", "sanitation-lora", "--config", "opts.json"))
    assert "--config opts.json: option 'lr': expected float, got 'abc'" in one_error_line(rc, err)
    (tmp_path / "opts.yaml").write_text("rank: 0\n")
    rc, _, err, torch_imported = run_cli(tmp_path, *_erase("--method", "sanitation-lora", "--config", "opts.yaml"))
    assert "--config opts.yaml: SanitizationConfig option 'rank' must be an integer >= 1, got 0" in one_error_line(rc, err)
    assert not torch_imported


# ---- --out: an unusable location fails up front and nothing is left behind ---------------------


def test_out_that_cannot_be_written_fails_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("keep")
    for args, needle in ((("--out", "afile", "--overwrite"), "--out afile: is a file, not a folder"),
                         (("--out", "afile"), "--out afile: is a file, not a folder"),
                         (("--out", "afile/sub/run"), "afile is a file, not a folder")):
        rc, _, err, torch_imported = run_cli(tmp_path, *_erase(*args))
        assert needle in one_error_line(rc, err)
        assert not torch_imported
    assert (tmp_path / "afile").read_text() == "keep"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        target = locked if not os.access(locked, os.W_OK) else ("/sys" if os.path.isdir("/sys") else None)
        if target is None:
            pytest.skip("no unwritable folder here")
        rc, _, err, torch_imported = run_cli(tmp_path, *_erase("--out", f"{target}/run"))
        assert f"--out {target}/run: cannot write in {target}" in one_error_line(rc, err)
        assert not torch_imported
    finally:
        locked.chmod(0o755)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.name == "runs"]


def test_failed_run_leaves_no_parent_folders(tmp_path):
    rc, _, err, _ = run_cli(tmp_path, *_erase("--model", "missing/model.gguf", "--out", "deep/er/run"))
    assert "no such GGUF file" in one_error_line(rc, err)
    assert not (tmp_path / "deep").exists(), "check_target created the parent folders of --out"


# ---- patch export / revert --------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path, tiny_llama):
    """A base folder, a patch for it (deltas that do not round-trip exactly) and a second patch."""
    import torch

    from trustedit.models import folder_fingerprint, save_plain
    from trustedit.patch import Delta, Patch

    base = tmp_path / "base"
    base.mkdir()
    save_plain(tiny_llama.model, tiny_llama.tokenizer, base)
    fp = "folder-sha256:" + folder_fingerprint(base)
    g = torch.Generator().manual_seed(1)
    params = dict(tiny_llama.model.named_parameters())

    def make(seed_scale):
        deltas = {}
        for n, p in params.items():
            if p.dim() == 2 and ("q_proj" in n or "down_proj" in n):
                o, i = p.shape
                deltas[n] = Delta("lowrank", {"B": torch.randn(o, 2, generator=g) * seed_scale,
                                              "A": torch.randn(2, i, generator=g)}, 0.5)
            elif "up_proj" in n:
                deltas[n] = Delta("dense", {"delta": torch.randn(p.shape, generator=g) * seed_scale / 10})
        return Patch("test", deltas, {"base_model": {"fingerprint": fp, "spec": "base"}})

    make(1e-2).save(tmp_path / "patch")
    make(2e-2).save(tmp_path / "other")
    return base


def _weights_of(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_patch_export_then_revert_is_bit_exact(tmp_path, exported):
    rc, out, err, _ = run_cli(tmp_path, "patch", "export", "patch", "--model", "base", "--out", "merged")
    assert rc == 0, err
    info = json.loads((tmp_path / "merged" / "trustedit-patch.json").read_text())
    from trustedit.models import folder_fingerprint

    assert info["merged"]["fingerprint"] == "folder-sha256:" + folder_fingerprint(tmp_path / "merged")
    assert info["base_model"]["fingerprint"] == "folder-sha256:" + folder_fingerprint(exported)
    assert info["revert"]["corrections"] > 0  # plain subtraction would not be exact
    rc, out, err, _ = run_cli(tmp_path, "patch", "revert", "patch", "--model", "merged", "--out", "reverted")
    assert rc == 0, err
    assert "bit-exact" in out
    base, back = _weights_of(exported), _weights_of(tmp_path / "reverted")
    assert set(base) == set(back)
    for k in base:
        assert torch_equal(base[k], back[k]), k
    record = json.loads((tmp_path / "reverted" / "trustedit-revert.json").read_text())
    assert record["bit_exact"] is True and record["merged_fingerprint"] == info["merged"]["fingerprint"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_patch_revert_refuses_a_model_the_patch_did_not_produce(tmp_path, exported):
    rc, _, err, _ = run_cli(tmp_path, "patch", "revert", "patch", "--model", "base", "--out", "r1")
    assert "base: no trustedit-patch.json" in one_error_line(rc, err)
    rc, _, err, _ = run_cli(tmp_path, "patch", "export", "other", "--model", "base", "--out", "merged-other")
    assert rc == 0, err
    rc, _, err, _ = run_cli(tmp_path, "patch", "revert", "patch", "--model", "merged-other", "--out", "r2")
    assert "merged-other was exported with another patch" in one_error_line(rc, err)
    # the right patch, but the merged weights were changed afterwards
    from safetensors.torch import save_file

    w = _weights_of(tmp_path / "merged-other")
    name = sorted(w)[0]
    w[name] = w[name].clone()
    w[name].view(-1)[0] += 1.0
    save_file(w, str(tmp_path / "merged-other" / "model.safetensors"), metadata={"format": "pt"})
    rc, _, err, _ = run_cli(tmp_path, "patch", "revert", "other", "--model", "merged-other", "--out", "r3")
    assert "merged-other: weights changed since the export" in one_error_line(rc, err)
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


def test_patch_out_is_checked_before_anything_is_loaded(tmp_path, exported):
    (tmp_path / "afile").write_text("keep")
    for action in ("export", "apply", "revert"):
        rc, _, err, torch_imported = run_cli(tmp_path, "patch", action, "patch", "--model", "base", "--out", "afile",
                                             "--overwrite")
        assert "--out afile: is a file, not a folder" in one_error_line(rc, err)
        assert not torch_imported, "loaded something before checking --out"
        rc, _, err, torch_imported = run_cli(tmp_path, "patch", action, "patch", "--model", "base", "--out",
                                             "afile/merged")
        assert "afile is a file, not a folder" in one_error_line(rc, err)
        assert not torch_imported
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    rc, _, err, torch_imported = run_cli(tmp_path, "patch", "export", "patch", "--model", "base", "--out", "full")
    assert "already exists and is not empty" in one_error_line(rc, err) and not torch_imported
