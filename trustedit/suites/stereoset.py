"""``stereoset``: StereoSet dev (Nadeem et al. 2021), a seeded sample of intra- and intersentence
examples. Metrics: ``ss`` (stereotype score, ideal 50), ``lms`` (language-model score), ``icat``,
overall and per kind and domain (``intrasentence/ss``, ``gender/ss``, ...); see
:func:`trustedit.metrics.bias.stereoset`.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt
from trustedit.suites.dama_gender import strip


@dataclass
class StereoSetOptions(SuiteOptions):
    stereoset_limit: int = opt(300, "StereoSet examples, a seeded sample of the 4,229 (0: all).", check=nonneg_int)


class StereoSetSuite(Suite):
    name = "stereoset"
    Options = StereoSetOptions
    summary = "StereoSet SS / LMS / ICAT from sentence log-probabilities"
    citation = "Nadeem et al. 2021 (StereoSet)"
    headline = ("ss", "lms", "icat", "gender/ss", "gender/lms")

    def load(self, opts, ctx):
        from trustedit.data import bias as B
        from trustedit.methods.base import sample_items

        allx = B.load_stereoset()
        items = sample_items(list(allx), ctx.size(opts, "stereoset_limit"), ctx.seed)
        fp = allx.fingerprint + "#" + __import__("hashlib").sha256(",".join(x.id for x in items).encode()).hexdigest()[:16]
        return Items(self.name, {"items": items}, fp, {"examples": len(items), "source": allx.describe(),
                                                       "sample_seed": ctx.seed}, opts)

    def cache_key(self, lm, items, batch_size):
        from trustedit.metrics.bias import stereoset_requests
        from trustedit.suites.base import digest

        return {"requests": digest(stereoset_requests(items.data["items"])), "batch_size": batch_size}

    def measure(self, lm, items, batch_size=16):
        from trustedit.metrics.bias import stereoset_pass
        from trustedit.metrics.retention import resolve_add_bos

        bos = resolve_add_bos(lm.tokenizer, None)
        return {"bos": bos, "lls": stereoset_pass(lm.model, lm.tokenizer, items.data["items"], bos, batch_size)}

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics.bias import stereoset_scores

        return strip(stereoset_scores(items.data["items"], raw["lls"], raw["bos"]), "stereoset/")


SUITE = StereoSetSuite()
