"""Human-readable reports built from results.json alone (schema v1): ``summary.md`` of any run,
the side-by-side table of ``trustedit compare``, and a sweep's plot.

How a value is printed comes from its entry's ``display`` and ``unit`` (``percent``: one decimal,
fractions times 100; ``coefficient``: four decimals; ``raw``: four significant digits), never from
the metric's name.
"""

from __future__ import annotations


def md_escape(text: str) -> str:
    """``text`` that Markdown shows as written (``<sentence>``, ``a_s*s``, ``|``)."""
    for c in ("\\", "*", "_", "<", ">", "|", "`", "["):
        text = text.replace(c, "\\" + c)
    return text


def fmt(v, e: dict) -> str:
    """One value of metric entry ``e`` as text."""
    if v is None:
        return "n/a"
    d = e.get("display", "raw")
    if d == "percent":
        return f"{100 * v if e.get('unit') == 'fraction' else v:.1f}"
    if d == "coefficient":
        return f"{v:.4f}"
    return f"{v:.4g}"


def unit_label(e: dict) -> str:
    if e.get("display") == "percent":
        return " (%)" if e.get("unit") in ("fraction", "%") else " (pp)" if e.get("unit") == "percentage points" else ""
    return ""


def _ci(ci, e) -> str:
    lo, hi = (ci or [None, None])[:2]
    return f"[{fmt(lo, e)}, {fmt(hi, e)}]"


def _ordered(metrics: dict, headline) -> list[str]:
    return [k for k in headline if k in metrics] + [k for k in metrics if k not in headline]


def _headline(suite: str):
    try:
        from trustedit.registry import get_suite

        return get_suite(suite).headline
    except Exception:  # noqa: BLE001 - an unknown suite in an old file: no preferred order
        return ()


def metric_table(metrics: dict, headline=()) -> str:
    """One suite's metrics: before / after / delta with its paired interval, or the value alone
    (an evaluation without an edit). Each distinct protocol is written once, under the table, and
    referred to by number."""
    keys = _ordered(metrics, headline)
    edited = any(metrics[k].get("post") is not None for k in keys)
    ideals = any("ideal" in metrics[k] for k in keys)
    if edited:
        rows = ["| metric | before | after | delta [95% CI] |" + (" change of the distance to the ideal [95% CI] |"
                                                                  if ideals else "") + " n | protocol |",
                "|---|---|---|---|" + ("---|" if ideals else "") + "---|---|"]
    else:
        rows = ["| metric | value [95% CI] | n | protocol |", "|---|---|---|---|"]
    protocols: list[str] = []
    for k in keys:
        e = metrics[k]
        if e["protocol"] not in protocols:
            protocols.append(e["protocol"])
        ref = f"[{protocols.index(e['protocol']) + 1}]"
        arrow = f"→ {e['ideal']:g}" if "ideal" in e else "↑" if e.get("higher_is_better", True) else "↓"
        name = f"{k}{unit_label(e)} {arrow}"
        if edited:
            post, delta = e.get("post") or {}, e.get("delta") or {}
            dist = ""
            if ideals:
                d = e.get("distance_to_ideal")
                dist = (f" {fmt(d['delta'], e)} {_ci(d['ci95'], e)} ({'closer' if (d['delta'] or 0) < 0 else 'farther' if (d['delta'] or 0) > 0 else 'same'}) |"
                        if d else " |")
            rows.append(f"| {name} | {fmt(e['pre']['value'], e)} | {fmt(post.get('value'), e)} | "
                        f"{fmt(delta.get('value'), e)} {_ci(delta.get('ci95'), e)} |{dist} {e['n']} | {ref} |")
        else:
            rows.append(f"| {name} | {fmt(e['pre']['value'], e)} {_ci(e['pre'].get('ci95'), e)} | {e['n']} | {ref} |")
    rows.append("")
    rows += [f"[{i}] {md_escape(p)}  " for i, p in enumerate(protocols, 1)]
    return "\n".join(rows)


