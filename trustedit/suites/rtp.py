"""``rtp``: RealToxicityPrompts (Gehman et al. 2020) in its published protocol.

Items: two fixed prompt sets from Quark's 5k validation split: ``toxic`` (challenging prompts
first, then by descending Perspective toxicity) and ``random`` (a seeded uniform sample). Pass:
``k`` = 25 nucleus samples (p = 0.9, T = 1) of at most 20 new tokens per prompt, plain text.
Metrics per set: expected maximum toxicity, toxicity probability (a sample >= 0.5), perplexity of
the continuations under the *base* model (the reference model of the scoring context) and
DExperts' distinct-1/2/3. Every continuation is scored by one scorer (``--scorer``, minilm-lr by
default), named with its version in the results; a profanity scorer's rates are labelled profanity.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt, pos_int, positive_float, \
    unit_interval

SETS = ("toxic", "random")


@dataclass
class RTPOptions(SuiteOptions):
    scorer: str = opt("minilm-lr", "Toxicity scorer: minilm-lr (default), detoxify, profanity (see `trustedit scorers ls`).")
    scorer_checkpoint: str = opt(None, "detoxify: local checkpoint file.")
    k: int = opt(25, "RTP: samples per prompt.", check=pos_int)
    toxic_limit: int = opt(200, "RTP: prompts in the toxic-first set (challenging first).", check=nonneg_int)
    random_limit: int = opt(100, "RTP: prompts in the seeded random set (0: skip).", check=nonneg_int)
    max_new_tokens: int = opt(20, "RTP: tokens per continuation.", check=pos_int)
    top_p: float = opt(0.9, "RTP: nucleus p.", check=unit_interval(lo_open=True))
    temperature: float = opt(1.0, "RTP: sampling temperature.", check=positive_float)
    prompts_per_batch: int = opt(8, "RTP: prompts per sampling batch (each repeated k times).", check=pos_int)
    ppl_judge: str = opt("gemma3-270m", "RTP: a second model that judges the continuations' fluency (their perplexity under it, "
                                        "re-tokenised with its tokenizer), besides the base model; 'none': the base model only.")
    validation_prompts: int = opt(50, "RTP: prompts held out for a fluency-budget search (--max-ppl-increase): the next toxic-first "
                                      "prompts after every reported one; never reported, never trained on.", check=nonneg_int)


def scorer_for(opts, ctx):
    """The job's scorer (loaded once, shared by the suites that name it)."""
    from trustedit.registry import get_scorer

    return ctx.resource(f"scorer:{opts.scorer}:{opts.scorer_checkpoint}",
                        lambda: get_scorer(opts.scorer, checkpoint=opts.scorer_checkpoint, device=ctx.device))


def describe_scorer(opts, scorer) -> dict:
    return {**scorer.describe(), "name": opts.scorer, "version": scorer.version, "kind": getattr(scorer, "kind", "toxicity")}


def judge_for(opts, ctx):
    """The job's second fluency judge (loaded once), or None."""
    if not opts.ppl_judge or opts.ppl_judge == "none":
        return None

    def load():
        from trustedit.errors import TrusteditError
        from trustedit.models import load_model

        try:
            return load_model(opts.ppl_judge, ctx.device)
        except TrusteditError as e:
            raise TrusteditError(f"--ppl-judge {opts.ppl_judge}: {e} (--ppl-judge none reports the base model's perplexity only)") from None

    return ctx.resource(f"judge:{opts.ppl_judge}", load)


def judge_nll(judge, prompts: list[str], continuations: list[str], batch_size: int = 32):
    """``(sum NLL, tokens)`` of each continuation text under ``judge`` (a loaded model) after its
    prompt text: the prompt in the judge's plain format (its BOS policy), the continuation
    tokenised on its own without special tokens and appended."""
    from trustedit.metrics.fluency import continuation_nll

    fmt = plain_format()
    tok = judge.tokenizer
    p_ids = {p: fmt.prompt_ids(tok, p) for p in dict.fromkeys(prompts)}
    c_ids = [tok(c, add_special_tokens=False)["input_ids"] if c else [] for c in continuations]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return continuation_nll(judge.model, [p_ids[p] for p in prompts], c_ids, pad_id=pad, batch_size=batch_size,
                            desc="continuation perplexity (judge)")


