"""``winobias``: WinoBias coreference (Zhao et al. 2018), test split, pro/anti x type 1/2.

Two protocols on the same sentences (:func:`trustedit.metrics.bias.winobias`): ``dama`` (DAMA's
greedy next token after "<sentence> '<Pronoun>' refers to the") and ``loglik`` (the gold
occupation's log-likelihood beats the other's). Metrics per protocol: ``acc``, ``delta_s``
(pro - anti) and ``delta_g`` (male - female pronoun), in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt

PROTOCOLS = ("dama", "loglik")


@dataclass
class WinoBiasOptions(SuiteOptions):
    winobias_limit: int = opt(50, "WinoBias sentences per test file (4 files; pro/anti stay paired; 0: all).",
                              check=nonneg_int)


class WinoBiasSuite(Suite):
    name = "winobias"
    area = "bias"
    Options = WinoBiasOptions
    summary = "WinoBias coreference accuracy and stereotype / pronoun-gender gaps (DAMA and log-likelihood protocols)"
    citation = "Zhao et al. 2018 (WinoBias)"
    headline = ("dama/acc", "dama/delta_s", "dama/delta_g", "loglik/acc", "loglik/delta_s", "loglik/delta_g")

    def load(self, opts, ctx):
        from trustedit.data import bias as B

        items = B.load_winobias("test", limit=ctx.size(opts, "winobias_limit", zero_is_all=True))
        return Items(self.name, {"items": items}, items.fingerprint + f"#{len(items)}",
                     {"sentences": len(items), "source": items.describe()}, opts)

    def _reqs(self, lm, items):
        from trustedit.metrics.bias import winobias_requests

        key = ("req", id(lm.tokenizer))
        if key not in items.memo:
            items.memo[key] = {p: winobias_requests(lm.tokenizer, list(items.data["items"]), p) for p in PROTOCOLS}
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit.suites.base import digest

        return {"requests": digest(self._reqs(lm, items)), "batch_size": batch_size}

    def longest_input(self, lm, items):
        r = self._reqs(lm, items)["dama"]
        if not r["contexts"]:
            return 0, ""
        i = max(range(len(r["contexts"])), key=lambda k: len(r["contexts"][k]))
        return len(r["contexts"][i]) + 8, f"sentence {i}"

    def measure(self, lm, items, batch_size=16):
        from trustedit.metrics.bias import winobias_pass

        return {p: winobias_pass(lm.model, lm.tokenizer, r, batch_size) for p, r in self._reqs(lm, items).items()}

    def score(self, raw, base_raw, items, ctx):
        from dataclasses import replace

        from trustedit.metrics.bias import winobias_scores

        out = {}
        for p, r in self._reqs(ctx.lm, items).items():
            for k, s in winobias_scores(list(items.data["items"]), r, raw[p]).items():
                name = k.replace(f"winobias_{p}/", f"{p}/")  # "winobias_dama/acc" -> "dama/acc"
                out[name] = replace(s, name=name)
        return out

    def samples(self, items, pre, post):
        rows = []
        for p in PROTOCOLS:
            k = f"{p}/acc"
            if k not in pre["scores"]:
                continue
            for i, it in enumerate(items.data["items"]):
                row = {"test": f"winobias/{k}", "index": i, "sentence": it.sentence, "gold": it.profession,
                       "other": it.other, "stereotype": it.stereotype, "pre_correct": pre["scores"][k].values[i] > 0}
                if post:
                    row["post_correct"] = post["scores"][k].values[i] > 0
                rows.append(row)
        return rows


SUITE = WinoBiasSuite()
