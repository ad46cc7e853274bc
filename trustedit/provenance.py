"""What produced a result: library versions, time, command line."""

from __future__ import annotations

import functools
import platform
import sys
import time


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("trustedit", "torch", "transformers", "peft", "safetensors", "numpy", "gguf", "tqdm"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            from trustedit import __version__

            out[dist] = __version__ if dist == "trustedit" else None
    out["trustedit_git"] = git_revision()
    return out


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of the trustedit source in use (``<sha>``, or ``<sha>+dirty`` with
    uncommitted changes to tracked files), or None when it does not run from a git checkout (an
    installed wheel) or git is absent. Read once per process."""
    import subprocess
    from pathlib import Path

    from trustedit.evalcache import git_revision as head

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    sha = head(root)
    if not sha:
        return None
    try:
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return sha + ("+dirty" if dirty else "")


def stamp() -> dict:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(sys.argv), "versions": versions()}


def results_header(task: str, suite: str | None, lm, method=None, cfg=None) -> dict:
    """The fields every results.json starts with: version, task, suite, time, command line,
    library versions, model, and the method with its resolved config (None for ``eval``)."""
    from trustedit import __version__

    prov = stamp()
    return {
        "trustedit_version": __version__, "task": task, **({"suite": suite} if suite else {}),
        "created": prov["created"], "argv": prov["argv"], "versions": prov["versions"], "model": lm.describe(),
        "method": ({"name": method.name, "citation": method.citation, "summary": method.summary,
                    "config": cfg.to_dict()} if method is not None else None),
    }


def timing_fields(timer) -> dict:
    """``timings_s`` and ``peak_memory_mb`` of a :class:`trustedit.profiling.Stages`."""
    t = timer.to_dict()
    return {"timings_s": t["seconds"], "peak_memory_mb": {k: v for k, v in t.items() if k.startswith("peak")}}


def patch_manifest(lm, cfg, stamped: dict, metrics: dict | None = None, **extra) -> dict:
    """The provenance every saved patch carries: base model, resolved config, library versions and
    time (from ``stamped``: a results header or :func:`stamp`), the pre/post value of each metric of
    a ``compare`` table, and ``extra`` fields."""
    out = {"base_model": {"fingerprint": lm.fingerprint, "spec": lm.spec, "model_type": lm.model_type},
           "config": cfg.to_dict(), **extra}
    if metrics is not None:
        out["metrics"] = {k: {"pre": v["pre"]["value"], "post": v["post"]["value"]} for k, v in metrics.items()}
    out.update(versions=stamped["versions"], created=stamped["created"])
    return out
