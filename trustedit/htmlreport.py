"""The audit report of one or several runs, rendered again from their saved ``results.json`` and
``samples.jsonl`` alone (no model, no torch): ``report.html`` (one self-contained file: inline CSS,
plots as inline SVG, no scripts, no external references) and ``report.md`` with the same sections
as text, for a terminal or a pull request.

Sections, in order: what was audited; the executive summary (a pass / warn / fail light per area
from the gate rules in force: :mod:`trustedit.gate`); for several runs, a side-by-side table; then
per run: per-suite tables (before, after, delta with its paired 95 % interval, n, the protocol of
each number), plots (before/after bars per suite, a sweep's trade-off curves, the running mean of
per-instance edits, an audit's interference heat-map), the audit sections (patches, interference
matrix, relapse), examples of generations before and after (PII masked), and provenance.

``trustedit report RUN_DIR [RUN_DIR ...] [--out FILE] [--rules gates.yaml] [--overwrite]``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
from pathlib import Path

from trustedit.errors import TrusteditError, UsageError
from trustedit.report import _ci, _headline, _ordered, fmt, md_escape, run_name, unit_label

AREAS = ("forgetting", "bias", "toxicity", "capability")
STATUS_ORDER = {"fail": 3, "warn": 2, "pass": 1, "none": 0}
ICONS = {"pass": "✅", "warn": "⚠️", "fail": "❌", "none": "⬜"}
MAX_TEXT = 300
MAX_EXAMPLES = 5
MAX_BARS = 6
PROMPT_KEYS = ("prompt", "question", "instruction", "sentence", "input", "query", "context")


# ---- loading ------------------------------------------------------------------------------------


def load_run(run_dir) -> tuple[str, dict, list[dict]]:
    """(label, results, samples) of a run directory: results through :func:`trustedit.results.load`
    (validated, older layouts upgraded), and the rows of ``samples.jsonl`` when it is there."""
    from trustedit import results as R

    d = Path(run_dir)
    results = R.load(d)
    folder = d if d.is_dir() else d.parent
    samples: list[dict] = []
    path = folder / "samples.jsonl"
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        row = json.loads(line)
                        if isinstance(row, dict):
                            samples.append(row)
        except json.JSONDecodeError as e:
            raise TrusteditError(f"{path}: invalid JSON on line {i}: {e.msg}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TrusteditError(f"{path}: unreadable ({e})") from None
    return folder.resolve().name or str(folder), results, samples


# ---- small helpers ------------------------------------------------------------------------------


def _get(o, key, default=None):
    if isinstance(o, dict):
        return o.get(key, default)
    return getattr(o, key, default)


def _short(s, n: int = 16) -> str:
    s = "" if s is None else str(s)
    return s if len(s) <= n + 1 else s[:n] + "…"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _disp(v, e: dict):
    """A value in the units the tables print (fractions shown as percent are times 100)."""
    if v is None:
        return None
    return 100 * v if e.get("display") == "percent" and e.get("unit") == "fraction" else v


def _split_key(key: str) -> tuple[str, str]:
    s, _, k = str(key).partition("/")
    return s, k


def _entry(results: dict, key: str) -> dict | None:
    s, k = _split_key(key)
    return (results.get("metrics") or {}).get(s, {}).get(k)


def _fmt_any(v, e: dict | None) -> str:
    if e is None:
        return "n/a" if v is None else f"{v:.4g}" if _num(v) else str(v)
    return fmt(v, e)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _ci_pct(ci) -> str:
    lo, hi = (ci or [None, None])[:2]
    return f"[{_pct(lo)}, {_pct(hi)}]"


def _excludes_zero(ci) -> bool:
    lo, hi = (ci or [None, None])[:2]
    return _num(lo) and _num(hi) and (lo > 0 or hi < 0)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _mask_fn():
    """trustedit.pii.mask_text when it is there, else a conservative local masker (e-mail
    addresses, phone numbers, IPv4 addresses)."""
    try:
        from trustedit.pii import mask_text

        return mask_text
    except ImportError:  # the PII module is optional here: fall back to the obvious patterns
        return _fallback_mask


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<!\w)\+?\d[\d ().-]{7,}\d(?!\w)")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def _fallback_mask(text: str) -> str:
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IPV4.sub("[IP]", text)
    return _PHONE.sub("[PHONE]", text)


# ---- the executive summary: gate lights ---------------------------------------------------------


def _gate():
    try:
        import trustedit.gate as gate
    except ImportError:
        return None
    return gate


def _resolve_rules(rules):
    """(gate module, rules, where they come from) for ``rules``: None (the packaged defaults), a
    path to a rules file, or a list of rules."""
    gate = _gate()
    if gate is None:
        if rules is not None:
            raise UsageError("--rules: the gate module (trustedit.gate) is not available in this installation")
        return None, None, "unavailable"
    if rules is None:
        return gate, gate.default_rules(), "the packaged default rules"
    if isinstance(rules, (str, os.PathLike)):
        return gate, gate.load_rules(rules), f"the rules in {rules}"
    return gate, list(rules), "the rules given"


def _rule_name(rule) -> str:
    for k in ("name", "id", "label", "metric"):
        v = _get(rule, k)
        if v:
            return str(v)
    return str(rule)


def _lights(gate, rules, results: dict, explicit: bool = False) -> tuple[list[dict], str | None]:
    """One light per area: status, one-line reason (the worst rule's message), and the rules."""
    if gate is None:
        return [{"area": a, "status": "none", "icon": ICONS["none"], "reason": "no gate rules (trustedit.gate "
                 "is not available)", "rules": []} for a in AREAS], "The gate module is not installed; no lights."
    note = None
    try:
        if explicit:  # rules the user chose: say which of them this run cannot answer
            try:
                gate.evaluate(results, rules, baseline=None, missing="error")
            except TrusteditError as e:
                note = f"Not every rule applies to this run; those that do not were left out ({e})."
        outcomes = list(gate.evaluate(results, rules, baseline=None, missing="skip"))
    except TrusteditError:
        raise
    except Exception as e:  # noqa: BLE001 - a rule that cannot be applied: say so, do not fail the report
        return [{"area": a, "status": "none", "icon": ICONS["none"], "reason": "rules not evaluated", "rules": []}
                for a in AREAS], f"The gate rules could not be evaluated on this run: {type(e).__name__}: {e}"
    lights = dict(gate.lights(outcomes) or {})
    areas = list(AREAS) + sorted({str(_get(o, "area")) for o in outcomes if _get(o, "area")} - set(AREAS))
    out = []
    for a in areas:
        mine = [o for o in outcomes if _get(o, "area") == a]
        status = lights.get(a) or (max((_get(o, "status") for o in mine), key=lambda s: STATUS_ORDER.get(s, 0))
                                   if mine else "none")
        if a not in AREAS and not mine:
            continue
        worst = max(mine, key=lambda o: STATUS_ORDER.get(_get(o, "status"), 0)) if mine else None
        reason = (str(_get(worst, "message") or "") if worst is not None else
                  "not measured: no rule of this area applies to the suites of this run")
        rows = []
        for o in mine:
            st = _get(o, "status") or "none"
            rows.append({"name": _rule_name(_get(o, "rule")), "status": st, "icon": ICONS.get(st, "?"),
                         "message": str(_get(o, "message") or "")})
        out.append({"area": a, "status": status, "icon": ICONS.get(status, "?"), "reason": reason, "rules": rows})
    return out, note


# ---- tables -------------------------------------------------------------------------------------


def _suite_table(suite: str, metrics: dict) -> dict:
    keys = _ordered(metrics, _headline(suite))
    edited = any(metrics[k].get("post") is not None for k in keys)
    ideals = edited and any("ideal" in metrics[k] for k in keys)
    protocols: list[str] = []
    rows = []
    for k in keys:
        e = metrics[k]
        p = str(e.get("protocol", ""))
        if p not in protocols:
            protocols.append(p)
        arrow = f"→ {e['ideal']:g}" if "ideal" in e else "↑" if e.get("higher_is_better", True) else "↓"
        pre, post, delta = e.get("pre") or {}, e.get("post") or {}, e.get("delta") or {}
        row = {"metric": k, "unit": unit_label(e).strip(), "arrow": arrow, "n": e.get("n", ""),
               "ref": protocols.index(p) + 1,
               "before": fmt(pre.get("value"), e), "before_ci": _ci(pre.get("ci95"), e),
               "after": fmt(post.get("value"), e) if edited else "",
               "delta": fmt(delta.get("value"), e) if edited else "",
               "delta_ci": _ci(delta.get("ci95"), e) if edited else "",
               "sig": edited and _excludes_zero(delta.get("ci95")),
               "dist": "", "dist_ci": "", "dist_word": ""}
        d = e.get("distance_to_ideal")
        if ideals and d:
            dv = d.get("delta") or 0
            row.update(dist=fmt(d.get("delta"), e), dist_ci=_ci(d.get("ci95"), e),
                       dist_word="closer" if dv < 0 else "farther" if dv > 0 else "same")
        rows.append(row)
    return {"name": suite, "anchor": _slug(suite), "edited": edited, "ideals": ideals, "rows": rows,
            "protocols": protocols, "resolution": _resolution(suite, metrics)}


def _resolution(suite: str, metrics: dict) -> str:
    try:
        from trustedit.registry import get_suite

        key = get_suite(suite).resolution
    except Exception:  # noqa: BLE001 - an unknown suite in an old file
        return ""
    e = metrics.get(key) if key else None
    if not e or not e.get("delta") or None in (e["delta"].get("ci95") or [None]):
        return ""
    lo, hi = e["delta"]["ci95"]
    return (f"Resolution: at this size ({e['n']} items) the paired 95% interval of {key}'s change is ±"
            f"{fmt((hi - lo) / 2, e)} points wide; smaller changes in {suite} are not resolved.")


def _points_table(r: dict) -> dict | None:
    if not r.get("points"):
        return None
    cols = []
    for s, ms in r["metrics"].items():
        cols += [(s, k) for k in _ordered(ms, _headline(s))[:2]]
    head = [f"{s}/{k}{unit_label(r['metrics'][s][k])}" for s, k in cols]
    rows = [["base", "–"] + [fmt(r["metrics"][s][k]["pre"]["value"], r["metrics"][s][k]) for s, k in cols] + ["–"]]
    for p in r["points"]:
        cells = []
        for s, k in cols:
            e = (p.get("metrics") or {}).get(s, {}).get(k)
            cells.append("–" if e is None or e.get("post") is None else fmt(e["post"]["value"], e))
        fit = (p.get("seconds") or {}).get("fit")
        rows.append([str(p.get("label")), str(p.get("method"))] + cells + ["–" if fit is None else f"{fit:.0f}"])
    return {"head": ["point", "method"] + head + ["fit s"], "rows": rows}


def _compare_table(runs) -> dict:
    from trustedit.report import comparison

    t = comparison([(label, r) for label, r, _ in runs])
    t["warnings"] = [w[:1].upper() + w[1:].replace("`", "") for w in t["warnings"]]
    return t


# ---- what was audited, provenance ---------------------------------------------------------------


def _patches_applied(r: dict) -> list[str]:
    if r.get("patches"):
        return [f"{p.get('label')} ({p.get('method')}, {p.get('path')}, digest {_short(p.get('digest'), 12)})"
                for p in r["patches"]]
    if r.get("patch_in"):
        p = r["patch_in"]
        return [f"{p.get('path')} ({p.get('method', '?')})"]
    meth = r.get("method")
    proto = r.get("protocol", "none")
    if meth and proto == "sweep":
        return [f"{meth['name']}: {len(r.get('points') or [])} sweep points, each fitted, measured and reverted"]
    if meth and proto == "per_instance":
        return [f"{meth['name']}: {len(r.get('edits') or [])} per-instance edits (edit → measure → revert)"]
    if meth and proto == "sequential":
        fits = r.get("edits") or []
        n = (fits[-1].get("edited_so_far") if fits else None) or len(fits)  # `trustedit edit`: fits of several edits
        return [f"{meth['name']}: {n} sequential edits" + (f" in {len(fits)} fits" if n != len(fits) else "")
                + ", kept one after another"]
    if meth:
        where = (r.get("patch") or {}).get("path")
        return [f"{meth['name']}" + (f" (saved as {where}/)" if where else "")]
    return ["none: an evaluation of the base model"]


def _dataset_size(ds: dict) -> str:
    parts = []
    for k, v in ds.items():
        if k in ("limit", "sample_seed", "seed") or isinstance(v, bool):
            continue
        if isinstance(v, int):
            parts.append(f"{k.replace('_', ' ')} {v}")
        elif isinstance(v, dict) and k in ("counts", "tasks") and all(isinstance(x, int) for x in v.values()):
            parts.append(", ".join(f"{a} {b}" for a, b in v.items()))
        elif isinstance(v, dict) and k == "sets":
            for name, sub in v.items():
                if isinstance(sub, dict):
                    n = next((sub[x] for x in ("prompts", "n", "items") if isinstance(sub.get(x), int)), None)
                    if n is not None:
                        parts.append(f"{name} {n}")
    return "; ".join(parts) or "n/a"


def _scorer_text(sec: dict) -> list[str]:
    out = []
    sc = sec.get("scorer")
    if isinstance(sc, dict):
        out.append(f"scorer {sc.get('name', '?')} ({sc.get('kind', '')}) {sc.get('version', '')}".replace("  ", " "))
    elif sc:
        out.append(f"scorer {sc}")
    j = sec.get("judge")
    if isinstance(j, dict):
        enc = j.get("encoder") if isinstance(j.get("encoder"), dict) else {}
        out.append(f"judge {j.get('label') or j.get('judge')}" + (f", encoder {_short(enc.get('fingerprint'), 40)}"
                                                                   if enc.get("fingerprint") else "")
                   + (f", version {j['version']}" if j.get("version") else ""))
    elif j:
        out.append(f"judge {j}")
    return out


def _provenance(label: str, r: dict) -> dict:
    m = r.get("model") or {}
    ev = r.get("evaluation") or {}
    suites = []
    for s, sec in (r.get("suites") or {}).items():
        ds = sec.get("dataset") or {}
        suites.append({"suite": s, "fingerprint": _short(ds.get("fingerprint"), 30), "size": _dataset_size(ds),
                       "scorers": "; ".join(_scorer_text(sec)) or "–"})
    versions = dict(r.get("versions") or {})
    git = versions.pop("trustedit_git", None)
    t = r.get("timings_s") or {}
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in t.items() if k != "total" and "/" not in k and _num(v))
    facts = [
        ("model", f"{m.get('spec')} ({m.get('model_type', '?')}"
                  + (f", {m['num_parameters'] / 1e6:.0f}M parameters" if _num(m.get("num_parameters")) else "") + ")"),
        ("fingerprint", str(m.get("fingerprint"))),
        ("dtype / device", f"{m.get('dtype', ev.get('dtype'))} on {m.get('device', ev.get('device'))}"),
        ("task / protocol", f"{r.get('task')} / {r.get('protocol')}"),
        ("method", ((r.get("method") or {}).get("name") or "none")
         + (f": {r['method'].get('summary')} ({r['method'].get('citation')})" if r.get("method") and
            r["method"].get("summary") else "")),
        ("seeds", ", ".join(f"{k} {v}" for k, v in (r.get("seeds") or {}).items()) or "n/a"),
        ("evaluation", ", ".join(f"{k} {v}" for k, v in ev.items()) or "n/a"),
        ("trustedit", f"{r.get('trustedit_version', versions.get('trustedit', '?'))}, git revision "
                      f"{git or 'unknown'}"),
        ("library versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "n/a"),
        ("argv", " ".join(str(a) for a in (r.get("argv") or [])) or "n/a"),
        ("created", str(r.get("created"))),
        ("time", f"{t.get('total', 0):.0f} s in all" + (f" ({timings})" if timings else "")),
    ]
    if r.get("training_data"):
        td = r["training_data"]
        facts.append(("training data", ", ".join(f"{k} {_short(v, 30)}" for k, v in td.items() if v is not None)
                      if isinstance(td, dict) else str(td)))
    if (r.get("method") or {}).get("config"):
        facts.append(("method config", json.dumps(r["method"]["config"], sort_keys=True, default=str)))
    if r.get("legacy"):
        facts.append(("note", "results from before schema v1, upgraded on reading"))
    return {"label": label, "facts": [{"key": k, "value": v} for k, v in facts], "suites": suites}


# ---- audit sections -----------------------------------------------------------------------------


def _audit(r: dict) -> dict | None:
    if not (r.get("patches") or r.get("interference") or r.get("relapse")):
        return None
    patches = []
    for i, p in enumerate(r.get("patches") or []):
        bm = p.get("base_model") or {}
        tr = p.get("training") or {}
        patches.append({"i": i + 1, "label": str(p.get("label")), "method": str(p.get("method")),
                        "path": str(p.get("path")), "digest": _short(p.get("digest"), 16),
                        "base": f"{bm.get('spec', '?')} ({_short(bm.get('fingerprint'), 24)})" if bm else "–",
                        "headline": str(p.get("headline") or "–"),
                        "training": _short(", ".join(f"{k} {v}" for k, v in tr.items()
                                                     if not isinstance(v, (dict, list)))
                                           if isinstance(tr, dict) else str(tr), 120) or "–"})
    inter = None
    itf = r.get("interference") or {}
    if itf.get("rows"):
        heads = dict(itf.get("headline") or {})
        for p in r.get("patches") or []:
            if p.get("label") and p["label"] not in heads and p.get("headline"):
                heads[p["label"]] = p["headline"]
        labels = list(heads)
        for row in itf["rows"]:
            for lab in (row.get("effects") or {}):
                if lab not in labels:
                    labels.append(lab)
        names = [str(p.get("label")) for p in r.get("patches") or []]
        rows = []
        for row in itf["rows"]:
            inside = {names[i] for i in (row.get("patches") or []) if isinstance(i, int) and i < len(names)}
            cells = []
            for lab in labels:
                eff = (row.get("effects") or {}).get(lab)
                metric = (eff or {}).get("metric") or heads.get(lab)
                e = _entry(r, metric) if metric else None
                here = bool(eff.get("in_config")) if eff and "in_config" in eff else lab in inside
                if not eff or eff.get("effect") is None:
                    cells.append({"text": "n/a" if here else "–", "in": here, "retained": None})
                    continue
                text = f"{_fmt_any(eff['effect'], e)} {_ci(eff.get('ci95'), e) if e else _ci_raw(eff.get('ci95'))}"
                ret = eff.get("retained")
                if here and ret is not None:
                    text += f" ({_pct(ret)} retained)"
                elif not here:
                    text = f"– (moved {text} by the other edits)"
                cells.append({"text": text, "in": here, "retained": ret})
            rows.append({"config": str(row.get("config")), "cells": cells})
        inter = {"columns": [{"label": lab, "metric": heads.get(lab, "?")} for lab in labels], "rows": rows}
    relapse = []
    for rp in r.get("relapse") or []:
        e = _entry(r, rp.get("headline")) if rp.get("headline") else None
        eff = rp.get("effect") or {}
        for cond, c in (rp.get("conditions") or {}).items():
            ce, rl = c.get("effect") or {}, c.get("relapse") or {}
            rv = rl.get("value")
            relapse.append({
                "patch": str(rp.get("patch")), "headline": str(rp.get("headline")),
                "effect": _value_ci(eff, e),
                "condition": str(cond) + (f" ({c['steps']} steps)" if c.get("steps") is not None else ""),
                "cond_effect": _value_ci(ce, e),
                "relapse": f"{_pct(rv)} {_ci_pct(rl.get('ci95'))}",
                "verdict": ("n/a" if rv is None else "robust" if rv < 0.1 else "partly undone" if rv < 0.5 else
                            "largely undone") + _degraded(c.get("base_wikitext_ppl")),
                "base": _fmt_any(c.get("base"), e), "edited": _fmt_any(c.get("edited"), e)})
    return {"patches": patches, "interference": inter, "relapse": relapse}


def _degraded(ppl) -> str:
    """A note when the change itself degrades the base model (WikiText-2 perplexity up > 25 %)."""
    if not isinstance(ppl, dict) or not ppl.get("unchanged") or not ppl.get("changed"):
        return ""
    ratio = ppl["changed"] / ppl["unchanged"]
    return f" (the change degrades the base model: perplexity ×{ratio:.2f})" if ratio > 1.25 else ""


def _value_ci(v: dict, e: dict | None) -> str:
    """``{"value", "ci95"}`` as ``value [lo, hi]`` in the display of entry ``e``."""
    return f"{_fmt_any(v.get('value'), e)} {_ci(v.get('ci95'), e) if e else _ci_raw(v.get('ci95'))}"


def _ci_raw(ci) -> str:
    lo, hi = (ci or [None, None])[:2]
    return f"[{_fmt_any(lo, None)}, {_fmt_any(hi, None)}]"


# ---- examples -----------------------------------------------------------------------------------


def _text_of(side, prefer=()):
    """(text, note) of one side of a sample: a string, {"text", "score"}, a list of those (the
    first), or a mapping of metric -> {"response", "verdict"} (the preferred metric's)."""
    if isinstance(side, str):
        return side, ""
    if isinstance(side, list) and side:
        t, note = _text_of(side[0])
        if t is None:
            return None, ""
        return t, (note + "; " if note else "") + f"first of {len(side)}" if len(side) > 1 else note
    if isinstance(side, dict):
        for k in ("text", "response", "generation", "output"):
            if isinstance(side.get(k), str):
                for s in ("score", "verdict"):
                    if _num(side.get(s)):
                        return side[k], f"{s} {side[s]:.3g}"
                return side[k], ""
        keys = [k for k in prefer if k in side] + [k for k in side if k not in prefer]
        for k in keys:
            if isinstance(side[k], dict):
                t, note = _text_of(side[k])
                if t is not None:
                    return t, f"{k}" + (f", {note}" if note else "")
    return None, ""


def _clip(text: str, mask) -> str:
    t = mask(text)
    return t if len(t) <= MAX_TEXT else t[:MAX_TEXT].rstrip() + "…"


def _examples(r: dict, samples: list[dict]) -> list[dict]:
    mask = _mask_fn()
    by_suite: dict[str, list] = {}
    for row in samples:
        s = str(row.get("suite", "?"))
        got = by_suite.setdefault(s, [])
        if len(got) >= MAX_EXAMPLES or "pre" not in row:
            continue
        prefer = _headline(s)
        pre, pre_note = _text_of(row.get("pre"), prefer)
        post, post_note = _text_of(row.get("post"), prefer) if row.get("post") is not None else (None, "")
        if pre is None and post is None:
            continue
        prompt = next((row[k] for k in PROMPT_KEYS if isinstance(row.get(k), str)), None)
        if prompt is None:
            what = ", ".join(f"{k} {row[k]}" for k in ("id", "index", "category", "split", "set") if k in row)
            prompt = f"({what})" if what else "(prompt not recorded)"
        if isinstance(row.get("gold"), str):
            prompt += f" [gold: {row['gold']}]"
        got.append({"prompt": _clip(prompt, mask), "pre": _clip(pre, mask) if pre is not None else "–",
                    "post": _clip(post, mask) if post is not None else "–", "pre_note": pre_note,
                    "post_note": post_note})
    return [{"suite": s, "rows": rows} for s, rows in by_suite.items() if rows]


# ---- plots --------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig, salt: str) -> str:
    import matplotlib

    plt = _plt()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": f"trustedit-{salt}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", s, flags=re.S)


def _bars(suite: str, metrics: dict, salt: str, sweep: bool = False) -> dict | None:
    keys = [k for k in _ordered(metrics, _headline(suite)) if _num((metrics[k].get("pre") or {}).get("value"))]
    keys = keys[:MAX_BARS]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(max(2.3 * len(keys), 4.0), 2.9), squeeze=False)
    edited = any(metrics[k].get("post") is not None for k in keys)
    for ax, k in zip(axes[0], keys):
        e = metrics[k]
        sides = [("before", e.get("pre"), "#7f8c9b")] + ([("after", e.get("post"), "#2b6cb0")] if edited else [])
        xs, ys, lo, hi, cols, names = [], [], [], [], [], []
        for i, (name, side, col) in enumerate(sides):
            v = _disp((side or {}).get("value"), e)
            if v is None:
                continue
            ci = (side or {}).get("ci95") or [None, None]
            a, b = _disp(ci[0], e), _disp(ci[1], e)
            xs.append(i)
            ys.append(v)
            lo.append(max(v - a, 0) if a is not None else 0)
            hi.append(max(b - v, 0) if b is not None else 0)
            cols.append(col)
            names.append(name)
        ax.bar(xs, ys, color=cols, width=0.6, yerr=[lo, hi], capsize=4, error_kw={"elinewidth": 1})
        ax.set_xticks(xs, names, fontsize=8)
        ax.axhline(0, color="#444", lw=0.6)
        if "ideal" in e:
            ax.axhline(_disp(e["ideal"], e), color="#2f855a", lw=0.8, ls="--")
        arrow = f"→ {e['ideal']:g}" if "ideal" in e else "↑" if e.get("higher_is_better", True) else "↓"
        ax.set_title(_wrap(f"{k}{unit_label(e)} {arrow}"), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{suite}: before / after, 95% intervals", fontsize=9)
    fig.tight_layout()
    return {"title": f"{suite}: headline metrics before and after", "svg": _svg(fig, salt),
            "caption": f"{suite}: " + (f"the {len(keys)} headline metrics" if len(keys) > 1 else "the headline metric")
                       + "; bars are values, whiskers the bootstrap 95% "
                       "interval of each model's value" + ("" if edited else " (the base model alone: the sweep points "
                                                           "are in the trade-off plot)" if sweep else
                                                           " (an evaluation: one model)") + "."}


def _wrap(title: str, width: int = 26) -> str:
    """A panel title on at most two lines, broken after a '/' or a space near the middle."""
    if len(title) <= width:
        return title
    cuts = [i + 1 for i, c in enumerate(title) if c in "/ " and 0 < i < len(title) - 1] or \
        [i + 1 for i, c in enumerate(title) if c == "_" and 0 < i < len(title) - 1]
    if not cuts:
        return title
    cut = min(cuts, key=lambda i: abs(i - len(title) / 2))
    return title[:cut].rstrip() + "\n" + title[cut:].lstrip()


def _tradeoff(r: dict, salt: str) -> dict | None:
    pts = r.get("points") or []
    ms = r.get("metrics") or {}
    if not pts or not ms:
        return None

    def first(s):
        keys = [k for k in _ordered(ms[s], _headline(s)) if _num((ms[s][k].get("pre") or {}).get("value"))]
        return keys[0] if keys else None

    xs_suite = "retention" if "retention" in ms and first("retention") else next((s for s in ms if first(s)), None)
    if xs_suite is None:
        return None
    xk = first(xs_suite)
    ys = [(s, first(s)) for s in ms if s != xs_suite and first(s)]
    if not ys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(ys), figsize=(max(3.6 * len(ys), 5), 3.4), squeeze=False)
    xe = ms[xs_suite][xk]

    def val(metrics, s, k, side):
        e = (metrics.get(s) or {}).get(k)
        v = None if e is None or e.get(side) is None else e[side].get("value")
        if v is None:
            return None
        return abs(v - e["ideal"]) if "ideal" in e else _disp(v, e)

    groups: dict[str, list] = {}
    for p in pts:
        lab = str(p.get("label", "?"))
        groups.setdefault(lab.rsplit(" ", 1)[0] if " " in lab else lab, []).append(p)
    cmap = plt.get_cmap("tab10")
    for ax, (s, k) in zip(axes[0], ys):
        ye = ms[s][k]
        bx, by = val(ms, xs_suite, xk, "pre"), val(ms, s, k, "pre")
        if bx is not None and by is not None:
            ax.scatter([bx], [by], marker="*", s=170, color="black", label="base model", zorder=3)
        for gi, (g, gp) in enumerate(groups.items()):
            xy = [(val(p.get("metrics") or {}, xs_suite, xk, "post"), val(p.get("metrics") or {}, s, k, "post"), p)
                  for p in gp]
            xy = [t for t in xy if t[0] is not None and t[1] is not None]
            if not xy:
                continue
            ax.plot([t[0] for t in xy], [t[1] for t in xy], "o-", color=cmap(gi % 10), label=g, ms=4)
            for x, y, p in xy:
                rest = str(p.get("label"))[len(g):].strip()
                ax.annotate(rest or str(p.get("label")), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.set_xlabel(f"{xs_suite}/{xk}" + ("  |value − ideal|" if "ideal" in xe else unit_label(xe)), fontsize=8)
        ax.set_ylabel(f"{s}/{k}" + ("  |value − ideal|" if "ideal" in ye else unit_label(ye)), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"trade-off over {len(pts)} sweep points", fontsize=9)
    fig.tight_layout()
    return {"title": "Trade-off curves (sweep)", "svg": _svg(fig, salt),
            "caption": f"x: {xs_suite}/{xk}; y: each other suite's first headline metric (|value − ideal| where the "
                       "metric has an ideal); one marker per sweep point, the base model as a star."}


def _item_value(side, metric: str):
    if isinstance(side, dict) and metric in side:
        v = side[metric]
        if isinstance(v, bool):
            return float(v)
        if _num(v):
            return float(v)
        if isinstance(v, dict):
            for k in ("verdict", "value", "score", "correct", "success"):
                if isinstance(v.get(k), bool):
                    return float(v[k])
                if _num(v.get(k)):
                    return float(v[k])
    return None


def _curve(r: dict, salt: str) -> dict:
    """`trustedit edit --mode sequential`: each metric of every suite after N edits (results' ``curve``)."""
    plt = _plt()
    suites = list(r["metrics"])
    fig, axes = plt.subplots(1, len(suites), figsize=(5.2 * len(suites), 3.4), squeeze=False)
    for ax, s in zip(axes[0], suites):
        ms = r["metrics"][s]
        for k in [k for k in _ordered(ms, _headline(s)) if ms[k].get("display") == "percent"][:6]:
            xs, ys = [0], [_disp(ms[k]["pre"]["value"], ms[k])]
            for pt in r["curve"]:
                e = pt["metrics"].get(s, {}).get(k)
                if e and e.get("post"):
                    xs.append(pt["edits"])
                    ys.append(_disp(e["post"]["value"], e))
            ax.plot(xs, ys, marker="o", ms=3, label=k, linestyle="--" if k.endswith("_gen") else "-")
        ax.set_xlabel("sequential edits N", fontsize=8)
        ax.set_title(s, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    n = r["curve"][-1]["edits"]
    return {"title": f"sequential edits: metrics after N edits (N = {', '.join(str(p['edits']) for p in r['curve'])})",
            "svg": _svg(fig, salt),
            "caption": f"The instance suite on the cases edited so far, paired with the base model on the same cases; "
                       f"other suites whole. {n} edits in fits of {len(r['edits'][0]['item'])} (each fit kept)."}


def _sequential(r: dict, samples: list[dict], salt: str) -> tuple[dict | None, str | None]:
    if r.get("curve") and r.get("edits"):
        return _curve(r, salt), None
    if r.get("protocol") not in ("sequential", "per_instance") or not r.get("edits"):
        return None, None
    order = {}
    for i, ed in enumerate(r["edits"]):
        order.setdefault(str(ed.get("item")), i)
    for s, ms in (r.get("metrics") or {}).items():
        rows = [x for x in samples if x.get("suite") == s]
        if not rows:
            continue
        for k in _ordered(ms, _headline(s))[:1]:
            def pick(row, side):
                v = _item_value(row.get(side), k)
                if v is None and _num(row.get(f"{side}_{k}")):
                    v = float(row[f"{side}_{k}"])
                return v

            post = [pick(x, "post") for x in rows]
            if any(v is None for v in post):
                continue
            pre = [pick(x, "pre") for x in rows]

            def idx(x, j):
                item = (x.get("edit") or {}).get("item", x.get("id", x.get("index")))
                return order.get(str(item), len(order) + j)

            ranked = sorted(range(len(rows)), key=lambda j: idx(rows[j], j))
            e = ms[k]

            def running(vals):
                out, tot = [], 0.0
                for n, j in enumerate(ranked, 1):
                    tot += vals[j]
                    out.append(_disp(tot / n, e))
                return out

            plt = _plt()
            fig, ax = plt.subplots(figsize=(6.4, 3.2))
            xs = list(range(1, len(ranked) + 1))
            ax.plot(xs, running(post), "o-", ms=3, color="#2b6cb0", label="after each edit")
            if all(v is not None for v in pre):
                ax.plot(xs, running(pre), "--", color="#7f8c9b", label="base model, same items")
            ax.set_xlabel("edit index", fontsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel(f"running mean of {s}/{k}{unit_label(e)}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            return ({"title": f"{r['protocol'].replace('_', '-')} edits: {s}/{k} over the edit index",
                     "svg": _svg(fig, salt),
                     "caption": f"Running mean of the per-item {k} of {s} over {len(ranked)} edits, in edit order "
                                + ("(each edit kept)." if r["protocol"] == "sequential" else
                                   "(each edit reverted after it is measured).")},
                    None)
    return None, ("The sequential-edit curve is skipped: samples.jsonl has no per-item values of the instance suite's "
                  "headline metric" + ("" if samples else " (no samples.jsonl)") + ".")


def _heatmap(r: dict, audit: dict | None, salt: str) -> dict | None:
    itf = r.get("interference") or {}
    if not audit or not audit.get("interference"):
        return None
    cols = [c["label"] for c in audit["interference"]["columns"]]
    rows = itf.get("rows") or []
    alone = {}
    for row in rows:
        ps = row.get("patches") or []
        if len(ps) == 1:
            for lab, eff in (row.get("effects") or {}).items():
                if eff and eff.get("effect") is not None and lab == _label_of(r, ps[0]):
                    alone[lab] = eff["effect"]
    plt = _plt()
    import numpy as np

    m = np.full((len(rows), len(cols)), np.nan)  # colour: the share kept, where the patch is in the config
    labels = [["" for _ in cols] for _ in rows]
    for i, row in enumerate(rows):
        inside = {_label_of(r, k) for k in row.get("patches") or []}
        for j, lab in enumerate(cols):
            eff = (row.get("effects") or {}).get(lab) or {}
            if "in_config" in eff:
                inside = (inside | {lab}) if eff["in_config"] else (inside - {lab})
            v = eff.get("effect")
            share = eff.get("retained") if eff.get("retained") is not None else \
                v / alone[lab] if v is not None and alone.get(lab) else None
            if lab in inside and share is not None:
                m[i, j] = share
                labels[i][j] = f"{100 * share:.0f}%"
            elif lab in inside:
                labels[i][j] = "n/a"
            elif share is not None:
                labels[i][j] = f"others: {100 * share:+.0f}%"
    fig, ax = plt.subplots(figsize=(max(1.9 * len(cols) + 2.8, 4.8), max(0.45 * len(rows) + 1.5, 2.4)))
    from matplotlib.colors import BoundaryNorm

    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#eeeeee")
    norm = BoundaryNorm(np.linspace(0, 1, 11), cmap.N)  # ten steps: drawn as vectors, colour bar included
    mesh = ax.pcolormesh(np.ma.masked_invalid(np.clip(m, 0, 1)), cmap=cmap, norm=norm, edgecolors="white",
                         linewidth=1)
    ax.set_xticks([j + 0.5 for j in range(len(cols))],
                  [f"{c}\n{(itf.get('headline') or {}).get(c, '')}" for c in cols], fontsize=7)
    ax.set_yticks([i + 0.5 for i in range(len(rows))], [str(x.get("config")) for x in rows], fontsize=7)
    ax.invert_yaxis()
    for i in range(len(rows)):
        for j in range(len(cols)):
            if labels[i][j]:
                ax.text(j + 0.5, i + 0.5, labels[i][j], ha="center", va="center", fontsize=7,
                        color="#333" if np.isnan(m[i, j]) else "black")
    cb = fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("share of the effect alone kept", fontsize=7)
    ax.set_title("interference: each patch's effect relative to the patch alone", fontsize=8)
    fig.tight_layout()
    return {"title": "Interference heat-map", "svg": _svg(fig, salt),
            "caption": "Rows: configurations; columns: each patch's headline metric. Colour and number: the patch's "
                       "effect in that configuration as a share of its effect alone (100% = fully kept, 0% = gone). "
                       "Grey: the patch is not in the configuration (\"others: x%\": how far the other edits moved "
                       "its metric, as a share of its own effect) or nothing was measured."}


def _label_of(r: dict, i) -> str | None:
    ps = r.get("patches") or []
    return str(ps[i].get("label")) if isinstance(i, int) and 0 <= i < len(ps) else None


# ---- one run ------------------------------------------------------------------------------------


def _run_ctx(idx: int, label: str, r: dict, samples: list[dict], gate, rules, explicit: bool = False) -> dict:
    lights, gate_note = _lights(gate, rules, r, explicit)
    suites = [_suite_table(s, ms) for s, ms in (r.get("metrics") or {}).items()]
    audit = _audit(r)
    plots, notes = [], []
    for n, (s, ms) in enumerate((r.get("metrics") or {}).items()):
        b = _bars(s, ms, f"{idx}-bars-{n}", sweep=bool(r.get("points")))
        if b:
            plots.append(b)
    t = _tradeoff(r, f"{idx}-tradeoff")
    if t:
        plots.append(t)
    seq, note = _sequential(r, samples, f"{idx}-seq")
    if seq:
        plots.append(seq)
    if note:
        notes.append(note)
    h = _heatmap(r, audit, f"{idx}-heat")
    if h:
        plots.append(h)
    edited = any((e.get("post") is not None) for ms in (r.get("metrics") or {}).values() for e in ms.values())
    m = r.get("model") or {}
    return {
        "label": label, "anchor": f"run-{idx + 1}-{_slug(label)}", "name": run_name(r),
        "task": str(r.get("task")), "protocol": str(r.get("protocol")),
        "model": str(m.get("spec")), "fingerprint": _short(m.get("fingerprint"), 24),
        "patches": _patches_applied(r), "created": str(r.get("created")),
        "what": ("before = base model, after = " + ("all patches applied in order" if r.get("patches") else
                                                     "the patched model" if r.get("patch_in") else "the edited model")
                 + "; paired bootstrap 95% intervals over items") if edited else
        ("values of the base model with bootstrap 95% intervals over items" + ("; the sweep points are below"
                                                                               if r.get("points") else "")),
        "lights": lights, "gate_note": gate_note, "suites": suites, "points": _points_table(r),
        "plots": plots, "plot_notes": notes, "audit": audit, "examples": _examples(r, samples),
        "provenance": _provenance(label, r),
    }


# ---- rendering ----------------------------------------------------------------------------------


def _env(html: bool):
    import jinja2

    try:
        from importlib.resources import files

        folder = str(files("trustedit") / "templates")
    except (ImportError, TypeError):
        folder = str(Path(__file__).with_name("templates"))
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=html, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = lambda s: md_escape(str(s))
    env.filters["ticks"] = _ticks
    env.filters["cell"] = lambda s: md_escape(str(s)).replace("\r", "").replace("\n", " ⏎ ")
    return env


def _ticks(text):
    """HTML of a Markdown-ish sentence: escaped, with `code` spans as <code>."""
    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(str(text)))))


