"""results.json, schema v1: reading (with the layout of older runs upgraded), and validation
against ``trustedit/results_schema.json`` (JSON Schema 2020-12). The layout is documented in
``docs/results-schema.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from trustedit.errors import TrusteditError

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("results_schema.json")


def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def validate(results: dict) -> None:
    """Raise ``jsonschema.ValidationError`` when ``results`` does not follow schema v1."""
    import jsonschema

    jsonschema.validate(results, schema())


def load(run: str | Path) -> dict:
    """The results of a run directory (or a results.json path) in the v1 layout. Results written
    before schema v1 (no ``schema_version``) by ``erase``, ``debias``, ``eval`` or ``detox`` are
    upgraded (:func:`upgrade_legacy`); anything else is refused with a one-line error."""
    p = Path(run)
    p = p / "results.json" if p.is_dir() or not p.name.endswith(".json") else p
    if not p.is_file():
        raise TrusteditError(f"{p}: missing (not a trustedit run directory)")
    try:
        r = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrusteditError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrusteditError(f"{p}: unreadable ({e})") from None
    if not isinstance(r, dict):
        raise TrusteditError(f"{p}: expected a JSON object, got {type(r).__name__}")
    v = r.get("schema_version")
    if v is None:
        try:
            return upgrade_legacy(r)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise TrusteditError(f"{p}: results from before schema v1 that cannot be read ({type(e).__name__}: {e}); "
                                 "re-run the job with this version") from None
    if v != SCHEMA_VERSION:
        raise TrusteditError(f"{p}: field 'schema_version' is {v!r}; this trustedit reads schema {SCHEMA_VERSION}")
    try:
        validate(r)
    except Exception as e:  # noqa: BLE001 - jsonschema.ValidationError, reported in one line
        where = "/".join(str(x) for x in getattr(e, "absolute_path", [])) or "(top level)"
        raise TrusteditError(f"{p}: not a valid schema-{SCHEMA_VERSION} results file at {where}: "
                             f"{getattr(e, 'message', e)}") from None
    return r


# ---- results written before schema v1 -----------------------------------------------------------

# old flat metric name prefix -> (suite, new prefix)
_LEGACY = [
    ("dama_gender/", "dama-gender", ""), ("winobias_dama/", "winobias", "dama/"),
    ("winobias_loglik/", "winobias", "loglik/"), ("stereoset/", "stereoset", ""), ("crows_pairs/", "crows-pairs", ""),
    ("rtp_toxic/", "rtp", "toxic/"), ("rtp_random/", "rtp", "random/"), ("extsub/", "extsub-greedy", ""),
]
_RETENTION = ("wikitext/", "piqa/", "arc_easy/", "hellaswag/", "boolq/", "commonsenseqa/", "mmlu/")
_SANITATION = ("K_S_idk_rate", "K_F_leak_rate", "K_R_retain_accuracy", "over_refusal_rate", "edit_success", "locality")
_SAFEEDIT = ("DS", "DG_avg", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ")


def legacy_name(name: str, suite_hint: str | None = None) -> tuple[str, str]:
    """(suite, metric) of a metric name from a results file written before schema v1."""
    for old, suite, new in _LEGACY:
        if name.startswith(old):
            return suite, new + name[len(old):]
    if name.startswith(_RETENTION):
        return "retention", name
    if suite_hint == "safeedit" and (name in _SAFEEDIT or name in ("fluency_ngram_entropy", "locality")):
        return "safeedit", name
    if name == "fluency_ngram_entropy":
        return "fluency", name
    if name in _SANITATION:
        return "sanitation", name
    raise ValueError(f"unknown metric {name!r}")


def _legacy_entry(m: dict) -> dict:
    pre = m.get("pre") or {}
    post = m.get("post")
    out = {"pre": {"value": pre.get("value"), "ci95": pre.get("ci95", [None, None])},
           "post": None if post is None else {"value": post.get("value"), "ci95": post.get("ci95", [None, None])},
           "delta": m.get("delta"), "n": m.get("n", pre.get("n")), "protocol": m.get("protocol", pre.get("protocol", "")),
           "unit": pre.get("unit", ""), "display": "raw", "higher_is_better": m.get("higher_is_better", True),
           "aggregation": m.get("aggregation", "mean")}
    out["ci95"] = (out["delta"] or {}).get("ci95") if out["delta"] else out["pre"]["ci95"]
    return out


def upgrade_legacy(r: dict) -> dict:
    """A pre-v1 results dict in the v1 layout (metrics grouped by suite; values unchanged).
    Displays are not recorded in old files: fractions are guessed from the names (``raw`` else)."""
    hint = "safeedit" if r.get("suite") == "safeedit" else None
    metrics: dict = {}
    for name, m in r["metrics"].items():
        suite, metric = legacy_name(name, hint)
        e = _legacy_entry(m)
        if e["aggregation"] == "mean" and not e["unit"] and suite not in ("dama-gender",) \
                and "fluency" not in metric and not metric.startswith("icat"):
            e["display"], e["unit"] = "percent", "fraction"
        elif e["unit"] in ("%", "percentage points"):
            e["display"] = "percent"
        metrics.setdefault(suite, {})[metric] = e
    if hint == "safeedit" and isinstance(r.get("locality"), dict):
        loc = r["locality"]
        metrics.setdefault("safeedit", {})["locality"] = {
            "pre": {"value": 1.0, "ci95": [1.0, 1.0]}, "post": {"value": loc.get("value"), "ci95": loc.get("ci95")},
            "delta": None, "ci95": loc.get("ci95"), "n": loc.get("n"), "protocol": loc.get("protocol", ""),
            "unit": "fraction", "display": "percent", "higher_is_better": True, "aggregation": "mean"}
    task = r.get("task", "?")
    out = {"schema_version": SCHEMA_VERSION, "legacy": True, "task": task,
           "trustedit_version": r.get("trustedit_version"), "created": r.get("created"), "argv": r.get("argv", []),
           "versions": r.get("versions", {}), "model": r.get("model", {}), "method": r.get("method"),
           "protocol": "whole" if r.get("method") else "none",
           "suites": {s: {"dataset": {"fingerprint": (r.get("dataset") or {}).get("fingerprint")}} for s in metrics},
           "metrics": metrics, "timings_s": r.get("timings_s", {}), "peak_memory_mb": r.get("peak_memory_mb", {})}
    return out
