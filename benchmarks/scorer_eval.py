"""How good are the toxicity scorers? Held-out figures and agreement with Perspective.

    python -m trustedit.benchmarks.scorer_eval [--scorers minilm-lr,profanity] [--limit N] [--json OUT]

Data come from $TRUSTEDIT_DATA_DIR (Jigsaw + ParaDetox to train minilm-lr,
realtoxicityprompts/rtp_quark_val_5k.jsonl for the comparison).

For each scorer: its ``describe()`` (for minilm-lr the held-out ROC-AUC / F1 at 0.5 of the
cached model, trained first if needed), then on RealToxicityPrompts the agreement between our
score and the Perspective API toxicity that RTP ships, separately for the prompt texts and for
the original continuation texts (records whose Perspective toxicity is null are left out):
Pearson and Spearman correlation, binary agreement at 0.5 (our >= 0.5 vs Perspective >= 0.5),
and ROC-AUC of our score against Perspective >= 0.5 as the positive class. Prints a Markdown
block ready for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import time


def agreement(ours, theirs, threshold: float = 0.5) -> dict:
    """Pearson, Spearman, binary agreement at ``threshold`` and ROC-AUC (Perspective >= threshold
    positive) of paired scores."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(ours, float), np.asarray(theirs, float)
    pos = b >= threshold
    out = {"n": int(len(a)), "perspective_positive": int(pos.sum()), "ours_positive": int((a >= threshold).sum()),
           "pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0]),
           "agreement@0.5": float(np.mean((a >= threshold) == pos))}
    out["roc_auc"] = float(roc_auc_score(pos, a)) if 0 < pos.sum() < len(pos) else None
    # Agreement a constant "non-toxic" answer would get, for reading agreement@0.5.
    out["majority_agreement"] = float(max(pos.mean(), 1 - pos.mean()))
    return out


def evaluate(name: str, prompts, batch_size: int = 64) -> dict:
    from trustedit.registry import get_scorer

    t0 = time.time()
    scorer = get_scorer(name)
    if hasattr(scorer, "train"):
        scorer.train()
    desc = scorer.describe()
    t_load = time.time() - t0
    res = {"scorer": desc, "load_s": round(t_load, 1), "rtp": {}}
    for part, text_of, tox_of in (("prompt", lambda p: p.text, lambda p: p.toxicity),
                                  ("continuation", lambda p: p.continuation, lambda p: p.continuation_toxicity)):
        rows = [p for p in prompts if text_of(p) is not None and tox_of(p) is not None]
        t1 = time.time()
        ours = scorer.score([text_of(p) for p in rows], batch_size=batch_size)
        res["rtp"][part] = {**agreement(ours, [tox_of(p) for p in rows]), "score_s": round(time.time() - t1, 1),
                            "mean_ours": sum(ours) / len(ours), "mean_perspective": sum(tox_of(p) for p in rows) / len(rows)}
    return res


def markdown(results: list[dict], rtp_desc: dict) -> str:
    lines = []
    for r in results:
        d = r["scorer"]
        label = "profanity" if d["kind"] == "profanity" else "toxicity"
        lines.append(f"**{d['name']}** (`{d['version']}`, kind {d['kind']})")
        if "heldout" in d:
            h = d["heldout"]
            by = "; ".join(f"{s}: ROC-AUC {v['roc_auc']:.4f}, F1 {v['f1']:.4f} (n={v['n']})"
                           for s, v in h["by_source"].items())
            lines.append(f"- held-out split (20 %, stratified, grouped; n={h['n']}, {h['n_toxic']} toxic): ROC-AUC "
                         f"**{h['roc_auc']:.4f}**, F1@0.5 **{h['f1']:.4f}**, accuracy {h['accuracy']:.4f} ({by}); "
                         f"C={d['C']}, {d['data']['texts']} training texts")
        lines.append("")
        lines.append(f"| RTP text ({label} vs Perspective toxicity) | n | Perspective ≥ 0.5 | ours ≥ 0.5 | Pearson | "
                     f"Spearman | agreement@0.5 (majority) | ROC-AUC |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for part, a in r["rtp"].items():
            auc = "—" if a["roc_auc"] is None else f"{a['roc_auc']:.4f}"
            lines.append(f"| {part} | {a['n']} | {a['perspective_positive']} | {a['ours_positive']} | {a['pearson']:.4f} | "
                         f"{a['spearman']:.4f} | {a['agreement@0.5']:.4f} ({a['majority_agreement']:.4f}) | {auc} |")
        lines.append("")
    lines.append(f"RTP file: {rtp_desc['files'][0].split('/')[-1]} ({rtp_desc['n']} records, {rtp_desc['fingerprint'][:19]}…)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="held-out figures of the toxicity scorers and agreement with Perspective")
    ap.add_argument("--scorers", default="minilm-lr", help="comma-separated scorer names (default: minilm-lr)")
    ap.add_argument("--limit", type=int, default=None, help="first N RTP records only (default: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    from trustedit.benchmarks.erase_timing import machine
    from trustedit.data.toxicity import load_rtp

    rtp = load_rtp()
    prompts = rtp if args.limit is None else rtp[: args.limit]
    t0 = time.time()
    results = [evaluate(n.strip(), prompts, args.batch_size) for n in args.scorers.split(",") if n.strip()]
    print(f"machine: {machine()}")
    print(f"command: python -m trustedit.benchmarks.scorer_eval --scorers {args.scorers}"
          f"{'' if args.limit is None else f' --limit {args.limit}'} ({time.time() - t0:.0f} s)\n")
    print(markdown(results, {**rtp.describe(), "n": len(prompts)}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
