"""DEPN detection cost: integrated gradients for N secrets of a `trustedit memorize` model.

    python -m trustedit.benchmarks.depn_timing --model runs/e13/memorized --items 50 [--per-layer-items 2]

Reports seconds for the whole detection, per item and per item-layer, the peak resident memory of
the process (ru_maxrss), and, on ``--per-layer-items`` items, the cost of the paper's path (one
layer at a time, 1 x L passes instead of one) for comparison. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--per-layer-items", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    import torch

    from trustedit.data.privacy import secret_tokens
    from trustedit.models import load_model
    from trustedit.privacy.depn import DEPNConfig, attributions, select
    from trustedit.suites.base import LoadContext
    from trustedit.suites.privacy import PrivacyOptions, load_secrets

    secrets, *_ = load_secrets(PrivacyOptions(), LoadContext(model=a.model))
    lm = load_model(a.model)
    items = [secret_tokens(lm.tokenizer, s) for s in secrets][: a.items]
    L = len(lm.model.model.layers)
    layers = list(range(L))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    attrs = [attributions(lm, it, layers, a.steps)[0] for it in items]
    detect = time.perf_counter() - t0
    t1 = time.perf_counter()
    chosen, used = select(attrs, 0.1, 0.5, DEPNConfig().neurons)
    sel = time.perf_counter() - t1
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per_layer = None
    if a.per_layer_items:
        t2 = time.perf_counter()
        for it in items[: a.per_layer_items]:
            for l in layers:
                attributions(lm, it, [l], a.steps)
        per_layer = (time.perf_counter() - t2) / a.per_layer_items
    tokens = sum(len(it.secret_ids) for it in items)
    out = {"model": a.model, "items": len(items), "layers": L, "steps": a.steps, "target_positions": tokens,
           "threads": torch.get_num_threads(), "detect_s": round(detect, 2), "per_item_s": round(detect / len(items), 3),
           "per_item_layer_ms": round(1000 * detect / len(items) / L, 2), "select_s": round(sel, 3),
           "peak_rss_mib": round(rss1 / 1024, 1), "rss_before_mib": round(rss0 / 1024, 1),
           "per_layer_path_per_item_s": None if per_layer is None else round(per_layer, 2),
           "speedup_vs_per_layer": None if per_layer is None else round(per_layer / (detect / len(items)), 1)}
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
