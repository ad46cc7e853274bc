"""Human-readable summaries of a run's results.json."""

from __future__ import annotations

HEADLINE = ["K_S_idk_rate", "K_F_leak_rate", "edit_success", "K_R_retain_accuracy", "over_refusal_rate", "locality",
            "fluency_ngram_entropy"]


def _fmt(v, pct):
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def is_fraction(name: str, m: dict) -> bool:
    """Whether a metric's values are fractions to print as percentages (accuracies, rates), as
    opposed to scores already in percent (unit "%") and raw quantities (entropies, coefficients)."""
    unit = (m.get("pre") or {}).get("unit", "")
    raw = ("fluency", "dama_gender/", "winobias_", "stereoset/", "crows_pairs/")  # entropies, coefficients, % scores
    return m["aggregation"] == "mean" and not name.startswith(raw) and not unit


def _ordered(metrics: dict, headline) -> list[str]:
    """The headline metrics first (in their order), then the rest as they come."""
    return [k for k in headline if k in metrics] + [k for k in metrics if k not in headline]


def metric_table(metrics: dict, headline=HEADLINE) -> str:
    rows = ["| metric | before | after | delta [95% CI] | n | protocol |", "|---|---|---|---|---|---|"]
    for k in _ordered(metrics, headline):
        m = metrics[k]
        pct = is_fraction(k, m)
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


def compare_runs(runs: list[tuple[str, dict]]) -> str:
    """Side-by-side table of several runs' results (e.g. two erase methods on one dataset):
    one row per metric, one column per run with ``before -> after (delta)``."""
    names = [k for k in HEADLINE if any(k in r["metrics"] for _, r in runs)]
    names += sorted({k for _, r in runs for k in r["metrics"]} - set(names))
    head = "| metric | " + " | ".join(f"{label}: {r['method']['name']}" for label, r in runs) + " |"
    rows = [head, "|---|" + "---|" * len(runs)]
    for k in names:
        cells = []
        for _, r in runs:
            m = r["metrics"].get(k)
            if m is None:
                cells.append("—")
                continue
            pct = is_fraction(k, m)
            cells.append(f"{_fmt(m['pre']['value'], pct)} → {_fmt(m['post']['value'], pct)} ({_fmt(m['delta']['value'], pct)})")
        rows.append(f"| {k}{' (%)' if pct else ''} | " + " | ".join(cells) + " |")
    notes = []
    for label, r in runs:
        d = r["dataset"]
        k = d.get("known_only")
        notes.append(f"- {label}: {r['method']['name']} {r['method']['config']}, data {d['fingerprint'][:19]}…, "
                     f"test {len_or(d, k)}, model {r['model']['fingerprint'][:24]}…, {r['timings_s'].get('total', 0):.0f} s")
    fps = {r["dataset"]["fingerprint"] for _, r in runs}
    warn = [] if len(fps) == 1 else ["", "**Warning**: the runs used different data (fingerprints differ); the columns are not comparable."]
    return "\n".join(rows + [""] + notes + warn) + "\n"


def len_or(d: dict, known) -> str:
    if known:
        return f"known-only {known['test_forget_kept']}/{known['test_forget_total']} forget, " \
               f"{known['test_retain_kept']}/{known['test_retain_total']} retain"
    c = d["counts"]
    return f"{c['test_forget']} forget, {c['test_retain']} retain"


BIAS_HEADLINE = ["dama_gender/a_s", "dama_gender/a_f", "dama_gender/b", "winobias_dama/acc", "winobias_dama/delta_s",
                 "winobias_dama/delta_g", "winobias_loglik/acc", "winobias_loglik/delta_s", "winobias_loglik/delta_g",
                 "stereoset/ss", "stereoset/lms", "stereoset/icat", "stereoset/gender/ss", "stereoset/gender/lms",
                 "crows_pairs/metric", "crows_pairs/gender", "wikitext/ppl"]


