"""``trustedit gate``: pass/fail rules over a run's results.json, for a model owner's CI.

    trustedit gate RUN --rules gates.yaml [--baseline RUN2] [--junit FILE] [--markdown FILE] [--overwrite]

prints a Markdown table (one row per rule, then a one-line verdict), optionally writes it and a
JUnit XML report (one ``<testcase>`` per rule), and exits 0 when no rule fails (warnings allowed),
1 when a rule fails, 2 on a usage error (one line on stderr; nothing is written). Existing output
files are refused without ``--overwrite``, before anything is read. An example rules file is
``docs/gates.yaml``; the default rules of reports are ``trustedit/gates_default.yaml``.

Rules file (YAML or JSON)::

    version: 1
    rules:
      - rule: "rtp.toxic/toxicity_probability <= 0.10"
        confidence: lower   # value (default) | lower | upper
        severity: fail      # fail (default) | warn
        area: toxicity      # forgetting | bias | toxicity | capability | privacy | knowledge (default: the suite's)
        name: "toxicity probability stays under 10 %"   # default: the rule text
      - "retention.mmlu/acc >= baseline - 0.02"          # a plain string: a rule with the defaults

Rule text: ``<operand> <op> <rhs>``. ``op`` is one of ``<= < >= >``. ``operand`` is
``suite.metric`` (the suite is everything before the first dot: ``dama-gender.a_s``,
``retention.wikitext/ppl``), ``abs(suite.metric)`` or ``dist(suite.metric)`` (the distance
``|x - ideal|`` to the entry's recorded ``ideal``, e.g. StereoSet SS 50; an error when the entry
has none). ``rhs`` is a number (``0.10``, ``-3``, ``1e-3``) or ``baseline``, ``baseline + c``,
``baseline - c``, ``baseline * c``. Numbers are in the units stored in results.json (fractions are
0-1, not percent; SS and CrowS-Pairs are percent).

Which numbers are compared:

* the run's value of an entry is ``post`` (the edited model) when the entry has one, else ``pre``
  (a plain evaluation); its interval is that side's ``ci95``; ``abs()``/``dist()`` map both (the
  low end of ``|x|`` over ``[lo, hi]`` is 0 when the interval contains 0);
* the baseline is, with ``--baseline RUN2``, RUN2's value of the same operand (its post if edited,
  else its pre; its interval is not used); without ``--baseline``, the run's own base model
  (``pre``) when the entry has an edit; a relative rule on an evaluation without an edit and
  without ``--baseline`` is a usage error;
* ``confidence: value`` compares the point value; ``lower`` / ``upper`` compare the low / high end
  of the 95 % interval. Against the run's own base model, a plain operand uses the **paired**
  interval of the change: ``pre + delta.ci95`` (the same resampled items for both models), and a
  ``dist()`` operand (or ``abs()`` of an ideal-0 metric) uses the paired interval of the change of
  the distance (``distance_to_ideal.ci95``) when the run records it. Otherwise (an external
  baseline, or an older run) the run's own value interval is used.

  Which end to pick: ``confidence: upper`` on a ``>=`` rule (or ``lower`` on a ``<=`` rule) means
  **fail only when the whole interval is on the wrong side of the line**: noise on 30 items does not
  fail a build, a change the data resolves does. The opposite end (``lower`` on ``>=``, ``upper`` on
  ``<=``) means **pass only when the whole interval is on the right side**: the run must prove it.

* a value, baseline or interval end that is null (not finite) violates the rule, and the message
  says why; a violated rule is ``fail``, or ``warn`` when its severity is ``warn``.

Every rule is checked against the run (and the baseline) before anything is evaluated: an unknown
suite or metric, a missing ideal, a relative rule with no baseline are usage errors naming the
rules file, the rule's index and (where there is one) the field. A missing metric never passes.

API (used by the HTML report): :func:`load_rules`, :func:`default_rules`, :func:`evaluate`,
:func:`area_of`, :func:`lights`, :func:`junit_xml`, :func:`markdown_table`. Nothing here imports
torch; YAML and the report are imported when used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from trustedit.errors import UsageError

AREAS = ("forgetting", "bias", "toxicity", "capability", "privacy", "knowledge")
CONFIDENCES = ("value", "lower", "upper")
SEVERITIES = ("fail", "warn")
RULE_KEYS = ("rule", "confidence", "severity", "area", "name")
DEFAULT_FILE = Path(__file__).with_name("gates_default.yaml")
STATUS_ORDER = {"pass": 0, "warn": 1, "fail": 2}
ICONS = {"pass": "✅", "warn": "⚠️", "fail": "❌"}
OP_TEXT = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_OP_RE = re.compile(r"<=|>=|<|>")
_OPERAND_RE = re.compile(r"^(?:(abs|dist)\(\s*([^\s().]+)\.([^\s()]+)\s*\)|([^\s().]+)\.([^\s()]+))$")
_RHS_RE = re.compile(rf"^(?:(?P<num>{_NUM})|baseline(?:\s*(?P<sym>[-+*])\s*(?P<c>{_NUM}))?)$")
EXPECTED = ("expected `<operand> <op> <rhs>`: operand suite.metric, abs(suite.metric) or dist(suite.metric); "
            "op one of <= < >= >; rhs a number, baseline, baseline + c, baseline - c or baseline * c")


# ---- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    suite: str
    metric: str
    func: str = ""  # "" | "abs" | "dist"

    @property
    def key(self) -> str:
        return f"{self.suite}.{self.metric}"

    def __str__(self) -> str:
        return f"{self.func}({self.key})" if self.func else self.key


@dataclass(frozen=True)
class Rhs:
    kind: str  # "number" | "baseline" | "baseline+" | "baseline-" | "baseline*"
    const: float | None = None

    @property
    def relative(self) -> bool:
        return self.kind != "number"

    def apply(self, baseline: float | None) -> float | None:
        if self.kind == "number":
            return self.const
        if baseline is None:
            return None
        c = self.const
        return {"baseline": baseline, "baseline+": None if c is None else baseline + c,
                "baseline-": None if c is None else baseline - c,
                "baseline*": None if c is None else baseline * c}[self.kind]

    def __str__(self) -> str:
        if self.kind == "number":
            return f"{self.const:g}"
        return "baseline" if self.kind == "baseline" else f"baseline {self.kind[-1]} {self.const:g}"


@dataclass
class Rule:
    index: int  # 1-based position in its file
    text: str
    name: str
    operand: Operand
    op: str
    rhs: Rhs
    confidence: str = "value"
    severity: str = "fail"
    area: str = ""
    source: str = ""  # the rules file

    def where(self) -> str:
        return f"{self.source}: rule {self.index} (`{self.text}`)"


@dataclass
class Outcome:
    rule: Rule
    status: str  # "pass" | "fail" | "warn" (a violated rule of severity warn)
    value: float | None  # the run's value of the operand (post if edited, else pre)
    compared: float | None  # the number actually compared (the value, or one end of the interval)
    threshold: float | None  # the right-hand side's number
    interval: tuple | None  # the 95 % interval the confidence ends come from (see ``paired``)
    baseline_value: float | None  # the baseline's value of the operand (None for an absolute rule)
    message: str  # one readable sentence
    area: str
    entry: dict = field(default_factory=dict, repr=False)  # the run's metric entry (display, unit)
    baseline_label: str = ""  # "base model" | "baseline run" | "" (an absolute rule)
    paired: bool = False  # the interval is the paired one of the change, shifted to the base model's value


def _rule_error(source, index, text, problem, key=None) -> UsageError:
    where = f"{source}: rule {index}" + (f" (`{text}`)" if text else "") + (f", field {key!r}" if key else "")
    return UsageError(f"{where}: {problem}")


def parse_rule(text: str, index: int = 1, source: str = "<rule>") -> tuple[Operand, str, Rhs]:
    """(operand, op, rhs) of a rule text; a one-line :class:`UsageError` says what was expected."""
    t = " ".join(text.split())
    ops = _OP_RE.findall(t)
    if len(ops) != 1:
        raise _rule_error(source, index, text, ("no comparison operator; " if not ops else "more than one comparison "
                                                "operator; ") + EXPECTED, "rule")
    m = _OP_RE.search(t)
    left, op, right = t[:m.start()].strip(), m.group(0), t[m.end():].strip()
    mo = _OPERAND_RE.match(left)
    if not mo:
        raise _rule_error(source, index, text, f"operand {left!r}: expected suite.metric, abs(suite.metric) or "
                                               "dist(suite.metric)", "rule")
    operand = Operand(mo.group(2), mo.group(3), mo.group(1)) if mo.group(1) else Operand(mo.group(4), mo.group(5))
    mr = _RHS_RE.match(right)
    if not mr:
        raise _rule_error(source, index, text, f"right-hand side {right!r}: expected a number, baseline, baseline + c, "
                                               "baseline - c or baseline * c", "rule")
    if mr.group("num") is not None:
        rhs = Rhs("number", float(mr.group("num")))
    elif mr.group("sym"):
        rhs = Rhs("baseline" + mr.group("sym"), float(mr.group("c")))
    else:
        rhs = Rhs("baseline")
    return operand, op, rhs


def _rules_from(doc, source: str) -> list[Rule]:
    from trustedit.registry import SUITES

    if not isinstance(doc, dict) or "rules" not in doc:
        raise UsageError(f"{source}: expected a mapping with a 'rules' list at the top level")
    extra = [k for k in doc if k not in ("version", "rules")]
    if extra:
        raise UsageError(f"{source}: unknown top-level key {extra[0]!r} (expected version, rules)")
    if doc.get("version", 1) != 1:
        raise UsageError(f"{source}: field 'version' is {doc['version']!r}; this trustedit reads rules version 1")
    items = doc["rules"]
    if not isinstance(items, list) or not items:
        raise UsageError(f"{source}: field 'rules' must be a non-empty list")
    rules = []
    for i, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"rule": item}
        if not isinstance(item, dict):
            raise _rule_error(source, i, None, f"expected a rule text or a mapping, got {type(item).__name__}")
        text = item.get("rule")
        if not isinstance(text, str) or not text.strip():
            raise _rule_error(source, i, None, "missing (or not a string)" if text is None or not isinstance(text, str)
                              else "empty", "rule")
        text = " ".join(text.split())
        for k in item:
            if k not in RULE_KEYS:
                raise _rule_error(source, i, text, f"unknown key (expected {', '.join(RULE_KEYS)})", str(k))
        operand, op, rhs = parse_rule(text, i, source)
        conf, sev = item.get("confidence", "value"), item.get("severity", "fail")
        if conf not in CONFIDENCES:
            raise _rule_error(source, i, text, f"{conf!r}: expected one of {', '.join(CONFIDENCES)}", "confidence")
        if sev not in SEVERITIES:
            raise _rule_error(source, i, text, f"{sev!r}: expected one of {', '.join(SEVERITIES)}", "severity")
        name = item.get("name", text)
        if not isinstance(name, str) or not name.strip():
            raise _rule_error(source, i, text, "expected a non-empty string", "name")
        if operand.suite not in SUITES:
            raise _rule_error(source, i, text, f"unknown suite {operand.suite!r} (known: {', '.join(SUITES)})", "rule")
        area = item.get("area")
        if area is None:
            area = area_of(operand.suite)
        elif area not in AREAS:
            raise _rule_error(source, i, text, f"{area!r}: expected one of {', '.join(AREAS)}", "area")
        rules.append(Rule(i, text, " ".join(name.split()), operand, op, rhs, conf, sev, area, source))
    return rules


def load_rules(path) -> list[Rule]:
    """The rules of a YAML (or JSON) rules file; any problem is a one-line :class:`UsageError`
    naming the file, the rule's index and the field."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: rules file missing" if not p.exists() else f"{p}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{p}: unreadable ({e})") from None
    if p.suffix.lower() == ".json":
        import json

        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from None
    else:
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            problem = getattr(e, "problem", None) or str(e)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UsageError(f"{p}: malformed YAML{where}: {' '.join(str(problem).split())}") from None
    return _rules_from(doc, str(p))


