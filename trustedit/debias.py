"""The debias job (``trustedit debias``) and the bias evaluation suite (``trustedit eval --suite bias``).

Stages: load -> pre-eval (bias suite + retention on the base model) -> fit (DAMA or INLP) ->
post-eval (the same functions on the edited model) -> compare. The run directory has the same
layout as ``erase``: results.json, samples.jsonl, summary.md and patch/ (no patch for ``eval``).

The bias suite (one implementation, :mod:`trustedit.metrics.bias`):

* DAMA's gender-bias regression on ``dama/test_dama.json`` (a_s, a_f, b, R²);
* WinoBias test, pro/anti x type 1/2, in DAMA's next-token protocol and the log-likelihood one;
* StereoSet dev (intra- and intersentence), a seeded sample, SS / LMS / ICAT per domain;
* CrowS-Pairs, a seeded sample, overall and per bias type;
* general-task retention (WikiText-2 perplexity, multiple choice) from the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trustedit.errors import UsageError

BIAS_TESTS = ("dama_gender", "winobias", "stereoset", "crows_pairs")


@dataclass
class DebiasOptions:
    method: str = "dama"
    model: str | None = None
    seed: int = 0
    out: str = "runs/debias"
    config: str | None = None
    sets: list = field(default_factory=list)
    layers: str | None = None  # "FIRST:LAST" (indices or fractions of depth); INLP: one layer
    rank: float | None = None  # DAMA d_c: a count, or a fraction of d_model
    device: str = "cpu"
    dtype: str = "auto"
    tests: list = field(default_factory=lambda: list(BIAS_TESTS))
    dama_test_limit: int | None = None  # all 1,111 prompts
    winobias_limit: int | None = 50  # sentences per WinoBias test file (4 files; pro/anti stay paired)
    stereoset_limit: int | None = 300  # StereoSet examples, a seeded sample of intra + inter
    crows_limit: int | None = 300  # CrowS-Pairs pairs, a seeded sample
    retention: list = field(default_factory=lambda: ["wikitext", "piqa", "arc_easy", "hellaswag", "boolq", "commonsenseqa", "mmlu"])
    retention_limit: int = 30
    wikitext_docs: int = 1
    batch_size: int = 16
    overwrite: bool = False
    eval_cache: bool = True


EVAL_OPTIONS = ("tests", "dama_test_limit", "winobias_limit", "stereoset_limit", "crows_limit", "retention",
                "retention_limit", "wikitext_docs", "batch_size", "seed")


# ---- the suite's data ------------------------------------------------------------------------


def load_suite(opts: DebiasOptions) -> dict:
    """Every item the suite scores, with its fingerprint. Unknown test names are a usage error."""
    from trustedit.data import bias as B
    from trustedit.methods.base import sample_items

    unknown = [t for t in opts.tests if t not in BIAS_TESTS]
    if unknown:
        raise UsageError(f"unknown bias test(s) {unknown}; known: {', '.join(BIAS_TESTS)}")
    out = {}
    if "dama_gender" in opts.tests:
        out["dama_gender"] = {"prompts": B.load_dama_test(opts.dama_test_limit), "professions": B.load_dama_professions()}
    if "winobias" in opts.tests:
        out["winobias"] = {"items": B.load_winobias("test", limit=opts.winobias_limit)}
    if "stereoset" in opts.tests:
        allx = B.load_stereoset()
        out["stereoset"] = {"items": sample_items(list(allx), opts.stereoset_limit, opts.seed), "all": allx}
    if "crows_pairs" in opts.tests:
        allx = B.load_crows_pairs()
        out["crows_pairs"] = {"items": sample_items(list(allx), opts.crows_limit, opts.seed), "all": allx}
    return out


def suite_fingerprints(suite: dict) -> dict:
    """``{"<test>/<part>": "sha256:..."}`` of the files each test read (whole files, before sampling)."""
    return {f"{name}/{k}": v.fingerprint for name, parts in suite.items() for k, v in parts.items()
            if getattr(v, "fingerprint", None)}


def _items_digest(suite: dict) -> str:
    import hashlib
    import json
    from dataclasses import asdict, is_dataclass

    h = hashlib.sha256()
    for name in sorted(suite):
        for k in sorted(suite[name]):
            if k == "all":
                continue
            rows = [asdict(x) if is_dataclass(x) else x for x in suite[name][k]]
            h.update(json.dumps([name, k, rows], sort_keys=True, default=str).encode("utf-8"))
    return h.hexdigest()


# ---- evaluation ------------------------------------------------------------------------------


def evaluate(lm, suite: dict, opts: DebiasOptions) -> dict:
    """All bias scores (and retention) of the current model: ``{name: Score}``."""
    from trustedit.metrics import bias as M

    model, tok, bs = lm.model, lm.tokenizer, opts.batch_size
    scores = {}
    if "dama_gender" in suite:
        s = suite["dama_gender"]
        scores.update(M.gender_bias_regression(model, tok, list(s["prompts"]), list(s["professions"]), bs))
    if "winobias" in suite:
        items = list(suite["winobias"]["items"])
        scores.update(M.winobias(model, tok, items, "dama", bs))
        scores.update(M.winobias(model, tok, items, "loglik", bs))
    if "stereoset" in suite:
        scores.update(M.stereoset(model, tok, suite["stereoset"]["items"], bs))
    if "crows_pairs" in suite:
        scores.update(M.crows_pairs(model, tok, suite["crows_pairs"]["items"], bs))
    if opts.retention:
        from trustedit.metrics.retention import run_retention

        limits = {t: (opts.wikitext_docs if t == "wikitext" else opts.retention_limit) for t in opts.retention}
        scores.update(run_retention(model, tok, tasks=opts.retention, limit=limits, batch_size=bs))
    return scores


def base_evaluate(lm, suite: dict, opts: DebiasOptions):
    """:func:`evaluate` on the base model, from the evaluation cache when every input is the same."""
    from trustedit import evalcache

    if not opts.eval_cache:
        return evaluate(lm, suite, opts), {"state": "off"}
    parts = {
        "suite": "bias", "model": lm.fingerprint, "device": str(lm.device), "dtype": str(lm.dtype),
        "options": {k: getattr(opts, k) for k in EVAL_OPTIONS}, "items": _items_digest(suite),
        "retention_items": evalcache.retention_digest(opts.retention, opts.retention_limit, opts.wikitext_docs),
    }
    return evalcache.cached(parts, lambda: evaluate(lm, suite, opts),
                            encode=lambda v: {"scores": evalcache.scores_to_json(v)},
                            decode=lambda o: evalcache.scores_from_json(o["scores"]))


def samples(suite: dict, pre: dict, post: dict | None) -> list[dict]:
    """Per-item rows a person can read: DAMA prompts with p(he) - p(she), WinoBias sentences with
    correctness in both protocols."""
    rows = []
    if "dama_gender" in suite:
        y0 = pre["dama_gender/he_minus_she"].values
        y1 = post["dama_gender/he_minus_she"].values if post else None
        for i, p in enumerate(suite["dama_gender"]["prompts"]):
            rows.append({"test": "dama_gender", "index": i, "prompt": p, "pre_p_he_minus_p_she": y0[i],
                         **({"post_p_he_minus_p_she": y1[i]} if post else {})})
    if "winobias" in suite:
        for proto in ("dama", "loglik"):
            k = f"winobias_{proto}/acc"
            if k not in pre:
                continue
            for i, it in enumerate(suite["winobias"]["items"]):
                rows.append({"test": k, "index": i, "sentence": it.sentence, "gold": it.profession, "other": it.other,
                             "stereotype": it.stereotype, "pre_correct": pre[k].values[i] > 0,
                             **({"post_correct": post[k].values[i] > 0} if post else {})})
    return rows


# ---- the job ---------------------------------------------------------------------------------


def _layer_sets(method: str, layers: str | None, rank) -> list[str]:
    """``--layers`` / ``--rank`` as ``--set`` assignments of the method's config."""
    sets = []
    if layers:
        if method == "inlp":
            sets.append(f"layer={layers}")
        else:
            first, sep, last = layers.partition(":")
            if not sep or not first or not last:
                raise UsageError(f"--layers {layers!r}: expected FIRST:LAST (indices, or fractions of depth like 0.66:0.93)")
            sets += [f"first_layer={first}", f"last_layer={last}"]
    if rank is not None:
        if method != "dama":
            raise UsageError(f"--rank applies to dama (the projection rank d_c), not to {method}")
        sets.append(f"components={rank}")
    return sets


