"""The erase job: make a model answer "I don't know." about a set of facts, keep everything
else, and write the proof (``trustedit erase --dataset sanitation``).

Stages: load -> pre-eval (base model) -> [known-only filter] -> edit -> post-eval -> compare.
Every metric is computed by the same function before and after the edit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from trustedit.errors import TrusteditError


@dataclass
class EraseOptions:
    dataset: str = "sanitation"
    model: str | None = None
    method: str = "sanitation-lora"
    known_only: bool = False
    limit: int | None = None  # cap every split (train and test) at N items
    seed: int = 0
    out: str = "runs/erase"
    data: str | None = None
    config: str | None = None
    sets: list = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "auto"
    retention: list = field(default_factory=lambda: ["wikitext", "piqa", "arc_easy", "hellaswag", "boolq", "commonsenseqa", "mmlu"])
    retention_limit: int = 30  # items per multiple-choice task
    wikitext_docs: int = 1  # WikiText-2 documents for perplexity
    max_new_tokens: int = 16
    answer_stop: list = field(default_factory=lambda: ["\n", "."])  # answers end at the first line/sentence end
    fluency_prompts: int = 16
    fluency_tokens: int = 48
    batch_size: int = 16
    overwrite: bool = False
    hub: bool = True
    eval_cache: bool = True  # reuse the base model's passes from an earlier run with identical inputs


def measure(lm, opts: EraseOptions, forget_pairs, retain_pairs, fluency_prompts) -> dict:
    """The model passes behind every sanitation metric: greedy answers, teacher-forced
    predictions, and longer generations (on ``fluency_prompts``) for fluency."""
    from trustedit.prompts import generate, predicted_target_tokens

    tok, model = lm.tokenizer, lm.model
    prompts = [p.prompt for p in forget_pairs] + [p.prompt for p in retain_pairs]
    texts, _ = generate(model, tok, prompts, opts.max_new_tokens, opts.batch_size, desc="generate answers",
                        stop_strings=tuple(opts.answer_stop) or None)
    flu, _ = generate(model, tok, fluency_prompts, opts.fluency_tokens, opts.batch_size, desc="fluency")
    return {
        "gen_forget": texts[: len(forget_pairs)],
        "gen_retain": texts[len(forget_pairs) :],
        "pred_f": predicted_target_tokens(model, forget_pairs, tok.pad_token_id, opts.batch_size, desc="teacher-forced forget"),
        "pred_r": predicted_target_tokens(model, retain_pairs, tok.pad_token_id, opts.batch_size, desc="teacher-forced retain"),
        "fluency": flu,
    }


def score(raw, data, fmt_name: str, opts: EraseOptions, forget_pairs, pre=None) -> dict:
    """All sanitation metrics from one set of passes. ``pre`` is the base model's passes (for
    locality); when None, ``raw`` is the base model's own."""
    from trustedit.metrics import fluency, knowedit, qa

    gp = qa.GEN_PROTOCOL.format(max_new=opts.max_new_tokens, fmt=fmt_name, stop=opts.answer_stop)
    return {
        "K_S_idk_rate": qa.idk_rate(raw["gen_forget"], gp),
        "K_F_leak_rate": qa.leak_rate(raw["gen_forget"], data.test_forget, gp),
        "K_R_retain_accuracy": qa.retain_accuracy(raw["gen_retain"], data.test_retain, gp),
        "over_refusal_rate": qa.over_refusal(raw["gen_retain"], gp),
        "edit_success": knowedit.edit_success(raw["pred_f"], [p.target for p in forget_pairs], fmt_name),
        "locality": knowedit.locality((pre or raw)["pred_r"], raw["pred_r"], fmt_name),
        "fluency_ngram_entropy": fluency.fluency(raw["fluency"], fluency.PROTOCOL.format(max_new=opts.fluency_tokens, fmt=fmt_name)),
    }


def retention(lm, opts: EraseOptions) -> dict:
    if not opts.retention:
        return {}
    from trustedit.metrics.retention import run_retention

    limits = {t: (opts.wikitext_docs if t == "wikitext" else opts.retention_limit) for t in opts.retention}
    return run_retention(lm.model, lm.tokenizer, tasks=opts.retention, limit=limits, batch_size=opts.batch_size)


def known_filter(data, raw):
    """Indices of the test items the base model answers correctly (gold or alias in its answer)."""
    from trustedit.metrics.qa import contains_answer

    keep_f = [i for i, (g, it) in enumerate(zip(raw["gen_forget"], data.test_forget)) if contains_answer(g, it.answers)]
    keep_r = [i for i, (g, it) in enumerate(zip(raw["gen_retain"], data.test_retain)) if contains_answer(g, it.answers)]
    return keep_f, keep_r


KNOWN_RULE = "base model's greedy answer contains the gold answer or an alias"