def default_rules() -> list[Rule]:
    """The rules shipped with trustedit (``trustedit/gates_default.yaml``): the edit made nothing
    worse that its interval resolves, and capability stays within budget."""
    return load_rules(DEFAULT_FILE)


def area_of(suite: str) -> str:
    """The report area of a suite: forgetting, bias, toxicity or capability (the suite class's
    ``area``)."""
    from trustedit.registry import get_suite

    return get_suite(suite).area


# ---- evaluation ----------------------------------------------------------------------------------


def _num(x):
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _side(entry: dict) -> dict:
    return entry["post"] if entry.get("post") is not None else entry["pre"]


def _f(func: str, ideal: float | None):
    if not func:
        return lambda x: x
    c = 0.0 if func == "abs" else ideal
    return lambda x: None if x is None else abs(x - c)


def _map_interval(func: str, ideal, ci) -> tuple | None:
    lo, hi = (_num(v) for v in (list(ci or [None, None]) + [None, None])[:2])
    if lo is None or hi is None:
        return None
    if not func:
        return (lo, hi)
    c = 0.0 if func == "abs" else ideal
    a, b = lo - c, hi - c
    low = 0.0 if a <= 0 <= b else min(abs(a), abs(b))
    return (low, max(abs(a), abs(b)))


def _entry(results: dict, op: Operand):
    return ((results.get("metrics") or {}).get(op.suite) or {}).get(op.metric)


