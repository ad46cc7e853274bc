"""Seconds per edit of the locate-then-edit editors on the embedded model (issue 14's speed table).

    python -m trustedit.benchmarks.editor_timing --method rome --edits 20 [--json out.json]

Algorithm only: the model is loaded before the clock starts; the one-off key statistics (C on
WikiText-2) are timed separately, computed into a fresh cache folder so that they are measured,
not read. Each edit is one ``fit`` of one request (single-edit protocol: the patch is applied,
the target probability read, then reverted), on the first ``--edits`` ZsRE test records of
KnowEdit. Reports the median, min and max seconds per edit, how many converged, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["rome"], default="rome")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch

    from trustedit.data.paths import require
    from trustedit.methods.key_stats import key_second_moments
    from trustedit.methods.requests import EditRequest
    from trustedit.methods.rome import ROMEConfig, fit
    from trustedit.models import load_model

    os.environ["TRUSTEDIT_CACHE"] = tempfile.mkdtemp(prefix="trustedit-timing-")  # statistics measured, not read
    lm = load_model(a.model)
    recs = json.loads(require("knowedit/ZsRE/ZsRE-test-all.json").read_text())[: a.edits]
    reqs = [EditRequest(r["prompt"], r["subject"], r["target_new"], id=str(i)) for i, r in enumerate(recs)]
    cfg = ROMEConfig()
    from trustedit import arch
    from trustedit.methods.base import layer_index

    L = layer_index(cfg.layer, arch.num_layers(lm.model))
    t0 = time.time()
    key_second_moments(lm, [L], cfg.stats_tokens)
    stats_s = time.time() - t0
    secs, conv, probs = [], 0, []
    for r in reqs:
        t1 = time.time()
        patch = fit(lm, [r], cfg)
        secs.append(time.time() - t1)
        rec = patch.manifest["training"]["per_request"][0]
        conv += rec["converged"]
        probs.append(rec["target_prob"])
    out = {"method": a.method, "model": lm.spec, "edits": len(reqs),
           "layer": L, "torch_threads": torch.get_num_threads(), "stats_tokens": cfg.stats_tokens,
           "stats_seconds": round(stats_s, 1), "median_s": round(statistics.median(secs), 2),
           "min_s": round(min(secs), 2), "max_s": round(max(secs), 2), "converged": conv,
           "median_target_prob": round(statistics.median(probs), 3),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
