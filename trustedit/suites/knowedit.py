"""``knowedit``: knowledge-editing metrics (KnowEdit, Zhang et al. 2024; CounterFact, Meng et al. 2022).

Items: edit cases of one dataset (:mod:`trustedit.data.knowedit`: ``zsre``, ``counterfact``,
``recent``, ``wikibio``, ``cf``, ``zsre-mend``). One code path measures the model before and after
an edit. Two protocols, always labelled and never mixed in one column:

* **teacher-forced** (``*_tf``, KnowEdit-compatible): the prompt's token ids, then the target's
  token ids (aligned by :func:`trustedit.methods.requests.encode_request`, never by joining strings
  and re-tokenising), the target read on the prompt's KV cache (equal to one right-padded pass over
  prompt + target; it lets an editor that acts at run time see where the prompt ends); the score is the share of
  target positions whose argmax is the target token. Locality compares the edited model's argmax
  with the base model's at each position of the gold answer.
* **generation** (``*_gen``): greedy decoding of ``gen_tokens`` new tokens, then normalised
  containment (lowercase, accents, punctuation and articles removed, whole words) of the target or
  any of its aliases. Locality: the edited model's first n greedy tokens (n = the gold answer's
  length) equal the base model's, i.e. it still says what it said where the answer goes.
  This is the protocol that survives free use.

Metrics (per case, averaged over its prompts of a kind; cases without such prompts are left out):
``edit_succ`` (the edit prompt) and ``rephrase`` (its rephrasings) with the new target;
``portability`` (subject aliasing, reasoning, logical generalisation, one-hop questions) with their
answers; ``locality`` (relation specificity, forgetfulness; CounterFact's neighbourhood prompts);
``fluency`` (KnowEdit's weighted bi/tri-gram entropy of ``fluency_tokens`` greedy tokens after the
edit prompt); where the case has the true target (CounterFact, ZsRE): ROME's probability scores
``cf_efficacy`` (P(new) > P(true) on the edit prompt, per-token mean log-probabilities as in ROME),
``cf_paraphrase`` (the same on rephrasings) and ``cf_neighborhood`` (P(true) > P(new) on the
neighbourhood prompts).

Prompt format ``raw`` (default): the dataset's prompt as text (with BOS as the tokenizer adds it) and
the target space-led, as KnowEdit scores it. ``chat``: the model's chat template around the prompt;
the editors receive the same text (:meth:`KnowEditSuite.instances`), so that the edit and the
evaluation see one format.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustedit.suites.base import Items, Suite, SuiteOptions, nonneg_int, opt, pos_int


def _data_check(v):
    from trustedit.data.knowedit import DATASETS

    return None if v in DATASETS else f"expected one of {', '.join(DATASETS)}"


def _fmt_check(v):
    return None if v in ("raw", "chat") else "expected raw or chat"


@dataclass
class KnowEditOptions(SuiteOptions):
    edit_data: str = opt("zsre", "Editing dataset: zsre, counterfact, recent, wikibio, cf (CounterFact with ROME's "
                         "probability scores), zsre-mend.", check=_data_check)
    edits: int = opt(None, "First N cases of the dataset (default and 0: all; capped by --limit).", check=nonneg_int)
    edit_format: str = opt("raw", "Prompt format for editing and scoring: raw (KnowEdit's) or chat (the chat "
                           "template).", check=_fmt_check)
    gen_tokens: int = opt(16, "Greedy tokens for the generation protocol.", check=pos_int)
    fluency_tokens: int = opt(48, "Greedy tokens after the edit prompt for fluency.", check=pos_int)
    drop_unusable: bool = opt(False, "Skip (and list) cases whose subject does not occur in the prompt instead of "
                              "refusing them.")


TF = "teacher-forced"
GEN = "generation"


def _pt(what: str, fmt: str) -> str:
    return (f"{TF}: share of target positions where the argmax equals the {what} token (prompt ids, then the "
            f"target ids read on the prompt's KV cache); prompt format {fmt}")


def _pg(what: str, n: int, fmt: str) -> str:
    return (f"{GEN}: greedy decoding of {n} new tokens contains the {what} (normalised, whole words, any alias); "
            f"prompt format {fmt}")


class KnowEditSuite(Suite):
    name = "knowedit"
    area = "knowledge"
    Options = KnowEditOptions
    summary = "knowledge editing: edit success, portability, locality, fluency (teacher-forced and generation)"
    citation = ("Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for LLMs (KnowEdit); Meng et al. 2022 "
                "(CounterFact scores)")
    has_instances = True
    headline = ("edit_succ_tf", "rephrase_tf", "portability_tf", "locality_tf", "edit_succ_gen", "rephrase_gen",
                "portability_gen", "locality_gen", "fluency", "cf_efficacy", "cf_paraphrase", "cf_neighborhood")

    def load(self, opts, ctx):
        from trustedit.data.knowedit import load
        from trustedit.errors import DataError, UsageError

        n = ctx.size(opts, "edits", zero_is_all=True)
        data = load(opts.edit_data, n)
        cases, dropped = [], []
        for c in data.cases:
            if c.subject not in c.prompt:
                if not opts.drop_unusable:
                    file, _, rec = c.id.rpartition("#")
                    raise DataError(data.path, int(rec), "subject", f"{c.subject!r} does not occur in the prompt "
                                    f"{c.prompt!r} (locate-then-edit editors need it there; --drop-unusable skips "
                                    "such cases)")
                dropped.append(c.id)
                continue
            cases.append(c)
        if not cases:
            raise UsageError(f"no editing case selected from {opts.edit_data}")
        info = {**data.describe(), "n": len(cases), "dropped_subject_not_in_prompt": dropped}
        return Items(self.name, {"cases": cases}, data.fingerprint + f"/{opts.edit_format}/{len(cases)}", info, opts)

    # ---- token ids ----------------------------------------------------------------------------

    def prompt_text(self, tok, opts, prompt: str) -> str:
        if opts.edit_format == "chat":
            return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
        return prompt

    def _encode(self, tok, opts, text: str, target: str):
        """(prompt ids, target ids) of the formatted ``text`` and ``target``."""
        from trustedit.methods.requests import encode_request, prompt_bos

        if opts.edit_format == "chat":  # the template carries BOS; the assistant turn starts fresh
            p = list(tok(text, add_special_tokens=False)["input_ids"])
            return p, list(tok(target.strip(), add_special_tokens=False)["input_ids"])
        return encode_request(tok, text, target, prompt_bos(tok))

    def _case_rows(self, tok, opts, c):
        """Everything one case's passes read: teacher-forced rows, generation prompts, probability rows."""
        tf, gen, prob = [], [], []

        def add(kind, prompt, answers, generate=True):
            text = self.prompt_text(tok, opts, prompt)
            p, t = self._encode(tok, opts, text, answers[0])
            tf.append({"kind": kind, "prompt": p, "target": t})
            if generate:
                gen.append({"kind": kind, "prompt": p, "answers": list(answers), "n": len(t)})

        add("rewrite", c.prompt, [c.target_new], generate=False)  # the rewrite's generation doubles as fluency
        for r in c.rephrase:
            add("rephrase", r, [c.target_new])
        for k, rows in c.portability.items():
            for prompt, answers in rows:
                add(f"portability:{k}", prompt, answers)
        for k, rows in c.locality.items():
            for prompt, answers in rows:
                add(f"locality:{k}", prompt, answers)
        for prompt in c.neighborhood:
            add("locality:Neighborhood", prompt, [c.target_true])
        if c.target_true:
            for kind, prompts in (("efficacy", [c.prompt]), ("paraphrase", c.rephrase), ("neighborhood", c.neighborhood)):
                for prompt in prompts:
                    text = self.prompt_text(tok, opts, prompt)
                    p, new = self._encode(tok, opts, text, c.target_new)
                    _, true = self._encode(tok, opts, text, c.target_true)
                    prob.append({"kind": kind, "prompt": p, "new": new, "true": true})
        return {"tf": tf, "gen": gen, "prob": prob, "rewrite_prompt": tf[0]["prompt"]}

    def _rows(self, lm, items):
        key = ("rows", id(lm.tokenizer))
        items.memo["tokenizer"] = lm.tokenizer  # instances() formats chat prompts with it
        if key not in items.memo:
            items.memo[key] = [self._case_rows(lm.tokenizer, items.opts, c) for c in items.data["cases"]]
        return items.memo[key]

    def cache_key(self, lm, items, batch_size):
        from trustedit.suites.base import digest

        return {"rows": digest(self._rows(lm, items)), "options": items.opts.to_dict(), "batch_size": batch_size}

    def longest_input(self, lm, items):
        best = (0, "")
        for c, r in zip(items.data["cases"], self._rows(lm, items)):
            n = max([len(x["prompt"]) + len(x["target"]) for x in r["tf"]]
                    + [len(r["rewrite_prompt"]) + items.opts.fluency_tokens]
                    + [len(x["prompt"]) + items.opts.gen_tokens for x in r["gen"]])
            if n > best[0]:
                best = (n, f"case {c.id}")
        return best

    # ---- passes -------------------------------------------------------------------------------

    def measure(self, lm, items, batch_size=16):
        from trustedit.metrics.fluency import continuation_nll
        from trustedit.prompts import generate

        tok, model = lm.tokenizer, lm.model
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        rows = self._rows(lm, items)
        opts = items.opts
        was = model.training
        model.eval()
        try:
            # Teacher forcing runs on each prompt's generation cache (prompts.generate with targets): the
            # prompt is read in one call and the target continues it, as a model that acts while it
            # runs (SERAC, IKE: trustedit.incontext) needs to know where the prompt ends; the
            # predictions equal one pass over prompt + target. Every teacher-forced row but the rewrite
            # has a generation row with the same prompt, in the same order.
            flat_gen = [(i, x, t) for i, r in enumerate(rows) for x, t in zip(r["gen"], r["tf"][1:])]
            gen_ids, gen_preds = [], []
            if flat_gen:
                _, gen_ids, gen_preds = generate(model, tok, [x["prompt"] for _, x, _ in flat_gen], opts.gen_tokens,
                                                 batch_size, desc="knowedit generation", share_prefix=False,
                                                 targets=[t["target"] for _, _, t in flat_gen])
            _, rw_ids, rw_preds = generate(model, tok, [r["rewrite_prompt"] for r in rows],
                                           max(opts.fluency_tokens, opts.gen_tokens), batch_size,
                                           desc="knowedit rewrite generation", share_prefix=False,
                                           targets=[r["tf"][0]["target"] for r in rows])
            per_case = [[p] for p in rw_preds]
            for (i, _, _), p in zip(flat_gen, gen_preds):
                per_case[i].append(p)
            flat_tf = [(i, x) for i, r in enumerate(rows) for x in r["tf"]]
            preds = [p for ps in per_case for p in ps]
            flat_prob = [(i, x) for i, r in enumerate(rows) for x in r["prob"]]
            nll = []
            if flat_prob:
                prompts = [x["prompt"] for _, x in flat_prob for _ in (0, 1)]
                conts = [x[k] for _, x in flat_prob for k in ("new", "true")]
                nll = continuation_nll(model, prompts, conts, pad, batch_size, desc="knowedit probabilities")
        finally:
            model.train(was)
        out = [{"tf": [], "gen": [], "gen_ids": [], "prob": [], "rewrite_text": "", "rewrite_gen": ""} for _ in rows]
        for (i, x), p in zip(flat_tf, preds):
            out[i]["tf"].append(p)
        for (i, x, _), ids in zip(flat_gen, gen_ids):
            out[i]["gen"].append(tok.decode(ids, skip_special_tokens=True).strip())
            out[i]["gen_ids"].append(list(ids))
        for i, ids in enumerate(rw_ids):
            out[i]["rewrite_gen"] = tok.decode(ids[:opts.gen_tokens], skip_special_tokens=True).strip()
            out[i]["rewrite_text"] = tok.decode(ids[:opts.fluency_tokens], skip_special_tokens=True).strip()
        for j, (i, x) in enumerate(flat_prob):
            (sn, cn), (st, ct) = nll[2 * j], nll[2 * j + 1]
            out[i]["prob"].append([sn / max(cn, 1), st / max(ct, 1)])  # mean NLL per token: new, true
        return {"cases": out}

    def instances(self, items):
        from trustedit.methods.requests import EditRequest

        tok = items.memo.get("tokenizer")
        fmt = items.opts.edit_format
        out = []
        for c in items.data["cases"]:
            prompt = c.prompt if fmt == "raw" or tok is None else self.prompt_text(tok, items.opts, c.prompt)
            out.append(EditRequest(prompt, c.subject, c.target_new, c.id))
        return out

    def select(self, items, indices):
        memo = {k: ([v[i] for i in indices] if isinstance(k, tuple) and k[0] == "rows" else v)
                for k, v in items.memo.items()}
        return Items(items.suite, {"cases": [items.data["cases"][i] for i in indices]}, items.fingerprint, items.info,
                     items.opts, memo)

    def merge(self, raws):
        return {"cases": [c for r in raws for c in r["cases"]]}

    def setup(self, items, ctx):
        pass

    def run_info(self, items, ctx):
        return {"prompt_format": self._fmt(items)}

    def _fmt(self, items) -> str:
        return "raw (the dataset's text, target space-led)" if items.opts.edit_format == "raw" else "chat template"

    # ---- scores -------------------------------------------------------------------------------

    def score(self, raw, base_raw, items, ctx):
        from trustedit.metrics.fluency import ngram_entropy
        from trustedit.metrics.qa import contains_answer
        from trustedit.metrics.scores import Score

        rows = self._rows(ctx.lm, items)
        cases = raw["cases"]
        base = (base_raw or raw)["cases"]
        opts = items.opts
        fmt = self._fmt(items)
        acc = {}  # metric -> per case value (None: no prompt of that kind)

        def put(metric, i, v):
            acc.setdefault(metric, [None] * len(rows))
            cur = acc[metric][i]
            acc[metric][i] = (cur or []) + [v]

        for i, (r, c, b) in enumerate(zip(rows, cases, base)):
            for x, p, pb in zip(r["tf"], c["tf"], b["tf"]):
                group = x["kind"].split(":")[0]
                if group == "locality":
                    put("locality_tf", i, sum(a == q for a, q in zip(p, pb)) / max(len(pb), 1))
                else:
                    name = {"rewrite": "edit_succ_tf", "rephrase": "rephrase_tf", "portability": "portability_tf"}[group]
                    put(name, i, sum(a == q for a, q in zip(p, x["target"])) / max(len(x["target"]), 1))
            put("edit_succ_gen", i, float(contains_answer(c["rewrite_gen"], [items.data["cases"][i].target_new])))
            for x, g, ids, ids_b in zip(r["gen"], c["gen"], c["gen_ids"], b["gen_ids"]):
                group = x["kind"].split(":")[0]
                if group == "locality":
                    put("locality_gen", i, float(ids[:x["n"]] == ids_b[:x["n"]]))
                else:
                    put(f"{group}_gen", i, float(contains_answer(g, x["answers"])))
            put("fluency", i, ngram_entropy(c["rewrite_text"]))
            for x, (n_new, n_true) in zip(r["prob"], c["prob"]):
                ok = n_new < n_true if x["kind"] != "neighborhood" else n_true < n_new
                put(f"cf_{x['kind']}", i, float(ok))
        descr = {
            "edit_succ_tf": _pt("new target's", fmt), "rephrase_tf": _pt("new target's", fmt) + "; the rephrased prompts",
            "portability_tf": _pt("answer's (first alias)", fmt) + "; portability prompts (aliasing, reasoning, "
                              "logical generalisation, one hop)",
            "locality_tf": f"{TF}: share of gold-answer positions where the edited model's argmax equals the base "
                           f"model's (KnowEdit Locality; relation specificity, forgetfulness, neighbourhood prompts); "
                           f"prompt format {fmt}",
            "edit_succ_gen": _pg("new target", opts.gen_tokens, fmt),
            "rephrase_gen": _pg("new target", opts.gen_tokens, fmt) + "; the rephrased prompts",
            "portability_gen": _pg("answer", opts.gen_tokens, fmt) + "; portability prompts",
            "locality_gen": f"{GEN}: on the locality prompts, the edited model's first n greedy tokens (n = the gold "
                            f"answer's length in tokens) equal the base model's; prompt format {fmt}",
            "fluency": f"{GEN}: KnowEdit fluency, weighted bi/tri-gram entropy (2/3, 4/3; bits) of {opts.fluency_tokens} "
                       f"greedy tokens after the edit prompt; prompt format {fmt}",
            "cf_efficacy": "probability (ROME): P(new target) > P(true target) on the edit prompt, mean per-token "
                           f"log-probabilities; prompt format {fmt}",
            "cf_paraphrase": "probability (ROME): P(new) > P(true) on the rephrased prompts (share per case); "
                             f"prompt format {fmt}",
            "cf_neighborhood": "probability (ROME): P(true) > P(new) on the neighbourhood prompts (share per case); "
                               f"prompt format {fmt}",
        }
        out = {}
        for name in self.headline:
            vals = acc.get(name)
            if not vals or all(v is None for v in vals):
                continue
            keep = [j for j, v in enumerate(vals) if v is not None]
            per = [sum(vals[j]) / len(vals[j]) for j in keep]
            unit, display = ("bits", "raw") if name == "fluency" else ("fraction", "percent")
            s = Score(name, descr[name], per, unit=unit, display=display)
            if len(keep) < len(vals):
                s.extra["cases"] = len(keep)
            if base_raw is None and name.startswith("locality"):
                s.extra["note"] = "the base model agrees with itself by definition"
            out[name] = s
        return out

    def samples(self, items, pre, post):
        rows = []
        for j, c in enumerate(items.data["cases"]):
            row = {"id": c.id, "prompt": c.prompt, "subject": c.subject, "target_new": c.target_new,
                   "target_true": c.target_true}
            for side, res in (("pre", pre), ("post", post)):
                if res is None:
                    continue
                rc = res["raw"]["cases"][j]
                # "text": the greedy answer to the edit prompt; then this case's value of every metric
                row[side] = {"text": rc["rewrite_gen"], "continuation": rc["rewrite_text"],
                             **{k: s.values[j] for k, s in res["scores"].items()
                                if len(s.values) == len(items.data["cases"])}}
            rows.append(row)
        return rows

    def describe_lines(self, section):
        d = section.get("dataset", {})
        return [f"- editing data `{d.get('name')}` ({d.get('file')}): {d.get('n')} cases; prompt format "
                f"{section.get('prompt_format')}; `_tf` = teacher-forced token accuracy, `_gen` = greedy generation "
                f"containment (never mixed)"]


SUITE = KnowEditSuite()
