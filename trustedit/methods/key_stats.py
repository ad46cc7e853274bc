"""Second-moment statistics ``C = E[k kᵀ]`` of an MLP down-projection's inputs (the keys of ROME,
MEMIT and AlphaEdit), computed on WikiText-2 and cached on disk.

ROME and MEMIT estimate ``C`` from ~100,000 Wikipedia sequences on a GPU; here the text is
WikiText-2 (the only general text the data mirror carries), in non-overlapping windows of
``window`` tokens, and the sample is counted in tokens (``n_tokens``, 100,000 by default) so that
its cost is known in advance. Deviation, documented: the documents come from the *end* of the file
(from document :data:`FIRST_DOC` on), so that the retention suite's WikiText-2 perplexity (its first
1 or 4 documents at the default and standard sizes) is measured on text the statistics never saw.

The cache lives under ``$TRUSTEDIT_CACHE/stats`` (default ``~/.cache/trustedit/stats``), one file
per (model fingerprint, layer, token count, window, text digest), written to a temporary name
and renamed. A model without a stable fingerprint (an in-memory test model) is never cached.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FIRST_DOC = 8  # WikiText-2 test documents 0..7 are the retention suite's; the statistics use the rest
FORMAT = "trustedit-keystats/1"


def stats_dir() -> Path:
    from trustedit.models import cache_root

    return cache_root() / "stats"


def stats_texts(path: str | None = None) -> list[str]:
    from trustedit.data.retention import load_wikitext

    docs = load_wikitext(None, path)
    return docs[FIRST_DOC:] if len(docs) > FIRST_DOC else docs


def _cacheable(fingerprint: str) -> bool:
    return not fingerprint.startswith("test:") and fingerprint != ""


def _file(fingerprint: str, layer: int, n_tokens: int, window: int, text_digest: str) -> Path:
    key = hashlib.sha256(f"{FORMAT}|{fingerprint}|{layer}|{n_tokens}|{window}|{text_digest}".encode()).hexdigest()
    return stats_dir() / f"{key[:32]}-L{layer}-{n_tokens}.pt"


def key_second_moments(lm, layers: list[int], n_tokens: int = 100_000, window: int = 512, texts: list[str] | None = None,
                       cache: bool = True) -> tuple[dict, dict]:
    """``{layer: C}`` (``d_in x d_in`` float64 tensors, ``E[k kᵀ]`` over ``n_tokens`` token
    positions) for the down-projection of every layer in ``layers``, computed in one pass over
    the text, and a record of how (``tokens``, ``window``, ``text_sha256``, ``seconds``,
    ``cached``: the layers served from disk)."""
    import time

    import torch
    from tqdm.auto import tqdm

    from trustedit import arch
    from trustedit.hooks import capture

    texts = stats_texts() if texts is None else texts
    text_digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    out, cached = {}, []
    use_cache = cache and _cacheable(lm.fingerprint)
    if use_cache:
        for L in layers:
            f = _file(lm.fingerprint, L, n_tokens, window, text_digest)
            if f.is_file():
                try:
                    obj = torch.load(f, map_location="cpu", weights_only=True)
                    out[L] = obj["C"].to(torch.float64)
                    cached.append(L)
                except Exception:  # a damaged file is recomputed, then replaced
                    pass
    todo = [L for L in layers if L not in out]
    record = {"tokens": n_tokens, "window": window, "first_doc": FIRST_DOC, "text_sha256": text_digest,
              "cached": sorted(cached), "seconds": 0.0}
    if not todo:
        return out, record
    model = lm.model
    spec = arch.arch_for(model)
    names = {L: arch.layer_path(model, L, spec.down) for L in todo}
    eos = lm.tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:  # enough text for n_tokens positions, documents joined by EOS
        ids += lm.tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(ids) >= n_tokens:
            break
    ids = ids[:n_tokens]
    if len(ids) < n_tokens:
        from trustedit.errors import UsageError

        raise UsageError(f"key statistics: the text holds {len(ids)} tokens, fewer than the {n_tokens} asked for")
    sums = {L: None for L in todo}
    device = next(model.parameters()).device
    t0 = time.time()
    chunks = [ids[i:i + window] for i in range(0, len(ids), window)]
    with torch.no_grad(), capture(model, list(names.values()), what="input") as store:
        for chunk in tqdm(chunks, desc=f"key statistics ({len(todo)} layers)", unit="window"):
            model(input_ids=torch.tensor([chunk], device=device))
            for L, n in names.items():
                k = store[n].pop()
                k = k.reshape(-1, k.shape[-1]).to(torch.float64)
                s = k.T @ k
                sums[L] = s if sums[L] is None else sums[L] + s
                store[n].clear()
    record["seconds"] = round(time.time() - t0, 2)
    for L in todo:
        C = (sums[L] / len(ids)).cpu()
        out[L] = C.to(torch.float32).to(torch.float64)  # what the cache returns next time, bit for bit
        if use_cache:
            _save(_file(lm.fingerprint, L, n_tokens, window, text_digest), C)
    return out, record


def _save(path: Path, C):
    import torch

    from trustedit.rundir import atomic_file

    atomic_file(path, lambda tmp: torch.save({"format": FORMAT, "C": C.to(torch.float32)}, tmp))
