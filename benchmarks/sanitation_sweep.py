"""Trade-off sweep for the erase job: one base evaluation, then one edit per configuration.

    python -m trustedit.benchmarks.sanitation_sweep --out benchmarks/sweep.jsonl \
        --config "method=sanitation-lora epochs=2" --config "method=ft-m epochs=4" [--known-only]

Each configuration is fitted on the base weights, applied, evaluated with the same metric code as
``trustedit erase``, and reverted (bit-exact) before the next. One JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", required=True, help='"method=NAME key=value ..."')
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=None)
    ap.add_argument("--known-only", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--test-retain-limit", type=int, default=None, help="evaluate on the first N retain test questions")
    ap.add_argument("--retention", default="wikitext", help="retention tasks, comma-separated ('none' to skip)")
    ap.add_argument("--retention-limit", type=int, default=40)
    args = ap.parse_args(argv)

    from trustedit.data.sanitation import load
    from trustedit.erase import EraseOptions, _subset, known_filter, prepare, retention
    from trustedit.metrics.scores import compare
    from trustedit.models import load_model
    from trustedit.registry import get_method

    ret = [] if args.retention in ("", "none") else args.retention.split(",")
    opts = EraseOptions(retention=ret, retention_limit=args.retention_limit, limit=args.limit)
    data = load(args.data, hub=False)
    if args.limit:
        for s in ("train_forget", "train_retain", "test_forget", "test_retain"):
            setattr(data, s, getattr(data, s)[: args.limit])
    if args.test_retain_limit:
        data.test_retain = data.test_retain[: args.test_retain_limit]
    lm = load_model(args.model)
    t = time.time()
    ep = prepare(lm, data, opts)
    t_eval = time.time() - t
    if args.known_only:
        ep, _ = ep.known()
    pre_scores = ep.scores(opts)
    pre_ret = retention(lm, opts)
    print(f"base eval {t_eval:.0f}s; test forget {len(ep.test_f)}, retain {len(ep.test_r)}", flush=True)
    for spec in args.config:
        kv = dict(x.split("=", 1) for x in spec.split())
        method = get_method(kv.pop("method"))
        cfg = method.config.resolve(sets=[f"{k}={v}" for k, v in kv.items()])
        t = time.time()
        patch = method.fit(lm, ep.train_f, ep.train_r, cfg)
        t_fit = time.time() - t
        patch.apply(lm.model)
        t = time.time()
        post = ep.measure(lm, opts)
        post_scores = ep.scores(opts, post)
        post_ret = retention(lm, opts)
        t_post = time.time() - t
        patch.revert(lm.model)
        known = {}
        if not args.known_only:  # the same run, restricted to what the base model knew
            kf, kr = known_filter(ep.data, ep.pre)
            kep = ep.restrict(kf, kr)
            a, b = kep.scores(opts), kep.scores(opts, _subset(post, kf, kr))
            known = {"n_forget": len(kf), "n_retain": len(kr),
                     "metrics": {k: {"pre": a[k].value, "post": b[k].value} for k in a}}
        metrics = {**{k: compare(pre_scores[k], post_scores[k]) for k in pre_scores},
                   **{k: compare(pre_ret[k], post_ret[k]) for k in pre_ret}}
        row = {"config": spec, "known_only": args.known_only, "n_forget": len(ep.test_f), "n_retain": len(ep.test_r),
               "fit_s": round(t_fit, 1), "post_eval_s": round(t_post, 1), "training": patch.manifest.get("training"),
               "metrics": {k: {"pre": v["pre"]["value"], "post": v["post"]["value"], "delta_ci95": v["delta"]["ci95"]}
                           for k, v in metrics.items()},
               "known_subset": known}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        m = row["metrics"]
        print(f"{spec}: K_S {m['K_S_idk_rate']['post']:.3f} over-refusal {m['over_refusal_rate']['post']:.3f} "
              f"loc {m['locality']['post']:.3f} K_R {m['K_R_retain_accuracy']['pre']:.3f}->{m['K_R_retain_accuracy']['post']:.3f} "
              f"fit {t_fit:.0f}s", flush=True)


if __name__ == "__main__":
    main()