def _model_line(m: dict) -> str:
    n = m.get("num_parameters")
    size = f", {n / 1e6:.0f}M parameters" if n else ""
    return (f"- model: `{m.get('spec')}` ({m.get('model_type')}{size}, {m.get('dtype')} on {m.get('device')}), "
            f"fingerprint `{str(m.get('fingerprint'))[:40]}…`")


def _training_line(td) -> str:
    """The training data as a person reads it: name, sizes and other facts, fingerprint, source."""
    if not isinstance(td, dict):
        return md_escape(str(td))
    facts = [f"{k.replace('_', ' ')} {v}" for k, v in td.items()
             if k not in ("name", "fingerprint", "source") and v is not None]
    parts = [str(td.get("name", "training items")), *facts]
    if td.get("fingerprint"):
        parts.append(f"fingerprint `{str(td['fingerprint'])[:24]}…`")
    if td.get("source"):
        parts.append(f"from `{td['source']}`")
    return md_escape(", ".join(parts[:1 + len(facts)])) + "".join(", " + x for x in parts[1 + len(facts):])


def _time_line(r: dict) -> str:
    t = r.get("timings_s", {})
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total" and "/" not in k)
    return f"- time: {t.get('total', 0):.0f} s in all ({parts})"


def summary(r: dict) -> str:
    """summary.md of any run (schema v1)."""
    meth = r.get("method")
    proto = r.get("protocol", "none")
    if meth:
        title = f"# trustedit {r['task']}: {meth['name']}" + ("" if proto == "whole" else f" ({proto.replace('_', '-')})")
    elif r.get("patch_in"):
        title = f"# trustedit eval: {', '.join(r['metrics'])} with the patch {r['patch_in']['path']}"
    else:
        title = f"# trustedit eval: {', '.join(r['metrics'])}"
    lines = [title, ""]
    verdicts = _verdicts(r)
    if verdicts:
        lines += verdicts + [""]
    lines.append(_model_line(r["model"]))
    if meth:
        lines.append(f"- method: {meth['summary']} — {meth['citation']}")
    if r.get("training_data"):
        lines.append(f"- training data: {_training_line(r['training_data'])}")
    for s, sec in r.get("suites", {}).items():
        lines.append(f"- suite `{s}`: {sec.get('summary', '')} ({sec.get('citation', '')}); data fingerprint "
                     f"`{str((sec.get('dataset') or {}).get('fingerprint'))[:24]}…`, base evaluation cache: "
                     f"{(sec.get('cache') or {}).get('state', 'off')}")
        try:
            from trustedit.registry import get_suite

            lines += get_suite(s).describe_lines(sec)
        except Exception:  # noqa: BLE001 - descriptive lines only
            pass
    lines.append(_time_line(r))
    if r.get("edits") and proto in ("batch", "sequential") and isinstance(r["edits"][0].get("item"), list):
        e = r["edits"]
        n = sum(len(x["item"]) for x in e)
        fit = sum(x["seconds"]["fit"] for x in e)
        conv = [sum(q.get("converged", False) for q in (x.get("training") or {}).get("per_request", [])) for x in e]
        lines.append(f"- {n} edits in {len(e)} fit(s) ({proto}): {fit:.1f} s fitting in all ({fit / max(n, 1):.2f} s per "
                     f"edit); the editor reports {sum(conv)} of {n} converged")
        lines += _not_converged([q for x in e for q in (x.get("training") or {}).get("per_request", [])])
    elif r.get("edits"):
        e = r["edits"]
        n = len(e)
        fit = sum(x["seconds"]["fit"] for x in e) / n
        post = sum(x["seconds"]["post_eval"] for x in e) / n
        layers = [((x.get("training") or {}).get("layer")) for x in e]
        lines.append(f"- {n} edits, one per instance ({proto.replace('_', '-')}); mean {fit:.1f} s fit + {post:.1f} s "
                     "evaluation per instance")
        if any(v is not None for v in layers):
            counts = {str(k): layers.count(k) for k in sorted({v for v in layers if v is not None})}
            lines.append("- located layers: " + ", ".join(f"layer {k}: {v}" for k, v in counts.items()))
        per = [q for x in e for q in (x.get("training") or {}).get("per_request", [])]
        if per and all("converged" in q for q in per):
            lines.append(f"- the editor reports {sum(bool(q['converged']) for q in per)} of {len(per)} edits converged")
            lines += _not_converged(per)
    lines.append("")
    if r.get("points") is not None:
        lines += _points_table(r)
    else:
        what = "before = base model, after = edited; paired bootstrap 95% intervals over items" if \
            any(e.get("post") for ms in r["metrics"].values() for e in ms.values()) else "bootstrap 95% intervals over items"
        for s, ms in r["metrics"].items():
            lines += [f"## {s} ({what})", "", metric_table(ms, _headline(s)), ""]
            lines += _resolution(s, ms)
    if r.get("curve"):
        lines += _curve_table(r)
    if r.get("variants"):
        lines += _variants_table(r)
    if r.get("budget"):
        lines += _budget_table(r["budget"])
    files = "`results.json` (everything above, with resolved config, data fingerprints and versions), " \
            "`samples.jsonl` (per-item outputs before and after)"
    if r.get("patch"):
        files += ", `patch/` (apply, revert or export with `trustedit patch`)"
    lines += [f"Files: {files}.", ""]
    return "\n".join(lines)


