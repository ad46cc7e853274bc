"""Time ProFS stage by stage on the embedded model, with peak memory per stage.

    python -m trustedit.benchmarks.profs_timing [--set key=value ...] [--json OUT]

Data come from $TRUSTEDIT_DATA_DIR (``paradetox/paradetox.tsv``), as for `trustedit detox --method profs`.

Stages: model load; the ParaDetox pairs; the embedding passes (toxic side, non-toxic side: one
forward pass each, every edited layer recorded at once); per layer the centring, SVD and projection.
Prints a Markdown table of seconds and peak resident memory per stage, and the fit time (the
target: at most 60 s on the 2-core CPU), ready for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import time

from trustedit.benchmarks.erase_timing import forward_throughput, machine


def main(argv=None):
    ap = argparse.ArgumentParser(description="time ProFS stage by stage")
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="a ProFSConfig option")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from trustedit.models import load_model
    from trustedit.profiling import Stages
    from trustedit.safety import profs

    cfg = profs.ProFSConfig.resolve(None, list(args.sets))
    st = Stages()
    with st("load_model"):
        lm = load_model(args.model, args.device, "auto")
    t0 = time.perf_counter()
    with st("fit"):
        patch = profs.fit(lm, None, cfg, stages=st)
    fit_s = time.perf_counter() - t0
    tps = forward_throughput(lm)
    tr = patch.manifest["training"]
    figures = {"machine": machine(), "model": lm.spec, "config": cfg.to_dict(), "layers": tr["layers"],
               "rank": tr["rank"], "pairs": tr["data"]["pairs"], "seconds": st.seconds, "peak_rss_mb": st.peak_rss_mb,
               "fit_s": round(fit_s, 1), "forward_tokens_per_s": round(tps),
               "energy_share": {L: r["energy_share"] for L, r in tr["per_layer"].items()},
               "tokens": {L: r["tokens"] for L, r in tr["per_layer"].items()}}
    print(f"machine: {figures['machine']}; forward throughput {tps:.0f} tokens/s (16 x 64 batch, fp32)")
    print(f"model {lm.spec}; layers {tr['layers'][0]}-{tr['layers'][-1]}, k {tr['rank']}, {tr['data']['pairs']} pairs, "
          f"centring {'on' if tr['centre'] else 'off'}\n")
    print("| stage | seconds | peak RSS (MiB) |")
    print("|---|---|---|")
    for name, s in st.seconds.items():
        print(f"| {name} | {s:.1f} | {st.peak_rss_mb.get(name, '–')} |")
    print(f"\nfit (pairs + embeddings + projections): {fit_s:.1f} s (target <= 60 s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