def _listing(names) -> str:
    names = list(names)
    return ", ".join(names[:10]) + (", …" if len(names) > 10 else "")


def _problem(results: dict, rule: Rule, baseline: dict | None) -> tuple[str, str] | None:
    """(kind, message) of why ``rule`` cannot be evaluated on this run, or None. kind: "suite",
    "metric", "ideal", "baseline" (what ``missing="skip"`` skips) or "error"."""
    op = rule.operand
    metrics = results.get("metrics") or {}
    if op.suite not in metrics:
        return "suite", f"the run has no suite {op.suite} (it has: {_listing(metrics) or 'none'})"
    e = metrics[op.suite].get(op.metric)
    if e is None:
        return "metric", f"the run has no metric {op.key} ({op.suite} has: {_listing(metrics[op.suite])})"
    if op.func == "dist" and _num(e.get("ideal")) is None:
        return "ideal", f"metric {op.key} has no ideal value in this run (dist() needs one)"
    if rule.rhs.relative:
        if baseline is not None:
            bm = baseline.get("metrics") or {}
            if op.suite not in bm:
                return "error", f"the baseline run has no suite {op.suite} (it has: {_listing(bm) or 'none'})"
            if op.metric not in bm[op.suite]:
                return "error", f"the baseline run has no metric {op.key} ({op.suite} has: {_listing(bm[op.suite])})"
        elif e.get("post") is None:
            return "baseline", "needs --baseline: the run is an evaluation without an edit"
    return None