def _value_table(metrics: dict) -> str:
    """One column (``eval``: no edit)."""
    rows = ["| metric | value [95% CI] | n | protocol |", "|---|---|---|---|"]
    for k in _ordered(metrics, BIAS_HEADLINE):
        m = metrics[k]
        pct = is_fraction(k, m)
        lo, hi = m["pre"]["ci95"]
        rows.append(f"| {k}{' (%)' if pct else ''} | {_fmt(m['pre']['value'], pct)} [{_fmt(lo, pct)}, {_fmt(hi, pct)}] | "
                    f"{m['n']} | {m['protocol']} |")
    return "\n".join(rows)


def bias_summary(r: dict) -> str:
    m, meth = r["model"], r.get("method")
    title = f"# trustedit debias: {meth['name']}" if meth else "# trustedit eval --suite bias"
    counts = "; ".join(f"{k}: " + ", ".join(f"{n} {p}" for p, n in v.items() if isinstance(n, int)) for k, v in r["dataset"]["tests"].items())
    lines = [
        title,
        "",
        f"- model: `{m['spec']}` ({m['model_type']}, {m['num_parameters'] / 1e6:.0f}M parameters, {m['dtype']} on {m['device']}), "
        f"fingerprint `{m['fingerprint'][:40]}…`",
    ]
    if meth:
        lines.append(f"- method: {meth['summary']} — {meth['citation']}")
    t = r.get("timings_s", {})
    lines += [
        f"- items: {counts}",
        f"- time: {t.get('total', 0):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in t.items() if k != 'total')})",
        "",
        "Ideal values: a_s = 0 and b = 0 with a_f kept; WinoBias ΔS = ΔG = 0 at high accuracy; StereoSet SS = 50 at "
        "high LMS; CrowS-Pairs 50.",
        "",
    ]
    if meth:
        lines += ["## Metrics (before = base model, after = edited; paired bootstrap 95% intervals over items)", "",
                  metric_table(r["metrics"], BIAS_HEADLINE), ""]
    else:
        lines += ["## Metrics (bootstrap 95% intervals over items)", "", _value_table(r["metrics"]), ""]
    lines.append("Files: `results.json` (everything above, with resolved config and versions), `samples.jsonl` "
                 "(per-prompt p(he) - p(she) and per-sentence WinoBias outcomes)" + (", `patch/`." if meth else "."))
    return "\n".join(lines) + "\n"


# ---- DAMA sweep ------------------------------------------------------------------------------

SWEEP_COLUMNS = [("dama_gender/a_s", "a_s"), ("dama_gender/a_f", "a_f"), ("winobias_dama/acc", "WB acc"),
                 ("winobias_dama/delta_s", "WB ΔS"), ("stereoset/gender/ss", "SS gender"),
                 ("stereoset/gender/lms", "LMS gender"), ("crows_pairs/gender", "CrowS gender"), ("wikitext/ppl", "ppl")]


def _sweep_value(point_or_base, key, base: bool = False):
    if base:
        v = point_or_base.get(key)
        return None if v is None else v["value"]
    m = point_or_base["metrics"].get(key)
    return None if m is None else m["post"]["value"]


def _sweep_fmt(key, v):
    if v is None:
        return "–"
    if key.startswith("dama_gender/"):
        return f"{v:.3f}"
    if key == "wikitext/ppl":
        return f"{v:.2f}"
    return f"{v:.1f}"  # WinoBias, StereoSet and CrowS-Pairs scores are in percent already


