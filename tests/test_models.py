"""Model loading: pickle-only folders are refused unless allowed, malformed GGUF files and
folders that are not what they claim are one-line errors, and a damaged cached GGUF conversion
is rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trustedit import models
from trustedit.errors import TrusteditError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRUSTEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(models.ALLOW_PICKLE_ENV, raising=False)
    return tmp_path / "cache"


def _one_line(e, *needles):
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert str(n) in msg, msg
    return msg


def _save(lm, folder: Path, safe: bool = True) -> Path:
    """A plain HF folder; ``safe=False``: the weights as ``pytorch_model.bin`` (a pickle) only."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    models.save_plain(lm.model, lm.tokenizer, folder)
    if not safe:
        (folder / "model.safetensors").unlink()
        torch.save({k: v.clone() for k, v in lm.model.state_dict().items()}, folder / "pytorch_model.bin")
    return folder


# ---- pickle weights ---------------------------------------------------------------------------


def test_pickle_only_folder_is_refused_unless_allowed(tiny_llama, tmp_path, cache, monkeypatch, weights):
    import torch

    folder = _save(tiny_llama, tmp_path / "pickled", safe=False)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called")

    with monkeypatch.context() as m:
        m.setattr(torch, "load", no_unpickling)
        with pytest.raises(TrusteditError) as e:
            models.load_model(str(folder))
    _one_line(e, folder, "pytorch_model.bin", "pickle", "TRUSTEDIT_ALLOW_PICKLE=1", "allow_pickle=True")

    lm = models.load_model(str(folder), allow_pickle=True)
    weights.assert_same(lm.model, tiny_llama.model)
    monkeypatch.setenv(models.ALLOW_PICKLE_ENV, "1")
    weights.assert_same(models.load_model(str(folder)).model, tiny_llama.model)


@pytest.mark.parametrize("name", ["weights.pt", "model.pth", "last.ckpt", "shard-1.bin"])
def test_other_pickle_suffixes_are_refused(tiny_llama, tmp_path, cache, name):
    folder = _save(tiny_llama, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / name)
    with pytest.raises(TrusteditError) as e:
        models.load_model(str(folder))
    _one_line(e, folder, name, "TRUSTEDIT_ALLOW_PICKLE")


def test_safetensors_win_over_pickles(tiny_llama, tmp_path, cache, monkeypatch, weights):
    import torch

    folder = _save(tiny_llama, tmp_path / "both")
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    weights.assert_same(models.load_model(str(folder)).model, tiny_llama.model)


