"""The one job skeleton: every job (``erase``, ``debias``, ``detox``, ``eval``, the sweeps) runs here.

    check -> load items -> load model -> base measure (cached) -> fit -> apply -> measure -> score
    -> compare -> write the run directory atomically

Protocols (a method's ``protocol``):

* ``whole``: one patch for the whole training set; every suite is measured on the base and on the
  edited model (and on the method's side-by-side variants, e.g. the expert alone next to Ext-Sub);
* ``per_instance``: for each instance of the job's instance suite: fit on that instance, apply,
  measure that instance, revert (the paper's protocol for DINM, and for per-request editors);
  with ``sequential`` the edits are kept one after another, and their sum is the saved patch.

Scoring runs after the edited model is measured, with the base weights restored, so that a
suite's reference model (``ctx.lm``) is always the base model. The job leaves the chosen patch
applied on return, as a user of the Python API expects after ``fit``.

The results (schema v1) are documented in ``docs/results-schema.md``; :func:`trustedit.results.validate`
checks them against ``trustedit/results_schema.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from trustedit.errors import TrusteditError, UsageError
from trustedit.jobs import _a

SCHEMA_VERSION = 1
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class JobOptions:
    """What every subcommand that runs a model shares (one flag each, same meaning everywhere)."""

    model: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    seed: int = 0
    limit: int | None = None  # at most N items per item set of every suite (and of the job's training split)
    batch_size: int = 16  # evaluation batch size
    out: str | None = None
    overwrite: bool = False
    eval_cache: bool = True
    config: str | None = None  # method options (JSON or YAML)
    sets: list = field(default_factory=list)  # method options, key=value
    device_map: str | None = None  # e.g. "auto": a model larger than one accelerator, spread over several
    show_pii: bool = False  # write personal data in samples.jsonl unmasked (masked by default)

    def __post_init__(self):
        for name in ("limit",):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise UsageError(f"--{name} {v!r}: expected an integer >= 1 (leave it out for the full sets)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size!r}: expected an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed {self.seed!r}: expected an integer >= 0")
        if self.device_map not in (None, "auto", "balanced", "balanced_low_0", "sequential"):
            raise UsageError(f"--device-map {self.device_map!r}: expected auto, balanced, balanced_low_0 or sequential")


@dataclass
class Plan:
    """A job resolved and checked, before anything heavy runs."""

    task: str  # erase | debias | detox | eval | <a declared job's name>
    opts: JobOptions
    suites: dict  # name -> Suite
    suite_opts: dict  # name -> its Options
    explicit: frozenset  # suite option names the user set
    method: object = None  # Method or None (eval)
    cfg: object = None
    spec: object = None  # JobSpec or None
    baselines: bool = True
    sequential: bool = False
    sweep: list | None = None  # [(label, Method, cfg)] for a sweep
    instance_suite: str | None = None
    patch_in: str | None = None  # eval --patch: a saved patch applied before measuring
    budget: float | None = None  # --max-ppl-increase: the method's strength is chosen on held-out prompts
    # `trustedit edit`: single (edit, measure, revert each request), batch (one fit of every request) or
    # sequential (fits of ``edit_batch`` requests kept one after another, measured at ``checkpoints``)
    mode: str | None = None
    edit_batch: int = 1
    checkpoints: tuple = ()

    @property
    def protocol(self) -> str:
        if self.sweep is not None:
            return "sweep"
        if self.method is None:
            return "patched" if self.patch_in else "none"
        if self.mode == "single":
            return "per_instance"
        if self.mode == "batch":
            return "batch"
        if self.mode == "sequential":
            return "sequential"
        if self.method.protocol == "per_instance":
            return "sequential" if self.sequential else "per_instance"
        return "whole"


EDIT_MODES = ("single", "batch", "sequential")


def plan(spec=None, opts: JobOptions | None = None, method: str | None = None, *, suites=None, suite_values=None,
         explicit=(), baselines: bool = True, sequential: bool = False, sweep=None, task: str | None = None,
         patch: str | None = None, max_ppl_increase: float | None = None, mode: str | None = None,
         edit_batch: int | None = None, checkpoints=None) -> Plan:
    """Resolve a job: its suites (groups expanded) with their options, its method and config (built
    and validated here, before any model pass), and check that every option applies.

    ``suite_values``: option name -> value for the suites' options (each suite takes the fields it
    has; a value no chosen suite has is a usage error). ``explicit``: the option names the user
    gave (sizes the user set are not capped by ``--limit``). ``sweep``: a list of
    ``{"label", "method" (optional), "sets"}`` points."""
    from trustedit.registry import expand_suites, get_method, get_suite

    opts = opts or JobOptions()
    suite_values = dict(suite_values or {})
    m = None
    if method is not None:
        if spec is not None and method not in spec.methods:
            raise UsageError(f"--method {method!r} is not {_a(spec.name)} method (choose from {', '.join(spec.methods)})")
        m = get_method(method)
    if spec is not None and suites is None:
        suites = spec.suites_for(method)
    if not suites:
        raise UsageError("no suite chosen (--suite S[,S...]; see `trustedit ls suites`)")
    names = expand_suites(suites)
    objs = {n: get_suite(n) for n in names}

    # each suite takes the options it has; every given option must belong to some chosen suite
    import dataclasses

    owned = {n: {f.name for f in dataclasses.fields(s.Options)} for n, s in objs.items()}
    stray = [k for k in suite_values if not any(k in o for o in owned.values())]
    if stray:
        flags = ", ".join("--" + k.replace("_", "-") for k in stray)
        raise UsageError(f"{flags} {'does' if len(stray) == 1 else 'do'} not apply to the suite(s) {', '.join(names)}")
    cfg = None
    if m is not None:
        cfg = m.config.resolve(opts.config, list(opts.sets), seed=opts.seed)
    # options linked to the method's (a suffix used for training and for evaluation alike)
    links = (spec.links if spec is not None else {}) if m is not None else {}
    for sname, pairs in links.items():
        if sname not in objs:
            continue
        for sopt, mopt in pairs.items():
            if not hasattr(cfg, mopt):
                continue
            if sopt in explicit and suite_values.get(sopt) != getattr(cfg, mopt):
                raise UsageError(f"--{sopt.replace('_', '-')} {suite_values.get(sopt)!r} differs from the method's "
                                 f"{mopt}={getattr(cfg, mopt)!r}: they must agree (set the method option with --set)")
            suite_values[sopt] = getattr(cfg, mopt)
    sopts = {}
    for n, s in objs.items():
        sopts[n] = s.Options(**{k: v for k, v in suite_values.items() if k in owned[n] and v is not None})

    if mode is not None:
        return _edit_plan(spec, opts, m, cfg, objs, sopts, explicit, names, mode, edit_batch, checkpoints, task)
    instance_suite = None
    if m is not None and m.protocol == "per_instance":
        cands = [n for n in names if objs[n].has_instances]
        if not cands:
            raise UsageError(f"{m.name} edits one instance at a time; none of the suites {', '.join(names)} has instances")
        instance_suite = cands[0]
        others = [n for n in names if n != instance_suite]
        if others and not sequential:
            raise UsageError(f"{m.name} reverts every edit after measuring its instance, so the suite(s) "
                             f"{', '.join(others)} would measure the base model twice; add --sequential, or drop them")
    if sequential and (m is None or m.protocol != "per_instance"):
        raise UsageError("--sequential applies to per-instance methods (dinm), not to "
                         f"{m.name if m else 'an evaluation'}")
    if not baselines and (m is None or not m.variants):
        raise UsageError(f"--no-baselines applies to methods with side-by-side variants (ext-sub, negation), not to "
                         f"{m.name if m else 'an evaluation'}")
    points = None
    if sweep is not None:
        if m is None:
            raise UsageError("a sweep needs a method")
        points = []
        for p in sweep:
            pm = get_method(p["method"]) if p.get("method") else m
            base_sets = list(opts.sets) if pm is m else []  # the job's --set applies to its own method's points
            points.append((p["label"], pm, pm.config.resolve(opts.config if pm is m else None,
                                                               [*base_sets, *p.get("sets", [])], seed=opts.seed)))
    task = task or (spec.name if spec is not None else "eval")
    if patch is not None and m is not None:
        raise UsageError("--patch applies to eval (a saved edit measured against its base model)")
    if max_ppl_increase is not None:
        check_budget(max_ppl_increase, m, names, sweep, sopts)
    return Plan(task, opts, objs, sopts, frozenset(explicit), m, cfg, spec, baselines, sequential, points,
                instance_suite, patch, max_ppl_increase)


def _edit_plan(spec, opts, m, cfg, objs, sopts, explicit, names, mode, edit_batch, checkpoints, task) -> Plan:
    """The plan of `trustedit edit`: a request editor, the suite whose cases it edits, the mode."""
    if mode not in EDIT_MODES:
        raise UsageError(f"--mode {mode!r}: expected {', '.join(EDIT_MODES)}")
    if m is None or not m.edits_requests:
        raise UsageError(f"--mode applies to editors of edit requests, not to {m.name if m else 'an evaluation'}")
    cands = [n for n in names if objs[n].has_instances]
    if not cands:
        raise UsageError(f"{m.name} edits requests; none of the suites {', '.join(names)} has editable cases")
    instance_suite = cands[0]
    others = [n for n in names if n != instance_suite]
    if mode == "single" and others:
        raise UsageError(f"--mode single reverts every edit after measuring its case, so the suite(s) {', '.join(others)} "
                         "would measure the base model twice; use --mode batch or sequential, or drop them")
    if edit_batch is None:
        edit_batch = getattr(cfg, "edit_batch", 1) if mode == "sequential" else 1
    if isinstance(edit_batch, bool) or not isinstance(edit_batch, int) or edit_batch < 1:
        raise UsageError(f"--edit-batch {edit_batch!r}: expected an integer >= 1")
    if mode != "sequential" and (checkpoints or edit_batch != 1):
        raise UsageError("--checkpoints and --edit-batch apply to --mode sequential")
    cps = tuple(sorted(set(checkpoints or ())))
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cps):
        raise UsageError(f"--checkpoints {list(cps)}: expected positive integers")
    return Plan(task or spec.name, opts, objs, sopts, frozenset(explicit), m, cfg, spec, True, mode == "sequential",
                None, instance_suite, None, None, mode, edit_batch, cps)


def check_budget(value, m, names, sweep, sopts) -> None:
    """``--max-ppl-increase``: a finite fraction > 0, for a method with a strength to choose, on a
    job that measures RTP (whose held-out prompts the search reads)."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"--max-ppl-increase {value!r}: expected a fraction > 0 (0.10 = at most +10 %)")
    if m is None or m.budget_grid is None:
        with_budget = "ext-sub, negation, profs"
        raise UsageError(f"--max-ppl-increase applies to methods with a strength to choose ({with_budget}), not to "
                         f"{m.name if m else 'an evaluation'}")
    if sweep is not None:
        raise UsageError("--max-ppl-increase chooses one strength; it does not combine with --sweep")
    if "rtp" not in names:
        raise UsageError("--max-ppl-increase measures the continuations of held-out RTP prompts: keep the rtp suite")
    if sopts["rtp"].validation_prompts < 1:
        raise UsageError("--max-ppl-increase needs held-out RTP prompts: --validation-prompts must be > 0")