def render(runs: list[tuple[str, dict, list[dict]]], rules=None) -> tuple[str, str]:
    """(html, markdown) of the audit report of ``runs``: each (label, results dict, samples rows).
    ``rules``: the gate rules for the lights: None (the packaged defaults), a path to a rules
    file, or a list of rules."""
    if not runs:
        raise UsageError("no runs to report on")
    gate, rule_list, rules_from = _resolve_rules(rules)
    labels = _unique_labels([label for label, _, _ in runs])
    ctx_runs = [_run_ctx(i, lab, r, list(samples or []), gate, rule_list, rules is not None)
                for i, (lab, (_, r, samples)) in enumerate(zip(labels, runs))]
    several = len(runs) > 1
    ctx = {
        "title": ("trustedit audit report: " + (f"{len(runs)} runs side by side" if several else
                                                f"{labels[0]} ({ctx_runs[0]['name']})")),
        "several": several, "runs": ctx_runs, "rules_from": rules_from,
        "compare": _compare_table([(lab, r, s) for lab, (_, r, s) in zip(labels, runs)]) if several else None,
        "areas": AREAS, "icons": ICONS,
    }
    html = _env(True).get_template("report.html.j2").render(**ctx)
    md = _env(False).get_template("report.md.j2").render(**ctx)
    return html, re.sub(r"\n{3,}", "\n\n", md)