def _check(results: dict, rules, baseline: dict | None, missing: str) -> list[Rule]:
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    keep = []
    for r in rules:
        prob = _problem(results, r, baseline)
        if prob is None:
            keep.append(r)
        elif missing == "skip" and prob[0] != "error":
            continue
        else:
            raise UsageError(f"{r.where()}: {prob[1]}")
    return keep


def _unit(e: dict) -> str:
    if e.get("display") == "percent":
        return "%" if e.get("unit") in ("fraction", "%") else " pp" if e.get("unit") == "percentage points" else ""
    return ""


def _show(v, e: dict, distance: bool = False) -> str:
    """A value as the report prints it, with its unit (a distance of a percentage is in points)."""
    from trustedit.report import fmt

    return "n/a" if v is None else fmt(v, e) + (_pp(e) if distance else _unit(e))


def _signed(v, e: dict, unit: bool = True) -> str:
    from trustedit.report import fmt

    s = fmt(v, e)
    s = s if s.startswith("-") else "+" + s
    return s + (_pp(e) if unit else "")


def _pp(e: dict) -> str:
    """The unit of a change: a change of a percentage is in points."""
    return " pp" if e.get("display") == "percent" and e.get("unit") in ("fraction", "%", "percentage points") else ""


def _holds(x: float, op: str, t: float) -> bool:
    return {"<=": x <= t, "<": x < t, ">=": x >= t, ">": x > t}[op]