# ---- running ----------------------------------------------------------------------------------


class Job:
    """A running job: what training-data builders see (its items, options and load context)."""

    def __init__(self, plan: Plan, items: dict, load_context):
        self.plan, self.items, self.load_context = plan, items, load_context

    def suite_options(self, name: str):
        if name in self.plan.suite_opts:
            return self.plan.suite_opts[name]
        from trustedit.registry import get_suite

        return get_suite(name).Options()


def measure(suite, lm, items, batch_size: int, cache: bool):
    """The suite's passes as JSON-ready values, through the evaluation cache when ``cache``."""
    from trustedit import distributed, evalcache
    from trustedit.suites.base import jsonable

    def compute():
        with distributed.sharding():  # under a data-parallel launch, each rank runs a share of the batches
            return jsonable(suite.measure(lm, items, batch_size))

    if not cache or not suite.cached:
        return compute(), {"state": "off"}
    parts = {"suite": suite.name, "model": lm.fingerprint, "device": str(lm.device).split(":")[0],
             "dtype": str(lm.dtype), "key": suite.cache_key(lm, items, batch_size)}
    with distributed.sharding():
        return evalcache.cached(parts, compute, encode=lambda v: v, decode=lambda o: o)


def prepare(p: Plan, timer):
    """Load every suite's items, set up their scorers, join a data-parallel launch, load the model
    and check every input against its context. Returns ``(items, lm, ctx, load context)``."""
    from trustedit import distributed
    from trustedit.models import load_model
    from trustedit.suites.base import Context, LoadContext

    o = p.opts
    lctx = LoadContext(o.limit, o.seed, p.explicit, o.model)
    ctx = Context(seed=o.seed, batch_size=o.batch_size, device=o.device)
    with timer("load_data"):
        items = {n: s.load(p.suite_opts[n], lctx) for n, s in p.suites.items()}
    with timer("setup"):
        for n, s in p.suites.items():
            s.setup(items[n], ctx)
    distributed.init(o.device)
    with timer("load_model"):
        lm = load_model(o.model, distributed.device_for(o.device), o.dtype, device_map=o.device_map)
    ctx.lm = lm
    check_lengths(p, lm, items)
    return items, lm, ctx, lctx


