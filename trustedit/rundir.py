"""Run directories written atomically: everything goes into a hidden temporary folder beside
the target, which is renamed into place only when complete. A crash leaves no folder that looks
finished (only a ``.NAME.tmp-*`` folder)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trustedit.errors import UsageError


def check_target(out: str | os.PathLike, overwrite: bool = False) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"--out {out}: already exists and is not empty (pass --overwrite to replace it)")
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    out = check_target(out, overwrite)
    tmp = make_tmp_dir(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def make_tmp_dir(out: Path) -> Path:
    """A hidden temporary folder beside ``out`` with normal permissions (mkdtemp makes 0700)."""
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def _finite(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_finite(obj), indent=1, default=str, allow_nan=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_finite(r), default=str, ensure_ascii=False) + "\n")
