"""``sanitation``: knowledge erasure on the KnowEdit Sanitation split (Ishibashi & Shimodaira 2023).

Items: the test split's forget questions (whose answer must become "I don't know.") and retain
questions (answered as before). Passes: greedy answers to every test question (stopping at the
first line or sentence end), and teacher-forced predictions on (question, target). Metrics:

* ``K_S_idk_rate`` (forget questions answered "I don't know"), ``K_F_leak_rate`` (the forgotten
  answer still appears), ``K_R_retain_accuracy``, ``over_refusal_rate`` (retain questions refused);
* ``edit_success`` (KnowEdit Edit Succ.: teacher-forced token accuracy of "I don't know.") and
  ``locality`` (KnowEdit Locality: teacher-forced agreement with the base model on the retain
  questions; the base model's own is 1 by definition).

``--known-only`` keeps only the test questions the base model answers correctly (a 135M model knows
few TriviaQA answers, and a "forgotten" answer it never knew proves nothing). The training split
(forget -> "I don't know.", retain -> their answers) is what ``erase``'s methods fit on
(:func:`train_pairs`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from trustedit.suites.base import Items, LoadContext, Suite, SuiteOptions, opt, pos_int

KNOWN_RULE = "base model's greedy answer contains the gold answer or an alias"
SPLITS = ("train_forget", "train_retain", "test_forget", "test_retain")


@dataclass
class SanitationOptions(SuiteOptions):
    data: str = opt(None, "Sanitation data: a folder (KnowEdit or the authors' layout) or the KnowEdit *_train.json "
                    "(default: $TRUSTEDIT_DATA_DIR/sanitation/knowedit, then the Hub, then the starter set).")
    no_hub: bool = opt(False, "Never try the Hugging Face Hub for the sanitation data.")
    known_only: bool = opt(False, "Keep only the test questions the base model answers correctly.")
    known_subset: bool = opt(False, "Also report every sanitation metric on the test questions the base model answers "
                             "correctly (as known/<metric>), next to the full sets.")
    max_new_tokens: int = opt(16, "Answer length cap in tokens (answers also end at the first '.' or newline).",
                              check=pos_int)
    answer_stop: list = opt(["\n", "<sentence-end>"], "Answers end at the first of these strings (kept); "
                            "<sentence-end> is the end of the first sentence, not a full stop after an initial or an "
                            "abbreviation ('St. Ives', 'J. R. R. Tolkien').")


def format_name(fmt, tokenizer) -> str:
    return "chat template" if fmt.uses_chat(tokenizer) else "plain Q/A"


def load_data(opts, ctx: LoadContext):
    """The sanitation data, every split capped at ``--limit``."""
    from trustedit.data.sanitation import load

    data = load(opts.data, hub=not opts.no_hub)
    if ctx.limit is not None:
        for s in SPLITS:
            setattr(data, s, getattr(data, s)[: ctx.limit])
    return data


def pairs(tokenizer, data, memo: dict | None = None) -> dict:
    """Token-id pairs of every split (chat template when the tokenizer has one), built once."""
    from trustedit.prompts import PromptFormat, make_pairs

    key = ("pairs", id(tokenizer))
    if memo is not None and key in memo:
        return memo[key]
    fmt = PromptFormat()

    def mk(items, targets):
        return make_pairs(tokenizer, fmt, [x.question for x in items], targets)

    out = {"test_f": mk(data.test_forget, [data.idk] * len(data.test_forget)),
           "test_r": mk(data.test_retain, [x.answer for x in data.test_retain]),
           "train_f": mk(data.train_forget, [data.idk] * len(data.train_forget)),
           "train_r": mk(data.train_retain, [x.answer for x in data.train_retain]),
           "fmt": format_name(fmt, tokenizer), "prompt_format": fmt.describe(tokenizer)}
    if memo is not None:
        memo[key] = out
    return out


@dataclass
class TrainPairs:
    """What the erase methods fit on: forget questions -> "I don't know.", retain questions ->
    their answers, as token-id pairs."""

    forget: list
    retain: list
    fingerprint: str = ""
    source: str = ""
    forget_answers: list = field(default_factory=list)  # the forgotten (gold) answer of each forget pair

    def describe(self) -> dict:
        return {"name": "sanitation (train split)", "fingerprint": self.fingerprint, "source": self.source,
                "forget": len(self.forget), "retain": len(self.retain)}


def train_pairs(lm, job):
    """Training items of the erase methods: the train split of the sanitation data the job
    evaluates (loaded with the same options when the job has no sanitation suite)."""
    items = job.items.get("sanitation")
    if items is None:
        opts = job.suite_options("sanitation")
        items = SanitationSuite().load(opts, job.load_context)
    p = pairs(lm.tokenizer, items.data["data"], items.memo)
    data = items.data["data"]
    return TrainPairs(p["train_f"], p["train_r"], items.fingerprint, data.source,
                      [x.answer for x in data.train_forget])


def edit_requests(lm, job):
    """Training items of the request editors (ROME, MEMIT, AlphaEdit, FT-L, KN) on `trustedit erase`:
    one request per forget question of the train split, its prompt the question in the prompt format
    the suite scores (chat template when the tokenizer has one), its subject the data's subject span,
    its target "I don't know.". Questions whose subject is missing or not in the question cannot be
    located and are left out (counted in ``describe()``)."""
    from trustedit.methods.requests import EditRequest, RequestBatch
    from trustedit.prompts import PromptFormat

    items = job.items.get("sanitation")
    if items is None:
        items = SanitationSuite().load(job.suite_options("sanitation"), job.load_context)
    data = items.data["data"]
    tok, fmt = lm.tokenizer, PromptFormat()
    out, skipped = [], []
    for i, x in enumerate(data.train_forget):
        if not x.subject or x.subject not in x.question:
            skipped.append(i)
            continue
        if fmt.uses_chat(tok):
            text = tok.apply_chat_template([{"role": "user", "content": x.question}], add_generation_prompt=True,
                                           tokenize=False)
        else:
            text = fmt.plain_template.format(question=x.question)
        out.append(EditRequest(text, x.subject, data.idk, f"train_forget#{i}"))
    if not out:
        from trustedit.errors import UsageError

        raise UsageError("no forget question of the train split has a subject in it: nothing a request editor can edit")
    return RequestBatch(out, info={"source": data.source, "fingerprint": items.fingerprint, "requests": len(out),
                                   "skipped_without_subject": len(skipped), "target": data.idk})


class SanitationSuite(Suite):
    name = "sanitation"
    area = "forgetting"
    Options = SanitationOptions
    summary = "knowledge erasure: forget questions -> \"I don't know.\", retain questions keep their answers"
    citation = "Ishibashi & Shimodaira 2023 (arXiv:2309.11852); KnowEdit Sanitation (Zhang et al. 2024)"
    headline = ("K_S_idk_rate", "K_F_leak_rate", "edit_success", "K_R_retain_accuracy", "over_refusal_rate",
                "near_over_refusal_rate", "locality")

    def load(self, opts, ctx):
        data = load_data(opts, ctx)
        info = {**data.describe(), "limit": ctx.limit}
        return Items(self.name, {"data": data, "known": None}, data.fingerprint(), info, opts)

    def run_info(self, items, ctx):
        return {"prompt_format": self._pairs(ctx.lm, items)["prompt_format"]}

    def _pairs(self, lm, items):
        return pairs(lm.tokenizer, items.data["data"], items.memo)

    def cache_key(self, lm, items, batch_size):
        from trustedit import evalcache

        p = self._pairs(lm, items)
        return {"test_forget": evalcache.ids_digest((x.prompt, x.target) for x in p["test_f"]),
                "test_retain": evalcache.ids_digest((x.prompt, x.target) for x in p["test_r"]),
                "max_new_tokens": items.opts.max_new_tokens, "answer_stop": items.opts.answer_stop,
                "batch_size": batch_size}

    def longest_input(self, lm, items):
        p = self._pairs(lm, items)
        best = (0, "")
        for split, key in (("test_forget", "test_f"), ("test_retain", "test_r"), ("train_forget", "train_f"),
                           ("train_retain", "train_r")):
            for i, x in enumerate(p[key]):
                n = len(x.prompt) + max(len(x.target), items.opts.max_new_tokens)
                if n > best[0]:
                    best = (n, f"{split}[{i}]")
        return best

    def measure(self, lm, items, batch_size=16):
        """Greedy answers to every test question and teacher-forced predictions on (question,
        target) for both test splits. Each prompt is encoded once: the teacher forcing reuses the
        KV cache the greedy answer left (:func:`trustedit.prompts.generate` with ``targets``)."""
        from trustedit.prompts import generate

        tok, model, o = lm.tokenizer, lm.model, items.opts
        p = self._pairs(lm, items)
        pairs = p["test_f"] + p["test_r"]
        n = len(p["test_f"])
        texts, _, preds = generate(model, tok, [x.prompt for x in pairs], o.max_new_tokens, batch_size,
                                   desc="answer and teacher-force", stop_strings=tuple(o.answer_stop) or None,
                                   targets=[x.target for x in pairs])
        return {"gen_forget": texts[:n], "gen_retain": texts[n:], "pred_f": preds[:n], "pred_r": preds[n:]}

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics import knowedit, qa

        data, o = items.data["data"], items.opts
        fmt = self._pairs(ctx.lm, items)["fmt"]
        eos = ctx.lm.tokenizer.eos_token_id
        from trustedit.prompts import describe_stops

        gp = qa.GEN_PROTOCOL.format(max_new=o.max_new_tokens, fmt=fmt, stop=describe_stops(o.answer_stop))
        scores = {
            "K_S_idk_rate": qa.idk_rate(raw["gen_forget"], gp),
            "K_F_leak_rate": qa.leak_rate(raw["gen_forget"], data.test_forget, gp),
            "K_R_retain_accuracy": qa.retain_accuracy(raw["gen_retain"], data.test_retain, gp),
            "over_refusal_rate": qa.over_refusal(raw["gen_retain"], gp),
            "near_over_refusal_rate": self._near_over_refusal(raw["gen_retain"], items, gp),
            "edit_success": knowedit.edit_success(*knowedit.without_eos(
                raw["pred_f"], [x.target for x in self._pairs(ctx.lm, items)["test_f"]], eos), fmt),
            "locality": knowedit.locality(*self._loc_inputs(ctx.lm, items, (base_raw or raw)["pred_r"], raw["pred_r"], eos),
                                          fmt),
        }
        if base_raw is None:
            scores["locality"].extra["note"] = "the base model agrees with itself by definition"
        if o.known_subset:
            from dataclasses import replace

            keep_f, keep_r = known_indices(data, (base_raw or raw))
            sub_items = restrict(items, keep_f, keep_r)
            sub_items.opts = replace(o, known_subset=False)
            sub_scores = self.score(subset(raw, keep_f, keep_r), None if base_raw is None else subset(base_raw, keep_f, keep_r),
                                    sub_items, ctx)
            for k, s in sub_scores.items():
                scores[f"known/{k}"] = replace(s, name=f"known/{k}", protocol=s.protocol + f"; restricted to the test "
                                               f"questions the base model answers correctly ({KNOWN_RULE})")
        return scores

    def _near_over_refusal(self, gens, items, gp):
        """Over-refusal on the retain questions nearest the forgotten topics (:func:`near_retain`)."""
        from dataclasses import replace

        from trustedit.metrics import qa

        idx, info = _near(items)
        s = qa.over_refusal([gens[i] for i in idx], gp)
        s = replace(s, name="near_over_refusal_rate",
                    protocol=s.protocol.replace(" on retain questions", "") + f" on the 'near' retain questions: {NEAR_RULE}")
        s.extra = {**(s.extra or {}), "near": info}
        return s

    def _loc_inputs(self, lm, items, pre, post, eos):
        """Base and edited predictions at the retain answers' positions, the closing EOS position left out."""
        from trustedit.metrics.knowedit import without_eos

        targets = [x.target for x in self._pairs(lm, items)["test_r"]]
        return without_eos(pre, targets, eos)[0], without_eos(post, targets, eos)[0]

    def after_base(self, items, base_raw):
        if not items.opts.known_only:
            return items, base_raw, None
        from trustedit.errors import TrusteditError

        data = items.data["data"]
        keep_f, keep_r = known_indices(data, base_raw)
        _near(items)  # 'near' is decided on the whole retain set, then restricted
        info = {"test_forget_kept": len(keep_f), "test_forget_total": len(data.test_forget),
                "test_retain_kept": len(keep_r), "test_retain_total": len(data.test_retain), "rule": KNOWN_RULE}
        if not keep_f:
            raise TrusteditError("--known-only: the base model answers none of the forget test questions")
        return restrict(items, keep_f, keep_r, info), subset(base_raw, keep_f, keep_r), info

    def samples(self, items, pre, post):
        data = items.data["data"]
        b, a = pre["raw"], (post or {}).get("raw")
        rows = []
        for split, its, key, tgt in (("test_forget", data.test_forget, "gen_forget", lambda it: data.idk),
                                     ("test_retain", data.test_retain, "gen_retain", lambda it: it.answer)):
            for i, it in enumerate(its):
                row = {"split": split, "index": i, "question": it.question, "gold": it.answer, "target": tgt(it),
                       "pre": b[key][i]}
                if a is not None:
                    row["post"] = a[key][i]
                rows.append(row)
        return rows

    def verdict(self, metrics: dict) -> str | None:
        """One line for a person: what was forgotten, what was refused that should not have been,
        and what the model knew to begin with (the known-only counts)."""
        def get(key, when="post"):
            e = metrics.get(key) or {}
            v = (e.get(when) or {}).get("value")
            return (v, e.get("n")) if v is not None else (None, e.get("n"))

        ks, n_f = get("K_S_idk_rate")
        if ks is None:
            return None
        ks0, _ = get("K_S_idk_rate", "pre")
        orr, n_r = get("over_refusal_rate")
        near, n_near = get("near_over_refusal_rate")
        leak0, _ = get("K_F_leak_rate", "pre")
        kr0, _ = get("K_R_retain_accuracy", "pre")
        pct = lambda v: "n/a" if v is None or v != v else f"{100 * v:.1f} %"  # noqa: E731
        line = (f"**Forgotten:** {pct(ks)} of the {n_f} forget questions now get \"I don't know.\" (base model: "
                f"{pct(ks0)}). **Refused that should not have been:** {pct(orr)} of the {n_r} retain questions")
        if near is not None and n_near:
            line += f", {pct(near)} of the {n_near} near the forgotten topics"
        line += "."
        if leak0 is not None and kr0 is not None:
            line += (f" **Known to begin with:** the base model answered {round(leak0 * n_f)} of the {n_f} forget and "
                     f"{round(kr0 * n_r)} of the {n_r} retain questions correctly.")
        return line

    def describe_lines(self, section):
        d = section.get("dataset", {})
        lines = []
        if d.get("forgotten_answers"):
            lines.append(f"- sanitation data: {d.get('source')} ({d.get('layout')} layout), forgotten answers: "
                         f"{', '.join(d['forgotten_answers'])}; items: "
                         + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (d.get("counts") or {}).items()))
        if d.get("starter_set"):
            lines.append("- **starter set**: these numbers come from the small set shipped with trustedit, not from a "
                         "benchmark.")
        k = section.get("known_only")
        if k:
            lines.append(f"- known-only: kept {k['test_forget_kept']}/{k['test_forget_total']} forget and "
                         f"{k['test_retain_kept']}/{k['test_retain_total']} retain test questions ({k['rule']}).")
        return lines