def check_patch_base(path, patch, lm) -> None:
    """A saved patch must be made for this model (its manifest's base fingerprint, when recorded)
    and name only parameters the model has."""
    base_fp = (patch.manifest.get("base_model") or {}).get("fingerprint")
    if base_fp and base_fp != lm.fingerprint:
        raise TrusteditError(f"--patch {path}: made for base model {base_fp}, this model is {lm.fingerprint}")
    params = dict(lm.model.named_parameters())
    missing = [k for k in patch.deltas if k not in params]
    if missing:
        raise TrusteditError(f"--patch {path}: names parameters this model lacks ({missing[0]}…)")


def base_passes(p: Plan, lm, items: dict, timer):
    """The base model's passes of every suite (through the evaluation cache), then each suite's
    ``after_base`` (``--known-only``). Returns ``(base raws, cache info, known-only info)``; ``items``
    is updated in place."""
    o = p.opts
    base, cache_info, known = {}, {}, {}
    with timer("pre_eval"):
        for n, s in p.suites.items():
            t0 = time.perf_counter()
            base[n], cache_info[n] = measure(s, lm, items[n], o.batch_size, o.eval_cache)
            timer.add(f"pre_eval/{n}", time.perf_counter() - t0)
            items[n], base[n], info = s.after_base(items[n], base[n])
            if info is not None:
                known[n] = info
    return base, cache_info, known


