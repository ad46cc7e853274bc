"""``fluency``: KnowEdit/ROME fluency, the weighted bi-/tri-gram entropy of greedy continuations.

Items: fixed prompts, by default the first ``fluency_prompts`` retain questions of the sanitation
test split (the model's chat template), so that an erase run measures whether the edited model
still writes varied text about things it must keep. Metric ``fluency_ngram_entropy`` (bits; see
:mod:`trustedit.metrics.fluency`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, digest, opt, pos_int


@dataclass
class FluencyOptions(SuiteOptions):
    data: str = opt(None, "Sanitation data whose retain test questions are the prompts (as for the sanitation suite).")
    no_hub: bool = opt(False, "Never try the Hugging Face Hub for the sanitation data.")
    fluency_prompts: int = opt(16, "Prompts: the first N retain test questions.", check=pos_int)
    fluency_tokens: int = opt(48, "Greedy tokens generated per prompt.", check=pos_int)


class FluencySuite(Suite):
    name = "fluency"
    area = "capability"
    Options = FluencyOptions
    summary = "n-gram entropy of greedy continuations (KnowEdit / ROME fluency)"
    citation = "Meng et al. 2022 (ROME); Zhang et al. 2024 (KnowEdit)"
    headline = ("fluency_ngram_entropy",)

    def load(self, opts, ctx):
        from trustedit.suites.sanitation import load_data

        data = load_data(opts, ctx)
        questions = [x.question for x in data.test_retain[: ctx.size(opts, "fluency_prompts")]]
        info = {"name": "sanitation test retain questions", "source": data.source, "prompts": len(questions)}
        return Items(self.name, {"questions": questions}, "sha256:" + digest(questions), info, opts)

    def _prompts(self, lm, items):
        from trustedit.prompts import PromptFormat

        key = ("prompts", id(lm.tokenizer))
        if key not in items.memo:
            fmt = PromptFormat()
            items.memo[key] = ([fmt.prompt_ids(lm.tokenizer, q) for q in items.data["questions"]],
                               "chat template" if fmt.uses_chat(lm.tokenizer) else "plain Q/A")
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit import evalcache

        prompts, _ = self._prompts(lm, items)
        return {"prompts": evalcache.ids_digest((p,) for p in prompts), "tokens": items.opts.fluency_tokens,
                "batch_size": batch_size}

    def longest_input(self, lm, items):
        prompts, _ = self._prompts(lm, items)
        if not prompts:
            return 0, ""
        i = max(range(len(prompts)), key=lambda k: len(prompts[k]))
        return len(prompts[i]) + items.opts.fluency_tokens, f"prompt {i}"

    def measure(self, lm, items, batch_size=16):
        from trustedit.prompts import generate

        prompts, _ = self._prompts(lm, items)
        texts, _ = generate(lm.model, lm.tokenizer, prompts, items.opts.fluency_tokens, batch_size, desc="fluency")
        return {"texts": texts}

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics import fluency

        _, fmt = self._prompts(ctx.lm, items)
        return {"fluency_ngram_entropy": fluency.fluency(
            raw["texts"], fluency.PROTOCOL.format(max_new=items.opts.fluency_tokens, fmt=fmt))}

    def samples(self, items, pre, post):
        rows = []
        for i, q in enumerate(items.data["questions"]):
            row = {"prompt": q, "pre": pre["raw"]["texts"][i]}
            if post is not None:
                row["post"] = post["raw"]["texts"][i]
            rows.append(row)
        return rows


SUITE = FluencySuite()