def _evaluate_one(results: dict, rule: Rule, baseline: dict | None) -> Outcome:
    op = rule.operand
    e = _entry(results, op)
    ideal = _num(e.get("ideal"))
    f = _f(op.func, ideal)
    side = _side(e)
    value = f(_num(side.get("value")))
    interval = _map_interval(op.func, ideal, side.get("ci95"))
    paired = False
    base_value, base_label = None, ""
    own = rule.rhs.relative and baseline is None
    if rule.rhs.relative:
        if baseline is not None:
            base_value, base_label = f(_num(_side(_entry(baseline, op)).get("value"))), "baseline run"
        else:
            base_value, base_label = f(_num(e["pre"].get("value"))), "base model"
    if own:  # against its own base model: the paired interval of the change, shifted to the base's value
        d = None
        if not op.func:
            d = (e.get("delta") or {}).get("ci95")
        elif op.func == "dist" or (op.func == "abs" and ideal == 0.0):
            d = (e.get("distance_to_ideal") or {}).get("ci95")
        if d is not None and base_value is not None:
            lo, hi = (_num(v) for v in (list(d) + [None, None])[:2])
            interval = (base_value + lo, base_value + hi) if lo is not None and hi is not None else None
            paired = True
    threshold = rule.rhs.apply(base_value)
    if rule.confidence == "value":
        compared, what = value, "value"
    else:
        i = 0 if rule.confidence == "lower" else 1
        compared = None if interval is None else interval[i]
        what = f"{'low' if i == 0 else 'high'} end of the 95% CI"
        if paired and compared is not None:
            what = f"{'low' if i == 0 else 'high'} end of the paired 95% CI of the change, " \
                   f"{_signed(compared - base_value, e)} from the base model"
    reason = None
    if value is None:
        reason = "the run's value is missing (null: not finite)"
    elif compared is None:
        reason = f"the {what} is missing (no finite 95% interval, n={e.get('n')})"
    elif rule.rhs.relative and base_value is None:
        reason = f"the {base_label}'s value is missing (null: not finite)"
    elif threshold is None or not math.isfinite(threshold):
        reason = "the threshold is not a finite number"
    ok = reason is None and _holds(compared, rule.op, threshold)
    status = "pass" if ok else rule.severity
    shown = f"`{op}` is {_show(value, e, bool(op.func))}"
    if rule.confidence != "value" and compared is not None:
        shown += f" ({what}: {_show(compared, e, bool(op.func))})"
    if reason is not None:
        msg = f"{shown}; {reason}: {status}"
    else:
        rel = f" ({base_label} {_show(base_value, e, bool(op.func))})" if rule.rhs.relative else ""
        sym = OP_TEXT[rule.op] if ok else {"<=": ">", "<": "≥", ">=": "<", ">": "≤"}[rule.op]
        msg = f"{shown}, {sym} {_show(threshold, e, bool(op.func))}{rel}: {status}"
    return Outcome(rule, status, value, compared, threshold, interval, base_value, msg, rule.area, e, base_label,
                   paired)


def evaluate(results: dict, rules, baseline: dict | None = None, missing: str = "error") -> list[Outcome]:
    """One :class:`Outcome` per rule, in order. Every rule is checked first: a rule the run cannot
    answer is a one-line :class:`UsageError` (``missing="error"``), or, with ``missing="skip"``,
    left out when its suite or metric is absent from the run, its ``dist()`` entry has no recorded
    ideal (runs from before ideals were written), or it is relative and the entry has no edit and no
    baseline is given. A baseline run lacking the metric is always an error."""
    kept = _check(results, rules, baseline, missing)
    return [_evaluate_one(results, r, baseline) for r in kept]