def suite_sections(p: Plan, items: dict, cache_info: dict, known: dict, ctx) -> dict:
    """``results["suites"]``: what each suite measured, on which data, with which scorer."""
    out = {}
    for n, s in p.suites.items():
        sec = {"summary": s.summary, "citation": s.citation, "options": p.suite_opts[n].to_dict(),
               "dataset": items[n].describe(), "cache": cache_info[n], **s.run_info(items[n], ctx)}
        if n in known:
            sec["known_only"] = known[n]
        out[n] = sec
    return out


def check_lengths(plan: Plan, lm, items: dict) -> None:
    """Refuse, before any model pass, an input longer than the model's context."""
    from trustedit.metrics.retention import model_max_length

    from trustedit.prompts import InputTooLong

    limit = model_max_length(lm.model)
    for n, s in plan.suites.items():
        try:
            tokens, where = s.longest_input(lm, items[n])
        except InputTooLong as e:
            raise UsageError(f"suite {n}: {e}") from None
        if tokens > limit:
            raise UsageError(f"suite {n}, {where}: {tokens:,} tokens (input plus generated or scored tokens) exceed "
                             f"the model's context of {limit:,} positions")


def build_train(m, lm, job: Job):
    """The method's training items, from its ``train`` builder (None: the method reads its own data)."""
    spec = job.plan.spec
    builder = spec.train if spec is not None and spec.train else m.train
    if not builder:
        return None
    from trustedit.registry import load_entry

    train = load_entry(builder)(lm, job)
    forget, retain = getattr(train, "forget", None), getattr(train, "retain", None)
    if forget is not None:  # token-id pairs: check their length like any evaluation input
        from trustedit.metrics.retention import model_max_length

        limit = model_max_length(lm.model)
        for split, pairs in (("forget", forget), ("retain", retain or [])):
            for i, p in enumerate(pairs):
                if len(p.input_ids) > limit:
                    raise UsageError(f"training split {split}[{i}]: {len(p.input_ids):,} tokens exceed the model's "
                                     f"context of {limit:,} positions")
    return train