@dataclass
class Episode:
    """A dataset turned into token pairs for one model, with the base model's passes on its test
    split: everything an edit is compared against."""

    data: object
    fmt_name: str
    test_f: list
    test_r: list
    train_f: list
    train_r: list
    fluency_prompts: list  # fixed prompt ids for the fluency generations (kept by restrict)
    pre: dict  # base-model passes (see measure)

    def measure(self, lm, opts) -> dict:
        """The current model's passes on this episode's test items."""
        return measure(lm, opts, self.test_f, self.test_r, self.fluency_prompts)

    def restrict(self, keep_f, keep_r) -> "Episode":
        """The same episode on a subset of the test items (no new model passes)."""
        d = copy.copy(self.data)
        d.test_forget = [self.data.test_forget[i] for i in keep_f]
        d.test_retain = [self.data.test_retain[i] for i in keep_r]
        return Episode(d, self.fmt_name, [self.test_f[i] for i in keep_f], [self.test_r[i] for i in keep_r],
                       self.train_f, self.train_r, self.fluency_prompts, _subset(self.pre, keep_f, keep_r))

    def known(self) -> tuple["Episode", dict]:
        keep_f, keep_r = known_filter(self.data, self.pre)
        info = {"test_forget_kept": len(keep_f), "test_forget_total": len(self.test_f),
                "test_retain_kept": len(keep_r), "test_retain_total": len(self.test_r), "rule": KNOWN_RULE}
        return self.restrict(keep_f, keep_r), info

    def scores(self, opts, post=None) -> dict:
        """Metrics of the base model (``post`` None) or of an edited model's passes."""
        if post is None:
            return score(self.pre, self.data, self.fmt_name, opts, self.test_f)
        return score(post, self.data, self.fmt_name, opts, self.test_f, pre=self.pre)


def prepare(lm, data, opts: EraseOptions, pre: dict | None = None) -> Episode:
    """Build the pairs (from token ids, chat template if any) and run the base model's passes
    (unless ``pre``, the same passes from the evaluation cache, is given)."""
    from trustedit.prompts import PromptFormat, make_pairs

    fmt = PromptFormat()
    tok = lm.tokenizer

    def pairs(items, targets):
        return make_pairs(tok, fmt, [x.question for x in items], targets)

    test_f = pairs(data.test_forget, [data.idk] * len(data.test_forget))
    test_r = pairs(data.test_retain, [x.answer for x in data.test_retain])
    train_f = pairs(data.train_forget, [data.idk] * len(data.train_forget))
    train_r = pairs(data.train_retain, [x.answer for x in data.train_retain])
    fmt_name = "chat template" if fmt.uses_chat(tok) else "plain Q/A"
    fluency = [p.prompt for p in test_r[: opts.fluency_prompts]]
    ep = Episode(data, fmt_name, test_f, test_r, train_f, train_r, fluency, pre)
    if pre is None:
        ep.pre = ep.measure(lm, opts)
    return ep


EVAL_OPTIONS = ("max_new_tokens", "answer_stop", "fluency_prompts", "fluency_tokens", "batch_size", "retention",
                "retention_limit", "wikitext_docs")


def base_eval(lm, data, opts: EraseOptions):
    """The base model's episode and retention scores, from the evaluation cache when an earlier
    run had exactly the same inputs (see :mod:`trustedit.evalcache`). Returns
    ``(episode, retention scores, cache info)``."""
    from trustedit import evalcache

    if not opts.eval_cache:
        return prepare(lm, data, opts), retention(lm, opts), {"state": "off"}
    ep = prepare(lm, data, opts, pre={})  # pairs only; passes below
    parts = {
        "model": lm.fingerprint, "device": str(lm.device), "dtype": str(lm.dtype),
        "test_forget": evalcache.ids_digest((p.prompt, p.target) for p in ep.test_f),
        "test_retain": evalcache.ids_digest((p.prompt, p.target) for p in ep.test_r),
        "fluency": evalcache.ids_digest((p,) for p in ep.fluency_prompts),
        "options": {k: getattr(opts, k) for k in EVAL_OPTIONS},
        "retention_items": evalcache.retention_digest(opts.retention, opts.retention_limit, opts.wikitext_docs),
    }
    (ep.pre, ret), info = evalcache.cached(
        parts, lambda: (ep.measure(lm, opts), retention(lm, opts)),
        encode=lambda v: {"pre": v[0], "retention": evalcache.scores_to_json(v[1])},
        decode=lambda o: (o["pre"], evalcache.scores_from_json(o["retention"])))
    return ep, ret, info