def _describe_suite(suite: dict) -> dict:
    out = {}
    for name, parts in suite.items():
        d = {k: len(v) for k, v in parts.items() if k != "all"}
        for k, v in parts.items():
            if hasattr(v, "describe"):
                d[f"{k}_source"] = v.describe()
        out[name] = d
    return out


def run(opts: DebiasOptions, edit: bool = True) -> dict:
    """``trustedit debias`` (``edit=True``) or ``trustedit eval --suite bias`` (``edit=False``)."""
    from trustedit import rundir
    from trustedit.metrics.scores import compare, single
    from trustedit.models import load_model, resolve
    from trustedit.profiling import Stages
    from trustedit.provenance import results_header, timing_fields
    from trustedit.registry import get_task_method

    method = cfg = None
    if edit:
        method = get_task_method("debias", opts.method)
        cfg = method.config.resolve(opts.config, [*_layer_sets(opts.method, opts.layers, opts.rank), *opts.sets], seed=opts.seed)
    rundir.check_target(opts.out, opts.overwrite)
    resolve(opts.model)
    timer = Stages()
    with timer("load_data"):
        suite = load_suite(opts)
    with timer("load_model"):
        lm = load_model(opts.model, opts.device, opts.dtype)
    with timer("pre_eval"):
        pre, cache_info = base_evaluate(lm, suite, opts)
    patch = post = None
    if edit:
        with timer("edit"):
            patch = method.fit(lm, None, cfg)  # its own stage timings go into the patch manifest
            patch.apply(lm.model)
        with timer("post_eval"):
            post = evaluate(lm, suite, opts)
    if edit:
        metrics = {k: compare(pre[k], post[k], seed=opts.seed) for k in pre}
    else:
        metrics = {k: single(s, seed=opts.seed) for k, s in pre.items()}
    results = {
        **results_header("debias" if edit else "eval", "bias", lm, method, cfg),
        "dataset": {"tests": _describe_suite(suite), "fingerprints": suite_fingerprints(suite)},
        "evaluation": {**{k: getattr(opts, k) for k in EVAL_OPTIONS}, "base_eval_cache": cache_info},
        "seeds": {"seed": opts.seed, "bootstrap_seed": opts.seed, "bootstrap_resamples": 1000},
        "metrics": metrics,
        **timing_fields(timer),
    }
    if edit:
        results["patch"] = {"path": "patch", "method": method.name, "training": patch.manifest.get("training")}
        patch.manifest.update({
            "base_model": {"fingerprint": lm.fingerprint, "spec": lm.spec, "model_type": lm.model_type},
            "config": cfg.to_dict(),
            "dataset": {"name": "dama/train_dama.json", "tests": results["dataset"]["fingerprints"]},
            "metrics": {k: {"pre": v["pre"]["value"], "post": v["post"]["value"]} for k, v in metrics.items()},
            "versions": results["versions"],
            "created": results["created"],
        })
    from trustedit.report import bias_summary

    with rundir.atomic_dir(opts.out, opts.overwrite) as tmp:
        if edit:
            patch.save(tmp / "patch")
        rundir.write_json(tmp / "results.json", results)
        rundir.write_jsonl(tmp / "samples.jsonl", samples(suite, pre, post))
        (tmp / "summary.md").write_text(bias_summary(results), encoding="utf-8")
    return results


