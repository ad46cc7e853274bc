"""``stereoset``: StereoSet dev (Nadeem et al. 2021) in its published protocol: candidates scored by
their mean token log-probability; the headline ``ss`` (stereotype score, ideal 50), ``lms``
(language-model score) and ``icat`` are the **intrasentence** task, per domain as ``gender/ss``...;
the intersentence task is reported on its own (``intersentence/ss``...). A seeded sample of each
task; see :func:`trustedit.metrics.bias.stereoset`.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt
from trustedit.suites.dama_gender import strip


def _scoring_check(v):
    return None if v in ("mean", "sum") else "expected mean (the published scoring) or sum (a variant)"


def _kinds_check(v):
    bad = [k for k in v if k not in ("intrasentence", "intersentence")]
    return f"unknown task(s) {bad} (known: intrasentence, intersentence)" if bad or not v else None


@dataclass
class StereoSetOptions(SuiteOptions):
    stereoset_limit: int = opt(300, "StereoSet examples per task, a seeded sample (0: all: 2,106 intrasentence, 2,123 "
                               "intersentence).", check=nonneg_int)
    stereoset_scoring: str = opt("mean", "Candidate score: mean token log-probability (published) or sum (a variant).",
                                 check=_scoring_check)
    stereoset_tasks: list = opt(["intrasentence", "intersentence"], "StereoSet tasks to score (the headline is the "
                                "intrasentence task).", check=_kinds_check)


class StereoSetSuite(Suite):
    name = "stereoset"
    area = "bias"
    Options = StereoSetOptions
    summary = "StereoSet SS / LMS / ICAT from sentence log-probabilities"
    citation = "Nadeem et al. 2021 (StereoSet)"
    headline = ("ss", "lms", "icat", "gender/ss", "gender/lms", "intersentence/ss", "intersentence/lms",
                "intersentence/icat")

    def load(self, opts, ctx):
        from trustedit.data import bias as B
        from trustedit.methods.base import sample_items

        allx = B.load_stereoset()
        n = ctx.size(opts, "stereoset_limit")
        items = []
        for kind in ("intrasentence", "intersentence"):
            if kind in opts.stereoset_tasks:
                items += sample_items([x for x in allx if x.kind == kind], n, ctx.seed)
        fp = allx.fingerprint + "#" + __import__("hashlib").sha256(",".join(x.id for x in items).encode()).hexdigest()[:16]
        return Items(self.name, {"items": items}, fp, {"examples": len(items), "source": allx.describe(),
                                                       "sample_seed": ctx.seed}, opts)

    def cache_key(self, lm, items, batch_size):
        from trustedit.metrics.bias import stereoset_requests
        from trustedit.suites.base import digest

        return {"requests": digest(stereoset_requests(items.data["items"])), "batch_size": batch_size}

    def measure(self, lm, items, batch_size=16):
        from trustedit.metrics.bias import stereoset_pass
        from trustedit.metrics.retention import prefix_token_label, resolve_add_bos

        bos = resolve_add_bos(lm.tokenizer, None)
        return {"bos": bos, "prefix": prefix_token_label(lm.tokenizer),
                "lls": stereoset_pass(lm.model, lm.tokenizer, items.data["items"], bos, batch_size)}

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics.bias import stereoset_scores

        return strip(stereoset_scores(items.data["items"], raw["lls"], raw["bos"],
                                      length_norm=items.opts.stereoset_scoring == "mean", prefix=raw["prefix"]),
                     "stereoset/")


SUITE = StereoSetSuite()
