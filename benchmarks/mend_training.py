"""MEND's editor training and editing speed on the embedded model (SmolLM2-135M-Instruct, CPU).

    python -m benchmarks.mend_training [--force] [--edits 20] [--json out.json] [--set key=value ...]

Trains the editor on CounterFact's train split (or reuses the cached one in
``cache_root()/mend``; ``--force`` retrains and replaces it), then edits the first ``--edits`` ZsRE
test requests one fit each (the single-edit protocol; the cached editor is loaded by every fit, as
a job would). Prints and writes (``--json``) a small JSON object: training steps, seconds in all
and per step, the first and final edit NLL and locality KL (means over a window of steps), the
seconds per edit (median over the fits; ``edit_seconds``: the edit alone, ``fit_seconds``: with
loading the editor), how many edits put every target token at the argmax, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="retrain the editor even when it is cached")
    ap.add_argument("--edits", type=int, default=20, help="ZsRE test requests edited (one fit each)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="MEND option key=value")
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    import torch

    from trustedit.data.knowedit import load
    from trustedit.methods import mend
    from trustedit.methods.requests import EditRequest
    from trustedit.models import load_model

    cfg = mend.MENDConfig.resolve(None, a.sets)
    lm = load_model(a.model)
    site_list = mend.sites(lm.model, cfg)
    cases, fp = mend.default_train_data(cfg)
    key = mend.cache_key(lm, cfg, site_list, fp)
    t0 = time.time()
    got = None if a.force else mend.load_editor(lm, cfg, site_list, key)
    if got is None:
        es, record = mend.train_editor(lm, cfg, cases)
        record.update(data=fp, model=lm.fingerprint)
        mend.save_editor(es, record, key)
        trained = True
    else:
        es, record = got
        trained = False
    train_wall = time.time() - t0

    zs = load("zsre", limit=max(a.edits * 2, a.edits + 10)).cases
    reqs = [EditRequest(c.prompt, c.subject, c.target_new, id=c.id) for c in zs if c.subject in c.prompt][: a.edits]
    fit_s, edit_s, per = [], [], []
    for r in reqs:
        t1 = time.time()
        patch = mend.fit(lm, [r], cfg)
        fit_s.append(time.time() - t1)
        rec = patch.manifest["training"]["per_request"][0]
        edit_s.append(rec["seconds"])
        per.append({k: rec[k] for k in ("id", "nll_before", "nll_after", "target_prob", "argmax_match")})
    out = {
        "model": lm.fingerprint, "editor_file": str(mend.cache_paths(key)[0]), "trained_now": trained,
        "threads": torch.get_num_threads(),
        "steps": record["steps"], "train_seconds": record["seconds"], "seconds_per_step": record["seconds_per_step"],
        "train_wall_seconds_this_run": round(train_wall, 2),
        "first_losses": record["first"], "final_losses": record["final"], "alpha": record["alpha"],
        "edits": len(reqs),
        "edit_seconds_median": round(statistics.median(edit_s), 3) if edit_s else None,
        "fit_seconds_median": round(statistics.median(fit_s), 3) if fit_s else None,
        "argmax_success": sum(p["argmax_match"] for p in per),
        "mean_nll_before": round(statistics.mean(p["nll_before"] for p in per), 3) if per else None,
        "mean_nll_after": round(statistics.mean(p["nll_after"] for p in per), 3) if per else None,
        "per_edit": per,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
