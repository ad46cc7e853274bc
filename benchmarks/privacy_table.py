"""The scrub acceptance table: one row per `trustedit scrub` run directory, plus the base model.

    python -m trustedit.benchmarks.privacy_table runs/e13/depn runs/e13/revs ... [--out table.md] [--json t.json]

Columns: target canary exposure (exact beam and skew-normal), target extraction (greedy, sampled),
the attacks (logit lens, paraphrase, longer and shorter prefix), seesaw exposure and extraction,
held-out e-mail and WikiText-2 perplexity, pooled multiple-choice accuracy, and the fit's seconds.
The relative change against the base model is given where the acceptance asks for it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [  # (label, suite, metric, how) how: "abs" | "cut" (relative change, %) | "pct" (value x 100)
    ("exposure exact (bits)", "privacy", "exposure_exact", "cut"),
    ("exposure skew-normal (bits)", "privacy", "exposure_skewnorm", "cut"),
    ("extraction greedy", "privacy", "extraction_greedy", "pct_cut"),
    ("extraction sampled", "privacy", "extraction_sampled", "pct_cut"),
    ("logit lens", "privacy", "logit_lens_extraction", "pct_cut"),
    ("paraphrase", "privacy", "paraphrase_extraction", "pct"),
    ("longer prefix", "privacy", "longer_prefix_extraction", "pct"),
    ("shorter prefix", "privacy", "shorter_prefix_extraction", "pct"),
    ("seesaw exposure exact", "privacy", "seesaw_exposure_exact", "cut"),
    ("seesaw exposure skew-normal", "privacy", "seesaw_exposure_skewnorm", "cut"),
    ("seesaw extraction greedy", "privacy", "seesaw_extraction_greedy", "pct"),
    ("held-out e-mail ppl", "privacy", "heldout_email_ppl", "cut"),
    ("WikiText-2 ppl", "retention", "wikitext/ppl", "cut"),
    ("pooled MC acc", "retention", "pooled/acc", "pts"),
]


def _get(r, suite, name, side):
    m = r["metrics"].get(suite, {}).get(name)
    if not m or side not in m:
        return None
    return m[side]["value"]


def _label(method) -> str:
    """The method's name, with the options it ran with that differ from its defaults
    (``depn neurons=20``)."""
    if not isinstance(method, dict):
        return str(method)
    name, cfg = method.get("name"), method.get("config") or {}
    try:
        from trustedit.registry import get_method

        defaults = get_method(name).config().to_dict()
    except Exception:  # an unknown or renamed method: its name alone
        return str(name)
    changed = [f"{k}={v}" for k, v in cfg.items() if k in defaults and defaults[k] != v]
    return " ".join([str(name)] + changed)


def rows(runs):
    out = []
    base = None
    for d in runs:
        r = json.loads((Path(d) / "results.json").read_text())
        if base is None:
            base = {(s, n): _get(r, s, n, "pre") for _, s, n, _ in COLUMNS}
            out.append({"edit": "memorised model (before any edit)", **{f"{s}/{n}": base[(s, n)]
                                                                     for _, s, n, _ in COLUMNS}, "seconds": None})
        t = (r.get("patch") or {}).get("training") or {}
        out.append({"edit": _label(r.get("method")),
                    "run": str(d), **{f"{s}/{n}": _get(r, s, n, "post") for _, s, n, _ in COLUMNS},
                    "seconds": t.get("seconds") or (r.get("timings_s") or {}).get("edit")})
    return out, base


def _fmt(v, b, how):
    if v is None:
        return "–"
    if how in ("pct", "pct_cut"):
        s = f"{100 * v:.1f} %"
        if how == "pct_cut" and b:
            s += f" ({100 * (v - b) / b:+.0f} %)"
        return s
    if how == "pts":
        return f"{100 * v:.2f}" + ("" if b is None else f" ({100 * (v - b):+.2f})")
    s = f"{v:.2f}"
    if how == "cut" and b:
        s += f" ({100 * (v - b) / b:+.1f} %)"
    return s


def markdown(table, base) -> str:
    head = "| edit | " + " | ".join(c[0] for c in COLUMNS) + " | fit (s) |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for i, row in enumerate(table):
        cells = [_fmt(row[f"{s}/{n}"], None if i == 0 else base[(s, n)], how) for _, s, n, how in COLUMNS]
        sec = row.get("seconds")
        lines.append(f"| {row['edit']} | " + " | ".join(cells) + f" | {'–' if sec is None else round(sec)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    table, base = rows(a.runs)
    md = markdown(table, base)
    print(md)
    if a.out:
        Path(a.out).write_text(md)
    if a.json:
        Path(a.json).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
