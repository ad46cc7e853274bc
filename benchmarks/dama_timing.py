"""Time DAMA stage by stage on the embedded model, with peak memory per stage.

    python -m trustedit.benchmarks.dama_timing [--set key=value ...] [--no-replay] [--json OUT]

Data come from $TRUSTEDIT_DATA_DIR (``dama/train_dama.json``), as for `trustedit debias`.

Stages: model load; context prefixes; value vectors (hidden states, then the Adam steps); per
edited layer the statistics pass and the PLS + projection. Prints a Markdown table of seconds
and peak resident memory (peak CUDA memory on a GPU) per stage, and the total of the default
debias job without evaluation (load + fit), ready for ``benchmarks/RESULTS.md``.
``--no-replay`` runs every statistics pass through the whole model (``replay_lower_layers=false``)
to show what the replay saves.
"""

from __future__ import annotations

import argparse
import json
import time

from trustedit.benchmarks.erase_timing import forward_throughput, machine


def main(argv=None):
    ap = argparse.ArgumentParser(description="time DAMA stage by stage")
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a DAMAConfig option")
    ap.add_argument("--no-replay", action="store_true", help="full forward passes for every layer's statistics")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from trustedit.bias import dama
    from trustedit.models import load_model
    from trustedit.profiling import Stages

    sets = list(args.sets) + (["replay_lower_layers=false"] if args.no_replay else [])
    cfg = dama.DAMAConfig.resolve(None, sets)
    st = Stages()
    t0 = time.perf_counter()
    with st("load_model"):
        lm = load_model(args.model, args.device, "auto")
    with st("fit"):
        patch = dama.fit(lm, None, cfg, stages=st)
    total = time.perf_counter() - t0
    tps = forward_throughput(lm)
    tr = patch.manifest["training"]
    figures = {"machine": machine(), "model": lm.spec, "config": cfg.to_dict(), "layers": tr["layers"],
               "components": tr["components"], "prompts": tr["prompts"], "contexts": len(tr["contexts"]),
               "seconds": st.seconds, "peak_rss_mb": st.peak_rss_mb, "peak_cuda_mb": st.peak_cuda_mb,
               "load_plus_fit_s": round(total, 1), "forward_tokens_per_s": round(tps)}
    print(f"machine: {figures['machine']}; forward throughput {tps:.0f} tokens/s (16 x 64 batch, fp32)")
    print(f"model {lm.spec}; layers {tr['layers'][0]}-{tr['layers'][-1]}, d_c {tr['components']}, "
          f"{tr['prompts']} prompts x {len(tr['contexts'])} contexts; replay {'off' if args.no_replay else 'on'}\n")
    cuda = bool(st.peak_cuda_mb)
    print("| stage | seconds | peak RSS (MiB) |" + (" peak CUDA (MiB) |" if cuda else ""))
    print("|---|---|---|" + ("---|" if cuda else ""))
    for name, s in st.seconds.items():
        row = f"| {name} | {s:.1f} | {st.peak_rss_mb.get(name, '–')} |"
        print(row + (f" {st.peak_cuda_mb.get(name, '–')} |" if cuda else ""))
    stats = sum(v for k, v in st.seconds.items() if k.startswith("dama/statistics/"))
    pls = sum(v for k, v in st.seconds.items() if k.startswith("dama/pls/"))
    print(f"\nstatistics, all layers: {stats:.1f} s; PLS + projection, all layers: {pls:.1f} s")
    print(f"load + fit (the debias job without evaluation): {total:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