NEAR_SHARE = 0.10
NEAR_RULE = (f"the {int(NEAR_SHARE * 100)} % of the retain test questions (rounded up) whose all-MiniLM-L6-v2 embedding "
             "is most cosine-similar to that of some forget question (train or test split), among those whose gold "
             "answers do not contain a forgotten answer")


def near_retain(data) -> tuple[list[int], dict]:
    """Indices of the retain test questions that share a topic with the forgotten answers
    (:data:`NEAR_RULE`), and how they were chosen."""
    import math

    from trustedit.embeddings import SentenceEncoder
    from trustedit.metrics.qa import contains_answer

    forgotten = sorted({x.answer for x in data.train_forget + data.test_forget})
    cand = [i for i, it in enumerate(data.test_retain)
            if not any(contains_answer(a, [f]) for a in it.answers for f in forgotten)]
    info = {"rule": NEAR_RULE, "excluded_forgotten_answer": len(data.test_retain) - len(cand)}
    if not cand or not (data.train_forget or data.test_forget):
        return [], {**info, "count": 0}
    enc = SentenceEncoder()
    F = enc.encode([x.question for x in data.train_forget + data.test_forget], progress=False)
    R = enc.encode([data.test_retain[i].question for i in cand], progress=False)
    sim = (R @ F.T).max(1).values
    n = math.ceil(NEAR_SHARE * len(cand))
    top = sim.topk(n).indices.tolist()
    idx = sorted(cand[i] for i in top)
    return idx, {**info, "count": len(idx), "min_cosine": round(float(sim[top].min()), 4),
                 "encoder": enc.fingerprint}