def run(p: Plan) -> dict:
    """Execute a :class:`Plan` and write its run directory. Returns the results (schema v1)."""
    from trustedit import distributed, rundir
    from trustedit.models import resolve
    from trustedit.profiling import Stages

    o = p.opts
    out = o.out or (p.spec.out if p.spec is not None else "runs/eval")
    rundir.check_target(out, o.overwrite)  # fail before any expensive work
    if distributed.world()[1] > 1 and (p.method is not None or p.sweep is not None):
        raise UsageError("data-parallel launches (torchrun, accelerate launch) run evaluations: `trustedit eval` and "
                         "`trustedit audit`; fit the edit in one process")
    resolve(o.model)
    patch_in = None
    if p.patch_in is not None:
        from trustedit.patch import Patch

        patch_in = Patch.load(p.patch_in)
    timer = Stages()
    items, lm, ctx, lctx = prepare(p, timer)
    if patch_in is not None:
        check_patch_base(p.patch_in, patch_in, lm)
    job = Job(p, items, lctx)

    base, cache_info, known = base_passes(p, lm, items, timer)

    post, variants, patch, train, edits, points, budget = None, {}, None, None, None, None, None
    curve_raw = None
    if p.sweep is not None:
        points = _sweep(p, lm, items, base, job, timer, ctx)
    elif patch_in is not None:
        with timer("post_eval"):
            patch_in.apply(lm.model)
            try:
                post = {n: measure(s, lm, items[n], o.batch_size, False)[0] for n, s in p.suites.items()}
            finally:
                patch_in.revert(lm.model)
    elif p.method is not None and p.method.protocol == "whole" and p.mode is None:
        with timer("train_data"):
            train = build_train(p.method, lm, job)
        if p.budget is not None:
            from trustedit.budget import search

            patch, budget = search(p, lm, items, train, timer, ctx, measure)
        else:
            with timer("edit"):
                patch = p.method.fit(lm, train, p.cfg, stages=timer)
        patch.apply(lm.model)
        try:
            with timer("post_eval"):
                post = {}
                for n, s in p.suites.items():
                    t0 = time.perf_counter()
                    post[n] = measure(s, lm, items[n], o.batch_size, False)[0]
                    timer.add(f"post_eval/{n}", time.perf_counter() - t0)
            if p.baselines:
                for v, vp in getattr(patch, "variants", {}).items():
                    with timer(f"post_eval/{v}"):
                        patch.revert(lm.model)
                        vp.apply(lm.model)
                        try:
                            variants[v] = {n: measure(s, lm, items[n], o.batch_size, False)[0]
                                           for n, s in p.suites.items()}
                        finally:
                            vp.revert(lm.model)
                            patch.apply(lm.model)
        finally:
            patch.revert(lm.model)  # scoring runs against the base model
    elif p.mode in ("batch", "sequential"):
        post, patch, edits, curve_raw = _edit_run(p, lm, items, timer)
    elif p.method is not None:
        post, patch, edits = _per_instance(p, lm, items, timer)
    if not distributed.is_main():  # the other ranks helped with the passes; rank 0 scores and writes
        distributed.finish()
        return None

    with timer("score"):
        pre_scores = {n: s.score(base[n], None, items[n], ctx) for n, s in p.suites.items()}
        post_scores = {n: s.score(post[n], base[n], items[n], ctx) for n, s in p.suites.items()} if post else None
        var_scores = {v: {n: s.score(raws[n], base[n], items[n], ctx) for n, s in p.suites.items()}
                      for v, raws in variants.items()}
    seed = o.seed
    from trustedit.metrics.scores import entry

    metrics = {n: {k: entry(sc, post_scores[n][k] if post_scores else None, BOOTSTRAP_RESAMPLES, seed)
                   for k, sc in pre_scores[n].items()} for n in p.suites}
    results = _header(p, lm)
    results["suites"] = suite_sections(p, items, cache_info, known, ctx)
    results["evaluation"] = evaluation_record(o, lm)
    results["seeds"] = {"seed": seed, "sampling_seed": seed, "bootstrap_seed": seed,
                        "bootstrap_resamples": BOOTSTRAP_RESAMPLES}
    results["metrics"] = metrics
    if var_scores:
        results["variants"] = {v: {"metrics": {n: {k: entry(pre_scores[n][k], sc[n][k], BOOTSTRAP_RESAMPLES, seed)
                                                   for k in pre_scores[n]} for n in p.suites}}
                               for v, sc in var_scores.items()}
    if train is not None and hasattr(train, "describe"):
        results["training_data"] = train.describe()
    if edits is not None:
        results["edits"] = edits
    if curve_raw is not None:
        with timer("score"):
            results["curve"] = _score_curve(p, items, base, pre_scores, curve_raw, ctx)
    if points is not None:
        results["points"] = points
    if budget is not None:
        results["budget"] = budget
    if patch_in is not None:
        results["patch_in"] = {"path": str(p.patch_in), "method": patch_in.method,
                               "base_model": patch_in.manifest.get("base_model")}
    if patch is not None:
        results["patch"] = {"path": "patch", "method": patch.method, "training": patch.manifest.get("training")}
    from trustedit.provenance import timing_fields

    results.update(timing_fields(timer))

    samples = masked(_samples(p, items, base, post, pre_scores, post_scores, variants, var_scores, edits), o.show_pii)
    if patch is not None:
        from trustedit.provenance import patch_manifest

        patch.manifest.update(patch_manifest(lm, p.cfg, results, _flat(metrics), dataset={
            n: results["suites"][n]["dataset"].get("fingerprint") for n in p.suites},
            training_data=results.get("training_data")))
    from trustedit.report import summary

    with rundir.atomic_dir(out, o.overwrite) as tmp:
        if patch is not None:
            patch.save(tmp / "patch")
        rundir.write_json(tmp / "results.json", results)
        rundir.write_jsonl(tmp / "samples.jsonl", samples)
        (tmp / "summary.md").write_text(summary(results), encoding="utf-8")
        if results.get("curve"):
            from trustedit.report import plot_curve

            plot_curve(results, tmp / "curve.svg")
        if points is not None and p.spec is not None and p.spec.sweep_plot:
            from trustedit.report import plot_sweep

            plot_sweep(results, p.spec.sweep_plot, tmp / "sweep.svg")
    if patch is not None:
        patch.apply(lm.model)  # the job leaves the chosen edit applied
    distributed.finish()
    return results


