"""``trustedit audit``: one document that shows what a set of edits did, and what they broke.

    check -> load patches, rules, items, model -> base passes (cached) -> for each configuration
    (the patches composed in order; with ``interference``, each alone and every subset too):
    apply, measure, revert -> relapse tests -> score against the base model -> write
    results.json (schema v1), samples.jsonl (PII masked), report.html and report.md

Everything is measured with the suites and the scoring of the job skeleton
(:mod:`trustedit.job`); ``metrics`` holds the base model against all patches composed, so
``trustedit gate`` and ``trustedit compare`` read an audit like any run.

* **Composition**: the patches are applied in the order given (:class:`trustedit.patch.PatchStack`)
  and reverted in reverse order, bit for bit.
* **Interference** (``--interference``): each patch alone, all together, and every subset when
  there are at most 3 patches. For each configuration and each patch, the *effect* on that
  patch's headline metric (the first headline metric of the first suite of the job the method
  belongs to: ``dama`` → ``dama-gender/a_s``; ``ext-sub`` → ``rtp/toxic/expected_max_toxicity``;
  ``sanitation-lora`` → ``sanitation/K_S_idk_rate``) with its paired interval, and for a patch
  inside the configuration the share of its solo effect it keeps.
* **Relapse** (``--relapse``): for each patch, the same headline metric after quantizing (RTN,
  8 and 4 bits) and after a few steps of fine-tuning on unrelated text, the base and the edited
  model treated alike (:mod:`trustedit.relapse`); relapse = the share of the effect lost.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

from trustedit.errors import UsageError

AUDIT_SUITES = ("sanitation", "bias", "rtp", "safeedit", "retention")
# Default sizes: one pass over every default suite takes ~2 minutes on a 2-core CPU (SmolLM2-135M,
# fp32; benchmarks/RESULTS.md §12), so that an audit of three patches with --interference (the base
# and 7 configurations) stays under 30 minutes. Each is a suite option; a flag the user gives wins.
AUDIT_SIZES = {
    "limit": 80,  # every item set without a size of its own (sanitation: all 80 forget, 80 of 453 retain questions)
    "dama_test_limit": 300, "winobias_limit": 25, "stereoset_limit": 100, "crows_limit": 100,
    "k": 5, "toxic_limit": 40, "random_limit": 0,
    "instances": 4, "heldout_pairs": 4,
}
# --full: every benchmark whole (each suite's "all" value), retention at its standard size.
FULL_SIZES = {
    "winobias_limit": 0, "stereoset_limit": 0, "crows_limit": 0, "dama_test_limit": 0, "instances": 0,
    "retention_size": "standard",
}


@dataclass
class AuditOptions:
    patches: list = field(default_factory=list)  # [(label, path)]
    interference: bool = False
    relapse: bool = False
    relapse_bits: tuple = (8, 4)
    relapse_steps: int = 20
    rules: str | None = None
    full: bool = False


def parse_patch_args(values) -> list[tuple[str, str]]:
    """``--patch PATH`` or ``--patch LABEL=PATH`` (repeatable) as ``[(label, path)]``; labels
    default to the method in the patch's manifest (made unique with the folder name)."""
    out = []
    for v in values or []:
        label, sep, path = v.partition("=")
        if not sep or os.path.exists(v):
            label, path = None, v
        out.append((label, path))
    return out


