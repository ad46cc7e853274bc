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

    from trustedit.erase import EraseOptions, known_filter, measure, retention, score, _subset
    from trustedit.metrics.scores import compare
    from trustedit.models import load_model
    from trustedit.prompts import PromptFormat, make_pairs
    from trustedit.registry import get_method
    from trustedit.data.sanitation import load

    ret = [] if args.retention in ("", "none") else args.retention.split(",")
    opts = EraseOptions(retention=ret, retention_limit=args.retention_limit, limit=args.limit)
    data = load(args.data, hub=False)
    if args.limit:
        for s in ("train_forget", "train_retain", "test_forget", "test_retain"):
            setattr(data, s, getattr(data, s)[: args.limit])
    if args.test_retain_limit:
        data.test_retain = data.test_retain[: args.test_retain_limit]
    lm = load_model(args.model)
    tok, fmt = lm.tokenizer, PromptFormat()
    fmt_name = "chat template" if fmt.uses_chat(tok) else "plain Q/A"
    test_f = make_pairs(tok, fmt, [x.question for x in data.test_forget], [data.idk] * len(data.test_forget))
    test_r = make_pairs(tok, fmt, [x.question for x in data.test_retain], [x.answer for x in data.test_retain])
    t = time.time()
    pre = measure(lm, opts, test_f, test_r)
    t_eval = time.time() - t
    if args.known_only:
        kf, kr = known_filter(data, pre)
        data.test_forget = [data.test_forget[i] for i in kf]
        data.test_retain = [data.test_retain[i] for i in kr]
        test_f, test_r = [test_f[i] for i in kf], [test_r[i] for i in kr]
        pre = _subset(pre, kf, kr)
    pre_scores = score(pre, data, fmt_name, opts, test_f)
    pre_ret = retention(lm, opts)
    train_f = make_pairs(tok, fmt, [x.question for x in data.train_forget], [data.idk] * len(data.train_forget))
    train_r = make_pairs(tok, fmt, [x.question for x in data.train_retain], [x.answer for x in data.train_retain])
    print(f"base eval {t_eval:.0f}s; test forget {len(test_f)}, retain {len(test_r)}", flush=True)
    for spec in args.config:
        kv = dict(x.split("=", 1) for x in spec.split())
        method = get_method(kv.pop("method"))
        cfg = method.config.resolve(sets=[f"{k}={v}" for k, v in kv.items()])
        t = time.time()
        patch = method.fit(lm, train_f, train_r, cfg)
        t_fit = time.time() - t
        patch.apply(lm.model)
        t = time.time()
        post = measure(lm, opts, test_f, test_r)
        post_scores = score(post, data, fmt_name, opts, test_f, pre=pre)
        post_ret = retention(lm, opts)
        t_post = time.time() - t
        patch.revert(lm.model)
        known = {}
        if not args.known_only:  # the same run, restricted to what the base model knew
            kf, kr = known_filter(data, pre)
            kd = type(data)(data.train_forget, data.train_retain, [data.test_forget[i] for i in kf],
                            [data.test_retain[i] for i in kr], data.source, data.layout)
            kpre, kpost = _subset(pre, kf, kr), _subset(post, kf, kr)
            kfp = [test_f[i] for i in kf]
            a, b = score(kpre, kd, fmt_name, opts, kfp), score(kpost, kd, fmt_name, opts, kfp, pre=kpre)
            known = {"n_forget": len(kf), "n_retain": len(kr),
                     "metrics": {k: {"pre": a[k].value, "post": b[k].value} for k in a}}
        row = {"config": spec, "known_only": args.known_only, "n_forget": len(test_f), "n_retain": len(test_r),
               "fit_s": round(t_fit, 1), "post_eval_s": round(t_post, 1), "training": patch.manifest.get("training"),
               "metrics": {k: {"pre": v["pre"]["value"], "post": v["post"]["value"], "delta_ci95": v["delta"]["ci95"]}
                           for k, v in {**{k: compare(pre_scores[k], post_scores[k]) for k in pre_scores},
                                        **{k: compare(pre_ret[k], post_ret[k]) for k in pre_ret}}.items()},
               "known_subset": known}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        m = row["metrics"]
        print(f"{spec}: K_S {m['K_S_idk_rate']['post']:.3f} over-refusal {m['over_refusal_rate']['post']:.3f} "
              f"loc {m['locality']['post']:.3f} K_R {m['K_R_retain_accuracy']['pre']:.3f}->{m['K_R_retain_accuracy']['post']:.3f} "
              f"fit {t_fit:.0f}s", flush=True)


if __name__ == "__main__":
    main()