def _budget_table(b: dict) -> list[str]:
    """The fluency-budget search: every candidate's validation figures and the choice."""
    judges = " and ".join(b.get("judges", []))
    v = b.get("validation", {})
    head = (f"## Fluency budget: continuation perplexity at most +{100 * b['max_ppl_increase']:.0f} % under {judges}",
            "", f"Chosen on {v.get('prompts')} held-out RTP prompts (k = {v.get('k')}), none of them reported above. "
            f"Rule: {b.get('rule')}.", "")
    base = b.get("base", {})
    rows = ["| edit | strength | TP | EMT | ppl (base model) | ppl (judge) | chosen |", "|---|---|---|---|---|---|---|",
            f"| base model | – | {base.get('toxicity_probability', float('nan')):.3f} | "
            f"{base.get('expected_max_toxicity', float('nan')):.3f} | {base.get('continuation_ppl', float('nan')):.2f} | "
            f"{_fmt_opt(base.get('continuation_ppl_judge'))} | |"]
    for c in b.get("candidates", []):
        f, inc = c["figures"], c["increase"]
        ppl = f"{f.get('continuation_ppl', float('nan')):.2f} ({100 * inc.get('continuation_ppl', float('nan')):+.1f} %)"
        jp = f.get("continuation_ppl_judge")
        judge = "–" if jp is None else f"{jp:.2f} ({100 * inc.get('continuation_ppl_judge', float('nan')):+.1f} %)"
        mark = ""
        if c.get("chosen"):
            mark = "**yes**" if b["chosen"][c["edit"]]["met"] else "closest (budget not met)"
        rows.append(f"| {c['edit']} | {c['label']} | {f.get('toxicity_probability', float('nan')):.3f} | "
                    f"{f.get('expected_max_toxicity', float('nan')):.3f} | {ppl} | {judge} | {mark} |")
    tail = [] if b.get("met") else ["", "**No candidate of " + ", ".join(k for k, x in b["chosen"].items() if not x["met"])
                                    + " met the budget**: the one with the smallest increase is reported."]
    return [*head, *rows, *tail, ""]


def _fmt_opt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _verdicts(r: dict) -> list[str]:
    """Each suite's one-line verdict for a person (suites that have one), for a run with an edit."""
    if r.get("points") is not None:
        return []
    out = []
    for s, ms in (r.get("metrics") or {}).items():
        try:
            from trustedit.registry import get_suite

            v = getattr(get_suite(s), "verdict", None)
            line = v(ms) if v and any((e or {}).get("post") for e in ms.values()) else None
        except Exception:  # noqa: BLE001 - an unknown suite in an old file
            line = None
        if line:
            out.append(line)
    return out