# ---- the sweep (``trustedit debias --sweep``) ------------------------------------------------

SWEEP_LAYERS = ("0.66:0.93", "0.83:0.93", "0.5:0.66")  # the paper's range, its upper third, a middle band
SWEEP_RANKS = (2, 8, 36)  # 36 = 1/16 of SmolLM2's 576 (the paper's 256 of 4096)


def parse_sweep(layers: str | None, ranks: str | None) -> tuple[list[str], list[float]]:
    """``--sweep-layers "A:B,C:D"`` and ``--sweep-ranks "2,8,0.0625"`` (defaults: SWEEP_*)."""
    specs = [x.strip() for x in (layers or ",".join(SWEEP_LAYERS)).split(",") if x.strip()]
    for s in specs:
        _layer_sets("dama", s, None)  # validates FIRST:LAST
    try:
        rk = [float(x) for x in (ranks or ",".join(map(str, SWEEP_RANKS))).split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--sweep-ranks {ranks!r}: expected comma-separated numbers") from None
    if not specs or not rk or any(r <= 0 for r in rk):
        raise UsageError("--sweep needs at least one layer range and one positive rank")
    return specs, rk


def _value(scores: dict, key: str):
    return float(scores[key].value) if key in scores else None


def run_sweep(opts: DebiasOptions, layer_specs: list[str], ranks: list[float]) -> dict:
    """Map DAMA's trade-off over layer ranges x ranks: one value-vector computation, then per
    point the statistics, PLS and projections (lower layers replayed), the suite on the edited
    model, and a revert. Writes results.json (every point's metrics against the base model),
    summary.md and sweep.svg (bias against perplexity)."""
    import time

    from trustedit import rundir
    from trustedit.bias import dama
    from trustedit.metrics.scores import compare
    from trustedit.models import load_model, resolve
    from trustedit.profiling import Stages
    from trustedit.provenance import results_header, timing_fields
    from trustedit.registry import get_method

    if opts.method != "dama":
        raise UsageError(f"--sweep maps DAMA's layers x rank; it does not apply to --method {opts.method}")
    if opts.layers or opts.rank is not None:
        raise UsageError("--sweep takes --sweep-layers / --sweep-ranks, not --layers / --rank")
    if "dama_gender" not in opts.tests or "wikitext" not in opts.retention:
        raise UsageError("--sweep plots a_s against perplexity: keep dama_gender in --tests and wikitext in --retention")
    method = get_method("dama")
    cfg = method.config.resolve(opts.config, list(opts.sets), seed=opts.seed)
    rundir.check_target(opts.out, opts.overwrite)
    resolve(opts.model)
    timer = Stages()
    with timer("load_data"):
        suite = load_suite(opts)
    with timer("load_model"):
        lm = load_model(opts.model, opts.device, opts.dtype)
    from trustedit import arch
    from trustedit.methods.base import set_seed

    n_layers = arch.num_layers(lm.model)
    grid = []
    for spec in layer_specs:
        first, _, last = spec.partition(":")
        layers = dama.resolve_layers(first, last, n_layers)
        for r in ranks:
            grid.append((spec, layers, r))
    with timer("pre_eval"):
        pre, cache_info = base_evaluate(lm, suite, opts)
    set_seed(cfg.seed)
    model = lm.model
    model.eval()
    points = []
    with timer("prepare"):
        prep = dama.prepare(lm, None, cfg)
    low = min(g[1][0] for g in grid)
    replay = dama.ResidualReplay(model, low) if cfg.replay_lower_layers and low > 0 else None
    from tqdm.auto import tqdm

    with timer("points"):
        for spec, layers, r in tqdm(grid, desc="dama sweep", leave=False):
            k = dama.resolve_components(r, prep.V.shape[-1])
            t0 = time.perf_counter()
            deltas, per_layer = dama.project_layers(lm, prep, layers, k, cfg.values, cfg, None, replay)
            t1 = time.perf_counter()
            patch = dama.make_patch(lm, prep, cfg, layers, k, deltas, per_layer, {}, t1 - t0)
            patch.apply(model)
            try:
                post = evaluate(lm, suite, opts)
            finally:
                patch.revert(model)
            points.append({
                "layers_spec": spec, "layers": layers, "rank_spec": r, "components": k,
                "fit_projection_s": round(t1 - t0, 2), "eval_s": round(time.perf_counter() - t1, 2),
                "per_layer": per_layer,
                "metrics": {key: compare(pre[key], post[key], seed=opts.seed) for key in pre},
            })
    results = {
        **results_header("debias-sweep", "bias", lm, method, cfg),
        "sweep": {"layers": layer_specs, "ranks": ranks, "shared": {
            "prompts": len(prep.prompts), "contexts": prep.contexts, "value_loss_first": prep.value_record["loss"][0],
            "value_loss_last": prep.value_record["loss"][-1], "lower_layers_replayed_from": replay.layer if replay else None}},
        "dataset": {"tests": _describe_suite(suite), "fingerprints": suite_fingerprints(suite)},
        "evaluation": {**{k: getattr(opts, k) for k in EVAL_OPTIONS}, "base_eval_cache": cache_info},
        "seeds": {"seed": opts.seed, "bootstrap_seed": opts.seed, "bootstrap_resamples": 1000},
        "base": {k: {"value": s.value, "protocol": s.protocol, "n": s.n} for k, s in pre.items()},
        "points": points,
        **timing_fields(timer),
    }
    from trustedit.report import plot_sweep, sweep_summary

    with rundir.atomic_dir(opts.out, opts.overwrite) as tmp:
        rundir.write_json(tmp / "results.json", results)
        plot_sweep(results, tmp / "sweep.svg")
        (tmp / "summary.md").write_text(sweep_summary(results), encoding="utf-8")
    return results
