"""``retention``: general-task capability that an edit must keep.

WikiText-2 token perplexity (whole documents, disjoint windows) and lm-evaluation-harness-style
zero-shot multiple choice (PIQA, ARC-Easy, HellaSwag, BoolQ, CommonsenseQA, MMLU): ``acc`` and
``acc_norm`` per task. The code is :mod:`trustedit.metrics.retention`; this file says which items
and sizes. The default task list lives here and only here (:data:`DEFAULT_TASKS`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, digest, nonneg_int, opt

DEFAULT_TASKS = ["wikitext", "piqa", "arc_easy", "hellaswag", "boolq", "commonsenseqa", "mmlu"]

# Sizes (items per multiple-choice task, WikiText-2 documents) of each named retention size.
# "default": the main job's quick size; its summary states the resolution it reaches. "standard":
# chosen so that the paired 95% interval of the pooled multiple-choice delta is at most +-1 point on
# the edits of benchmarks/RESULTS.md §11 (measured there at this size: ±0.75, ±0.56 and ±0.92 points),
# with at least 20 WikiText-2 windows (4 documents: 22 windows of 1,024 tokens).
SIZES = {"default": {"retention_limit": 30, "wikitext_docs": 1},
         "standard": {"retention_limit": 300, "wikitext_docs": 4}}


def _tasks_check(v):
    from trustedit.data.retention import MC_TASKS

    unknown = [t for t in v if t != "wikitext" and t not in MC_TASKS]
    return f"unknown task(s) {unknown} (known: wikitext, {', '.join(MC_TASKS)})" if unknown else None


@dataclass
class RetentionOptions(SuiteOptions):
    retention: list = opt(list(DEFAULT_TASKS), "General-task retention tasks, comma-separated ('none' for none).",
                          check=_tasks_check)
    retention_limit: int = opt(30, "Items per multiple-choice retention task (the first N; MMLU round-robin over "
                               "subjects; 0: all).", check=nonneg_int)
    wikitext_docs: int = opt(1, "WikiText-2 test documents for perplexity (0: all 62).", check=nonneg_int)
    retention_size: str = opt("default", "Named sizes: 'default' (30 items per task, 1 WikiText-2 document: quick, "
                              "resolves a few points) or 'standard' (300 items per task, 4 documents: resolves "
                              "+-1 point; used by `audit --full` and benchmarks/RESULTS.md). --retention-limit and "
                              "--wikitext-docs, when given, win.",
                              check=lambda v: None if v in SIZES else f"expected one of {', '.join(SIZES)}")


class RetentionSuite(Suite):
    name = "retention"
    area = "capability"
    Options = RetentionOptions
    summary = "WikiText-2 perplexity and zero-shot multiple choice (lm-evaluation-harness formats)"
    citation = "Merity et al. 2017; Bisk et al. 2020; Clark et al. 2018; Zellers et al. 2019; Clark et al. 2019; " \
               "Talmor et al. 2019; Hendrycks et al. 2021"
    headline = ("wikitext/ppl", "pooled/acc")
    resolution = "pooled/acc"

    def load(self, opts, ctx):
        from trustedit.data.retention import load_mc, load_wikitext

        size = SIZES[opts.retention_size]
        tasks = {}
        for t in opts.retention:
            if t == "wikitext":
                tasks[t] = load_wikitext(ctx.size(opts, "wikitext_docs", size["wikitext_docs"], zero_is_all=True))
            else:
                tasks[t] = load_mc(t, ctx.size(opts, "retention_limit", size["retention_limit"], zero_is_all=True))
        rows = {t: (v if t == "wikitext" else [asdict(x) for x in v]) for t, v in tasks.items()}
        info = {"tasks": {t: len(v) for t, v in tasks.items()}}
        return Items(self.name, tasks, "sha256:" + digest(rows), info, opts)

    def longest_input(self, lm, items):
        from trustedit.metrics.retention import encode_pair, resolve_add_bos

        bos = resolve_add_bos(lm.tokenizer, None)
        best = (0, "")
        for t, data in items.data.items():
            if t == "wikitext":
                continue  # windowed: never longer than the model's context
            for it in data:
                for c in it.choices:
                    ctx_ids, cont = encode_pair(lm.tokenizer, it.context, c, bos)
                    if len(ctx_ids) + len(cont) > best[0]:
                        best = (len(ctx_ids) + len(cont), f"{t} item {it.id}")
        return best

    def measure(self, lm, items, batch_size=16):
        import time

        from trustedit.metrics.retention import mc_pass, perplexity_pass, resolve_add_bos

        bos = resolve_add_bos(lm.tokenizer, None)
        out = {"bos": bos, "tasks": {}, "seconds": {}}
        for t, data in items.data.items():
            t0 = time.perf_counter()
            if t == "wikitext":
                out["tasks"][t] = perplexity_pass(lm.model, lm.tokenizer, data, batch_size=max(1, batch_size // 4))
            else:
                out["tasks"][t] = mc_pass(lm.model, lm.tokenizer, data, batch_size=batch_size, task=t, bos=bos)
            out["seconds"][t] = round(time.perf_counter() - t0, 3)
        return out

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics.retention import mc_scores, perplexity_score

        from trustedit.metrics.scores import Score

        scores, pooled, tasks = {}, [], []
        for t, data in items.data.items():
            if t == "wikitext":
                scores["wikitext/ppl"] = perplexity_score(raw["tasks"][t], "wikitext/ppl")
            else:
                for s in mc_scores(data, raw["tasks"][t], t, raw["bos"]).values():
                    scores[s.name] = s
                pooled += scores[f"{t}/acc"].values
                tasks.append(f"{t} {len(data)}")
        if pooled:
            scores["pooled/acc"] = Score(
                "pooled/acc", f"accuracy over the items of every multiple-choice task pooled ({', '.join(tasks)}); "
                "the half-width of its paired 95% interval is the smallest change in retention this size resolves",
                pooled, unit="fraction", display="percent")
        return scores

    def samples(self, items, pre, post):
        """Per multiple-choice item: whether the base (and the edited) model chose the gold answer."""
        rows = []
        for t, data in items.data.items():
            if t == "wikitext":
                continue
            a = pre["scores"][f"{t}/acc"].values
            b = post["scores"][f"{t}/acc"].values if post else None
            for i, it in enumerate(data):
                row = {"task": t, "id": it.id, "gold": it.label, "pre_correct": bool(a[i])}
                if b is not None:
                    row["post_correct"] = bool(b[i])
                rows.append(row)
        return rows


SUITE = RetentionSuite()