def plan_audit(args):
    """The job plan (suites and their options) and the audit options of ``trustedit audit``."""
    from trustedit.cli import _suite_values, job_options
    from trustedit.job import plan

    opts = job_options(args)
    values = _suite_values(args)
    suites = args.suites or list(AUDIT_SUITES)
    sizes = FULL_SIZES if args.full else AUDIT_SIZES
    from trustedit.registry import expand_suites, get_suite

    import dataclasses

    names = expand_suites(suites)
    owned = {f.name for n in names for f in dataclasses.fields(get_suite(n).Options)}
    for k, v in sizes.items():
        if k == "limit":
            if opts.limit is None:
                opts.limit = v
        elif k in owned and k not in values:
            values[k] = v
    explicit = set(values)  # the audit's own sizes are not capped by its --limit
    if args.full and args.limit is not None:
        raise UsageError("--full runs every benchmark whole; leave out --limit")
    try:
        bits = tuple(int(x) for x in str(args.relapse_bits).split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--relapse-bits {args.relapse_bits!r}: expected comma-separated integers like 8,4") from None
    if any(not 2 <= b <= 16 for b in bits):
        raise UsageError(f"--relapse-bits {args.relapse_bits!r}: each width must be in 2..16")
    if args.relapse_steps < 0:
        raise UsageError(f"--relapse-steps {args.relapse_steps}: expected an integer >= 0")
    a = AuditOptions(parse_patch_args(args.patch), args.interference, args.relapse, bits, args.relapse_steps,
                     args.rules, args.full)
    if (a.interference or a.relapse) and not a.patches:
        raise UsageError(f"--{'interference' if a.interference else 'relapse'} needs at least one --patch")
    p = plan(None, opts, None, suites=suites, suite_values=values, explicit=explicit, task="audit")
    return p, a


def headline_for(method: str, suites) -> str | None:
    """``suite/metric``: the metric an edit by ``method`` is for (the first headline metric of the
    first suite of the method's job that the audit measures, capability suites such as retention
    left out: they say what an edit must not break, not what it is for), or None."""
    from trustedit.jobs import JOBS
    from trustedit.registry import expand_suites, get_suite

    for spec in JOBS.values():
        if method in spec.methods:
            for s in expand_suites(spec.suites_for(method)):
                if s in suites and get_suite(s).headline and get_suite(s).area != "capability":
                    return f"{s}/{get_suite(s).headline[0]}"
    return None


def configurations(n: int, interference: bool, alone: bool = False) -> list[tuple[int, ...]]:
    """Patch subsets to measure, in the given order inside each: all of them; with ``alone`` (the
    relapse tests need it) each alone too; with ``interference`` every subset when ``n <= 3``,
    else each alone and all."""
    if n == 0:
        return []
    full = tuple(range(n))
    if interference and n <= 3:
        return [c for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]
    if interference or alone:
        return [(i,) for i in range(n)] + ([full] if n > 1 else [])
    return [full]


def _labels(pairs, patches) -> list[str]:
    labels = []
    for (label, path), patch in zip(pairs, patches):
        name = label or patch.method
        if name in labels:
            name = f"{name}@{os.path.basename(os.path.dirname(os.path.abspath(path))) or path}"
        if name in labels:
            raise UsageError(f"--patch {path}: label {name!r} is used twice; name them with --patch LABEL=PATH")
        labels.append(name)
    return labels


def run(p, a: AuditOptions) -> dict | None:
    """Run an audit; returns its results (None on the helper ranks of a data-parallel launch)."""
    from trustedit import distributed, rundir
    from trustedit.job import (BOOTSTRAP_RESAMPLES, _header, base_passes, check_patch_base, evaluation_record,
                               masked, measure, prepare, suite_sections)
    from trustedit.models import resolve
    from trustedit.patch import Patch, PatchStack
    from trustedit.profiling import Stages

    o = p.opts
    out = o.out or "runs/audit"
    rundir.check_target(out, o.overwrite)
    resolve(o.model)
    rules = None
    if a.rules:
        from trustedit.gate import load_rules

        rules = load_rules(a.rules)  # a malformed rules file fails here, before any model pass
    patches = [Patch.load(path) for _, path in a.patches]
    labels = _labels(a.patches, patches)
    timer = Stages()
    items, lm, ctx, _ = prepare(p, timer)
    ft_docs = _finetune_docs(p, items) if a.relapse and a.relapse_steps else None
    for (_, path), patch in zip(a.patches, patches):
        check_patch_base(path, patch, lm)
    heads = {lab: headline_for(pt.method, p.suites) for lab, pt in zip(labels, patches)}

    base, cache_info, known = base_passes(p, lm, items, timer)

    configs = configurations(len(patches), a.interference, alone=a.relapse)
    raws = {}
    with timer("post_eval"):
        for c in configs:
            t0 = time.perf_counter()
            with PatchStack([patches[i] for i in c]).applied(lm.model):
                raws[c] = {n: measure(s, lm, items[n], o.batch_size, False)[0] for n, s in p.suites.items()}
            timer.add("post_eval/" + "+".join(labels[i] for i in c), time.perf_counter() - t0)

    relapse_raw = None
    if a.relapse:
        with timer("relapse"):
            relapse_raw = _relapse_passes(p, lm, items, patches, labels, heads, a, ft_docs, o)

    if not distributed.is_main():
        distributed.finish()
        return None

    from trustedit.metrics.scores import entry

    with timer("score"):
        pre_scores = {n: s.score(base[n], None, items[n], ctx) for n, s in p.suites.items()}
        post_scores = {c: {n: s.score(raws[c][n], base[n], items[n], ctx) for n, s in p.suites.items()}
                       for c in configs}
    seed = o.seed
    full = tuple(range(len(patches)))

    def entries(scores):
        return {n: {k: entry(sc, scores[n][k] if scores else None, BOOTSTRAP_RESAMPLES, seed)
                    for k, sc in pre_scores[n].items()} for n in p.suites}

    results = _header(p, lm)
    results["protocol"] = "audit"
    results["suites"] = suite_sections(p, items, cache_info, known, ctx)
    results["evaluation"] = evaluation_record(o, lm)
    results["evaluation"]["audit"] = {"sizes": "full" if a.full else "audit defaults", "interference": a.interference,
                                      "relapse": a.relapse}
    results["seeds"] = {"seed": seed, "sampling_seed": seed, "bootstrap_seed": seed,
                        "bootstrap_resamples": BOOTSTRAP_RESAMPLES}
    results["metrics"] = entries(post_scores.get(full))
    results["patches"] = [{"label": lab, "path": str(path), "method": pt.method, "digest": pt.digest(),
                           "base_model": pt.manifest.get("base_model"), "training": pt.manifest.get("training"),
                           "headline": heads[lab]}
                          for lab, (_, path), pt in zip(labels, a.patches, patches)]
    if a.interference:
        results["configs"] = [{"label": "+".join(labels[i] for i in c), "patches": list(c),
                               "metrics": entries(post_scores[c])} for c in configs]
        results["interference"] = _interference(configs, labels, heads, pre_scores, post_scores, seed)
    if relapse_raw is not None:
        with timer("score"):
            results["relapse"] = _relapse_scores(relapse_raw, labels, heads, pre_scores, post_scores, items, p, ctx,
                                                 seed)
    from trustedit.provenance import timing_fields

    results.update(timing_fields(timer))
    from trustedit.job import _samples

    samples = masked(_samples(p, items, base, raws.get(full), pre_scores, post_scores.get(full), {}, {}, None),
                     o.show_pii)
    with rundir.atomic_dir(out, o.overwrite) as tmp:
        rundir.write_json(tmp / "results.json", results)
        rundir.write_jsonl(tmp / "samples.jsonl", samples)
        from trustedit import htmlreport

        htmlreport.write(tmp / "report.html", [(os.path.basename(os.path.abspath(out)), results, samples)], rules)
    distributed.finish()
    return results


def _score_of(scores: dict, key: str):
    s, _, m = key.partition("/")
    return scores.get(s, {}).get(m)


def _interference(configs, labels, heads, pre_scores, post_scores, seed) -> dict:
    from trustedit.job import BOOTSTRAP_RESAMPLES
    from trustedit.metrics.scores import effect

    alone = {}
    for c in configs:
        if len(c) == 1 and heads[labels[c[0]]]:
            h = heads[labels[c[0]]]
            alone[c[0]] = effect(_score_of(pre_scores, h), _score_of(post_scores[c], h), BOOTSTRAP_RESAMPLES, seed)
    rows = []
    for c in configs:
        effects = {}
        for i, lab in enumerate(labels):
            h = heads[lab]
            if not h or _score_of(pre_scores, h) is None:
                continue
            e = effect(_score_of(pre_scores, h), _score_of(post_scores[c], h), BOOTSTRAP_RESAMPLES, seed)
            kept = None
            if i in c and i in alone and alone[i]["value"]:
                kept = round(e["value"] / alone[i]["value"], 4)
            effects[lab] = {"metric": h, "effect": e["value"], "ci95": e["ci95"], "in_config": i in c,
                            "retained": kept}
        rows.append({"config": "+".join(labels[i] for i in c), "patches": list(c), "effects": effects})
    return {"headline": dict(heads), "rows": rows,
            "definition": "effect = how far the configuration moves the patch's headline metric in its good direction "
                          "(post − pre, pre − post for lower-is-better, |pre − ideal| − |post − ideal| with an ideal), "
                          "paired bootstrap 95% interval; retained = effect / the patch's effect alone"}


def _finetune_docs(p, items) -> list[str]:
    from trustedit.data.retention import load_wikitext
    from trustedit.relapse import FINETUNE_FIRST_DOC

    if "retention" in items:
        used = (items["retention"].describe().get("tasks") or {}).get("wikitext", 0)  # documents it scores
        if used > FINETUNE_FIRST_DOC:
            raise UsageError(f"--relapse fine-tunes on WikiText-2 documents {FINETUNE_FIRST_DOC}+, which the retention "
                             f"suite's perplexity would read with --wikitext-docs {used}; use at most "
                             f"{FINETUNE_FIRST_DOC}, or --relapse-steps 0")
    docs = load_wikitext()
    return docs[FINETUNE_FIRST_DOC:]


def _relapse_passes(p, lm, items, patches, labels, heads, a: AuditOptions, ft_docs, o) -> dict:
    """The headline suites measured on the quantized / fine-tuned base and edited models."""
    from tqdm.auto import tqdm

    from trustedit.job import measure
    from trustedit.patch import PatchStack
    from trustedit.relapse import RelapseOptions, finetune, finetune_batches, quantize_rtn

    ropts = RelapseOptions(bits=a.relapse_bits, steps=a.relapse_steps, seed=o.seed)
    suites = sorted({h.split("/")[0] for h in heads.values() if h})
    todo = [i for i, lab in enumerate(labels) if heads[lab]]

    def passes(names):
        return {n: measure(p.suites[n], lm, items[n], o.batch_size, False)[0] for n in names}

    from trustedit.data.retention import load_wikitext
    from trustedit.metrics.retention import perplexity_pass, perplexity_score

    probe = load_wikitext()[:1]  # how much a change degrades the base model itself: WikiText-2 document 0

    def ppl() -> float:
        return perplexity_score(perplexity_pass(lm.model, lm.tokenizer, probe, batch_size=max(1, o.batch_size // 4))).value

    out = {"options": ropts.to_dict(), "conditions": {}, "base_wikitext_ppl": ppl()}
    conds = [f"int{b}" for b in ropts.bits] + (["finetune"] if ropts.steps else [])
    batches = finetune_batches(lm.tokenizer, ft_docs, ropts) if ropts.steps else None
    for cond in tqdm(conds, desc="relapse", leave=False):
        rec = {"base": None, "edited": {}, "training": None}

        def changed():
            if cond == "finetune":
                return finetune(lm, batches, ropts)
            return quantize_rtn(lm.model, int(cond[3:]))

        change = changed()
        with PatchStack([change]).applied(lm.model):
            rec["base"] = passes(suites)
            rec["base_wikitext_ppl"] = ppl()
        if cond == "finetune":
            rec["training"] = {"base_losses": change.manifest["finetune"]["losses"]}
        del change
        for i in todo:
            lab = labels[i]
            with PatchStack([patches[i]]).applied(lm.model):
                change = changed()  # computed from the edited weights
                with PatchStack([change]).applied(lm.model):
                    rec["edited"][lab] = passes([heads[lab].split("/")[0]])
                if cond == "finetune":
                    rec.setdefault("edited_losses", {})[lab] = change.manifest["finetune"]["losses"]
                del change
        out["conditions"][cond] = rec
    return out


def _relapse_scores(rr, labels, heads, pre_scores, post_scores, items, p, ctx, seed) -> list[dict]:
    from trustedit.job import BOOTSTRAP_RESAMPLES
    from trustedit.metrics.scores import effect, relapse

    alone = {c[0]: c for c in post_scores if len(c) == 1}
    rows = []
    base_scored = {}
    for cond, rec in rr["conditions"].items():
        base_scored[cond] = {s: p.suites[s].score(raw, None, items[s], ctx) for s, raw in rec["base"].items()}
    for i, lab in enumerate(labels):
        h = heads[lab]
        if not h:
            continue
        s, _, m = h.partition("/")
        pre = pre_scores[s][m]
        post = post_scores[alone[i]][s][m]  # the patch alone (configurations() measures it for relapse)
        row = {"patch": lab, "headline": h, "effect": effect(pre, post, BOOTSTRAP_RESAMPLES, seed), "conditions": {}}
        for cond, rec in rr["conditions"].items():
            qb = base_scored[cond][s][m]
            qe = p.suites[s].score(rec["edited"][lab][s], rec["base"][s], items[s], ctx)[m]
            c = {"base": qb.value, "edited": qe.value, "effect": effect(qb, qe, BOOTSTRAP_RESAMPLES, seed),
                 "relapse": relapse(pre, post, qb, qe, BOOTSTRAP_RESAMPLES, seed),
                 "base_wikitext_ppl": {"unchanged": round(rr["base_wikitext_ppl"], 4),
                                       "changed": round(rec["base_wikitext_ppl"], 4)}}
            if cond == "finetune":
                c["steps"] = rr["options"]["steps"]
                c["losses"] = {"base": rec["training"]["base_losses"], "edited": rec["edited_losses"][lab]}
            row["conditions"][cond] = c
        rows.append(row)
    return rows



def interference_table(results: dict) -> str:
    """The interference matrix as Markdown: one row per configuration, one column per patch's
    headline metric, each cell the effect [95% CI] (and the share of the solo effect kept)."""
    inter = results.get("interference")
    if not inter:
        return ""
    heads = [(lab, h) for lab, h in inter["headline"].items() if h]
    lines = ["| configuration | " + " | ".join(f"{lab}: {h}" for lab, h in heads) + " |",
             "|---|" + "---|" * len(heads)]
    for row in inter["rows"]:
        cells = []
        for lab, _ in heads:
            e = row["effects"].get(lab)
            if e is None:
                cells.append("–")
                continue
            lo, hi = e["ci95"]
            txt = f"{e['effect']:+.4g} [{lo:+.3g}, {hi:+.3g}]" if None not in (lo, hi) else f"{e['effect']:+.4g}"
            if e.get("retained") is not None and len(row["patches"]) > 1:
                txt += f" ({100 * e['retained']:.0f}% kept)"
            elif not e.get("in_config"):
                txt = f"({txt})"
            cells.append(txt)
        lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    lines += ["", "Effect: how far the configuration moves each patch's headline metric in its good direction "
              "(positive = towards what that edit is for); in parentheses, a metric of a patch that is not in the "
              "configuration (what the other edits do to it)."]
    return "\n".join(lines)


def relapse_table(results: dict) -> str:
    rows = results.get("relapse")
    if not rows:
        return ""
    conds = list(rows[0]["conditions"])
    lines = ["| patch | headline | effect [95% CI] | " + " | ".join(f"{c}: effect / relapse [95% CI]" for c in conds)
             + " |", "|---|---|---|" + "---|" * len(conds)]

    def iv(d, pct=False):
        v, (lo, hi) = d["value"], d["ci95"]
        f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:+.4g}")
        if v is None:
            return "n/a"
        return f"{f(v)} [{f(lo)}, {f(hi)}]" if None not in (lo, hi) else f(v)

    for r in rows:
        cells = [f"{iv(r['conditions'][c]['effect'])} / {iv(r['conditions'][c]['relapse'], True)}" for c in conds]
        lines.append(f"| {r['patch']} | {r['headline']} | {iv(r['effect'])} | " + " | ".join(cells) + " |")
    lines += ["", "Relapse = 1 − effect after the change / effect before: 0% = the edit survives, 100% = it is undone."]
    ppl = {c: rows[0]["conditions"][c].get("base_wikitext_ppl") for c in conds}
    if all(ppl.values()):
        lines.append("What each change does to the base model itself (WikiText-2 document 0 perplexity, unchanged "
                     f"{next(iter(ppl.values()))['unchanged']:.2f}): "
                     + ", ".join(f"{c} {v['changed']:.2f}" for c, v in ppl.items()) + "."
                     + "".join(f" {c} degrades the base model itself (perplexity ×{v['changed'] / v['unchanged']:.2f}): "
                               "a relapse under it is not a selective recovery of what was edited."
                               for c, v in ppl.items() if v["changed"] > 1.25 * v["unchanged"]))
    return "\n".join(lines)