def masked(rows, show_pii: bool = False):
    """Sample rows with personal data masked (:mod:`trustedit.pii`), unless ``show_pii``."""
    if show_pii:
        return rows
    from trustedit.pii import mask

    return mask(rows)


def evaluation_record(o: JobOptions, lm) -> dict:
    from trustedit import distributed

    return {"batch_size": o.batch_size, "limit": o.limit, "eval_cache": o.eval_cache, "device": lm.device,
            "dtype": lm.dtype, "device_map": o.device_map, "data_parallel_ranks": distributed.world()[1],
            "pii_masked": not o.show_pii}


def _header(p: Plan, lm) -> dict:
    from trustedit.provenance import results_header

    h = results_header(p.task, None, lm, p.method, p.cfg)
    return {"schema_version": SCHEMA_VERSION, **h, "protocol": p.protocol}


def _flat(metrics: dict) -> dict:
    return {f"{n}/{k}": v for n, ms in metrics.items() for k, v in ms.items()}


def _per_instance(p: Plan, lm, items: dict, timer):
    """Edit -> measure -> revert each instance (or keep the edits, ``sequential``)."""
    from tqdm.auto import tqdm

    from trustedit.patch import sum_patches

    o, m, name = p.opts, p.method, p.instance_suite
    suite = p.suites[name]
    instances = suite.instances(items[name])
    kept, raws, edits = [], [], []
    post = {}
    try:
        with timer("edit_and_eval"):
            for i, x in enumerate(tqdm(instances, desc=f"{m.name}: {name}", leave=False)):
                t0 = time.perf_counter()
                patch = m.fit(lm, x, p.cfg)
                t1 = time.perf_counter()
                patch.apply(lm.model)
                try:
                    raws.append(measure(suite, lm, suite.select(items[name], [i]), o.batch_size, False)[0])
                finally:
                    if p.sequential:
                        kept.append(patch)
                    else:
                        patch.revert(lm.model)
                t2 = time.perf_counter()
                edits.append({"item": getattr(x, "id", i), "training": patch.manifest.get("training"),
                              "seconds": {"fit": round(t1 - t0, 2), "post_eval": round(t2 - t1, 2)}})
            post[name] = suite.merge(raws)
        if p.sequential:
            with timer("post_eval"):
                for n, s in p.suites.items():
                    if n != name:
                        post[n] = measure(s, lm, items[n], o.batch_size, False)[0]
    finally:
        for patch in reversed(kept):
            patch.revert(lm.model)
    total = None
    if p.sequential:
        total = sum_patches(kept, m.name)
        total.manifest["training"] = {"edits": [e["training"] for e in edits], "combined": "sum of the sequential deltas"}
    return post, total, edits


