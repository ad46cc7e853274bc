"""Seconds per edit of the request editors on the embedded model (the speed tables of RESULTS §17, §18).

    python -m trustedit.benchmarks.editor_timing --method rome --edits 20 [--json out.json]
    python -m trustedit.benchmarks.editor_timing --method memit --edits 200 --batch 100

Algorithm only: the model is loaded before the clock starts; the one-off key statistics (C on
WikiText-2) are timed separately, computed into a fresh cache folder so that they are measured,
not read (MEND's trained editor and SERAC's trained scope threshold are read from the cache: their
training is timed by ``mend_training`` and recorded in the manifest). Each fit edits ``--batch`` requests (1: the single-edit protocol; MEMIT and AlphaEdit
report seconds per 100-edit batch) of the first ``--edits`` ZsRE test records of KnowEdit; the
model is left unedited after each fit. Reports the median, min and max seconds per fit, how many
edits the editor reports converged, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time

from trustedit.benchmarks import emit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", choices=["rome", "memit", "alphaedit", "ft-m", "ft-l", "kn", "serac", "ike", "grace",
                                         "mend", "lora", "adalora"], default="rome")
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--batch", type=int, default=1, help="requests per fit (MEMIT / AlphaEdit: 100)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="method option key=value")
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import torch

    from trustedit.data.paths import require
    from trustedit.methods.requests import EditRequest, RequestBatch
    from trustedit.models import load_model
    from trustedit.registry import get_method

    m = get_method(a.method)
    cfg = m.config.resolve(None, a.sets)
    lm = load_model(a.model)
    recs = json.loads(require("knowedit/ZsRE/ZsRE-test-all.json").read_text())[: a.edits]
    reqs = [EditRequest(r["prompt"], r["subject"], r["target_new"], id=str(i)) for i, r in enumerate(recs)]
    layers = _stats_layers(lm, a.method, cfg)
    if layers:  # key statistics measured, not read; a trained editor (MEND) or a trained scope (SERAC) is read
        os.environ["TRUSTEDIT_CACHE"] = tempfile.mkdtemp(prefix="trustedit-timing-")
    stats_s = None
    if layers:
        from trustedit.methods.key_stats import key_second_moments

        t0 = time.time()
        key_second_moments(lm, layers, cfg.stats_tokens)
        stats_s = round(time.time() - t0, 1)
    secs, conv, probs = [], 0, []
    state: dict = {}  # AlphaEdit keeps its projectors and edited keys across the batches, as in sequential editing
    for b in range(0, len(reqs), a.batch):
        chunk = RequestBatch(reqs[b:b + a.batch], state)
        t1 = time.time()
        patch = m.fit(lm, chunk, cfg)
        secs.append(time.time() - t1)
        for rec in patch.manifest["training"].get("per_request", []):
            conv += bool(rec.get("converged"))
            if rec.get("target_prob") is not None:
                probs.append(rec["target_prob"])
    unit = "edit" if a.batch == 1 else f"{a.batch}-edit batch"
    out = {"method": a.method, "model": lm.spec, "edits": len(reqs), "per": unit, "config": a.sets,
           "stats_layers": layers, "torch_threads": torch.get_num_threads(),
           "stats_seconds": stats_s, "median_s": round(statistics.median(secs), 2),
           "min_s": round(min(secs), 2), "max_s": round(max(secs), 2), "fits": len(secs), "converged": conv,
           "median_target_prob": round(statistics.median(probs), 3) if probs else None,
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    emit(out, a.json)
    return 0


def _stats_layers(lm, method: str, cfg) -> list[int]:
    """The layers whose key statistics C the method reads (timed once, before the edits)."""
    from trustedit import arch
    from trustedit.methods.base import layer_index

    n = arch.num_layers(lm.model)
    if method == "rome":
        return [layer_index(cfg.layer, n)] if cfg.use_c and cfg.layer != "auto" else []
    if method in ("memit", "alphaedit"):
        from trustedit.methods.memit import layer_list

        return layer_list(cfg, n)
    return []


if __name__ == "__main__":
    raise SystemExit(main())