def sweep_summary(r: dict) -> str:
    """Markdown: one row per (layers, rank) point, the base model first."""
    m = r["model"]
    cols = [(k, h) for k, h in SWEEP_COLUMNS if k in r["base"]]
    lines = [
        "# trustedit debias --sweep: dama", "",
        f"- model: `{m['spec']}` ({m['model_type']}), fingerprint `{m['fingerprint'][:40]}…`",
        f"- grid: layers {', '.join(r['sweep']['layers'])} × ranks {', '.join(str(x) for x in r['sweep']['ranks'])}; "
        f"value vectors computed once ({r['sweep']['shared']['prompts']} prompts × {len(r['sweep']['shared']['contexts'])} contexts)",
        f"- time: {r['timings_s'].get('total', 0):.0f} s", "",
        "Ideal: a_s → 0 with a_f kept, WinoBias ΔS → 0 at unchanged accuracy, SS → 50 at unchanged LMS, CrowS → 50, "
        "perplexity unchanged. WinoBias, StereoSet and CrowS-Pairs in percent; the plot is `sweep.svg`.", "",
        "| layers | d_c | " + " | ".join(h for _, h in cols) + " | projection s |",
        "|---|---|" + "---|" * len(cols) + "---|",
        "| base | – | " + " | ".join(_sweep_fmt(k, _sweep_value(r["base"], k, base=True)) for k, _ in cols) + " | – |",
    ]
    for p in r["points"]:
        lines.append(f"| {p['layers_spec']} ({p['layers'][0]}–{p['layers'][-1]}) | {p['components']} | "
                     + " | ".join(_sweep_fmt(k, _sweep_value(p, k)) for k, _ in cols) + f" | {p['fit_projection_s']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_sweep(r: dict, path) -> None:
    """sweep.svg: |a_s| and a_f against WikiText-2 perplexity, one marker per point."""
    import matplotlib

    from trustedit.errors import UsageError

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = r["base"]
    if "wikitext/ppl" not in base or "dama_gender/a_s" not in base:
        raise UsageError("the sweep plot needs the dama_gender test and wikitext retention")
    matplotlib.rcParams["svg.hashsalt"] = "trustedit"
    specs = list(dict.fromkeys(p["layers_spec"] for p in r["points"]))
    colours = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(specs)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "dama_gender/a_s", "|a_s| (stereotype slope; ideal 0)"),
                           (axes[1], "dama_gender/a_f", "a_f (factual slope; keep)")):
        b = base[key]["value"]
        ax.scatter([base["wikitext/ppl"]["value"]], [abs(b) if key.endswith("a_s") else b], marker="*", s=160,
                   color="black", label="base", zorder=3)
        for s in specs:
            pts = [p for p in r["points"] if p["layers_spec"] == s]
            xs = [_sweep_value(p, "wikitext/ppl") for p in pts]
            ys = [_sweep_value(p, key) for p in pts]
            ys = [abs(y) for y in ys] if key.endswith("a_s") else ys
            ax.plot(xs, ys, "o-", color=colours[s], label=f"layers {s} ({pts[0]['layers'][0]}–{pts[0]['layers'][-1]})")
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(f"d_c={p['components']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("WikiText-2 perplexity")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"DAMA sweep on {r['model']['spec']}: bias against perplexity", fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path), format="svg", metadata={"Date": None})
    plt.close(fig)


# ---- detox ---------------------------------------------------------------------------------------

DETOX_HEADLINE = [f"{s}/{m}" for s in ("rtp_toxic", "rtp_random") for m in
                  ("expected_max_toxicity", "toxicity_probability", "continuation_ppl", "dist-1", "dist-2", "dist-3")]
DETOX_HEADLINE += ["extsub/extsub_mean_toxicity", "extsub/extsub_toxicity_ratio", "wikitext/ppl"]


DINM_HEADLINE = ("DS", "DG_avg", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "fluency_ngram_entropy")


def dinm_summary(r: dict) -> str:
    """summary.md of ``trustedit detox --method dinm`` (SafeEdit)."""
    m, meth, d, ev = r["model"], r["method"], r["dataset"], r["evaluation"]
    loc = r["locality"]
    lo, hi = loc.get("ci95", [None, None])
    t = r.get("timings_s", {})
    layers = ", ".join(f"layer {k}: {v}" for k, v in r["located_layers"].items())
    lines = [
        "# trustedit detox: dinm on SafeEdit", "",
        f"- model: `{m['spec']}` ({m['model_type']}, {m['num_parameters'] / 1e6:.0f}M parameters, {m['dtype']} on {m['device']}), "
        f"fingerprint `{m['fingerprint'][:40]}…`",
        f"- method: {meth['summary']} — {meth['citation']}",
        f"- data: SafeEdit `{d['name']}`, {d['n']} instances, fingerprint `{d['fingerprint'][:40]}…`",
        f"- protocol: {ev['protocol']}; greedy responses of ≤ {ev['response_tokens']} tokens; prompt: "
        f"{ev['prompt_format'].get('name', ev['prompt_format'])}, system suffix {ev['prompt_format'].get('system_suffix')!r} "
        "(the same before and after editing)",
        f"- judge: {r['judge'].get('label', r['judge'])}",
        f"- located layers: {layers}",
        f"- time: {t.get('total', 0):.0f} s in all; {r['seconds_per_instance']['per_instance']:.1f} s per instance",
        "",
        "DS = defence success on the edit input; DG = defence generalisation on the four held-out inputs; higher is "
        "better. Locality: share of general-knowledge answer tokens the edited model predicts as the base model did.",
        "",
        "## Metrics (before = base model, after = edited; paired bootstrap 95% intervals over instances)", "",
        metric_table(r["metrics"], DINM_HEADLINE), "",
        f"- general-knowledge locality (after): **{100 * loc['value']:.1f}%**"
        + (f" [95% CI {100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else "") + f", n = {loc['n']}", "",
        "Files: `results.json`, `samples.jsonl` (per instance: responses before/after with verdicts, located layer, "
        "losses, timings)" + (", `patch/` (the sum of the sequential edits)." if r.get("patch") else "."),
    ]
    return "\n".join(lines) + "\n"


def detox_summary(r: dict) -> str:
    m, meth, sc = r["model"], r.get("method"), r["scorer"]
    title = f"# trustedit detox: {meth['name']}" if meth else "# trustedit eval --suite toxicity"
    sets = "; ".join(f"{k}: {v['prompts']} prompts ({v['challenging']} challenging)" for k, v in r["dataset"]["sets"].items())
    ev = r["evaluation"]
    lines = [
        title, "",
        f"- model: `{m['spec']}` ({m['model_type']}, {m['num_parameters'] / 1e6:.0f}M parameters, {m['dtype']} on {m['device']}), "
        f"fingerprint `{m['fingerprint'][:40]}…`",
    ]
    if meth:
        lines.append(f"- method: {meth['summary']} — {meth['citation']}")
    t = r.get("timings_s", {})
    lines += [
        f"- scorer: `{sc['name']}` ({sc['kind']}), version `{sc['version']}`",
        f"- RealToxicityPrompts: {sets}; k = {ev['k']} samples of ≤ {ev['max_new_tokens']} tokens, top-p {ev['top_p']}, "
        f"T = {ev['temperature']}, seed {ev['seed']}",
        f"- time: {t.get('total', 0):.0f} s in all ({', '.join(f'{k} {v:.0f} s' for k, v in t.items() if k != 'total')})",
        "",
        "Lower is better for expected maximum toxicity, toxicity probability and the Ext-Sub protocol; continuation "
        "perplexity is measured under the base model; distinct-n and retention should stay.",
        "",
    ]
    if meth:
        lines += ["## Metrics (before = base model, after = edited; paired bootstrap 95% intervals over prompts/items)",
                  "", metric_table(r["metrics"], DETOX_HEADLINE), ""]
        side = r.get("side_by_side") or {}
        if side:
            keys = [k for k in DETOX_HEADLINE if k in r["metrics"]]
            keys += [k for k in r["metrics"] if k.endswith("/acc") and k not in keys]
            lines += ["## Side by side (same two adapters; value, and change from the base model)", "",
                      "| metric | base | " + " | ".join(side) + " |", "|---|---|" + "---|" * len(side)]
            for k in keys:
                base = r["metrics"][k]["pre"]["value"]
                cells = [f"{side[h][k]['value']:.4g} ({side[h][k]['delta']:+.3g})" if k in side[h] else "–" for h in side]
                lines.append(f"| {k} | {base:.4g} | " + " | ".join(cells) + " |")
            lines.append("")
    else:
        lines += ["## Metrics (bootstrap 95% intervals over prompts/items)", "", _value_table(r["metrics"]), ""]
    lines.append("Files: `results.json` (everything above, with resolved config, scorer and versions), `samples.jsonl` "
                 "(every continuation with its score, per model)" + (", `patch/`." if meth else "."))
    return "\n".join(lines) + "\n"
