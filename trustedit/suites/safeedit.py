"""``safeedit``: the SafeEdit benchmark of DINM (Wang et al. 2024, arXiv:2403.14472).

Items: SafeEdit instances (adversarial prompt, safe and unsafe reference responses, four held-out
generalisation inputs, a general-knowledge control pair). Pass, per instance (one batch each, the
same call before and after an edit): greedy responses to the edit input and the four held-out
inputs, and teacher-forced predictions on the control pair. Every prompt is the chat template
around ``text + " " + system_suffix`` (EasyEdit's ``suffix_system_prompt``).

Metrics (:mod:`trustedit.metrics.safety`): ``DS`` (defence success on the edit input), ``DG_onlyQ``,
``DG_otherA``, ``DG_otherQ``, ``DG_otherAQ`` and their per-instance mean ``DG_avg`` (defence
generalisation), judged offline (``similarity``: MiniLM cosine to the instance's safe vs unsafe
reference) or by a local classifier; ``fluency_ngram_entropy`` of the responses;
``knowledge_agreement``: teacher-forced agreement with the base model on the instance's own
general-knowledge pair, which DINM's KL term trains on (in-sample: it says the constraint held,
not that other knowledge survived); ``locality``: the same agreement on ``heldout_pairs``
general-knowledge pairs of SafeEdit instances outside the evaluated ones (never trained on, also
not in sequential editing).

Per-instance methods (DINM) edit one instance at a time: the job's ``per_instance`` protocol
measures each instance right after its own edit (:meth:`SafeEditSuite.select`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt, pos_int


def _split_check(v):
    from trustedit.data.safeedit import SPLITS

    return None if v in SPLITS else f"expected one of {', '.join(SPLITS)}"


@dataclass
class SafeEditOptions(SuiteOptions):
    safeedit_split: str = opt("heldout", "SafeEdit split: heldout (default: sample100 without first50's ids, 94 "
                              "instances DINM's defaults were not tuned on), first50 (the tuning split), sample100, all, "
                              "three.", check=_split_check)
    instances: int = opt(None, "First N instances of the split (default and 0: all).", check=nonneg_int)
    judge: str = opt("similarity", "'similarity' (offline, default) or a local sequence-classifier folder.")
    response_tokens: int = opt(64, "Greedy response length (default 64).", check=pos_int)
    system_suffix: str = opt(None, "Appended to every user message ('' for none; default: EasyEdit's "
                             "suffix_system_prompt, or the editing method's own system_suffix).")
    max_length: int = opt(1000, "Most tokens of the control pair (prompt + answer); longer prompts lose tokens from "
                          "the left (EasyEdit: 1000).", check=pos_int)
    heldout_pairs: int = opt(10, "General-knowledge pairs of SafeEdit instances outside the evaluated ones, for the "
                             "held-out locality (0: none).", check=nonneg_int)


def suffix(opts) -> str:
    from trustedit.data.safeedit import EASYEDIT_SUFFIX

    return EASYEDIT_SUFFIX if opts.system_suffix is None else opts.system_suffix


class SafeEditSuite(Suite):
    name = "safeedit"
    area = "toxicity"
    Options = SafeEditOptions
    summary = "SafeEdit defence success and generalisation (DS, DG), response fluency, control-pair locality"
    citation = "Wang et al. 2024, Detoxifying Large Language Models via Knowledge Editing (ACL 2024)"
    has_instances = True
    headline = ("DS", "DG_avg", "DG_onlyQ", "DG_otherA", "DG_otherQ", "DG_otherAQ", "fluency_ngram_entropy", "locality",
                "knowledge_agreement")

    def load(self, opts, ctx):
        from trustedit.data.safeedit import load_safeedit
        from trustedit.errors import UsageError

        data = load_safeedit(opts.safeedit_split, limit=ctx.size(opts, "instances", zero_is_all=True))
        if not len(data):
            raise UsageError(f"no SafeEdit instances selected (split {opts.safeedit_split!r}, --instances {opts.instances})")
        evaluated = {x.id for x in data}
        pool = [x for x in load_safeedit("all") if x.id not in evaluated][: opts.heldout_pairs] if opts.heldout_pairs else []
        info = {**data.describe(), "heldout_pair_ids": [x.id for x in pool]}
        return Items(self.name, {"instances": list(data), "heldout": pool}, data.fingerprint + f"#{len(data)}", info, opts)

    def setup(self, items, ctx):
        from trustedit.metrics.safety import make_judge

        ctx.resource(f"judge:{items.opts.judge}", lambda: make_judge(items.opts.judge))

    def run_info(self, items, ctx):
        judge = ctx.resources.get(f"judge:{items.opts.judge}")
        return {"judge": judge.describe() if hasattr(judge, "describe") else {"judge": items.opts.judge},
                "prompt_format": self._inputs(ctx.lm, items)["prompt_format"]} if judge is not None else {}

    def _inputs(self, lm, items):
        from trustedit.data.safeedit import eval_prompts, knowledge_pair
        from trustedit.prompts import PromptFormat

        key = ("inputs", id(lm.tokenizer))
        if key not in items.memo:
            fmt, sfx = PromptFormat(), suffix(items.opts)
            name = ("chat template" if fmt.uses_chat(lm.tokenizer) else "plain template") + \
                (f" + suffix {sfx!r}" if sfx else "")
            items.memo[key] = {
                "prompts": [eval_prompts(lm.tokenizer, x, sfx, fmt) for x in items.data["instances"]],
                "knowledge": [knowledge_pair(lm.tokenizer, x, sfx, items.opts.max_length, fmt)
                              for x in items.data["instances"]],
                "heldout": [knowledge_pair(lm.tokenizer, x, sfx, items.opts.max_length, fmt)
                            for x in items.data.get("heldout", [])],
                "fmt": name, "prompt_format": {**fmt.describe(lm.tokenizer), "system_suffix": sfx}}
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit.suites.base import digest

        inp = self._inputs(lm, items)
        return {"prompts": digest(inp["prompts"]), "knowledge": digest([(p.prompt, p.target) for p in inp["knowledge"]]),
                "heldout": digest([(p.prompt, p.target) for p in inp["heldout"]]),
                "response_tokens": items.opts.response_tokens, "batch_size": batch_size}

    def longest_input(self, lm, items):
        inp = self._inputs(lm, items)
        best = (0, "")
        for x, prompts in zip(items.data["instances"], inp["prompts"]):
            for k, p in prompts.items():
                if len(p) + items.opts.response_tokens > best[0]:
                    best = (len(p) + items.opts.response_tokens, f"instance {x.id} {k}")
        return best

    def measure(self, lm, items, batch_size=16):
        """Per instance: greedy responses (one batch) and control-pair predictions."""
        from tqdm.auto import tqdm

        from trustedit import distributed
        from trustedit.prompts import generate, predicted_target_tokens

        inp = self._inputs(lm, items)
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        pairs = list(zip(inp["prompts"], inp["knowledge"]))
        responses, knowledge = [None] * len(pairs), [None] * len(pairs)
        mine = distributed.mine(range(len(pairs)))  # data-parallel: instances split over the ranks
        with distributed.local():
            for i in (tqdm(mine, desc="safeedit", leave=False) if len(mine) > 1 else mine):
                prompts, kpair = pairs[i]
                keys = list(prompts)
                texts, _ = generate(lm.model, tok, [prompts[k] for k in keys], items.opts.response_tokens,
                                    batch_size, desc="respond")
                responses[i] = dict(zip(keys, texts))
                knowledge[i] = predicted_target_tokens(lm.model, [kpair], pad, 1, desc="knowledge", share_prefix=False)[0]
        responses, knowledge = distributed.merge(responses), distributed.merge(knowledge)
        # the held-out pairs do not depend on the instance: one pass per call (per edited model)
        held = [predicted_target_tokens(lm.model, [p], pad, 1, desc="held-out knowledge", share_prefix=False)[0]
                for p in inp["heldout"]]
        return {"responses": responses, "knowledge": knowledge, "heldout": [held] * len(responses)}

    def instances(self, items):
        return list(items.data["instances"])

    def select(self, items, indices):
        memo = {}
        for k, v in items.memo.items():
            if k[0] == "inputs":
                v = {**v, "prompts": [v["prompts"][i] for i in indices], "knowledge": [v["knowledge"][i] for i in indices]}
            memo[k] = v
        return Items(items.suite, {"instances": [items.data["instances"][i] for i in indices],
                                   "heldout": items.data.get("heldout", [])}, items.fingerprint, items.info, items.opts, memo)

    def score(self, raw, base_raw, items, ctx):
        from dataclasses import replace

        from trustedit.metrics import knowedit
        from trustedit.metrics.safety import METRIC_KEYS, response_fluency, safety_scores
        from trustedit.metrics.scores import Score

        judge = ctx.resources[f"judge:{items.opts.judge}"]
        inst = items.data["instances"]
        fmt = self._inputs(ctx.lm, items)["fmt"]
        resp = raw["responses"]
        keys = [k for k in METRIC_KEYS if resp and all(k in r for r in resp)]
        v = judge([r[k] for r in resp for k in keys], [x.safe for x in inst for _ in keys],
                  [x.unsafe for x in inst for _ in keys])
        verdicts = {k: v[j::len(keys)] for j, k in enumerate(keys)}
        raw["verdicts"] = verdicts  # kept for samples.jsonl
        label = judge.label() if hasattr(judge, "label") else type(judge).__name__
        scores = safety_scores(verdicts, label, items.opts.response_tokens, fmt)
        scores["fluency_ngram_entropy"] = response_fluency([[r[k] for k in keys] for r in resp],
                                                           items.opts.response_tokens, fmt)
        base = base_raw or raw
        k = knowedit.locality(base["knowledge"], raw["knowledge"], fmt + " (SafeEdit knowledge constrain pairs)")
        scores["knowledge_agreement"] = replace(
            k, name="knowledge_agreement", protocol="in-sample: " + k.protocol.replace("KnowEdit Locality", "agreement")
            + " on each instance's own pair, the one DINM's KL term trains on")
        if raw.get("heldout") and raw["heldout"][0]:
            per = []
            for b, a in zip(base["heldout"], raw["heldout"]):
                same = sum(x == y for pb, pa in zip(b, a) for x, y in zip(pb, pa))
                per.append(same / max(1, sum(len(pb) for pb in b)))
            scores["locality"] = Score(
                "locality", f"KnowEdit Locality on {len(raw['heldout'][0])} held-out general-knowledge pairs (SafeEdit "
                f"instances {items.info.get('heldout_pair_ids')} outside the evaluated ones, never trained on): per "
                f"instance, the share of their answer positions where the edited model's teacher-forced argmax equals "
                f"the base model's; prompt format {fmt}", per, unit="fraction", display="percent")
        for key in ("knowledge_agreement", "locality"):
            if base_raw is None and key in scores:
                scores[key].extra["note"] = "the base model agrees with itself by definition"
        return scores

    def samples(self, items, pre, post):
        rows = []
        loc = post["scores"]["knowledge_agreement"].values if post else None
        held = post["scores"]["locality"].values if post and "locality" in post["scores"] else None
        for j, x in enumerate(items.data["instances"]):
            row = {"id": x.id, "category": x.category, "safe_reference": x.safe, "unsafe_reference": x.unsafe}
            for side, res in (("pre", pre), ("post", post)):
                if res is None:
                    continue
                r = res["raw"]
                row[side] = {k: {"response": r["responses"][j][k], "verdict": r["verdicts"][k][j]}
                             for k in r["verdicts"]}
            if loc is not None:
                row["knowledge_agreement"] = loc[j]
            if held is not None:
                row["locality"] = held[j]
            rows.append(row)
        return rows

    def describe_lines(self, section):
        d = section.get("dataset", {})
        return [f"- SafeEdit `{d.get('name')}`: {d.get('n')} instances; judge: "
                f"{(section.get('judge') or {}).get('label', section.get('judge'))}; greedy responses of ≤ "
                f"{section.get('options', {}).get('response_tokens')} tokens, the same prompt before and after editing"]


SUITE = SafeEditSuite()
