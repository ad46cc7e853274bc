"""The detox table of the issue "Detox that keeps the model fluent": every edit of some `trustedit detox`
runs, on the same RTP prompts, scorer and k, with both fluency judges, retention and fit time; and the
Pareto front of toxicity probability against continuation perplexity as an SVG.

    python -m trustedit.benchmarks.detox_budget RUN [RUN ...] [--judge gemma3-270m] [--out table.md]
        [--svg benchmarks/figures/detox_pareto.svg] [--png plot.png] [--json figures.json] [--budget 0.10]

Each RUN is a run directory of `trustedit detox` (``--show-pii`` keeps the continuation text exact;
masked text is judged as written). Its rows: the method's edit and every side-by-side variant. The
judge's perplexity is computed here from ``samples.jsonl`` for every row with the same code as the
``rtp`` suite (:func:`trustedit.suites.rtp.judge_nll`), so that runs made before the judge existed
get the column too; where a run recorded the judge itself, the two are compared (they must agree).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

SET = "toxic"


def _v(entry, side):
    x = (entry or {}).get(side) or {}
    return x.get("value")


def load_rows(run: Path) -> list[dict]:
    """The rows of one run: its edit and its variants, with the base model's figures alongside."""
    r = json.loads((run / "results.json").read_text())
    name = r["method"]["name"]
    t = r.get("timings_s", {})
    fit = t.get("edit") or t.get("budget/fit")
    search = sum(v for k, v in t.items() if k in ("budget/base", "budget/eval")) or None
    budget = r.get("budget")
    edits = [(r["patch"]["training"].get("combine", name) if r.get("patch") and isinstance(r["patch"].get("training"), dict)
              else name, "post", r["metrics"])]
    for v, vr in (r.get("variants") or {}).items():
        edits.append((v, f"post:{v}", vr["metrics"]))
    rows = []
    for edit, column, ms in edits:
        rtp, ret = ms["rtp"], ms.get("retention", {})
        row = {"run": str(run), "edit": edit, "column": column, "budget": None if budget is None else budget["max_ppl_increase"],
               "strength": None if budget is None else budget["chosen"].get(edit, {}).get("label"),
               "met_on_validation": None if budget is None else budget["chosen"].get(edit, {}).get("met"),
               "config": r["method"]["config"] if column == "post" else None,
               "fit_s": fit, "search_s": search, "k": r["suites"]["rtp"]["options"]["k"],
               "scorer": r["suites"]["rtp"]["scorer"]["version"],
               "prompts": r["suites"]["rtp"]["dataset"]["sets"][SET]["prompts"]}
        for key, short in (("expected_max_toxicity", "emt"), ("toxicity_probability", "tp"), ("continuation_ppl", "ppl"),
                           ("continuation_ppl_judge", "ppl_judge_recorded"), ("dist-2", "dist2")):
            e = rtp.get(f"{SET}/{key}")
            row[short], row[f"base_{short}"] = _v(e, "post"), _v(e, "pre")
        for key, short in (("pooled/acc", "mc"), ("wikitext/ppl", "wikitext_ppl")):
            e = ret.get(key)
            row[short], row[f"base_{short}"] = _v(e, "post"), _v(e, "pre")
        rows.append(row)
    return rows


def judge_ppl(run: Path, columns, judge) -> dict:
    """Pooled perplexity under ``judge`` of each column's continuations (``pre`` = the base model)."""
    from trustedit.suites.rtp import judge_nll

    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text(encoding="utf-8").split("\n") if x.strip()]
    rows = [x for x in rows if x.get("suite") == "rtp" and x.get("set") == SET]
    out = {}
    for col in columns:
        prompts = [x["prompt"] for x in rows for _ in x[col]]
        texts = [s["text"] for x in rows for s in x[col]]
        nll = judge_nll(judge, prompts, texts, batch_size=32)
        out[col] = math.exp(sum(s for s, _ in nll) / max(sum(n for _, n in nll), 1))
    return out


def pct(x, base):
    return None if x is None or base in (None, 0) else 100 * (x / base - 1)


def table(rows: list[dict], judge_name: str) -> str:
    b = rows[0]
    lines = [f"| edit | strength | EMT | TP | ppl (base model) | ppl ({judge_name}) | dist-2 | pooled MC | WikiText-2 ppl | fit (s) |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| base model | – | {b['base_emt']:.3f} | {b['base_tp']:.3f} | {b['base_ppl']:.2f} | {b['base_ppl_judge']:.2f} | "
             f"{b['base_dist2']:.3f} | {100 * b['base_mc']:.2f} | {b['base_wikitext_ppl']:.2f} | – |"]
    for r in rows:
        s = r["strength"] or "default"
        if r["budget"] is not None:
            s = f"budget +{100 * r['budget']:.0f} %: {r['strength']}" + ("" if r["met_on_validation"] else " (not met on validation)")
        lines.append(
            f"| {r['edit']} | {s} | {r['emt']:.3f} ({pct(r['emt'], r['base_emt']):+.0f} %) | {r['tp']:.3f} ({pct(r['tp'], r['base_tp']):+.0f} %) | "
            f"{r['ppl']:.2f} ({pct(r['ppl'], r['base_ppl']):+.1f} %) | {r['ppl_judge']:.2f} ({pct(r['ppl_judge'], r['base_ppl_judge']):+.1f} %) | "
            f"{r['dist2']:.3f} | {100 * r['mc']:.2f} ({100 * (r['mc'] - r['base_mc']):+.2f}) | "
            f"{r['wikitext_ppl']:.2f} ({pct(r['wikitext_ppl'], r['base_wikitext_ppl']):+.1f} %) | "
            f"{'–' if r['fit_s'] is None else round(r['fit_s'])} |")
    return "\n".join(lines)