def lights(outcomes) -> dict:
    """area -> the worst status of its rules ("pass" < "warn" < "fail"); only areas with rules, in
    the order of :data:`AREAS` (others after)."""
    out: dict = {}
    for o in outcomes:
        if o.area not in out or STATUS_ORDER[o.status] > STATUS_ORDER[out[o.area]]:
            out[o.area] = o.status
    return {a: out[a] for a in [*AREAS, *[a for a in out if a not in AREAS]] if a in out}


# ---- reports -------------------------------------------------------------------------------------


def _value_text(o: Outcome) -> str:
    """The value and its interval; a paired interval is shown as the change from the base model."""
    if o.value is None:
        return "n/a"
    d = bool(o.rule.operand.func)
    v = _show(o.value, o.entry, d)
    if o.interval is None:
        return v
    if o.paired and o.baseline_value is not None:
        b, (lo, hi) = o.baseline_value, o.interval
        return f"{v}, change {_signed(o.value - b, o.entry, False)} [{_signed(lo - b, o.entry, False)}, " \
               f"{_signed(hi - b, o.entry, False)}]{_pp(o.entry)} (paired)"
    return f"{v} [{_show(o.interval[0], o.entry, d)}, {_show(o.interval[1], o.entry, d)}]"


def verdict(outcomes, escape=None) -> str:
    """One line: how many rules fail (and which), how many warn (names passed through ``escape``)."""
    n = len(outcomes)
    esc = escape or (lambda s: s)
    fails = [esc(o.rule.name) for o in outcomes if o.status == "fail"]
    warns = [esc(o.rule.name) for o in outcomes if o.status == "warn"]
    w = f"{len(warns)} warn{'s' if len(warns) == 1 else ''}: {'; '.join(warns)}" if warns else ""
    if fails:
        return f"{len(fails)} of {n} rules fail: {'; '.join(fails)}." + (f" {w}." if w else "")
    if not warns:
        return "The rule passes." if n == 1 else f"All {n} rules pass."
    return f"No rule of {n} fails; {w}."


def markdown_table(outcomes) -> str:
    """The rules as a Markdown table (✅ pass, ⚠️ warn, ❌ fail), then a one-line verdict; suitable
    as a pull-request comment. Values are printed by each entry's display and unit."""
    from trustedit.report import md_escape

    rows = ["| | rule | value [95% CI] | threshold | result |", "|---|---|---|---|---|"]
    for o in outcomes:
        r = o.rule
        name = f"`{r.text}`" if r.name == r.text else f"{md_escape(r.name)} (`{r.text}`)"
        opts = [x for x in (f"confidence {r.confidence}" if r.confidence != "value" else "",
                            "warn only" if r.severity == "warn" else "") if x]
        if opts:
            name += f" <sub>{', '.join(opts)}</sub>"
        d = bool(r.operand.func)
        thr = f"{OP_TEXT[r.op]} {_show(o.threshold, o.entry, d)}"
        if r.rhs.relative:
            thr += f" ({o.baseline_label or 'baseline'} {_show(o.baseline_value, o.entry, d)})"
        rows.append(f"| {ICONS[o.status]} | {name} | {_value_text(o)} | {thr} | {o.status} |")
    return "\n".join(rows) + "\n\n" + (f"**{verdict(outcomes, md_escape)}**" if outcomes else "No rules applied.") + "\n"


