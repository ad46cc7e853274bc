"""``dama-gender``: DAMA's gender-bias regression (Limisiewicz et al. 2024).

Items: the 1,111 prompts of ``dama/test_dama.json`` ("The nurse said that") and the profession
table. Pass: next-token log-probabilities of " he" and " she". Metrics: ``a_s`` (stereotype slope,
ideal 0), ``a_f`` (factual slope, keep), ``b`` (intercept, ideal 0) and ``he_minus_she`` (mean
p(he) - p(she)); see :func:`trustedit.metrics.bias.gender_bias_regression`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt


@dataclass
class DamaGenderOptions(SuiteOptions):
    dama_test_limit: int = opt(None, "DAMA test prompts (default and 0: all 1,111).", check=nonneg_int)


def strip(scores: dict, prefix: str) -> dict:
    """``{"prefix/x": Score}`` -> ``{"x": Score}`` (names inside the suite)."""
    out = {}
    for k, s in scores.items():
        name = k[len(prefix):] if k.startswith(prefix) else k
        out[name] = replace(s, name=name)
    return out


class DamaGenderSuite(Suite):
    name = "dama-gender"
    area = "bias"
    Options = DamaGenderOptions
    summary = "DAMA gender bias: p(he) - p(she) regressed on stereotypical and factual profession scores"
    citation = "Limisiewicz, Mareček & Musil 2024 (DAMA, ICLR 2024)"
    headline = ("a_s", "a_f", "b", "he_minus_she")

    def load(self, opts, ctx):
        from trustedit.data import bias as B

        prompts = B.load_dama_test(ctx.size(opts, "dama_test_limit", zero_is_all=True))
        profs = B.load_dama_professions()
        info = {"prompts": len(prompts), "prompts_source": prompts.describe(), "professions": len(profs),
                "professions_source": profs.describe()}
        fp = "sha256:" + __import__("hashlib").sha256(
            (prompts.fingerprint + profs.fingerprint + str(len(prompts))).encode()).hexdigest()
        return Items(self.name, {"prompts": prompts, "professions": profs}, fp, info, opts)

    def _req(self, lm, items):
        from trustedit.metrics.bias import gender_bias_requests

        key = ("req", id(lm.tokenizer))
        if key not in items.memo:
            items.memo[key] = gender_bias_requests(lm.tokenizer, list(items.data["prompts"]),
                                                   list(items.data["professions"]))
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit.suites.base import digest

        r = self._req(lm, items)
        return {"contexts": digest(r["contexts"]), "targets": digest(r["targets"]), "sf": digest(r["sf"]),
                "batch_size": batch_size}

    def longest_input(self, lm, items):
        r = self._req(lm, items)
        if not r["contexts"]:
            return 0, ""
        i = max(range(len(r["contexts"])), key=lambda k: len(r["contexts"][k]))
        return len(r["contexts"][i]), f"prompt {i}"

    def measure(self, lm, items, batch_size=16):
        from trustedit.metrics.bias import next_token_logprobs

        r = self._req(lm, items)
        res = next_token_logprobs(lm.model, lm.tokenizer, r["contexts"], r["targets"], batch_size, "dama gender")
        return {"logprobs": [lp for lp, _ in res]}

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics.bias import gender_bias_scores

        return strip(gender_bias_scores(self._req(ctx.lm, items), raw["logprobs"]), "dama_gender/")

    def samples(self, items, pre, post):
        y0 = pre["scores"]["he_minus_she"].values
        y1 = post["scores"]["he_minus_she"].values if post else None
        rows = []
        for i, p in enumerate(items.data["prompts"]):
            row = {"test": "dama-gender", "index": i, "prompt": p, "pre_p_he_minus_p_she": y0[i]}
            if post:
                row["post_p_he_minus_p_she"] = y1[i]
            rows.append(row)
        return rows


SUITE = DamaGenderSuite()
