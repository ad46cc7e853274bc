"""Where data files come from: an explicit path, else the data root.

The data root is ``$TRUSTEDIT_DATA_DIR`` when that is set (it must then be a directory, and it is
the only place looked at), otherwise the default mirror folder ``$TRUSTEDIT_CACHE/data``
(``TRUSTEDIT_CACHE`` defaults to ``$XDG_CACHE_HOME/trustedit``, else ``~/.cache/trustedit``), which
``trustedit data fetch`` fills. A missing file is a one-line error naming the file, the folder
looked in, its dataset and the command that fetches it (see :mod:`trustedit.data.sources`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from trustedit.errors import DataError, TrusteditError

ENV_VAR = "TRUSTEDIT_DATA_DIR"


def data_dir() -> Path | None:
    """The folder named by ``$TRUSTEDIT_DATA_DIR``, or None when unset."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_dir():
        raise TrusteditError(f"${ENV_VAR}={value}: not a directory")
    return p


def default_root() -> Path:
    """The default data root, ``$TRUSTEDIT_CACHE/data`` (it may not exist yet)."""
    from trustedit.models import cache_root  # torch-free at import

    return cache_root() / "data"


def data_root(check: bool = True) -> Path:
    """``$TRUSTEDIT_DATA_DIR`` when set (``check``: it must be a directory), else :func:`default_root`."""
    value = os.environ.get(ENV_VAR)
    if value:
        return data_dir() if check else Path(value).expanduser()
    return default_root()


def root_label(relative: str = "") -> str:
    """How results name the data root: ``$TRUSTEDIT_DATA_DIR/relative``, or the default folder's path."""
    base = f"${ENV_VAR}" if os.environ.get(ENV_VAR) else str(default_root())
    return f"{base}/{relative}" if relative else base


def find(relative: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit`` if given (must exist), else ``data_root()/relative`` if it exists."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise TrusteditError(f"{p}: no such file or directory")
        return p
    p = data_root() / relative
    return p if p.exists() else None


def missing_message(relative: str) -> str:
    """One line: what is missing, where it was looked for, its dataset and how to get it."""
    from trustedit.data import sources

    ds = sources.dataset_of(relative)
    rel = str(relative).replace("\\", "/").strip("/")
    files = [f for f in ds.files if f.path == rel or f.path.startswith(rel + "/")] if ds else []
    kind = "data file" if ds is None or any(f.path == rel for f in files) else "data folder"
    value = os.environ.get(ENV_VAR)
    head = f"{kind} {relative!r} not found in " + (f"${ENV_VAR}={value}" if value else str(default_root()))
    hint = f"set ${ENV_VAR} to a folder that holds it"
    if ds is None:
        return f"{head}: {hint}"
    closed = [f for f in files or ds.files if f.origin is None]
    if closed:
        return (f"{head} (dataset {ds.name!r}, not publicly downloadable: {closed[0].reason}): {hint}, or run "
                f"'trustedit data fetch {ds.name} --mirror URL' from a mirror that serves it")
    return f"{head} (dataset {ds.name!r}): run 'trustedit data fetch {ds.name}', or {hint}"


def require(relative: str, explicit: str | os.PathLike | None = None) -> Path:
    """:func:`find`, or a TrusteditError saying which dataset to fetch."""
    p = find(relative, explicit)
    if p is None:
        raise TrusteditError(missing_message(relative))
    return p


def fingerprint(entries: Iterable[tuple[str, str]]) -> str:
    """``sha256:`` + SHA-256 over ``name\\0sha256\\n`` for each ``(name, sha256)`` in order."""
    h = hashlib.sha256()
    for name, digest in entries:
        h.update(f"{name}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, problem=f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(path, problem=f"not UTF-8 text ({e.reason})") from None
    except FileNotFoundError:
        raise DataError(path, problem="missing") from None
    except OSError as e:
        raise DataError(path, problem=f"unreadable ({e.strerror})") from None


def read_jsonl(path: Path) -> list:
    rows = []
    if not Path(path).is_file():
        raise DataError(path, problem="missing")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(path, record=i, problem=f"invalid JSON: {e.msg}") from None
    return rows


def field(path, index, record, name, kind=str):
    """``record[name]`` checked for presence and type; a DataError names file, record, field."""
    if not isinstance(record, dict):
        raise DataError(path, index, None, f"expected an object, got {type(record).__name__}")
    if name not in record:
        raise DataError(path, index, name, "missing")
    value = record[name]
    if kind is not None and not isinstance(value, kind):
        raise DataError(path, index, name, f"expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value