def pareto(points):
    """Indices of the points not dominated in (ppl increase: lower, TP: lower)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def plot(rows, judge_name, budget, svg, png=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, key, title in ((axes[0], "ppl", "judge: the base model"), (axes[1], "ppl_judge", f"judge: {judge_name}")):
        pts = [(pct(r[key], r[f"base_{key}"]), pct(r["tp"], r["base_tp"])) for r in rows]
        front = pareto(pts)
        ax.axvline(100 * budget, color="0.5", ls="--", lw=1)
        ax.axhline(-50, color="0.5", ls=":", lw=1)
        ax.text(100 * budget, 2, f" +{100 * budget:.0f} % budget", color="0.4", fontsize=8, va="bottom")
        ax.text(0, -51, "TP −50 % target", color="0.4", fontsize=8, va="top")
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="tab:red", lw=1.2, label="Pareto front")
        ax.scatter([0], [0], marker="*", s=120, color="k", label="base model", zorder=3)
        for r, (x, y) in zip(rows, pts):
            mark = "o" if r["budget"] is None else "s"
            color = {"profs": "tab:blue", "ext-sub": "tab:green", "negation": "tab:orange", "expert": "tab:purple"}.get(r["edit"], "k")
            ax.scatter([x], [y], marker=mark, s=40, color=color, zorder=3)
            label = r["edit"] + ("" if r["budget"] is None else " (budget)")
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("symlog", linthresh=10)  # ±10 % linear, beyond it logarithmic: one edit is at +3,000 %
        ax.set_xlabel("continuation perplexity, change vs. base (%, symlog)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("toxicity probability, change vs. base (%)")
    axes[0].legend(fontsize=8, loc="upper right")
    k, n = rows[0]["k"], rows[0]["prompts"]
    fig.suptitle(f"RealToxicityPrompts, {n} toxic-first prompts, k = {k}; circles: default strength, squares: chosen under "
                 f"the budget", fontsize=10)
    fig.tight_layout()
    Path(svg).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(svg)
    if png:
        fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description="the detox table and its Pareto front")
    ap.add_argument("runs", nargs="+", help="run directories of trustedit detox")
    ap.add_argument("--judge", default="gemma3-270m", help="the second fluency judge")
    ap.add_argument("--budget", type=float, default=0.10)
    ap.add_argument("--out", default=None, help="write the Markdown table here too")
    ap.add_argument("--svg", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--from-json", default=None, help="redraw the table and plot from a --json file of an earlier call")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        print(table(rows, args.judge))
        if args.svg:
            plot(rows, args.judge, args.budget, args.svg, args.png)
        return

    from trustedit.models import load_model

    judge = load_model(args.judge, "cpu")
    rows, checked = [], False
    for run in map(Path, args.runs):
        rs = load_rows(run)
        recorded = all(r["ppl_judge_recorded"] is not None for r in rs)
        # a run that recorded the judge is taken as recorded, after one cross-check of its base column
        cols = ["pre"] if recorded and not checked else [] if recorded else ["pre", *[r["column"] for r in rs]]
        jp = judge_ppl(run, cols, judge) if cols else {}
        for r in rs:
            if recorded:
                r["ppl_judge"], r["base_ppl_judge"] = r["ppl_judge_recorded"], r["base_ppl_judge_recorded"]
                if "pre" in jp and abs(jp["pre"] - r["base_ppl_judge"]) > 1e-3 * r["base_ppl_judge"]:
                    raise SystemExit(f"{run}: the judge's perplexity recorded by the run ({r['base_ppl_judge']:.4f}) "
                                     f"differs from the recomputed one ({jp['pre']:.4f})")
            else:
                r["ppl_judge"], r["base_ppl_judge"] = jp[r["column"]], jp["pre"]
        if "pre" in jp and recorded:
            checked = True
            print(f"cross-check {run}: base model under the judge, recorded {rs[0]['base_ppl_judge']:.4f}, recomputed {jp['pre']:.4f}")
        rows += rs
    base = {(r["base_emt"], r["base_tp"]) for r in rows}
    if len(base) != 1:
        raise SystemExit(f"the runs' base models differ (EMT, TP): {sorted(base)}: not the same prompts, k, seed or scorer")
    text = table(rows, args.judge)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    if args.svg:
        plot(rows, args.judge, args.budget, args.svg, args.png)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
