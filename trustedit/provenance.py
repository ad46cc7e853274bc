"""What produced a result: library versions, time, command line."""

from __future__ import annotations

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
    return out


def stamp() -> dict:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(sys.argv), "versions": versions()}
