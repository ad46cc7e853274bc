"""Download, verify and list the datasets of :mod:`trustedit.data.sources` (``trustedit data``).

* :func:`status`: per dataset, its source, licence, local folder, which files are missing and its
  fingerprint (from the recorded SHA-256 s; nothing is hashed: use :func:`check` for that).
* :func:`fetch`: downloads each missing file into a hidden temporary file beside the target
  (``.NAME.XXXX.part``), verifies the SHA-256 (of the upstream file, then of the transform's output
  for a derived file) and only then renames it into place. A refused or interrupted download leaves
  neither the target nor the temporary file, so a re-run fetches it again. Files already present
  with the recorded SHA-256 are skipped; a present file with another SHA-256 is never overwritten.
  ``mirror`` (or ``$TRUSTEDIT_DATA_MIRROR``) is a data root served over HTTP (or ``file://``):
  every file then comes from ``{mirror}/{path}`` as it lies there (no transform), verified the same way.
* :func:`check`: hashes every present file and reports ok / missing / mismatch.

Downloads use urllib (no extra dependency) with a tqdm progress bar on stderr, which honours
``TQDM_DISABLE`` itself. Nothing touches the network at import.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from trustedit.data import paths, sources
from trustedit.data.sources import Dataset, File
from trustedit.errors import TrusteditError, UsageError

MIRROR_ENV = "TRUSTEDIT_DATA_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60.0


class FetchError(TrusteditError):
    """A file could not be fetched (download failed or refused); one line naming the file.
    Raised by :func:`fetch` after every file was tried, with ``results`` (one dict per file)."""

    results: list = []


def sha256_file(path: Path) -> str:
    from trustedit.models import sha256_file as _sha  # torch-free at import

    return _sha(path)


def fingerprint(ds: Dataset) -> str:
    """The dataset's fingerprint: :func:`paths.fingerprint` over each file's path inside the
    dataset folder and its recorded SHA-256 (table order), as the loaders' ``files_fingerprint``."""
    return paths.fingerprint((f.path[len(ds.folder) + 1:], f.sha256) for f in ds.files)


def _root(root) -> Path:
    return Path(root).expanduser() if root is not None else paths.data_root(check=False)


def status(names=None, root=None) -> list[dict]:
    """One dict per dataset (``names``, default all): name, description, license, citation, source,
    folder (local path), present (every file there), missing (paths relative to the root), files,
    bytes, fingerprint, derived (files rebuilt by a transform), not_fetchable (reason, or None)."""
    base = _root(root)
    out = []
    for ds in sources.select(names):
        closed = [f for f in ds.files if f.origin is None]
        missing = [f.path for f in ds.files if not (base / f.path).is_file()]
        out.append({
            "name": ds.name, "description": ds.description, "license": ds.license, "citation": ds.citation,
            "source": ds.source, "folder": str(base / ds.folder), "present": not missing, "missing": missing,
            "files": len(ds.files), "bytes": sum(f.size for f in ds.files), "fingerprint": fingerprint(ds),
            "derived": [f.path for f in ds.files if f.derived],
            "not_fetchable": f"{closed[0].path}: {closed[0].reason}" if closed else None,
        })
    return out


def check(names=None, root=None) -> list[dict]:
    """One dict per file: dataset, file (relative path), status (``ok``, ``missing`` or
    ``mismatch``), expected and actual SHA-256 (actual None when missing)."""
    base = _root(root)
    out = []
    for ds in sources.select(names):
        for f in ds.files:
            p = base / f.path
            actual = sha256_file(p) if p.is_file() else None
            state = "missing" if actual is None else "ok" if actual == f.sha256 else "mismatch"
            out.append({"dataset": ds.name, "file": f.path, "status": state, "expected": f.sha256, "actual": actual})
    return out


# ---------------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------------


def _mirror(mirror: str | None) -> str | None:
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if not mirror:
        return None
    if not mirror.startswith(("http://", "https://", "file://")):
        raise UsageError(f"mirror {mirror!r}: expected an http://, https:// or file:// URL")
    return mirror.rstrip("/")


