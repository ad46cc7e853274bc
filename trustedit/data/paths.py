"""Where data files come from: an explicit path, then ``$TRUSTEDIT_DATA_DIR``."""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def find(relative: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """``explicit`` if given (must exist), else ``$TRUSTEDIT_DATA_DIR/relative`` if it exists."""
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise TrusteditError(f"{p}: no such file or directory")
        return p
    root = data_dir()
    if root is not None and (root / relative).exists():
        return root / relative
    return None


def require(relative: str, explicit: str | os.PathLike | None = None) -> Path:
    p = find(relative, explicit)
    if p is None:
        raise TrusteditError(
            f"data file {relative!r} not found: pass --data PATH or set ${ENV_VAR} to the folder that holds it"
        )
    return p


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