def test_cli_pickle_folder_is_one_line(tiny_llama, tmp_path):
    import subprocess
    import sys

    _save(tiny_llama, tmp_path / "pickled", safe=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TRUSTEDIT_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(models.ALLOW_PICKLE_ENV, None)
    p = subprocess.run([sys.executable, "-m", "trustedit", "erase", "--no-hub", "--retention", "none", "--model", "pickled",
                        "--method", "ft-m"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("trustedit: error: ") and "holds only pickle weights (pytorch_model.bin)" in lines[0]


# ---- folders that are not what they claim -----------------------------------------------------


@pytest.mark.parametrize("config, needle", [
    ('{"model_type": "llama",', "invalid JSON at line 1"),
    ('["llama"]', "expected a JSON object, got list"),
    (b"\xff\xfe\x00garbage", "unreadable config"),
])
def test_unreadable_config_is_one_line(tmp_path, cache, config, needle):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_bytes(config if isinstance(config, bytes) else config.encode())
    with pytest.raises(TrusteditError) as e:
        models.load_model(str(folder))
    _one_line(e, folder / "config.json", needle)


def test_damaged_weights_in_a_folder_are_one_line(tiny_llama, tmp_path, cache):
    folder = _save(tiny_llama, tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrusteditError) as e:
        models.load_model(str(folder))
    _one_line(e, "cannot load model")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TrusteditError) as e:
        models.load_model(str(folder))
    _one_line(e, "cannot load model")


def test_config_with_wrong_field_types_is_one_line(tiny_llama, tmp_path, cache):
    folder = _save(tiny_llama, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = "two"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrusteditError) as e:
        models.load_model(str(folder))
    _one_line(e, "cannot load model")


# ---- GGUF -------------------------------------------------------------------------------------


def _tiny_gguf(path: Path) -> Path:
    """A small but well-formed GGUF file (header, metadata, one tensor)."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("damage", ["magic", "header", "data", "empty", "text"])
def test_malformed_gguf_is_one_line(tmp_path, cache, damage):
    good = _tiny_gguf(tmp_path / "good.gguf").read_bytes()
    blob = {"magic": b"GGML" + good[4:], "header": good[:30], "data": good[:-24], "empty": b"",
            "text": b"hello, I am not a model\n"}[damage]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(blob)
    with pytest.raises(TrusteditError) as e:
        models.load_model(str(bad))
    _one_line(e, bad)
    assert not (cache / "converted").exists() or not any((cache / "converted").iterdir()), "left a cache folder"


@pytest.fixture
def fake_conversion(tiny_llama, monkeypatch):
    """gguf_to_folder with transformers' de-quantisation replaced by saving the tiny model;
    counts conversions."""
    calls = []

    def convert(gguf_path, folder):
        calls.append(gguf_path)
        models.save_plain(tiny_llama.model, tiny_llama.tokenizer, folder)

    monkeypatch.setattr(models, "convert_gguf", convert)
    return calls


def test_cached_conversion_records_sizes_and_hashes(tmp_path, cache, fake_conversion):
    gguf_file = _tiny_gguf(tmp_path / "m.gguf")
    folder, digest = models.gguf_to_folder(gguf_file)
    assert folder.name.endswith(f"-v{models.CONVERT_VERSION}") and models.CONVERT_VERSION >= 3
    meta = json.loads((folder / "trustedit-converted.json").read_text())
    names = {p.name for p in folder.iterdir()} - {"trustedit-converted.json"}
    assert set(meta["files"]) == names and "model.safetensors" in names
    for name, entry in meta["files"].items():
        assert entry == {"size": (folder / name).stat().st_size, "sha256": models.sha256_file(folder / name)}
    assert models.gguf_to_folder(gguf_file) == (folder, digest) and len(fake_conversion) == 1  # cached


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing-tokenizer", "header", "no-file-list", "bad-meta"])
def test_damaged_cached_conversion_is_rebuilt(tmp_path, cache, fake_conversion, tiny_llama, weights, damage):
    gguf_file = _tiny_gguf(tmp_path / "m.gguf")
    lm = models.load_model(str(gguf_file))
    weights.assert_same(lm.model, tiny_llama.model)
    folder = models.gguf_to_folder(gguf_file)[0]  # cached: no second conversion
    st = folder / "model.safetensors"
    data = st.read_bytes()
    if damage == "truncate":
        st.write_bytes(data[: len(data) - 1000])
    elif damage == "flip":
        st.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "missing-tokenizer":
        (folder / "tokenizer.json").unlink()
    elif damage == "header":
        st.write_bytes(b"\xff" * 8 + data[8:])
    elif damage == "no-file-list":  # a folder from before sizes and hashes were recorded
        meta = json.loads((folder / "trustedit-converted.json").read_text())
        del meta["files"]
        (folder / "trustedit-converted.json").write_text(json.dumps(meta))
    else:
        (folder / "trustedit-converted.json").write_text("{")
    assert models.converted_folder_problem(folder)
    again = models.load_model(str(gguf_file))
    assert len(fake_conversion) == 2, "the damaged folder was not rebuilt"
    weights.assert_same(again.model, tiny_llama.model)
    assert models.converted_folder_problem(folder) is None
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "left a temporary folder"


def test_safetensors_problem(tiny_llama, tmp_path):
    folder = _save(tiny_llama, tmp_path / "m")
    st = folder / "model.safetensors"
    assert models.safetensors_problem(st) is None
    data = st.read_bytes()
    st.write_bytes(data + b"\0")
    assert "the file has" in models.safetensors_problem(st)
    st.write_bytes(data[:5])
    assert "shorter" in models.safetensors_problem(st)


def test_env_allow_pickle_values(monkeypatch):
    for v, want in (("1", True), ("true", True), ("0", False), ("", False), ("no", False)):
        monkeypatch.setenv(models.ALLOW_PICKLE_ENV, v)
        assert models.pickle_allowed() is want
    monkeypatch.delenv(models.ALLOW_PICKLE_ENV)
    assert models.pickle_allowed(True) and not models.pickle_allowed()
    assert os.environ.get(models.ALLOW_PICKLE_ENV) is None
