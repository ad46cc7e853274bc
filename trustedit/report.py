"""Human-readable summaries of a run's results.json."""

from __future__ import annotations

HEADLINE = ["K_S_idk_rate", "K_F_leak_rate", "edit_success", "K_R_retain_accuracy", "over_refusal_rate", "locality",
            "fluency_ngram_entropy"]


def _fmt(v, pct):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def metric_table(metrics: dict) -> str:
    rows = ["| metric | before | after | delta [95% CI] | n | protocol |", "|---|---|---|---|---|---|"]
    order = [k for k in HEADLINE if k in metrics] + [k for k in metrics if k not in HEADLINE]
    for k in order:
        m = metrics[k]
        pct = m["aggregation"] == "mean" and not k.startswith("fluency")
        lo, hi = m["delta"]["ci95"]
        unit = " (%)" if pct else ""
        arrow = "↑" if m["higher_is_better"] else "↓"
        rows.append(
            f"| {k}{unit} {arrow} | {_fmt(m['pre']['value'], pct)} | {_fmt(m['post']['value'], pct)} | "
            f"{_fmt(m['delta']['value'], pct)} [{_fmt(lo, pct)}, {_fmt(hi, pct)}] | {m['n']} | {m['protocol']} |"
        )
    return "\n".join(rows)


def erase_summary(r: dict) -> str:
    d, m, meth = r["dataset"], r["model"], r["method"]
    lines = [
        f"# trustedit erase: {meth['name']} on {d['name']}",
        "",
        f"- model: `{m['spec']}` ({m['model_type']}, {m['num_parameters'] / 1e6:.0f}M parameters, {m['dtype']} on {m['device']}), "
        f"fingerprint `{m['fingerprint'][:40]}…`",
        f"- method: {meth['summary']} — {meth['citation']}",
        f"- data: {d['source']} ({d['layout']} layout), forgotten answers: {', '.join(d['forgotten_answers'])}; "
        f"counts {d['counts']}" + (f"; limit {d['limit']}" if d.get("limit") else ""),
    ]
    if d.get("starter_set"):
        lines.append("- **starter set**: these numbers come from the small set shipped with trustedit, not from a benchmark.")
    if d.get("known_only"):
        k = d["known_only"]
        lines.append(f"- known-only: kept {k['test_forget_kept']}/{k['test_forget_total']} forget and "
                     f"{k['test_retain_kept']}/{k['test_retain_total']} retain test questions ({k['rule']}).")
    t = r.get("timings_s", {})
    lines += [
        f"- time: {t.get('total', 0):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in t.items() if k != 'total')})",
        "",
        "## Metrics (before = base model, after = edited; paired bootstrap 95% intervals over items)",
        "",
        metric_table(r["metrics"]),
        "",
        "Files: `results.json` (everything above, with resolved config and versions), `samples.jsonl` "
        "(answers before/after per question), `patch/` (apply or revert with `trustedit patch`).",
        "",
    ]
    return "\n".join(lines)