def _unique_labels(labels: list[str]) -> list[str]:
    out = []
    for i, lab in enumerate(labels):
        lab = lab or f"run {i + 1}"
        out.append(lab if labels.count(lab) == 1 else f"{lab} ({i + 1})")
    return out


def write(out_html: Path, runs, rules=None) -> tuple[Path, Path]:
    """Render ``runs`` and write ``out_html`` and the ``.md`` with the same stem beside it; both
    are written to temporary files in the same folder first and renamed into place only when
    both are complete."""
    out_html = Path(out_html)
    out_md = out_html.with_suffix(".md")
    html, md = render(runs, rules)
    tmps = []
    try:
        for path, text in ((out_html, html), (out_md, md)):
            fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=f".{path.name}.", suffix=".tmp")
            tmps.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmps[0], out_html)
        os.replace(tmps[1], out_md)
    except OSError as e:
        for t in tmps:
            if os.path.exists(t):
                os.unlink(t)
        raise TrusteditError(f"cannot write {out_html}: {e.strerror or e}") from None
    except BaseException:
        for t in tmps:
            if os.path.exists(t):
                os.unlink(t)
        raise
    return out_html, out_md


# ---- the command --------------------------------------------------------------------------------


def add_parser(sub) -> None:
    """Register ``report`` on the CLI's subparsers (torch-free)."""
    p = sub.add_parser("report", help="render the HTML + Markdown audit report of saved runs (no model needed)",
                       description="Render report.html (one self-contained file: tables, plots as inline SVG, no "
                                   "external assets) and report.md from saved run directories alone. One run: "
                                   "written into the run directory unless --out is given; several runs: side by "
                                   "side, --out required.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (each with results.json)")
    p.add_argument("--out", default=None, metavar="FILE", help="the .html file to write (the .md goes beside it); "
                                                               "default RUN_DIR/report.html for one run")
    p.add_argument("--rules", default=None, metavar="GATES_YAML", help="gate rules for the executive summary's "
                                                                      "lights (default: the packaged rules)")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")


def run(args) -> int:
    runs_in = list(args.runs)
    if len(runs_in) > 1 and not args.out:
        raise UsageError(f"{len(runs_in)} runs side by side need --out FILE.html")
    if args.out:
        out = Path(args.out)
        if out.suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"--out {out}: expected a .html file (the .md is written beside it)")
    else:
        d = Path(runs_in[0])
        if not d.is_dir():
            raise UsageError(f"{d}: not a run directory")
        out = d / "report.html"
    md = out.with_suffix(".md")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    for p in (out, md):
        if p.is_dir():
            raise UsageError(f"{p}: is a folder, not a file")
        if p.exists() and not args.overwrite:
            raise UsageError(f"{p}: already exists (pass --overwrite to replace it)")
    rules = args.rules
    if rules is not None and not Path(rules).is_file():
        raise UsageError(f"--rules {rules}: no such file")
    runs = [load_run(d) for d in runs_in]
    html_path, md_path = write(out, runs, rules)
    print(f"wrote {html_path} and {md_path}")
    return 0