def _edit_run(p: Plan, lm, items: dict, timer):
    """``batch``: one fit of every case's request. ``sequential``: fits of ``edit_batch`` requests,
    each on the model with the earlier ones in place (an editor's memory, e.g. AlphaEdit's edited
    keys, lives in the run's shared ``state``; a cumulative method's patch holds the whole memory and
    replaces the previous fit's patch); at each checkpoint N the cases edited so far are
    measured (every other suite too), and after the last fit every suite. Returns ``(post, the
    summed patch, per-fit records, {N: raws})``."""
    from tqdm.auto import tqdm

    from trustedit.methods.requests import RequestBatch
    from trustedit.patch import sum_patches

    o, m, name = p.opts, p.method, p.instance_suite
    suite = p.suites[name]
    requests = suite.instances(items[name])
    size = len(requests) if p.mode == "batch" else p.edit_batch
    chunks = [requests[i:i + size] for i in range(0, len(requests), size)]
    marks = sorted({c for c in p.checkpoints if c < len(requests)})
    state: dict = {}
    kept, edits, curve = [], [], {}
    done = 0
    try:
        with timer("edit"):
            for chunk in tqdm(chunks, desc=f"{m.name}: {p.mode}", leave=False):
                t0 = time.perf_counter()
                if m.cumulative and kept:  # the new patch holds the previous one's memory: replace it
                    kept.pop().revert(lm.model)
                patch = m.fit(lm, RequestBatch(chunk, state), p.cfg)
                patch.apply(lm.model)
                kept.append(patch)
                done += len(chunk)
                edits.append({"item": [r.id for r in chunk], "edited_so_far": done,
                              "training": patch.manifest.get("training"),
                              "seconds": {"fit": round(time.perf_counter() - t0, 2)}})
                while marks and marks[0] <= done:
                    marks.pop(0)
                    with timer("checkpoint_eval"):
                        raws = {name: measure(suite, lm, suite.select(items[name], list(range(done))), o.batch_size,
                                              False)[0]}
                        for sn, s in p.suites.items():
                            if sn != name:
                                raws[sn] = measure(s, lm, items[sn], o.batch_size, False)[0]
                    curve[done] = raws
        with timer("post_eval"):
            post = {n: measure(s, lm, items[n], o.batch_size, False)[0] for n, s in p.suites.items()}
        curve[done] = post
    finally:
        for patch in reversed(kept):
            patch.revert(lm.model)
    total = sum_patches(kept, m.name) if len(kept) > 1 else kept[0]  # a cumulative method keeps one patch
    if len(kept) > 1:
        total.manifest["training"] = {"fits": [e["training"] for e in edits],
                                      "combined": "sum of the sequential deltas"}
    return post, total, edits, (curve if p.mode == "sequential" else None)