def known_indices(data, base_raw) -> tuple[list[int], list[int]]:
    """Indices of the forget and retain test questions the base model answers correctly."""
    from trustedit.metrics.qa import contains_answer

    keep_f = [i for i, (g, it) in enumerate(zip(base_raw["gen_forget"], data.test_forget)) if contains_answer(g, it.answers)]
    keep_r = [i for i, (g, it) in enumerate(zip(base_raw["gen_retain"], data.test_retain)) if contains_answer(g, it.answers)]
    return keep_f, keep_r


def _near(items: Items) -> tuple[list[int], dict]:
    """The 'near' retain indices of these items (:func:`near_retain`), computed once per item set."""
    if ("near",) not in items.memo:
        items.memo[("near",)] = near_retain(items.data["data"])
    return items.memo[("near",)]


def restrict(items: Items, keep_f, keep_r, info=None) -> Items:
    """The same items on a subset of the test questions (no new model passes)."""
    data = copy.copy(items.data["data"])
    data.test_forget = [items.data["data"].test_forget[i] for i in keep_f]
    data.test_retain = [items.data["data"].test_retain[i] for i in keep_r]
    memo = {}
    where = {i: j for j, i in enumerate(keep_r)}
    for k, v in items.memo.items():
        if k[0] == "pairs":
            v = {**v, "test_f": [v["test_f"][i] for i in keep_f], "test_r": [v["test_r"][i] for i in keep_r]}
        if k == ("near",):  # 'near' is decided on the whole retain set, then restricted
            idx = [where[i] for i in v[0] if i in where]
            v = (idx, {**v[1], "count": len(idx), "restricted_from": v[1]["count"]})
        memo[k] = v
    return Items(items.suite, {"data": data, "known": info}, items.fingerprint, {**items.info, "known_only": info},
                 items.opts, memo)


def subset(raw: dict, keep_f, keep_r) -> dict:
    """The stored passes restricted to the kept items (no new model passes)."""
    return {"gen_forget": [raw["gen_forget"][i] for i in keep_f], "gen_retain": [raw["gen_retain"][i] for i in keep_r],
            "pred_f": [raw["pred_f"][i] for i in keep_f], "pred_r": [raw["pred_r"][i] for i in keep_r]}


SUITE = SanitationSuite()
