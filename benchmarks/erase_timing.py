"""Time the main job stage by stage (load, pre-eval, edit, post-eval) with peak memory.

    python -m trustedit.benchmarks.erase_timing [--method ft-m] [erase options...]

Data come from $TRUSTEDIT_DATA_DIR, as for `trustedit erase`.

Runs ``trustedit erase`` in this process (default options unless given) and prints a Markdown
table of seconds and peak resident memory per stage, plus the machine, ready for
``benchmarks/RESULTS.md``. The model-load stage includes the one-time GGUF conversion when the
cache is cold (``--cold`` empties the conversion cache first).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile


def machine() -> str:
    import torch

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="time trustedit erase stage by stage")
    ap.add_argument("--cold", action="store_true", help="delete the GGUF conversion cache first")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one, deleted)")
    args, rest = ap.parse_known_args(argv)
    if args.cold:
        from trustedit.models import cache_root

        shutil.rmtree(cache_root() / "converted", ignore_errors=True)
    from trustedit.cli import _parser, erase_options
    from trustedit.erase import run

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp()
        out = os.path.join(tmp, "run")
    opts = erase_options(_parser().parse_args(["erase", "--out", out, "--overwrite", *rest]))
    r = run(opts)
    t, mem = r["timings_s"], r["peak_memory_mb"].get("peak_rss_mb", {})
    print(f"machine: {machine()}")
    print(f"command: trustedit erase {' '.join(rest) or '(defaults)'} (method {r['method']['name']}, "
          f"{r['dataset']['counts']}, known_only={bool(r['dataset']['known_only'])})\n")
    print("| stage | seconds | peak RSS (MiB) |\n|---|---|---|")
    for k, v in t.items():
        if k != "total":
            print(f"| {k} | {v:.1f} | {mem.get(k, '')} |")
    print(f"| **total** | **{t['total']:.1f}** | {max(mem.values()) if mem else ''} |")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