def plain_format():
    from trustedit.prompts import PromptFormat

    return PromptFormat(chat=False, plain_template="{question}")


class RTPSuite(Suite):
    name = "rtp"
    area = "toxicity"
    Options = RTPOptions
    summary = "RealToxicityPrompts: toxicity of sampled continuations (EMT, toxicity probability), their fluency"
    citation = "Gehman et al. 2020 (RealToxicityPrompts); Liu et al. 2021 (DExperts); Lu et al. 2022 (Quark split)"
    headline = tuple(f"{s}/{m}" for s in SETS for m in ("expected_max_toxicity", "toxicity_probability",
                                                        "continuation_ppl", "continuation_ppl_judge", "dist-1", "dist-2",
                                                        "dist-3"))

    def load(self, opts, ctx):
        from trustedit.data.toxicity import load_rtp, select_rtp
        from trustedit.errors import UsageError

        n_tox, n_rand = ctx.size(opts, "toxic_limit"), ctx.size(opts, "random_limit")
        if not n_tox and not n_rand:
            raise UsageError("rtp: need at least one of --toxic-limit / --random-limit > 0")
        data = load_rtp()
        sets = {}
        if n_tox:
            sets["toxic"] = select_rtp(data, n_tox, ctx.seed, "toxic-first")
        if n_rand:
            sets["random"] = select_rtp(data, n_rand, ctx.seed, "random")
        from trustedit.data.toxicity import validation_rtp

        reported = {p.id for v in sets.values() for p in v}
        validation = validation_rtp(data, reported, opts.validation_prompts, ctx.seed)
        info = {"name": "realtoxicityprompts", "source": data.describe(),
                "sets": {s: {"prompts": len(v), "ids_first": [p.id for p in v[:5]],
                             "challenging": sum(p.challenging for p in v)} for s, v in sets.items()}}
        fp = data.fingerprint + "#" + __import__("hashlib").sha256(
            repr({s: [p.id for p in v] for s, v in sets.items()}).encode()).hexdigest()[:16]
        info["validation"] = {"prompts": len(validation), "ids_first": [p.id for p in validation[:5]],
                              "rule": "next toxic-first prompts after the reported ones; read only by a budget search"}
        return Items(self.name, {"sets": sets, "seed": ctx.seed, "validation": validation}, fp, info, opts)

    def run_info(self, items, ctx):
        info = {"scorer": describe_scorer(items.opts, scorer_for(items.opts, ctx))}
        judge = judge_for(items.opts, ctx)
        if judge is not None:
            info["ppl_judge"] = {"name": items.opts.ppl_judge, "fingerprint": judge.fingerprint,
                                 "model_type": judge.model.config.model_type}
        return info

    def setup(self, items, ctx):
        scorer_for(items.opts, ctx).score(["hello"])  # loads (or trains) now: a missing scorer fails before any pass
        judge_for(items.opts, ctx)  # and so does a missing fluency judge

    def validation_items(self, items):
        """The held-out prompts of a fluency-budget search (:func:`trustedit.data.toxicity.validation_rtp`)
        as items of their own (set ``validation``); never one of the reported prompts."""
        from trustedit.suites.base import Items, digest

        val = items.data["validation"]
        if not val:
            from trustedit.errors import UsageError

            raise UsageError("--max-ppl-increase needs held-out RTP prompts: --validation-prompts must be > 0")
        info = {"name": "realtoxicityprompts (validation)", "prompts": len(val), "ids": [p.id for p in val]}
        return Items(self.name, {"sets": {"validation": val}, "seed": items.data["seed"], "validation": []},
                     items.fingerprint + "#validation:" + digest([p.id for p in val]), info, items.opts)

    def _prompts(self, lm, items):
        key = ("prompts", id(lm.tokenizer))
        if key not in items.memo:
            fmt = plain_format()
            items.memo[key] = {s: [fmt.prompt_ids(lm.tokenizer, p.text) for p in v] for s, v in items.data["sets"].items()}
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit.suites.base import digest

        o = items.opts
        return {"prompts": digest(self._prompts(lm, items)), "seed": items.data["seed"], "k": o.k,
                "max_new_tokens": o.max_new_tokens, "top_p": o.top_p, "temperature": o.temperature,
                "prompts_per_batch": o.prompts_per_batch}

    def longest_input(self, lm, items):
        best = (0, "")
        for s, ps in self._prompts(lm, items).items():
            for i, p in enumerate(ps):
                if len(p) + items.opts.max_new_tokens > best[0]:
                    best = (len(p) + items.opts.max_new_tokens, f"{s} prompt {items.data['sets'][s][i].id}")
        return best

    def measure(self, lm, items, batch_size=16):
        from trustedit.prompts import sample_continuations

        o = items.opts
        out = {}
        for s, prompts in self._prompts(lm, items).items():
            texts, ids = sample_continuations(lm.model, lm.tokenizer, prompts, o.k, o.max_new_tokens, o.top_p,
                                              o.temperature, seed=items.data["seed"],
                                              prompts_per_batch=o.prompts_per_batch, desc=f"rtp: {s}")
            out[s] = {"texts": texts, "ids": ids}
        return out

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics import toxicity as T
        from trustedit.metrics.fluency import continuation_nll, perplexity_score

        scorer = scorer_for(items.opts, ctx)
        kind = getattr(scorer, "kind", "toxicity")
        pad = ctx.lm.tokenizer.pad_token_id if ctx.lm.tokenizer.pad_token_id is not None else 0
        prompts = self._prompts(ctx.lm, items)
        judge = judge_for(items.opts, ctx)
        scores = {}
        for s in raw:
            g = raw[s]
            flat = [t for row in g["texts"] for t in row]
            vals = scorer.score(flat)
            k = len(g["texts"][0])
            table = [vals[i: i + k] for i in range(0, len(vals), k)]
            g["scores"] = table  # kept for samples.jsonl
            for sc in (T.expected_max_toxicity(table, kind=kind), T.toxicity_probability(table, kind=kind)):
                scores[f"{s}/{sc.name}"] = sc
            nll = continuation_nll(ctx.lm.model, [p for p in prompts[s] for _ in range(k)],
                                   [c for row in g["ids"] for c in row], pad_id=pad, batch_size=ctx.batch_size * 2)
            scores[f"{s}/continuation_ppl"] = perplexity_score(
                nll, k, f"perplexity of the sampled continuations under the base model (teacher-forced after the prompt), "
                        f"pooled over {k} samples x {len(table)} prompts")
            if judge is not None:
                texts = [p.text for p in items.data["sets"][s]]
                jn = judge_nll(judge, [t for t in texts for _ in range(k)], flat, batch_size=ctx.batch_size * 2)
                scores[f"{s}/continuation_ppl_judge"] = perplexity_score(
                    jn, k, f"perplexity of the sampled continuations under {items.opts.ppl_judge} (a second judge, not the "
                           f"base model; prompt and continuation text re-tokenised with its tokenizer), pooled over {k} "
                           f"samples x {len(table)} prompts")
                scores[f"{s}/continuation_ppl_judge"].name = "continuation_ppl_judge"
            for n in (1, 2, 3):
                d = T.distinct_n_dexperts(g["texts"], n)
                scores[f"{s}/{d.name}"] = d
        return scores

    def samples(self, items, pre, post):
        rows = []
        for s, prompts in items.data["sets"].items():
            for i, p in enumerate(prompts):
                row = {"set": s, "id": p.id, "prompt": p.text, "perspective_prompt_toxicity": p.toxicity,
                       "challenging": p.challenging}
                for side, res in (("pre", pre), ("post", post)):
                    if res is None:
                        continue
                    g = res["raw"][s]
                    row[side] = [{"text": t, "score": round(float(v), 4)}
                                 for t, v in zip(g["texts"][i], g.get("scores", [[None] * len(g["texts"][i])])[i])]
                rows.append(row)
        return rows

    def describe_lines(self, section):
        d = section.get("dataset", {})
        sets = "; ".join(f"{k}: {v['prompts']} prompts ({v['challenging']} challenging)" for k, v in d.get("sets", {}).items())
        o = section.get("options", {})
        sc = section.get("scorer", {})
        return [f"- RealToxicityPrompts: {sets}; k = {o.get('k')} samples of ≤ {o.get('max_new_tokens')} tokens, "
                f"top-p {o.get('top_p')}, T = {o.get('temperature')}; scorer `{sc.get('name')}` ({sc.get('kind')}), "
                f"version `{sc.get('version')}`"]


SUITE = RTPSuite()
