"""What a suite is, and the pieces every suite shares.

A suite (one file in :mod:`trustedit.suites`, registered lazily in :data:`trustedit.registry.SUITES`)
says *which items* are measured, *which model passes* run on them and *which metrics* come out:

* ``Options``: a dataclass whose fields carry their help text (``opt``); the CLI derives its flags
  from them, and a flag that belongs to no chosen suite is a usage error;
* ``load(opts, ctx) -> Items``: the items, fingerprinted, through the data loaders;
* ``measure(lm, items) -> raw``: model passes only; ``raw`` is JSON-ready, so the evaluation cache
  can store the base model's passes (:mod:`trustedit.evalcache`);
* ``score(raw, base_raw, ctx) -> {name: Score}``: scores only; the one model it may use is the
  reference model in ``ctx`` (the base model, e.g. for the perplexity of generated text under it);
  ``base_raw`` is None when ``raw`` is the base model's own passes;
* ``samples(items, pre, post) -> rows``: per-item rows a person can read (samples.jsonl).

Each :class:`~trustedit.metrics.scores.Score` carries its unit, direction and display, so reports
never decide by a metric's name. The job skeleton that runs suites is :mod:`trustedit.job`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from trustedit.errors import UsageError
from trustedit.methods.base import opt  # noqa: F401  (re-exported for suite files)


def cap(default, limit: int | None, explicit=None):
    """The size of one item set: the suite's own option when the user gave it, else its default
    capped at the job's ``--limit`` (None/0 defaults mean "all")."""
    if explicit is not None:
        return explicit
    if limit is None:
        return default
    return limit if default in (None, 0) else min(default, limit)


@dataclass
class SuiteOptions:
    """Base of every suite's options (fields declared with :func:`opt`)."""

    @classmethod
    def help_table(cls) -> list[tuple[str, object, str]]:
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((f.name, default, f.metadata.get("help", "")))
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is not None:
                problem = check(getattr(self, f.name))
                if problem:
                    raise UsageError(f"--{f.name.replace('_', '-')} {getattr(self, f.name)!r}: {problem}")


