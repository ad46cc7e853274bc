"""The ``trustedit`` command line. Imports nothing heavy until a subcommand runs.

Every job subcommand (``erase``, ``debias``, ``detox``: :data:`trustedit.jobs.JOBS`) and ``eval``
share one set of flags, defined once: the common ones from :class:`trustedit.job.JobOptions`, and
one per field of each suite's options dataclass (its help text is the field's). A flag that does
not apply to the chosen suites or method is a usage error, and every error is one line on stderr
with exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from trustedit import __version__

COMMON = [
    # (flag, dest, kwargs): JobOptions, one meaning on every subcommand
    ("--model", "model", dict(default=None, help="embedded name, .gguf file, HF folder or Hub id (default: smollm2-135m)")),
    ("--device", "device", dict(default="cpu", help="cpu or cuda")),
    ("--dtype", "dtype", dict(default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")),
    ("--seed", "seed", dict(type=int, default=0, help="seed for training, sampling and seeded samples of items")),
    ("--limit", "limit", dict(type=int, default=None, help="at most N items in every item set of every suite (and in "
                                                           "the job's training split); a suite's own size flag, when "
                                                           "given, is not capped")),
    ("--batch-size", "batch_size", dict(type=int, default=16, help="evaluation batch size")),
    ("--overwrite", "overwrite", dict(action="store_true", help="replace an existing run directory")),
    ("--device-map", "device_map", dict(default=None, help="auto: spread a model larger than one accelerator over all "
                                                           "of them (accelerate); default: the whole model on --device")),
    ("--show-pii", "show_pii", dict(action="store_true", help="write personal data (e-mail addresses, phone numbers, "
                                                              "card numbers…) unmasked in samples and reports")),
    ("--no-eval-cache", "no_eval_cache", dict(action="store_true", help="always re-run the base model's passes (by "
                                                                         "default they are reused from an earlier run "
                                                                         "with identical inputs; ~/.cache/trustedit/evals)")),
]
METHOD_FLAGS = [
    ("--config", "config", dict(default=None, help="method options file, JSON or YAML (a top-level 'method:' section "
                                                   "is also accepted)")),
    ("--set", "sets", dict(action="append", default=[], metavar="KEY=VALUE", help="one method option (repeatable; "
                                                                                 "`trustedit ls methods` lists them)")),
]
# Shortcut flags for method options: flag -> (methods it applies to, help)
SHORTCUTS = {
    "layers": (("dama", "inlp"), "DAMA: FIRST:LAST edited layers (indices, or fractions of depth, e.g. 0.66:0.93); "
                                 "INLP: the one layer"),
    "rank": (("dama",), "DAMA projection rank d_c (a count, or a fraction of d_model)"),
    "lam": (("ext-sub", "negation"), "weight of the subtracted anti-expert part (default 1)"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``trustedit: error: ...``) with exit code 2, and
    which never guesses a flag from its prefix (``--k`` is not ``--known-only``)."""

    def __init__(self, *a, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*a, **kw)

    def error(self, message):
        print(f"trustedit: error: {self.prog.split(' ', 1)[-1] + ': ' if ' ' in self.prog else ''}{message}",
              file=sys.stderr)
        raise SystemExit(2)


def _suite_fields(names) -> dict:
    """field name -> (type name, [(suite, default, help)]) over the suites' options."""
    import dataclasses

    from trustedit.registry import get_suite

    out: dict = {}
    for n in names:
        for f in dataclasses.fields(get_suite(n).Options):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
            out.setdefault(f.name, (t, []))[1].append((n, default, f.metadata.get("help", "")))
    return out


def _parse_ints(text: str) -> list:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parse_list(text: str) -> list:
    return [] if text.strip().lower() in ("", "none") else [x.strip() for x in text.split(",") if x.strip()]


