"""Time the main job stage by stage (load, pre-eval, edit, post-eval) with peak memory, and the
machine's forward throughput measured in the same process.

    python -m trustedit.benchmarks.erase_timing [--cold] [erase options...]

Data come from $TRUSTEDIT_DATA_DIR, as for `trustedit erase`.

Runs ``trustedit erase`` in this process (default options unless given) through the job skeleton
and prints a Markdown table of seconds and peak resident memory per stage, plus the machine and its
forward throughput (SmolLM2-135M, fp32, a 16 x 64 batch: the number that makes timings from
different machines comparable), ready for ``benchmarks/RESULTS.md``. The model-load stage includes
the one-time GGUF conversion when the cache is cold (``--cold`` empties the conversion cache).
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


def forward_throughput(lm, batch: int = 16, length: int = 64, repeats: int = 5) -> float:
    """Tokens per second of plain forward passes over a ``batch x length`` batch of token ids
    (fp32 as loaded, no KV cache), the median of ``repeats`` after one warm-up."""
    import statistics
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.model.config.vocab_size, (batch, length), generator=g).to(lm.device)
    sync = torch.cuda.synchronize if str(lm.device).startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            sync()
            t = time.perf_counter()
            lm.model(input_ids=ids, use_cache=False)
            sync()
            if i:
                times.append(time.perf_counter() - t)
    return batch * length / statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description="time trustedit erase stage by stage")
    ap.add_argument("--cold", action="store_true", help="delete the GGUF conversion cache first")
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one, deleted)")
    args, rest = ap.parse_known_args(argv)
    if args.cold:
        from trustedit.models import cache_root

        shutil.rmtree(cache_root() / "converted", ignore_errors=True)
    from trustedit.cli import _parser, job_plan
    from trustedit.job import run

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.mkdtemp()
        out = os.path.join(tmp, "run")
    p = job_plan(_parser().parse_args(["erase", "--out", out, "--overwrite", *rest]))
    r = run(p)
    from trustedit.models import load_model

    lm = load_model(p.opts.model, p.opts.device, p.opts.dtype)
    tps = forward_throughput(lm)
    t, mem = r["timings_s"], r["peak_memory_mb"].get("peak_rss_mb", {})
    san = r["suites"].get("sanitation", {}).get("dataset", {})
    print(f"machine: {machine()}; forward throughput {tps:.0f} tokens/s (16 x 64 batch, {lm.dtype} on {lm.device})")
    print(f"command: trustedit erase {' '.join(rest) or '(defaults)'} (method {r['method']['name']}, "
          f"{san.get('counts')}, known_only={bool(r['suites'].get('sanitation', {}).get('known_only'))})\n")
    print("| stage | seconds | peak RSS (MiB) |\n|---|---|---|")
    for k, v in t.items():
        if k != "total":
            print(f"| {k} | {v:.1f} | {mem.get(k, '')} |")
    print(f"| **total** | **{t['total']:.1f}** | {max(mem.values()) if mem else ''} |")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