def _why(e: BaseException, timeout: float) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)) or "timed out" in str(e):
        return f"timed out after {timeout:g} s"
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return _why(e.reason, timeout) if isinstance(e.reason, BaseException) else str(e.reason)
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _download(url: str, out, label: str, timeout: float) -> str:
    """Stream ``url`` into the open binary file ``out``; return the SHA-256 of the body. A short
    body (fewer bytes than Content-Length), a dropped connection or a timeout is a FetchError."""
    from tqdm import tqdm

    from trustedit import __version__

    h, n, total = hashlib.sha256(), 0, None
    request = urllib.request.Request(url, headers={"User-Agent": f"trustedit/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            length = r.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=False) as bar:
                while block := r.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    n += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise FetchError(f"{label}: HTTP {e.code} {e.reason} from {url}") from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timeout, IncompleteRead
        raise FetchError(f"{label}: download from {url} failed ({_why(e, timeout)}); nothing written") from None
    if total is not None and n != total:
        raise FetchError(f"{label}: download from {url} interrupted after {n} of {total} bytes; nothing written")
    return h.hexdigest()


def _missing_dirs(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, innermost first."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def _fetch_file(f: File, target: Path, url: str, transform: tuple, upstream_sha256: str | None,
                timeout: float) -> None:
    """Download ``url`` to a temporary file beside ``target``, check it (and rebuild it with
    ``transform``), rename it into place. On any failure nothing new is left behind."""
    from trustedit.data import transforms

    made = _missing_dirs(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    done = False
    try:
        with os.fdopen(fd, "wb") as out:
            digest = _download(url, out, f.path, timeout)
        if transform:
            if upstream_sha256 and digest != upstream_sha256:
                raise FetchError(f"{f.path}: upstream file {url} has sha256 {digest}, expected {upstream_sha256} "
                                 "(it changed upstream); refused, nothing written")
            try:
                data = transforms.apply(transform, Path(tmp).read_bytes())
            except transforms.TransformError as e:
                raise FetchError(f"{f.path}: cannot rebuild from {url}: {e}; nothing written") from None
            with open(tmp, "wb") as out:
                out.write(data)
            digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
            raise FetchError(f"{f.path}: sha256 mismatch: expected {f.sha256}, got {digest} (from {url}); "
                             "refused, nothing written")
        with open(tmp, "rb+") as out:
            os.fsync(out.fileno())
        os.replace(tmp, target)
        done = True
    finally:
        if not done:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            for d in made:  # folders this call created, if still empty
                try:
                    d.rmdir()
                except OSError:
                    break


def fetch(names=None, to=None, mirror: str | None = None, timeout: float = TIMEOUT_S,
          report: Callable[[dict], None] | None = None) -> list[dict]:
    """Fetch the datasets ``names`` (default: all) into ``to`` (default: the data root, created if
    needed). Returns one dict per file: dataset, file, status (``present``: already there and
    verified; ``fetched``; ``not fetchable``: no public origin and no mirror; ``failed``), url,
    and error (the one-line reason). ``report`` is called with each dict as it is done.

    Every file is tried; then a FetchError names the first failure (and how many failed), and a
    UsageError says so when a dataset named explicitly cannot be fetched at all."""
    mirror = _mirror(mirror)
    base = Path(to).expanduser() if to is not None else paths.data_root(check=False)
    if base.exists() and not base.is_dir():
        raise UsageError(f"{base}: not a directory")
    results = []
    for ds in sources.select(names):
        for f in ds.files:
            target = base / f.path
            row = {"dataset": ds.name, "file": f.path, "status": None, "url": None, "error": None}
            if target.is_file():
                actual = sha256_file(target)
                row["status"] = "present" if actual == f.sha256 else "failed"
                if actual != f.sha256:
                    row["error"] = (f"{f.path}: already in {base} with sha256 {actual}, expected {f.sha256}; "
                                    "not replaced (move it away, then fetch again)")
            elif mirror is None and f.origin is None:
                row["status"], row["error"] = "not fetchable", f"{f.path}: no public source: {f.reason}"
            else:
                if mirror is not None:
                    url, transform, upstream = f"{mirror}/{quote(f.path)}", (), None
                else:
                    url, transform, upstream = f.origin.url, f.transform, f.upstream_sha256
                row["url"] = url
                try:
                    _fetch_file(f, target, url, transform, upstream, timeout)
                    row["status"] = "fetched"
                except FetchError as e:
                    row["status"], row["error"] = "failed", str(e)
            results.append(row)
            if report is not None:
                report(row)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        more = f" ({len(failed)} of {len(results)} files failed)" if len(failed) > 1 else ""
        err = FetchError(failed[0]["error"] + more)
        err.results = results
        raise err
    closed = [r for r in results if r["status"] == "not fetchable"]
    if closed and names:
        raise UsageError(f"{closed[0]['error']}; pass --mirror URL to fetch it from a data mirror")
    return results
