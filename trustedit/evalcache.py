"""A cache for the base model's evaluation passes.

The base model's passes on a test split depend only on the model weights, the test items as
token ids, the evaluation options and the code that ran them. Every erase run of the same model
on the same data repeats them, so they are stored under ``<cache>/evals/<key>.json``, where the
key is the SHA-256 of all of those inputs (model fingerprint, device, dtype, token ids of every
test pair, evaluation options, trustedit/torch/transformers versions, and a fingerprint of the
source code that builds the items and runs the passes: :func:`code_fingerprint`). A changed input is a new
key; an unreadable entry is ignored and recomputed. ``--no-eval-cache`` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FORMAT = "trustedit-evalcache/1"


def cache_dir() -> Path:
    from trustedit.models import cache_root

    return cache_root() / "evals"


def make_key(parts: dict) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (every input the passes depend on)."""
    blob = json.dumps({"format": FORMAT, **parts}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def ids_digest(records) -> str:
    """One digest of a list of records, each a tuple of token-id lists (e.g. prompt, target)."""
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps([list(x) for x in rec]).encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


def load(key: str) -> dict | None:
    path = cache_dir() / f"{key}.json"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("key") != key:
        return None
    return obj.get("payload")


def save(key: str, payload: dict) -> None:
    """Write atomically (temporary file, then rename); a failed write leaves no entry."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{key}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"format": FORMAT, "key": key, "payload": payload}), encoding="utf-8")
        os.replace(tmp, d / f"{key}.json")
    finally:
        if tmp.exists():
            tmp.unlink()


CODE_PATHS = ("prompts.py", "models.py", "arch.py", "metrics", "suites", "data")


def git_revision(folder: Path) -> str | None:
    """The git commit checked out in ``folder``'s repository, or None outside one."""
    import subprocess

    try:
        p = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() or None if p.returncode == 0 else None


def code_fingerprint() -> str:
    """SHA-256 of the source of the modules that build items and run model passes
    (:data:`CODE_PATHS` inside the trustedit package) and of the git revision when trustedit runs
    from a checkout, so that passes cached by other code are never served: any change to that code
    is a new key."""
    global _CODE_FP
    if _CODE_FP is None:
        root = Path(__file__).parent
        h = hashlib.sha256()
        h.update(f"git:{git_revision(root)}\n".encode())
        files = []
        for rel in CODE_PATHS:
            p = root / rel
            files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE_FP = h.hexdigest()
    return _CODE_FP


_CODE_FP = None


def cached(parts: dict, compute, encode, decode):
    """``compute()``'s value, from the cache when an entry for ``parts`` (plus the trustedit,
    torch and transformers versions) exists; otherwise computed and stored. A damaged entry is
    recomputed. Returns ``(value, {"state": "hit" | "miss (stored)", "key": ...})``.

    Under a data-parallel launch every rank must take the same branch (the computation is split
    over the ranks): the entry is used only when every rank finds it, and rank 0 stores it."""
    from trustedit import distributed
    from trustedit.provenance import versions

    v = versions()
    key = make_key({**parts, **{k: v.get(k) for k in ("trustedit", "torch", "transformers")}, "code": code_fingerprint()})
    hit = load(key)
    value = None
    if hit is not None:
        try:
            value = decode(hit)
        except (KeyError, TypeError):
            value = None
    if distributed.all_true(value is not None):
        return value, {"state": "hit", "key": key}
    value = compute()
    if distributed.is_main():
        save(key, encode(value))
    return value, {"state": "miss (stored)", "key": key}