def _add_suite_flags(p, names) -> None:
    g = p.add_argument_group("suite options (each applies to the suites that have it; default: the suite's own)")
    for name, (t, owners) in _suite_fields(names).items():
        flag = "--" + name.replace("_", "-")
        where = ", ".join(o for o, _, _ in owners)
        defaults = " / ".join(f"{d!r}" for _, d, _ in owners) if len({repr(d) for _, d, _ in owners}) > 1 else repr(owners[0][1])
        help = f"{owners[0][2]} [{where}; default {defaults}]"
        if t == "bool":
            g.add_argument(flag, dest=f"suite__{name}", action="store_const", const=True, default=None, help=help)
        elif t == "list":
            g.add_argument(flag, dest=f"suite__{name}", metavar=name.upper(), type=_parse_list, default=None, help=help)
        elif t == "int":
            g.add_argument(flag, dest=f"suite__{name}", metavar=name.upper(), type=int, default=None, help=help)
        elif t == "float":
            g.add_argument(flag, dest=f"suite__{name}", metavar=name.upper(), type=float, default=None, help=help)
        else:
            g.add_argument(flag, dest=f"suite__{name}", metavar=name.upper(), default=None, help=help)


def _add_common(p, out_default: str) -> None:
    for flag, dest, kw in COMMON:
        p.add_argument(flag, dest=dest, **kw)
    p.add_argument("--out", default=out_default, help=f"run directory to create (default: {out_default})")


def _add_job_parser(sub, spec) -> None:
    p = sub.add_parser(spec.name, help=spec.help, description=spec.description)
    p.add_argument("--method", default=spec.methods[0], help=f"{', '.join(spec.methods)} (default {spec.methods[0]})")
    if spec.datasets:
        p.add_argument("--dataset", default=spec.datasets[0], help=f"the data to edit and measure: "
                                                                   f"{', '.join(spec.datasets)} (default {spec.datasets[0]})")
    p.add_argument("--suites", default=None, type=_parse_list,
                   help=f"suites (or groups) to measure instead of the job's own ({', '.join(spec.suites)})")
    _add_common(p, spec.out)
    for flag, dest, kw in METHOD_FLAGS:
        p.add_argument(flag, dest=dest, **kw)
    g = p.add_argument_group("method shortcuts (each is a --set of the methods named)")
    for dest, (methods, help) in SHORTCUTS.items():
        if set(methods) & set(spec.methods):
            flag = "--lambda" if dest == "lam" else "--" + dest
            g.add_argument(flag, dest=f"short__{dest}", default=None, help=f"{help} [{', '.join(methods)}]")
    if any(m in ("ext-sub", "negation") for m in spec.methods):
        g.add_argument("--no-baselines", action="store_true", help="skip the side-by-side variants of the same fit "
                                                                   "(the expert alone, the other combination)")
    if any(m in ("ext-sub", "negation", "profs") for m in spec.methods):
        g.add_argument("--max-ppl-increase", type=float, default=None, metavar="F",
                       help="fluency budget: choose the method's strength (ext-sub/negation: λ and scale; profs: k and "
                            "layers) on held-out RTP prompts so that the continuations' perplexity rises by at most F "
                            "(0.10 = +10 %%) under the base model and the --ppl-judge model")
    if spec.edit_modes:
        e = p.add_argument_group("editing modes")
        e.add_argument("--mode", default="single", choices=["single", "batch", "sequential"],
                       help="single: edit, measure and revert each case (default); batch: one fit of every case; "
                            "sequential: keep fits of --edit-batch cases one after another (adds the retention suite)")
        e.add_argument("--n", type=int, default=None, metavar="N", help="edit the first N cases of the dataset")
        e.add_argument("--edit-batch", type=int, default=None, metavar="B",
                       help="sequential: cases per fit (default: the method's edit_batch, else 1)")
        e.add_argument("--checkpoints", type=_parse_ints, default=None, metavar="N1,N2,...",
                       help="sequential: also measure after these numbers of edits (default 10,100,1000 below --n)")
    if "dinm" in spec.methods:
        g.add_argument("--sequential", action="store_true", help="per-instance methods: keep every edit and save their "
                                                                 "sum as patch/ (default: edit -> evaluate -> revert)")
    if "dama" in spec.methods:
        g.add_argument("--sweep", action="store_true", help="DAMA: map the trade-off over --sweep-layers x --sweep-ranks "
                                                            "(value vectors computed once); writes sweep.svg, no patch")
        g.add_argument("--sweep-layers", default=None, help="comma-separated FIRST:LAST ranges (default: "
                                                            "0.66:0.93,0.83:0.93,0.5:0.66)")
        g.add_argument("--sweep-ranks", default=None, help="comma-separated d_c values (default: 2,8,36)")
    names = []
    for m in spec.methods:
        names += [x for x in _expand(spec.suites_for(m)) if x not in names]
    if spec.edit_modes and "retention" not in names:  # batch and sequential runs add it
        names.append("retention")
    _add_suite_flags(p, names)


