"""sanitation-scope: the scope model's choices and the K_S / over-refusal trade-off over the
calibration target.

    python -m trustedit.benchmarks.scope_tradeoff --out benchmarks/figures/scope_tradeoff.svg \\
        [--data PATH] [--targets 0.01,0.02,0.05,0.1,0.15,0.2,0.3] [--json out.json]

For each scope model (features minilm / hidden × classifier knn / logreg) the features of the
training and test prompts are computed once; for each calibration target the threshold comes from
the out-of-fold training scores (:func:`trustedit.scope_gate.out_of_fold_scores`, computed once per
scope model, and :func:`~trustedit.scope_gate.threshold_at`: the training split only).
The test outcome follows from the gate's two guarantees, which ``tests/test_scope.py`` checks: a
test question in scope is answered "I don't know."; one out of scope gets the base model's own
answer, bit for bit. So K_S = share of forget questions in scope or refused by the base model, and
over-refusal = the same on the retain questions (and on the 'near' retain questions). The base
model's answers come from one greedy pass with the sanitation suite's settings. The job
(``trustedit erase``) measures the gated model itself; at the default target the two agree (see
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time


# (features, classifier, exemplars): the default first; knn on MiniLM also with the questions alone as exemplars
VARIANTS = (("minilm", "knn", "question+answer"), ("minilm", "knn", "question"), ("minilm", "logreg", "question"),
            ("hidden", "knn", "question"), ("hidden", "logreg", "question"))


def _label(feat, clf, ex):
    return f"{feat} + {clf}" + (" (exemplars: question + answer)" if ex == "question+answer" else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="SVG path")
    ap.add_argument("--png", default=None, help="also write the figure as a PNG here (to look at it)")
    ap.add_argument("--data", default=None, help="sanitation data (default: as the suite finds it)")
    ap.add_argument("--targets", default="0.01,0.02,0.05,0.08,0.1,0.15,0.2,0.3")
    ap.add_argument("--json", default=None)
    ap.add_argument("--limit", type=int, default=None, help="cap every split (as --limit of the job)")
    args = ap.parse_args(argv)

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from trustedit.data.sanitation import load
    from trustedit.embeddings import SentenceEncoder
    from trustedit.metrics.qa import is_idk
    from trustedit.models import load_model
    from trustedit.privacy.scope import ScopeConfig, exemplar_features, features, gate_layer
    from trustedit.prompts import PromptFormat, generate
    from trustedit.scope_gate import frame_of, out_of_fold_scores, scope_params, scope_scores, threshold_at
    from trustedit.suites.sanitation import SanitationOptions, TrainPairs, near_retain, pairs

    targets = [float(x) for x in args.targets.split(",")]
    data = load(args.data, hub=False)
    if args.limit:
        for s in ("train_forget", "train_retain", "test_forget", "test_retain"):
            setattr(data, s, getattr(data, s)[: args.limit])
    lm = load_model()
    p = pairs(lm.tokenizer, data)
    o = SanitationOptions()
    t0 = time.time()
    test = p["test_f"] + p["test_r"]
    base, _ = generate(lm.model, lm.tokenizer, [x.prompt for x in test], o.max_new_tokens, 16,
                       desc="base answers", stop_strings=tuple(o.answer_stop))
    n_f = len(p["test_f"])
    refused_f = np.array([is_idk(g) for g in base[:n_f]])
    refused_r = np.array([is_idk(g) for g in base[n_f:]])
    near, near_info = near_retain(data)
    print(f"base answers: {time.time() - t0:.0f} s; base refusals: forget {refused_f.mean():.3f}, retain "
          f"{refused_r.mean():.3f}; near retain questions: {len(near)} (cosine >= {near_info.get('min_cosine')})",
          flush=True)
    frame = frame_of(lm.tokenizer, PromptFormat())
    enc = SentenceEncoder()
    rows, feats = [], {}
    train = TrainPairs(p["train_f"], p["train_r"], forget_answers=[x.answer for x in data.train_forget])
    for feat, clf, ex in VARIANTS:
        cfg = ScopeConfig(features=feat, classifier=clf, exemplars=ex)
        if feat not in feats:
            t1 = time.time()
            feats[feat] = {k: features(lm, [x.prompt for x in p[k]], cfg, frame, enc)
                           for k in ("train_f", "train_r", "test_f", "test_r")}
            print(f"{feat} features: {time.time() - t1:.0f} s", flush=True)
        F = feats[feat]
        center = feat == "hidden"
        bank = exemplar_features(lm, train, cfg, frame, enc)
        params = scope_params(clf, F["train_f"] if bank is None else bank, F["train_r"], k=cfg.k, C=cfg.C, seed=0,
                              center=center)
        sf = scope_scores(clf, params, F["test_f"], cfg.k).numpy()
        sr = scope_scores(clf, params, F["test_r"], cfg.k).numpy()
        auc = float(roc_auc_score(np.r_[np.ones(len(sf)), np.zeros(len(sr))], np.r_[sf, sr]))
        oof_f, oof_r, folds = out_of_fold_scores(clf, F["train_f"], F["train_r"], folds=cfg.folds, k=cfg.k, C=cfg.C,
                                                 seed=0, center=center, bank=bank)  # once per variant
        for t in targets:
            cal = threshold_at(oof_f, oof_r, t, folds)
            thr = cal["threshold"]
            in_f, in_r = sf > thr, sr > thr
            ks = float(np.mean(in_f | refused_f))
            orr = float(np.mean(in_r | refused_r))
            nor = float(np.mean((in_r | refused_r)[near])) if near else float("nan")
            rows.append({"variant": _label(feat, clf, ex), "features": feat, "classifier": clf, "exemplars": ex,
                         "layer": gate_layer(lm.model, cfg) if feat == "hidden" else None, "target": t,
                         "threshold": thr, "cv_over_refusal": cal["cv_over_refusal"],
                         "cv_flag_rate_forget": cal["cv_flag_rate_forget"], "cv_roc_auc": cal["cv_roc_auc"],
                         "test_roc_auc": auc, "K_S": ks, "over_refusal": orr, "near_over_refusal": nor,
                         "n_forget": int(len(sf)), "n_retain": int(len(sr)), "n_near": len(near)})
            print(f"{_label(feat, clf, ex):45s} target {t:.2f}: K_S {ks:.3f} over-refusal {orr:.3f} near {nor:.3f} "
                  f"(cv AUC {cal['cv_roc_auc']:.3f}, test AUC {auc:.3f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"data": data.describe(), "near": near_info, "rows": rows}, f, indent=1)
    _plot(rows, args.out, data.describe().get("source"), args.png)


def _plot(rows, out, source, png=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "trustedit"
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for i, v in enumerate(VARIANTS):
        pts = [r for r in rows if r["variant"] == _label(*v)]
        xs, ys = [100 * r["over_refusal"] for r in pts], [100 * r["K_S"] for r in pts]
        ax.plot(xs, ys, "o-" if v[0] == "minilm" else "s--", color=plt.get_cmap("tab10")(i), label=_label(*v))
        for r, x, y in zip(pts, xs, ys):
            if i == 0:
                ax.annotate(f"{100 * r['target']:g} %", (x, y), textcoords="offset points", xytext=(5, -9), fontsize=7)
    ax.axhline(70, color="grey", lw=0.8, ls=":")
    ax.axvline(10, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("over-refusal on retain test questions (%)")
    ax.set_ylabel("K_S: forget test questions refused (%)")
    ax.set_title(f"sanitation-scope: K_S vs over-refusal over the calibration target\n(labels: target over-refusal "
                 f"on the training split; data {source})", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, format="svg", metadata={"Date": None})
    if png:
        fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