def _score_curve(p: Plan, items, base, pre_scores, curve_raw, ctx) -> list[dict]:
    """Metrics against the number of sequential edits: the instance suite on the cases edited so far
    (paired with the base model on the same cases), every other suite whole."""
    from trustedit.metrics.scores import entry

    name = p.instance_suite
    suite = p.suites[name]
    out = []
    for n, raws in sorted(curve_raw.items()):
        metrics = {}
        for sn, s in p.suites.items():
            if sn == name:
                sel = list(range(n))
                its = suite.select(items[name], sel)
                b = suite.pick(base[name], sel)
                pre = s.score(b, None, its, ctx)
                post = s.score(raws[sn], b, its, ctx)
            else:
                pre, post = pre_scores[sn], s.score(raws[sn], base[sn], items[sn], ctx)
            metrics[sn] = {k: entry(pre[k], post[k], 200, p.opts.seed) for k in pre if k in post}
        out.append({"edits": n, "metrics": metrics})
    return out


def _sweep(p: Plan, lm, items, base, job, timer, ctx) -> list[dict]:
    """Fit, apply, measure, score and revert each point; the base passes are measured once."""
    from tqdm.auto import tqdm

    from trustedit.metrics.scores import entry

    o = p.opts
    pre_scores = {n: s.score(base[n], None, items[n], ctx) for n, s in p.suites.items()}
    trains = {}

    def train_for(m):
        if m.train not in trains:
            with timer("train_data"):
                trains[m.train] = build_train(m, lm, job)
        return trains[m.train]

    first = p.sweep[0][1]
    if len({m.name for _, m, _ in p.sweep}) == 1 and first.fit_sweep is not None:
        patches = first.fit_sweep(lm, train_for(first), [c for _, _, c in p.sweep], stages=timer)
    else:
        patches = (m.fit(lm, train_for(m), c, stages=timer) for _, m, c in p.sweep)
    points = []
    it = iter(patches)
    for label, m, c in tqdm(p.sweep, desc="sweep", leave=False):
        t0 = time.perf_counter()
        with timer("sweep/fit"):
            patch = next(it)
        t1 = time.perf_counter()
        patch.apply(lm.model)
        try:
            with timer("sweep/eval"):
                raws = {n: measure(s, lm, items[n], o.batch_size, False)[0] for n, s in p.suites.items()}
        finally:
            patch.revert(lm.model)
        with timer("score"):
            post = {n: s.score(raws[n], base[n], items[n], ctx) for n, s in p.suites.items()}
        points.append({"label": label, "method": m.name, "config": c.to_dict(),
                       "training": patch.manifest.get("training"),
                       "seconds": {"fit": round(t1 - t0, 2), "eval": round(time.perf_counter() - t1, 2)},
                       "metrics": {n: {k: entry(sc, post[n][k], BOOTSTRAP_RESAMPLES, o.seed)
                                       for k, sc in pre_scores[n].items()} for n in p.suites}})
    return points


def _samples(p, items, base, post, pre_scores, post_scores, variants, var_scores, edits) -> list[dict]:
    rows = []
    for n, s in p.suites.items():
        pre = {"raw": base[n], "scores": pre_scores[n]}
        after = {"raw": post[n], "scores": post_scores[n]} if post else None
        srows = s.samples(items[n], pre, after)
        for v, raws in variants.items():
            vrows = s.samples(items[n], pre, {"raw": raws[n], "scores": var_scores[v][n]})
            for r, vr in zip(srows, vrows):
                if "post" in vr:
                    r[f"post:{v}"] = vr["post"]
        if edits is not None and n == p.instance_suite and len(srows) == len(edits):
            for r, e in zip(srows, edits):
                r["edit"] = e
        if not p.opts.show_pii:
            srows = s.mask_private(srows, items[n])
        rows += [{"suite": n, **r} for r in srows]
    return rows