def _expand(names):
    from trustedit.registry import expand_suites

    return expand_suites(names)


def _parser() -> argparse.ArgumentParser:
    from trustedit.jobs import JOBS
    from trustedit.registry import SUITE_GROUPS, SUITES

    p = OneLineParser(prog="trustedit", description="Edit causal language models to remove what they must not do, "
                                                    "and prove it.")
    p.add_argument("--version", action="version", version=f"trustedit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for spec in JOBS.values():
        _add_job_parser(sub, spec)

    ev = sub.add_parser("eval", help="run suites on a model (optionally with a saved patch), without editing",
                        description="Measure any suite, or group of suites, on a model; with --patch, the base model "
                                    "and the patched model side by side.")
    ev.add_argument("--suite", required=True, type=_parse_list,
                    help=f"comma-separated suites or groups: {', '.join([*SUITES, *SUITE_GROUPS])}")
    ev.add_argument("--patch", default=None, help="a saved patch folder: measure the base model and the patched one")
    _add_common(ev, "runs/eval")
    _add_suite_flags(ev, list(SUITES))

    au = sub.add_parser("audit", help="measure a model with its patches composed, write results and a report",
                        description="Run the audit suites (default: sanitation, bias, rtp, safeedit, retention at sizes "
                                    "that keep it under 30 minutes on a 2-core CPU) on the base model and on the model "
                                    "with every --patch applied in order; writes results.json, samples.jsonl (PII "
                                    "masked), report.html and report.md.")
    au.add_argument("--patch", action="append", default=[], metavar="[LABEL=]PATH",
                    help="a saved patch folder (repeatable: applied in the order given)")
    au.add_argument("--suites", default=None, type=_parse_list,
                    help=f"suites or groups (default: {', '.join(('sanitation', 'bias', 'rtp', 'safeedit', 'retention'))})")
    au.add_argument("--full", action="store_true", help="run every benchmark whole instead of the audit sizes")
    au.add_argument("--interference", action="store_true", help="also measure each patch alone and every subset "
                                                                "(at most 3 patches; else each alone), and print how each "
                                                                "edit moves the others' headline metrics")
    au.add_argument("--relapse", action="store_true", help="quantize (RTN 8/4 bits) and briefly fine-tune the base and "
                                                           "each edited model, and report the share of each edit's "
                                                           "effect that is lost")
    au.add_argument("--relapse-bits", default="8,4", help="quantization widths for --relapse (default 8,4)")
    au.add_argument("--relapse-steps", type=int, default=20, help="fine-tuning steps on WikiText-2 for --relapse "
                                                                  "(default 20; 0: no fine-tuning test)")
    au.add_argument("--rules", default=None, help="gate rules (YAML) whose pass/warn/fail lights head the report "
                                                  "(default: the packaged rules)")
    _add_common(au, "runs/audit")
    _add_suite_flags(au, list(SUITES))

    _add_scorers_parser(sub)
    from trustedit.locate_cmd import add_parser as add_locate_parser  # torch-free

    add_locate_parser(sub)
    from trustedit.memorize import add_parser as add_memorize_parser  # torch-free

    add_memorize_parser(sub)
    from trustedit.data.command import add_parser as add_data_parser  # torch-free

    add_data_parser(sub)
    from trustedit.gate import add_parser as add_gate_parser  # torch-free

    add_gate_parser(sub)
    from trustedit.htmlreport import add_parser as add_report_parser  # torch-free

    add_report_parser(sub)

    ls = sub.add_parser("ls", help="list methods, suites, jobs or datasets")
    ls.add_argument("what", choices=["methods", "suites", "jobs", "datasets"])

    cmp_ = sub.add_parser("compare", help="side-by-side table of several run directories (any jobs, and eval runs)")
    cmp_.add_argument("runs", nargs="+", help="run directories (each with results.json)")
    cmp_.add_argument("--out", default=None, help="also write the table to this Markdown file")
    cmp_.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    pa = sub.add_parser("patch", help="apply, revert or export a saved patch")
    pa.add_argument("action", choices=["apply", "revert", "export", "show"])
    pa.add_argument("patch", help="patch folder (a run's patch/ folder)")
    pa.add_argument("--model", default=None, help="base model (default: the one named in the manifest, else smollm2-135m)")
    pa.add_argument("--out", default=None, help="output folder for merged weights (apply/export/revert)")
    pa.add_argument("--device", default="cpu")
    pa.add_argument("--overwrite", action="store_true")
    return p


def _add_scorers_parser(sub) -> None:
    sc = sub.add_parser("scorers", help="toxicity scorers: list, train (minilm-lr), check",
                        description="ls: each scorer, its kind and whether it can run here; train: fit minilm-lr on "
                                    "Jigsaw + ParaDetox and print its held-out ROC-AUC/F1; check: load a scorer and "
                                    "score a few fixed texts (exit 2 on failure).")
    sc.add_argument("action", choices=["ls", "train", "check"])
    sc.add_argument("--scorer", default=None, help="minilm-lr (default), detoxify or profanity")
    sc.add_argument("--scorer-checkpoint", default=None, help="detoxify: local checkpoint (.ckpt); "
                                                              "default $TRUSTEDIT_DETOXIFY_CHECKPOINT")
    sc.add_argument("--force", action="store_true", help="train: retrain even if a cached model exists")
    sc.add_argument("--device", default="cpu", help="cpu or cuda")


# ---- turning arguments into a plan ------------------------------------------------------------


def job_options(args):
    from trustedit.job import JobOptions

    return JobOptions(model=args.model, device=args.device, dtype=args.dtype, seed=args.seed, limit=args.limit,
                      batch_size=args.batch_size, out=args.out, overwrite=args.overwrite,
                      eval_cache=not args.no_eval_cache, config=getattr(args, "config", None),
                      sets=list(getattr(args, "sets", []) or []), device_map=args.device_map, show_pii=args.show_pii)


def _suite_values(args) -> dict:
    return {k[len("suite__"):]: v for k, v in vars(args).items() if k.startswith("suite__") and v is not None}


def _shortcut_sets(args, method: str) -> list[str]:
    from trustedit.errors import UsageError

    sets = []
    for dest, (methods, _) in SHORTCUTS.items():
        v = getattr(args, f"short__{dest}", None)
        if v is None:
            continue
        flag = "--lambda" if dest == "lam" else "--" + dest
        if method not in methods:
            raise UsageError(f"{flag} applies to {', '.join(methods)}, not to --method {method}")
        if dest == "layers" and method == "dama":
            first, sep, last = v.partition(":")
            if not sep or not first or not last:
                raise UsageError(f"--layers {v!r}: expected FIRST:LAST (indices, or fractions of depth like 0.66:0.93)")
            sets += [f"first_layer={first}", f"last_layer={last}"]
        elif dest == "layers":
            sets.append(f"layer={v}")
        elif dest == "rank":
            sets.append(f"components={v}")
        else:
            sets.append(f"lam={v}")
    return sets


SWEEP_LAYERS = ("0.66:0.93", "0.83:0.93", "0.5:0.66")  # the paper's range, its upper third, a middle band
SWEEP_RANKS = (2, 8, 36)  # 36 = 1/16 of SmolLM2's 576 (the paper's 256 of 4096)


def parse_sweep(layers: str | None, ranks: str | None) -> list[dict]:
    """DAMA sweep points from ``--sweep-layers "A:B,C:D"`` and ``--sweep-ranks "2,8,0.0625"``."""
    from trustedit.errors import UsageError

    specs = [x.strip() for x in (layers or ",".join(SWEEP_LAYERS)).split(",") if x.strip()]
    try:
        rk = [float(x) for x in (ranks or ",".join(map(str, SWEEP_RANKS))).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--sweep-ranks {ranks!r}: expected comma-separated numbers") from None
    if not specs or not rk or any(not r > 0 for r in rk):
        raise UsageError("--sweep needs at least one layer range and one positive rank")
    points = []
    for s in specs:
        first, sep, last = s.partition(":")
        if not sep or not first or not last:
            raise UsageError(f"--sweep-layers {s!r}: expected FIRST:LAST (indices, or fractions of depth like 0.66:0.93)")
        for r in rk:
            rs = int(r) if float(r).is_integer() else r
            points.append({"label": f"{s} d_c={rs}", "sets": [f"first_layer={first}", f"last_layer={last}",
                                                              f"components={r}"]})
    return points


def job_plan(args):
    """The :class:`trustedit.job.Plan` of a job subcommand's arguments."""
    from trustedit.errors import UsageError
    from trustedit.job import plan
    from trustedit.jobs import JOBS, _a

    spec = JOBS[args.command]
    opts = job_options(args)
    method = args.method
    if method not in spec.methods:
        raise UsageError(f"--method {method!r} is not {_a(spec.name)} method (choose from {', '.join(spec.methods)})")
    opts.sets = _shortcut_sets(args, method) + opts.sets
    values = _suite_values(args)
    sweep = None
    if getattr(args, "sweep", False):
        if method != "dama":
            raise UsageError(f"--sweep maps DAMA's layers x rank; it does not apply to --method {method}")
        if args.short__layers is not None or args.short__rank is not None:
            raise UsageError("--sweep takes --sweep-layers / --sweep-ranks, not --layers / --rank")
        sweep = parse_sweep(args.sweep_layers, args.sweep_ranks)
        suites = args.suites or list(spec.suites_for(method))
        tasks = values.get("retention")
        if "dama-gender" not in _expand(suites) or "retention" not in _expand(suites) or \
                (tasks is not None and "wikitext" not in tasks):
            raise UsageError("--sweep plots a_s against perplexity: keep the dama-gender and retention suites and "
                             "wikitext in --retention")
    elif getattr(args, "sweep_layers", None) or getattr(args, "sweep_ranks", None):
        raise UsageError("--sweep-layers / --sweep-ranks need --sweep")
    suites = args.suites
    if spec.edit_modes:
        return _edit_job_plan(args, spec, opts, method, values)
    if suites is None and getattr(args, "dataset", None) is not None:
        suites = list(spec.suites_for(method, args.dataset))
    return plan(spec, opts, method, suites=suites, suite_values=values, explicit=set(values),
                baselines=not getattr(args, "no_baselines", False), sequential=getattr(args, "sequential", False),
                sweep=sweep, task=("debias-sweep" if sweep else None),
                max_ppl_increase=getattr(args, "max_ppl_increase", None))


def _edit_job_plan(args, spec, opts, method, values):
    """`trustedit edit`: --dataset sets the instance suite's data option, --n its size."""
    from trustedit.errors import UsageError
    from trustedit.job import plan

    if args.dataset not in spec.datasets:
        raise UsageError(f"--dataset {args.dataset!r}: expected one of {', '.join(spec.datasets)}")
    if spec.dataset_option in values and values[spec.dataset_option] != args.dataset:
        raise UsageError(f"--dataset {args.dataset} and --{spec.dataset_option.replace('_', '-')} "
                         f"{values[spec.dataset_option]} disagree: give one")
    values[spec.dataset_option] = args.dataset
    if args.n is not None:
        if args.n < 1:
            raise UsageError(f"--n {args.n}: expected an integer >= 1")
        values["edits"] = args.n
    suites = args.suites or (list(spec.suites) + ([] if args.mode == "single" else ["retention"]))
    checkpoints = args.checkpoints
    if checkpoints is None and args.mode == "sequential":
        n = args.n or args.limit
        checkpoints = [c for c in (10, 100, 1000) if n is None or c < n]
    return plan(spec, opts, method, suites=suites, suite_values=values, explicit=set(values), mode=args.mode,
                edit_batch=args.edit_batch, checkpoints=checkpoints)


def eval_plan(args):
    from trustedit.job import plan

    values = _suite_values(args)
    return plan(None, job_options(args), None, suites=args.suite, suite_values=values, explicit=set(values),
                task="eval", patch=args.patch)


def _cmd_job(args) -> int:
    from trustedit.job import run
    from trustedit.report import summary

    p = job_plan(args) if args.command != "eval" else eval_plan(args)
    results = run(p)
    if results is None:  # a helper rank of a data-parallel launch: rank 0 reports
        return 0
    print(summary(results))
    print(f"wrote {p.opts.out}/ in {results['timings_s']['total']:.0f} s")
    return 0


def _cmd_audit(args) -> int:
    from trustedit import audit
    from trustedit.report import summary

    p, a = audit.plan_audit(args)
    results = audit.run(p, a)
    if results is None:  # a helper rank of a data-parallel launch
        return 0
    print(summary(results))
    for table in (audit.interference_table(results), audit.relapse_table(results)):
        if table:
            print(table + "\n")
    print(f"wrote {p.opts.out}/ (results.json, samples.jsonl, report.html, report.md) in "
          f"{results['timings_s']['total']:.0f} s")
    return 0


def _cmd_scorers(args) -> int:
    from trustedit.errors import TrusteditError, UsageError
    from trustedit.registry import DEFAULT_SCORER, SCORERS, get_scorer, get_scorer_class

    name = args.scorer or DEFAULT_SCORER
    if args.action == "ls":
        for n in SCORERS:
            cls = get_scorer_class(n)
            ok, note = cls.status()
            print(f"{n:10s} [{cls.kind}] {'available' if ok else 'unavailable'}: {note}\n{'':10s} {cls.summary}")
        return 0
    if args.action == "train":
        if not hasattr(get_scorer_class(name), "train"):
            raise UsageError(f"scorer {name!r} is not trained locally (only minilm-lr is)")
        m = get_scorer(name, device=args.device).train(force=args.force)
        h = m["heldout"]
        print(f"{m['version']}: held-out ROC-AUC {h['roc_auc']:.4f}, F1@{h['threshold']} {h['f1']:.4f}, accuracy "
              f"{h['accuracy']:.4f} (n={h['n']}, {h['n_toxic']} toxic; C={m['C']}; trained {m['trained_at']})")
        for src, v in h["by_source"].items():
            print(f"  {src}: ROC-AUC {v['roc_auc']:.4f}, F1 {v['f1']:.4f} (n={v['n']})")
        return 0
    from trustedit.safety.scorers import CHECK_TEXTS

    try:
        scorer = get_scorer(name, checkpoint=args.scorer_checkpoint, device=args.device)
        scores = scorer.score(list(CHECK_TEXTS))
    except TrusteditError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed check is a one-line exit 2, whatever broke
        raise TrusteditError(f"scorer {name!r} failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
    if len(scores) != len(CHECK_TEXTS) or not all(0.0 <= s <= 1.0 for s in scores):
        raise TrusteditError(f"scorer {name!r} returned {scores!r}: expected {len(CHECK_TEXTS)} values in [0, 1]")
    print(f"{scorer.name} [{scorer.kind}] {scorer.version}")
    for t, s in zip(CHECK_TEXTS, scores):
        print(f"  {scorer.kind} {s:.3f}  {t}")
    return 0


def _cmd_ls(args) -> int:
    from trustedit.jobs import JOBS
    from trustedit.registry import METHODS, SUITE_GROUPS, SUITES, get_method, get_suite

    if args.what == "methods":
        for name in METHODS:
            m = get_method(name)
            jobs = [j for j, spec in JOBS.items() if name in spec.methods]
            print(f"{name:20s} [{', '.join(jobs)}; {m.protocol}] {m.summary}\n{'':20s} {m.citation}")
            for field, default, help in m.config.help_table():
                print(f"{'':22s}{field}={default!r}: {help}")
    elif args.what == "suites":
        for name in SUITES:
            s = get_suite(name)
            print(f"{name:14s} {s.summary}\n{'':14s} {s.citation}")
            for field, default, help in s.Options.help_table():
                print(f"{'':16s}--{field.replace('_', '-')} (default {default!r}): {help}")
        for g, members in SUITE_GROUPS.items():
            print(f"{g:14s} group: {', '.join(members)}")
    elif args.what == "jobs":
        for name, spec in JOBS.items():
            per = "; ".join(f"{m}: {', '.join(s)}" for m, s in spec.method_suites.items())
            print(f"{name:8s} {spec.help}\n{'':8s} methods: {', '.join(spec.methods)}; suites: {', '.join(spec.suites)}"
                  + (f" ({per})" if per else ""))
    else:  # the datasets: the same listing as `trustedit data ls`
        import argparse

        from trustedit.data.command import run as data_run

        return data_run(argparse.Namespace(data_action="ls", names=[]))
    return 0


def _cmd_compare(args) -> int:
    from pathlib import Path

    from trustedit import results as R
    from trustedit.errors import UsageError
    from trustedit.report import compare_runs

    if args.out:
        out = Path(args.out)
        if out.exists() and not args.overwrite:
            raise UsageError(f"--out {out}: already exists (pass --overwrite to replace it)")
        if out.exists() and out.is_dir():
            raise UsageError(f"--out {out}: is a folder, not a file")
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: the folder {out.parent} does not exist")
    runs = [(Path(d).name, R.load(d)) for d in args.runs]
    table = compare_runs(runs)
    print(table)
    if args.out:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=str(Path(args.out).parent), prefix=f".{Path(args.out).name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(table)
        os.replace(tmp, args.out)
    return 0


def _cmd_patch(args) -> int:
    from trustedit.patch_cli import run

    return run(args)


def _cmd_data(args) -> int:
    from trustedit.data.command import run

    return run(args)


def _cmd_gate(args) -> int:
    from trustedit.gate import run

    return run(args)


def _cmd_locate(args) -> int:
    from trustedit.locate_cmd import run

    return run(args)


def _cmd_memorize(args) -> int:
    from trustedit.memorize import run

    return run(args)


def _cmd_report(args) -> int:
    from trustedit.htmlreport import run

    return run(args)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from trustedit.errors import TrusteditError
    from trustedit.jobs import JOBS

    try:
        if args.command in JOBS or args.command == "eval":
            return _cmd_job(args)
        if args.command == "audit":
            return _cmd_audit(args)
        return {"ls": _cmd_ls, "patch": _cmd_patch, "compare": _cmd_compare, "scorers": _cmd_scorers,
                "data": _cmd_data, "gate": _cmd_gate, "report": _cmd_report,
                "memorize": _cmd_memorize, "locate": _cmd_locate}[args.command](args)
    except TrusteditError as e:
        print(f"trustedit: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("trustedit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