def junit_xml(outcomes, run_label: str, properties: dict | None = None) -> str:
    """JUnit XML (the Jenkins/Ant schema): one ``<testcase classname="trustedit.gate.<area>">`` per
    rule, a ``<failure type="threshold">`` for a failed rule, a WARN line in ``<system-out>`` for a
    warning (not a failure). ``properties`` (run, model fingerprint, baseline...) go into
    ``<properties>``."""
    import datetime
    import xml.etree.ElementTree as ET

    n, fails = len(outcomes), sum(o.status == "fail" for o in outcomes)
    top = ET.Element("testsuites", name="trustedit gate", tests=str(n), failures=str(fails), errors="0", time="0")
    ts = ET.SubElement(top, "testsuite", name="trustedit gate", tests=str(n), failures=str(fails), errors="0",
                       skipped="0", time="0",
                       timestamp=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    props = {"run": str(run_label), **{k: str(v) for k, v in (properties or {}).items() if v is not None}}
    pe = ET.SubElement(ts, "properties")
    for k, v in props.items():
        ET.SubElement(pe, "property", name=k, value=v)
    for o in outcomes:
        tc = ET.SubElement(ts, "testcase", classname=f"trustedit.gate.{o.area}", name=o.rule.name, time="0")
        if o.status == "fail":
            fe = ET.SubElement(tc, "failure", message=o.message, type="threshold")
            fe.text = f"{o.rule.text} (confidence {o.rule.confidence}, severity {o.rule.severity})\n{o.message}"
        else:
            so = ET.SubElement(tc, "system-out")
            so.text = f"{'WARN' if o.status == 'warn' else 'PASS'}: {o.message}"
    ET.indent(top)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(top, encoding="unicode") + "\n"


# ---- the command ---------------------------------------------------------------------------------


def add_parser(sub) -> None:
    p = sub.add_parser("gate", help="check a run against pass/fail rules (CI): Markdown table, JUnit XML, exit 1 on "
                                    "a failed rule",
                       description="Evaluate the rules of a YAML/JSON rules file (docs/gates.yaml) on a run's "
                                   "results.json; print a Markdown table; exit 0 when no rule fails (warnings "
                                   "allowed), 1 when one does, 2 on a usage error.")
    p.add_argument("run", help="run directory (or its results.json)")
    p.add_argument("--rules", required=True, help="rules file, YAML or JSON (see docs/gates.yaml)")
    p.add_argument("--baseline", default=None, help="a run to compare relative rules with (default: the run's own "
                                                    "base model, when it has an edit)")
    p.add_argument("--junit", default=None, help="also write a JUnit XML report (one test case per rule)")
    p.add_argument("--markdown", default=None, help="also write the Markdown table to this file")
    p.add_argument("--overwrite", action="store_true", help="replace existing --junit / --markdown files")


def _check_out(flag: str, path, overwrite: bool) -> None:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {p}: is a folder, not a file")
    if p.exists() and not overwrite:
        raise UsageError(f"{flag} {p}: already exists (pass --overwrite to replace it)")
    if not p.parent.is_dir():
        raise UsageError(f"{flag} {p}: the folder {p.parent} does not exist")


def _write(path, text: str) -> None:
    import os
    import tempfile

    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=str(p.parent), prefix=f".{p.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args) -> int:
    """``trustedit gate``: 0 when no rule fails, 1 when one does (usage errors raise)."""
    from trustedit import results as R

    outs = [(f, p) for f, p in (("--junit", args.junit), ("--markdown", args.markdown)) if p]
    for flag, p in outs:
        _check_out(flag, p, args.overwrite)
    if len(outs) == 2 and Path(args.junit).resolve() == Path(args.markdown).resolve():
        raise UsageError("--junit and --markdown name the same file")
    rules = load_rules(args.rules)
    results = R.load(args.run)
    baseline = R.load(args.baseline) if args.baseline else None
    outcomes = evaluate(results, rules, baseline)
    against = args.baseline if args.baseline else "its own base model"
    md = f"### trustedit gate: `{args.run}` (baseline: {against})\n\n" + markdown_table(outcomes)
    print(md, end="")
    if args.junit:
        _write(args.junit, junit_xml(outcomes, str(args.run), {
            "model.fingerprint": (results.get("model") or {}).get("fingerprint"), "baseline": against,
            "rules": str(args.rules), "method": (results.get("method") or {}).get("name")}))
    if args.markdown:
        _write(args.markdown, md)
    return 1 if any(o.status == "fail" for o in outcomes) else 0
