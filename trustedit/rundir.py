"""Run directories written atomically: everything goes into a hidden temporary folder beside
the target, which is renamed into place only when complete. A crash leaves no folder that looks
finished (only a ``.NAME.tmp-PID-HOST-*`` folder, which the next run for the same target removes
once its creator is gone).

:func:`check_target` finds an unusable ``--out`` before any work and creates nothing;
:func:`atomic_dir` creates the missing parent folders, and removes them again if the write fails.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from trustedit.errors import UsageError


def check_target(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """``out`` as a Path, once it is known that a run directory can be written there: ``out`` is
    absent or an empty folder (or any folder, with ``overwrite``), no part of its path is a file,
    and the nearest existing folder above it is writable. Creates nothing; removes the temporary
    folders that killed runs for the same target left behind."""
    out = Path(out)
    if not out.name or out.name in (".", "..") or _holds_cwd(out):
        raise UsageError(f"--out {out}: refusing to write a run directory over the current folder or one above it")
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out}: a broken symbolic link")
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out}: is a file, not a folder (remove it or choose another --out)")
        if not overwrite and any(out.iterdir()):
            raise UsageError(f"--out {out}: already exists and is not empty (pass --overwrite to replace it)")
    parent = _nearest_existing(out.parent)
    if not parent.is_dir():
        raise UsageError(f"--out {out}: {parent} is a file, not a folder")
    remove_stale_tmp(out)
    problem = _unwritable(parent)
    if problem:
        raise UsageError(f"--out {out}: cannot write in {parent} ({problem})")
    return out


@contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder beside ``out``; on success it replaces ``out``. On any failure
    (an exception, KeyboardInterrupt) the temporary folder and the parent folders made for it
    are removed and ``out`` is untouched."""
    out = check_target(out, overwrite)
    made = _make_parents(out.parent)
    tmp = None
    try:
        tmp = make_tmp_dir(out)
        yield tmp
        _commit(tmp, out, overwrite)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in reversed(made):  # deepest last made, first removed; only while empty
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _commit(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted after."""
    old = None
    if out.is_symlink() or out.exists():
        if out.is_dir() and not out.is_symlink() and not overwrite and any(out.iterdir()):
            raise UsageError(f"--out {out}: was filled by something else during the run (pass --overwrite to replace it)")
        if not out.is_dir() and not overwrite:
            raise UsageError(f"--out {out}: a file appeared there during the run (pass --overwrite to replace it)")
        old = out.parent / f".{out.name}.old-{owner_tag()}-{os.urandom(3).hex()}"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def make_tmp_dir(out: Path) -> Path:
    """A hidden temporary folder beside ``out``, named ``.NAME.tmp-PID-HOST-XXXX`` (so that a
    later run can tell a dead run's folder), with normal permissions (mkdtemp makes 0700)."""
    try:
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{owner_tag()}-"))
    except OSError as e:
        raise UsageError(f"{out}: cannot write in {out.parent} ({e.strerror or e})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def remove_stale_tmp(out: str | os.PathLike) -> list[Path]:
    """Remove the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders beside ``out`` whose creating process,
    on this host, is no longer alive. Returns what was removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)-([0-9a-f]{{8}})(?:-|$)")
    removed = []
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return []
    for p in entries:
        m = pattern.match(p.name)
        if not m or m.group(2) != _host() or _alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def owner_tag() -> str:
    """``PID-HOST`` of this process, as temporary names carry it."""
    return f"{os.getpid()}-{_host()}"


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or an odd number): leave it alone
    return True


def _holds_cwd(out: Path) -> bool:
    try:
        here, target = Path.cwd().resolve(), out.resolve()
    except OSError:
        return False
    return target == here or target in here.parents


def _nearest_existing(folder: Path) -> Path:
    """``folder`` or its nearest ancestor that exists (a file there means a path under a file)."""
    p = Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _unwritable(folder: Path) -> str | None:
    """Why a folder cannot be written in, found by creating and removing a hidden folder there
    (permissions, read-only file systems and ACLs all show), or None."""
    try:
        probe = tempfile.mkdtemp(dir=folder, prefix=".trustedit-probe-")
    except OSError as e:
        return e.strerror or str(e)
    os.rmdir(probe)
    return None


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing ancestors; return the ones created, outermost first."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    made = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
    except OSError as e:
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                break
        raise UsageError(f"cannot create {folder} ({e.strerror or e})") from None
    return made


def _finite(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def atomic_file(path: Path, write) -> None:
    """``write(tmp_path)`` beside ``path``, then rename into place (a crash leaves no half-written
    ``path``, and the temporary file is removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_finite(obj), indent=1, default=str, allow_nan=False) + "\n", encoding="utf-8")


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_finite(r), default=str, ensure_ascii=False) + "\n")