def nonneg_int(v):
    """A check: None or an integer >= 0."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return "expected an integer >= 0"
    return None


def pos_int(v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return "expected an integer >= 1"
    return None


def unit_interval(lo_open: bool = False, hi_open: bool = False):
    def check(v):
        import math

        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "expected a finite number"
        if (v < 0 or (lo_open and v == 0)) or (v > 1 or (hi_open and v == 1)):
            return f"expected a number in {'(' if lo_open else '['}0, 1{')' if hi_open else ']'}"
        return None
    return check


def positive_float(v):
    import math

    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        return "expected a finite number > 0"
    return None


@dataclass
class LoadContext:
    """What ``load`` may use besides its options: the job's ``--limit``, seed, and which options
    the user set explicitly (so an explicit size is not capped by ``--limit``)."""

    limit: int | None = None
    seed: int = 0
    explicit: frozenset = frozenset()
    model: str | None = None  # the job's --model (a suite may read files beside it: the privacy suite's recipe)

    def size(self, opts, name: str, default=None, zero_is_all: bool = False):
        """The size of the item set that option ``name`` sets: the user's value when given, else the
        default capped at ``--limit``. ``zero_is_all``: 0 means the whole set (returned as None)."""
        value = getattr(opts, name) if default is None else default
        n = cap(value, self.limit, getattr(opts, name) if name in self.explicit else None)
        return None if zero_is_all and n == 0 else n


@dataclass
class Items:
    """A suite's loaded items: ``data`` (suite-specific), a ``fingerprint`` of what was read, and
    ``info`` for results.json (source, files, counts)."""

    suite: str
    data: Any
    fingerprint: str
    info: dict
    opts: Any
    memo: dict = field(default_factory=dict, repr=False)  # per-tokenizer token ids, built once

    def describe(self) -> dict:
        return {"fingerprint": self.fingerprint, **self.info}


@dataclass
class Context:
    """What ``score`` may use: the reference model (the base model's weights while scoring), the
    job's seed and evaluation batch size, and resources loaded once per job (scorers, judges)."""

    lm: Any = None
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"
    resources: dict = field(default_factory=dict)

    def resource(self, key: str, factory):
        if key not in self.resources:
            self.resources[key] = factory()
        return self.resources[key]


class Suite:
    """Base class; see the module docstring. Subclasses set the class attributes and implement
    ``load``, ``measure`` and ``score``."""

    name: str = ""
    area: str = ""  # the report area: forgetting, bias, toxicity or capability (trustedit.gate)
    Options: type = SuiteOptions
    summary: str = ""
    citation: str = ""
    headline: tuple = ()  # metric order in tables (others follow)
    cached: bool = True  # the base model's passes go through the evaluation cache
    has_instances: bool = False  # per-instance methods can edit its items one at a time
    resolution: str | None = None  # the metric whose paired interval says what change this size can resolve

    def load(self, opts, ctx: LoadContext) -> Items:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, items: Items, ctx: Context) -> None:
        """Load what scoring needs (scorers, judges) before any model pass, so it fails early."""

    def measure(self, lm, items: Items, batch_size: int = 16) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, raw: dict, base_raw: dict | None, items: Items, ctx: Context) -> dict:  # pragma: no cover
        raise NotImplementedError

    def samples(self, items: Items, pre: dict, post: dict | None) -> list[dict]:
        """Rows for samples.jsonl; ``pre``/``post`` are ``{"raw", "scores"}`` of each model."""
        return []

    def cache_key(self, lm, items: Items, batch_size: int) -> dict:
        """Everything the base model's passes depend on besides the model itself (token ids of
        every item, the options that change a pass). Default: the item fingerprint and options."""
        return {"items": items.fingerprint, "options": items.opts.to_dict(), "batch_size": batch_size}

    def longest_input(self, lm, items: Items) -> tuple[int, str]:
        """``(tokens, which item)`` of the longest model input the passes will build (prompt plus
        generated or scored tokens); checked against the model's context before any pass."""
        return 0, ""

    def after_base(self, items: Items, base_raw: dict):
        """Optionally restrict the items using the base model's passes (``--known-only``).
        Returns ``(items, base_raw, info or None)``."""
        return items, base_raw, None

    def instances(self, items: Items) -> list:
        """The items a per-instance method edits one at a time (``per_instance`` protocol)."""
        raise UsageError(f"suite {self.name} has no editable instances")

    def select(self, items: Items, indices: list[int]) -> Items:
        raise UsageError(f"suite {self.name} cannot be measured one instance at a time")

    def merge(self, raws: list[dict]) -> dict:
        """Concatenate the per-instance passes of :meth:`select`-ed items (list values extend)."""
        out: dict = {}
        for r in raws:
            for k, v in r.items():
                if isinstance(v, list):
                    out.setdefault(k, []).extend(v)
                else:
                    out[k] = v
        return out

    def pick(self, raw: dict, indices: list[int]) -> dict:
        """The part of ``raw`` (passes over all items) that :meth:`select` would have measured."""
        return {k: ([v[i] for i in indices] if isinstance(v, list) else v) for k, v in raw.items()}

    def run_info(self, items: Items, ctx: Context) -> dict:
        """What else results.json records about this suite's run (its scorer, judge, prompt format)."""
        return {}

    def describe_lines(self, section: dict) -> list[str]:
        """Extra summary.md lines about this suite's data (from its results section)."""
        return []

    def mask_private(self, rows: list[dict], items: Items) -> list[dict]:
        """Sample rows with this suite's own private strings masked (the job calls it unless
        ``--show-pii``; :mod:`trustedit.pii` masks the patterns it recognises in every suite)."""
        return rows


def digest(obj) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (dataclasses as dicts)."""
    def default(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        return str(o)

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=default).encode("utf-8")).hexdigest()


def jsonable(raw):
    """``raw`` through a JSON round trip (tuples become lists, numpy floats plain floats), so that
    scores computed from fresh passes and from the cache are computed from identical values."""
    return json.loads(json.dumps(raw, default=_np_default))


def _np_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def ids_len(*seqs) -> int:
    return sum(len(s) for s in seqs)