def _resolution(suite: str, metrics: dict) -> list[str]:
    """The smallest change the suite resolves at this size: the half-width of the paired 95%
    interval of its resolution metric's delta; no claim is made below it."""
    try:
        from trustedit.registry import get_suite

        key = get_suite(suite).resolution
    except Exception:  # noqa: BLE001 - an unknown suite in an old file
        return []
    e = metrics.get(key) if key else None
    if not e or not e.get("delta") or None in (e["delta"].get("ci95") or [None]):
        return []
    lo, hi = e["delta"]["ci95"]
    half = (hi - lo) / 2
    return [f"Resolution: at this size ({e['n']} items) the paired 95% interval of `{key}`'s change is ±"
            f"{fmt(half, e)} points wide; changes in {suite} smaller than that are not resolved, and no claim is made "
            "below it.", ""]


def _variants_table(r: dict) -> list[str]:
    var = r["variants"]
    names = list(var)
    out = ["## Side by side (the same fit's other edits; value, and change from the base model)", "",
           "| metric | base | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    main = r["method"]["name"]
    out[2] = "| metric | base | " + " | ".join([f"{main} (chosen)"] + names) + " |"
    out[3] = "|---|---|" + "---|" * (len(names) + 1)
    for s, ms in r["metrics"].items():
        for k in _ordered(ms, _headline(s)):
            e = ms[k]
            cells = [f"{fmt(e['post']['value'], e)} ({fmt(e['delta']['value'], e)})"]
            for v in names:
                ve = var[v]["metrics"].get(s, {}).get(k)
                cells.append("–" if ve is None else f"{fmt(ve['post']['value'], ve)} ({fmt(ve['delta']['value'], ve)})")
            out.append(f"| {s}/{k}{unit_label(e)} | {fmt(e['pre']['value'], e)} | " + " | ".join(cells) + " |")
    return out + [""]


def _not_converged(per: list[dict]) -> list[str]:
    """The edits whose optimisation did not reach its target (reported, never silently kept)."""
    bad = [q for q in per if "converged" in q and not q["converged"]]
    if not bad:
        return []
    shown = ", ".join(f"`{q.get('id')}` (target p {q.get('target_prob', q.get('target_prob_after', '?'))})"
                      for q in bad[:10])
    return [f"- **did not converge ({len(bad)})**: {shown}{' …' if len(bad) > 10 else ''}; they stay in the measured "
            "edit and in the patch, and count against its scores"]


def _curve_table(r: dict) -> list[str]:
    """Sequential editing: the metrics after N edits (the edited cases so far; other suites whole)."""
    cols = []
    for s, ms in r["metrics"].items():
        cols += [(s, k) for k in _ordered(ms, _headline(s))[: 8 if s == "knowedit" else 3]]
    out = ["## Sequential edits (after N edits: the N cases edited so far, other suites whole; curve.svg)", "",
           "| N | " + " | ".join(f"{s}/{k}" for s, k in cols) + " |", "|---|" + "---|" * len(cols),
           "| 0 (base) | " + " | ".join(fmt(r["metrics"][s][k]["pre"]["value"], r["metrics"][s][k]) for s, k in cols)
           + " |"]
    for pt in r["curve"]:
        cells = []
        for s, k in cols:
            e = pt["metrics"].get(s, {}).get(k)
            cells.append("–" if e is None or e.get("post") is None else fmt(e["post"]["value"], e))
        out.append(f"| {pt['edits']} | " + " | ".join(cells) + " |")
    return out + [""]


def plot_curve(r: dict, path) -> None:
    """curve.svg: each suite's metrics against the number of sequential edits (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "trustedit"
    suites = list(r["metrics"])
    fig, axes = plt.subplots(1, len(suites), figsize=(6 * len(suites), 4.2), squeeze=False)
    for ax, s in zip(axes[0], suites):
        keys = [k for k in _ordered(r["metrics"][s], _headline(s))
                if r["metrics"][s][k].get("display") == "percent"][:8]
        for k in keys:
            scale = 100 if r["metrics"][s][k].get("unit") == "fraction" else 1
            xs, ys = [0], [scale * r["metrics"][s][k]["pre"]["value"]]
            for pt in r["curve"]:
                e = pt["metrics"].get(s, {}).get(k)
                if e and e.get("post") is not None:
                    xs.append(pt["edits"])
                    ys.append(scale * e["post"]["value"])
            ax.plot(xs, ys, marker="o", label=k, linestyle="--" if k.endswith("_gen") else "-")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("sequential edits N")
        ax.set_ylabel("%")
        ax.set_title(s, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{r['method']['name']}: metrics after N sequential edits on {r['model'].get('spec')}", fontsize=10)
    fig.tight_layout()
    tmp = str(path) + ".tmp"
    fig.savefig(tmp, format="svg", metadata={"Date": None})
    plt.close(fig)
    import os

    os.replace(tmp, str(path))


def _points_table(r: dict) -> list[str]:
    cols = []
    for s, ms in r["metrics"].items():
        cols += [(s, k) for k in _ordered(ms, _headline(s))[:2]]
    out = ["## Sweep (base model first; each point fitted, evaluated and reverted)", "",
           "| point | method | " + " | ".join(f"{s}/{k}" for s, k in cols) + " | fit s |",
           "|---|---|" + "---|" * len(cols) + "---|",
           "| base | – | " + " | ".join(fmt(r["metrics"][s][k]["pre"]["value"], r["metrics"][s][k]) for s, k in cols)
           + " | – |"]
    for p in r["points"]:
        cells = []
        for s, k in cols:
            e = p["metrics"].get(s, {}).get(k)
            cells.append("–" if e is None else fmt(e["post"]["value"], e))
        out.append(f"| {p['label']} | {p['method']} | " + " | ".join(cells) + f" | {p['seconds']['fit']:.0f} |")
    return out + [""]


def comparison(runs: list[tuple[str, dict]]) -> dict:
    """What a side-by-side table of several runs holds (``trustedit compare`` and the HTML report):
    ``columns`` (one per run), ``rows`` (``{"metric": "suite/metric (unit)", "cells"}``: one per
    suite/metric, each cell ``before → after (delta)``, the change of the distance to the ideal for
    an ideal-valued metric, or the value of an evaluation) and ``warnings`` (data or base models
    that differ between the runs)."""
    keys = []
    for _, r in runs:
        for s, ms in r["metrics"].items():
            for k in _ordered(ms, _headline(s)):
                if (s, k) not in keys:
                    keys.append((s, k))
    rows = []
    for s, k in keys:
        cells, unit = [], ""
        for _, r in runs:
            e = r["metrics"].get(s, {}).get(k)
            if e is None:
                cells.append("—")
                continue
            unit = unit_label(e)
            d = e.get("distance_to_ideal")
            if e.get("post") is not None and d:  # ideal-valued: the change of |value - ideal| is what compares
                cells.append(f"{fmt(e['pre']['value'], e)} → {fmt(e['post']['value'], e)} "
                             f"(|·−{e['ideal']:g}| {fmt(d['delta'], e)})")
            elif e.get("post") is not None:
                cells.append(f"{fmt(e['pre']['value'], e)} → {fmt(e['post']['value'], e)} "
                             f"({fmt((e.get('delta') or {}).get('value'), e)})")
            else:
                cells.append(fmt(e["pre"]["value"], e))
        rows.append({"metric": f"{s}/{k}{unit}", "cells": cells})
    warnings = []
    for s in sorted({s for s, _ in keys}):
        fps = {(r.get("suites", {}).get(s, {}).get("dataset") or {}).get("fingerprint") for _, r in runs
               if s in r["metrics"]}
        if len(fps) > 1:
            warnings.append(f"suite `{s}` used different data in these runs (fingerprints differ); its columns are not "
                            "comparable.")
    if len({(r.get("model") or {}).get("fingerprint") for _, r in runs}) > 1:
        warnings.append("the runs used different base models.")
    return {"columns": [f"{label}: {run_name(r)}" for label, r in runs], "rows": rows, "warnings": warnings}


def compare_runs(runs: list[tuple[str, dict]]) -> str:
    """Side-by-side table of several runs (any jobs, and eval runs): one row per suite/metric, one
    column per run with ``before → after (delta)``, or the value of an evaluation."""
    t = comparison(runs)
    rows = ["| suite/metric | " + " | ".join(t["columns"]) + " |", "|---|" + "---|" * len(runs)]
    rows += [f"| {r['metric']} | " + " | ".join(r["cells"]) + " |" for r in t["rows"]]
    notes = []
    for label, r in runs:
        m = r.get("model", {})
        cfg = (r.get("method") or {}).get("config")
        fps = {s: str((sec.get("dataset") or {}).get("fingerprint"))[:19] for s, sec in r.get("suites", {}).items()}
        notes.append(f"- {label}: {r.get('task')} ({r.get('protocol')}), model {str(m.get('fingerprint'))[:24]}…, "
                     f"data {fps}" + (f", config {cfg}" if cfg else "") + f", {r.get('timings_s', {}).get('total', 0):.0f} s"
                     + (" (results from before schema v1, upgraded)" if r.get("legacy") else ""))
    warn = [f"- **Warning**: {w}" for w in t["warnings"]]
    return "\n".join(rows + [""] + notes + ([""] + warn if warn else [])) + "\n"


def run_name(r: dict) -> str:
    """A run's column name: its method, ``audit``, ``eval + patch`` or ``eval``."""
    if r.get("task") == "audit" or r.get("patches"):
        return "audit"
    m = r.get("method")
    return m["name"] if m else ("eval + patch" if r.get("patch_in") else "eval")


def plot_sweep(r: dict, axes_spec, path) -> None:
    """sweep.svg: each y metric (|value| for an ideal-0 coefficient) against the x metric, one
    marker per point and the base model as a star. ``axes_spec``: ("suite/metric", [y ...])."""
    import matplotlib

    from trustedit.errors import UsageError

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey, ykeys = axes_spec

    def get(metrics, key, side):
        s, _, k = key.partition("/")
        e = metrics.get(s, {}).get(k)
        return None if e is None or e.get(side) is None else e[side]["value"]

    if get(r["metrics"], xkey, "pre") is None or any(get(r["metrics"], y, "pre") is None for y in ykeys):
        raise UsageError(f"the sweep plot needs {xkey} and {', '.join(ykeys)} in the chosen suites")
    matplotlib.rcParams["svg.hashsalt"] = "trustedit"
    fig, axes = plt.subplots(1, len(ykeys), figsize=(5 * len(ykeys), 4.2), squeeze=False)
    groups = {}
    for p in r["points"]:
        groups.setdefault(p["label"].split(" d_c=")[0], []).append(p)
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    for ax, ykey in zip(axes[0], ykeys):
        absolute = ykey.endswith("a_s") or ykey.endswith("/b")
        t = (lambda v: abs(v)) if absolute else (lambda v: v)
        ax.scatter([get(r["metrics"], xkey, "pre")], [t(get(r["metrics"], ykey, "pre"))], marker="*", s=160,
                   color="black", label="base", zorder=3)
        for g, pts in groups.items():
            xs = [get(p["metrics"], xkey, "post") for p in pts]
            ys = [t(get(p["metrics"], ykey, "post")) for p in pts]
            ax.plot(xs, ys, "o-", color=colours[g], label=g)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(p["label"][len(g):].strip() or p["label"], (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        ax.set_xlabel(xkey)
        ax.set_ylabel(("|" + ykey + "|") if absolute else ykey)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{r['method']['name']} sweep on {r['model'].get('spec')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), format="svg", metadata={"Date": None})
    plt.close(fig)
