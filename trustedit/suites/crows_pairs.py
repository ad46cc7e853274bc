"""``crows-pairs``: CrowS-Pairs (Nangia et al. 2020), a seeded sample of pairs, scored as
lm-evaluation-harness does (whole-sentence log-likelihood; ``--crows-scoring shared`` is a named
variant). Metrics: ``metric`` (% pairs where the more stereotypical sentence is more likely,
ideal 50) and one per bias type (``gender``, ``race-color``, ...); see
:func:`trustedit.metrics.bias.crows_pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt
from trustedit.suites.dama_gender import strip


@dataclass
class CrowsPairsOptions(SuiteOptions):
    crows_limit: int = opt(300, "CrowS-Pairs pairs, a seeded sample of the 1,508 (0: all).", check=nonneg_int)
    crows_scoring: str = opt("sentence", "Sentence score: sentence (whole-sentence log-likelihood, lm-evaluation-harness) "
                             "or shared (the tokens both sentences share, after the changed ones; a variant).",
                             check=lambda v: None if v in ("sentence", "shared") else "expected sentence or shared")


class CrowsPairsSuite(Suite):
    name = "crows-pairs"
    area = "bias"
    Options = CrowsPairsOptions
    summary = "CrowS-Pairs: share of pairs where the stereotypical sentence is more likely"
    citation = "Nangia et al. 2020 (CrowS-Pairs)"
    headline = ("metric", "gender")

    def load(self, opts, ctx):
        from trustedit.data import bias as B
        from trustedit.methods.base import sample_items

        allx = B.load_crows_pairs()
        items = sample_items(list(allx), ctx.size(opts, "crows_limit"), ctx.seed)
        fp = allx.fingerprint + "#" + __import__("hashlib").sha256(",".join(x.id for x in items).encode()).hexdigest()[:16]
        return Items(self.name, {"items": items}, fp, {"pairs": len(items), "source": allx.describe(),
                                                       "sample_seed": ctx.seed}, opts)

    def _req(self, lm, items):
        from trustedit.metrics.bias import crows_requests

        key = ("req", id(lm.tokenizer))
        if key not in items.memo:
            items.memo[key] = crows_requests(lm.tokenizer, items.data["items"])
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit.suites.base import digest

        return {"requests": digest(self._req(lm, items)), "batch_size": batch_size}

    def longest_input(self, lm, items):
        seqs = self._req(lm, items)["seqs"]
        if not seqs:
            return 0, ""
        i = max(range(len(seqs)), key=lambda k: len(seqs[k]))
        return len(seqs[i]), f"pair {i // 2}"

    def measure(self, lm, items, batch_size=16):
        from trustedit.metrics.bias import token_logprobs

        r = self._req(lm, items)
        lps = token_logprobs(lm.model, lm.tokenizer, r["seqs"], r["first"], batch_size, "crows-pairs")
        return {"logprobs": [x.tolist() for x in lps]}

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics.bias import crows_scores

        return strip(crows_scores(items.data["items"], self._req(ctx.lm, items), raw["logprobs"],
                                  items.opts.crows_scoring), "crows_pairs/")


SUITE = CrowsPairsSuite()