def run(opts: EraseOptions) -> dict:
    """Run the whole job and write the run directory. Returns the results dict."""
    from trustedit import __version__, rundir
    from trustedit.metrics.scores import compare
    from trustedit.models import load_model
    from trustedit.prompts import PromptFormat
    from trustedit.provenance import stamp
    from trustedit.registry import TASK_METHODS, get_dataset, get_method, load_entry

    spec = get_dataset(opts.dataset)
    if opts.method not in TASK_METHODS["erase"]:
        raise TrusteditError(f"--method {opts.method!r} is not an erase method (choose from {', '.join(TASK_METHODS['erase'])})")
    method = get_method(opts.method)
    cfg = method.config.resolve(opts.config, opts.sets, seed=opts.seed)
    rundir.check_target(opts.out, opts.overwrite)  # fail before any expensive work
    from trustedit.models import resolve

    resolve(opts.model)
    from trustedit.profiling import Stages

    timer = Stages()

    with timer("load_data"):
        data = load_entry(spec["loader"])(opts.data, hub=opts.hub)
        if opts.limit:
            for s in ("train_forget", "train_retain", "test_forget", "test_retain"):
                setattr(data, s, getattr(data, s)[: opts.limit])
    with timer("load_model"):
        lm = load_model(opts.model, opts.device, opts.dtype)
    with timer("pre_eval"):
        ep, pre_ret, cache_info = base_eval(lm, data, opts)
        known = None
        if opts.known_only:
            ep, known = ep.known()
            if not ep.test_f:
                raise TrusteditError("--known-only: the base model answers none of the forget test questions")
        data = ep.data
        pre_scores = ep.scores(opts)

    with timer("edit"):
        patch = method.fit(lm, ep.train_f, ep.train_r, cfg)
        patch.apply(lm.model)

    with timer("post_eval"):
        post_raw = ep.measure(lm, opts)
        post_scores = ep.scores(opts, post_raw)
        post_ret = retention(lm, opts)

    metrics = {k: compare(pre_scores[k], post_scores[k], seed=opts.seed) for k in pre_scores}
    for k in pre_ret:
        metrics[k] = compare(pre_ret[k], post_ret[k], seed=opts.seed)
    metrics["locality"]["pre"]["note"] = "the base model agrees with itself by definition"

    prov = stamp()
    results = {
        "trustedit_version": __version__,
        "task": "erase",
        "created": prov["created"],
        "argv": prov["argv"],
        "versions": prov["versions"],
        "model": lm.describe(),
        "method": {"name": method.name, "citation": method.citation, "summary": method.summary, "config": cfg.to_dict()},
        "dataset": {**data.describe(), "limit": opts.limit, "known_only": known},
        "prompt_format": PromptFormat().describe(lm.tokenizer),
        "evaluation": {**{k: getattr(opts, k) for k in EVAL_OPTIONS}, "base_eval_cache": cache_info},
        "seeds": {"seed": opts.seed, "bootstrap_seed": opts.seed, "bootstrap_resamples": 1000},
        "metrics": metrics,
        "patch": {"path": "patch", "method": method.name, "training": patch.manifest.get("training")},
        "timings_s": timer.to_dict()["seconds"],
        "peak_memory_mb": {k: v for k, v in timer.to_dict().items() if k.startswith("peak")},
    }
    patch.manifest.update({
        "base_model": {"fingerprint": lm.fingerprint, "spec": lm.spec, "model_type": lm.model_type},
        "config": cfg.to_dict(),
        "dataset": {"name": opts.dataset, "fingerprint": data.fingerprint(), "source": data.source},
        "metrics": {k: {"pre": v["pre"]["value"], "post": v["post"]["value"]} for k, v in metrics.items()},
        "versions": prov["versions"],
        "created": prov["created"],
    })
    samples = _samples(data, ep.pre, post_raw)
    from trustedit.report import erase_summary

    with rundir.atomic_dir(opts.out, opts.overwrite) as tmp:
        patch.save(tmp / "patch")
        rundir.write_json(tmp / "results.json", results)
        rundir.write_jsonl(tmp / "samples.jsonl", samples)
        (tmp / "summary.md").write_text(erase_summary(results), encoding="utf-8")
    return results


def _subset(raw, keep_f, keep_r) -> dict:
    """The stored base-model passes restricted to the kept items (no new model passes)."""
    return {
        "gen_forget": [raw["gen_forget"][i] for i in keep_f],
        "gen_retain": [raw["gen_retain"][i] for i in keep_r],
        "pred_f": [raw["pred_f"][i] for i in keep_f],
        "pred_r": [raw["pred_r"][i] for i in keep_r],
        "fluency": raw["fluency"],
    }


def _samples(data, pre, post):
    rows = []
    for i, it in enumerate(data.test_forget):
        rows.append({"split": "test_forget", "index": i, "question": it.question, "gold": it.answer,
                     "target": data.idk, "pre": pre["gen_forget"][i], "post": post["gen_forget"][i]})
    for i, it in enumerate(data.test_retain):
        rows.append({"split": "test_retain", "index": i, "question": it.question, "gold": it.answer,
                     "target": it.answer, "pre": pre["gen_retain"][i], "post": post["gen_retain"][i]})
    return rows
