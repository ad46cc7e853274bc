"""Cross-check trustedit's multiple-choice and CrowS-Pairs metrics against lm-evaluation-harness.

    python -m trustedit.benchmarks.lm_eval_crosscheck [--limit 30] [--tasks piqa,mmlu,...]
        [--model SPEC] [--batch-size 8] [--out FILE.json] [--check] [--tokens-only]

Needs the ``crosscheck`` extra (``pip install 'trustedit[crosscheck]'``: lm-eval, pinned) and
``$TRUSTEDIT_DATA_DIR``. Runs offline (``HF_HUB_OFFLINE=1``, ``HF_DATASETS_OFFLINE=1`` are set).

On the same items (the first ``--limit`` of each task in the order trustedit's loaders give them;
MMLU: the loader's round-robin over subjects, i.e. the first k rows of each subject, passed to
lm-eval as per-subject ``samples``) it runs

* **lm-eval's own implementation**: ``lm_eval.simple_evaluate`` on the ``hf`` model (created
  exactly as ``model="hf"`` creates it: ``pretrained`` = the model saved as a plain folder,
  ``dtype=float32``, ``device=cpu``, ``prefix_token_id`` below), zero-shot, ``log_samples=True``,
  with the task YAMLs of ``benchmarks/lm_eval_tasks`` (lm-eval's prompt templates and metrics
  verbatim, reading the local data files; see ``lm_eval_tasks/utils.py`` for the one template
  difference, HellaSwag's ``ctx_b`` capitalisation, which both sides share);
* **trustedit's**: :func:`~trustedit.metrics.retention.mc_requests` /
  :func:`~trustedit.metrics.retention.mc_pass` / :func:`~trustedit.metrics.retention.mc_scores`
  (what the retention suite runs) and :func:`~trustedit.metrics.bias.crows_requests` /
  :func:`~trustedit.metrics.bias.token_logprobs` / ``crows_scores(..., scoring="sentence")``
  (lm-eval's whole-sentence log-likelihood; the crows-pairs suite's default is still
  ``"unshared"``) on the first N pairs in file order (the suite samples pairs with a seed).

Per task it reports the items, the per-item agreement of ``acc`` (and ``acc_norm`` where lm-eval
reports it: PIQA, ARC-Easy, HellaSwag; CrowS-Pairs: ``pct_stereotype``), both aggregates and their
difference in points, and diagnostics: requests whose (context, continuation) strings are
identical, requests whose token ids are identical (lm-eval's are recorded from the requests its
``_loglikelihood_tokens`` receives; ours are :func:`~trustedit.metrics.retention.encode_pair`'s),
the largest |log-likelihood difference| over requests with identical tokens (float noise), the
closest call (the smallest gap between an item's two best scores, log-likelihoods or for
``acc_norm`` log-likelihoods per character: an item can only flip on float noise when it is below
that difference, per character for ``acc_norm``), and, for every item where the two disagree, the
reason found (different strings, different tokens with the first differing position, a near tie,
or acc_norm's length).

The first token of a sentence with an empty context (CrowS-Pairs) is conditioned on one prefix
token, the same id on both sides: ``trustedit.metrics.retention.prefix_token(tokenizer)`` when that
function exists, else what ``encode_pair`` uses today (BOS under the BOS policy, else BOS, else
EOS); it is passed to lm-eval as ``prefix_token_id`` (lm-eval's default would be BOS, else EOS),
and the script checks that trustedit's CrowS requests really start with it.

Targets: per-item agreement >= 99 % and aggregates within 0.1 point (``--check``: exit 1 when a
task misses them). Prints a Markdown table; ``--out`` writes everything as JSON.
``--tokens-only`` skips both model passes and compares request strings and token ids only
(lm-eval's tokenisation still runs through its own ``loglikelihood``), cheap enough for whole
datasets (``--limit 100000``).

What is deliberately not lm-eval's default: the data (local copies; CrowS-Pairs is the original
release, not lm-eval's revised one), HellaSwag's context (see above), the prefix token (made
explicit, so both sides use the same one), ``bootstrap_iters=0`` (no standard errors), and the
model is handed to ``simple_evaluate`` as the ``hf`` object built from the same arguments (so its
requests can be recorded). Like lm-eval, trustedit reports ``acc_norm`` only for PIQA, ARC and
HellaSwag; every metric both sides report is compared.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
MMLU_SUBJECTS = ("abstract_algebra", "college_biology", "computer_security", "global_facts", "high_school_geography",
                 "high_school_us_history", "marketing", "us_foreign_policy", "world_religions")
# trustedit task -> lm-eval task names (ours, from lm_eval_tasks/) and lm-eval's own YAML for each
LM_EVAL_TASKS = {
    "piqa": {"trustedit_piqa": "piqa/piqa.yaml"},
    "arc_easy": {"trustedit_arc_easy": "arc/arc_easy.yaml"},
    "hellaswag": {"trustedit_hellaswag": "hellaswag/hellaswag.yaml"},
    "boolq": {"trustedit_boolq": "super_glue/boolq/default.yaml"},
    "commonsenseqa": {"trustedit_commonsense_qa": "commonsense_qa/default.yaml"},
    "mmlu": {f"trustedit_mmlu_{s}": f"mmlu/default/mmlu_{s}.yaml" for s in MMLU_SUBJECTS},
    "crows_pairs": {"trustedit_crows_pairs_english": "crows_pairs/crows_pairs_english.yaml"},
}
ALL_TASKS = tuple(LM_EVAL_TASKS)
# the YAML keys that define what is asked and how it is scored: ours must equal lm-eval's
PROMPT_KEYS = ("output_type", "description", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
               "fewshot_delimiter", "process_results", "metric_list")
# deliberate differences (documented in lm_eval_tasks/utils.py): key -> reason
TEMPLATE_EXCEPTIONS = {"trustedit_hellaswag": {"process_docs": "ctx_b cannot be re-capitalised (joined local ctx)"}}
TARGET_AGREEMENT_PCT = 99.0
TARGET_DIFF_POINTS = 0.1
LM_EVAL_DELIMITER = " "  # target_delimiter of every multiple-choice YAML here but CrowS-Pairs'
NEAR_TIE = 1e-3  # nats: a top-two margin this small can flip on float rounding of batched passes


# ---------------------------------------------------------------------------------------------
# lm-eval's templates vs ours
# ---------------------------------------------------------------------------------------------


def _fn_name(value):
    """A ``!function`` value as loaded with ``resolve_func=False`` (``<yaml dir>/<spec>``) ->
    a comparable dotted name (lm-eval's own files map to ``lm_eval.tasks.<folder>...``)."""
    if not isinstance(value, str) or "/" not in value:
        return value
    marker = "/lm_eval/tasks/"
    if marker in value:
        return "lm_eval.tasks." + value.split(marker, 1)[1].replace("/", ".")
    return value.rsplit("/", 1)[1]


def check_templates(tasks=ALL_TASKS) -> list[str]:
    """Differences between the prompt/metric keys (:data:`PROMPT_KEYS`, plus ``process_docs``) of
    our task YAMLs and lm-eval's installed ones (empty: faithful), except the documented
    :data:`TEMPLATE_EXCEPTIONS`. Needs no model and no data."""
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(lm_eval.__file__).resolve().parent / "tasks"
    problems = []
    for t in tasks:
        for ours_name, theirs_rel in LM_EVAL_TASKS[t].items():
            ours_file = TASKS_DIR / (ours_name.removeprefix("trustedit_") + ".yaml")
            theirs = load_yaml(root / theirs_rel, resolve_func=False)
            ours = load_yaml(ours_file, resolve_func=False)
            if ours.get("task") != ours_name:
                problems.append(f"{ours_file.name}: task is {ours.get('task')!r}, expected {ours_name!r}")
            for key in PROMPT_KEYS + ("process_docs",):
                if key in TEMPLATE_EXCEPTIONS.get(ours_name, {}):
                    continue
                a, b = _fn_name(theirs.get(key)), _fn_name(ours.get(key))
                if a != b:
                    problems.append(f"{ours_name}: {key} is {b!r}, lm-eval's {theirs_rel} has {a!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# the two runs
# ---------------------------------------------------------------------------------------------


def prefix_token(tokenizer, bos_policy: bool) -> tuple[int, str]:
    """(id, where it comes from) of the token an empty context is replaced by (module docstring)."""
    from trustedit.metrics import retention as R

    fn = getattr(R, "prefix_token", None)
    if fn is not None:
        return int(fn(tokenizer)), "trustedit.metrics.retention.prefix_token(tokenizer)"
    if bos_policy:
        return int(tokenizer.bos_token_id), "BOS (encode_pair under the BOS policy)"
    return int(R._prefix_token(tokenizer)), "encode_pair's empty-context rule (BOS, else EOS)"


def load_items(task: str, limit: int):
    if task == "crows_pairs":
        from trustedit.data.bias import load_crows_pairs

        return list(load_crows_pairs(limit))
    from trustedit.data.retention import load_mc

    return load_mc(task, limit)


def lm_eval_samples(task: str, items) -> dict[str, list[int]]:
    """lm-eval ``samples`` (task -> doc indices) selecting exactly ``items``. Every task but MMLU
    takes the first N records of its file; MMLU items are ``<subject>/<row>``."""
    if task != "mmlu":
        return {next(iter(LM_EVAL_TASKS[task])): list(range(len(items)))}
    out: dict[str, list[int]] = {}
    for it in items:
        subject, row = it.id.rsplit("/", 1)
        out.setdefault(f"trustedit_mmlu_{subject}", []).append(int(row))
    return out


def our_requests(lm, task: str, items) -> dict:
    """Our request strings and token ids, in item order (no model pass)."""
    from trustedit.metrics import retention as R

    tok = lm.tokenizer
    if task == "crows_pairs":
        from trustedit.metrics.bias import crows_requests

        req = crows_requests(tok, items)
        return {"req": req, "strings": [("", s.strip()) for it in items for s in (it.sent_more, it.sent_less)],
                "tokens": [(s[:f], s[f:]) for s, f in zip(req["seqs"], req["first"])], "per_item": [2] * len(items)}
    bos = R.resolve_add_bos(tok, None)
    reqs = R.mc_requests(items)
    return {"strings": reqs, "tokens": [R.encode_pair(tok, c, x, bos) for c, x in reqs],
            "per_item": [len(it.choices) for it in items]}


def run_ours(lm, task: str, items, batch_size: int, ours: dict) -> dict:
    """Adds our per-item metric values and per-request log-likelihoods to :func:`our_requests`'
    dict: the functions the retention and crows-pairs suites run."""
    from trustedit.metrics import retention as R

    tok = lm.tokenizer
    if task == "crows_pairs":
        from trustedit.metrics.bias import crows_scores, token_logprobs

        req = ours["req"]
        lps = token_logprobs(lm.model, tok, req["seqs"], req["first"], batch_size, "crows-pairs (trustedit)")
        score = crows_scores(items, req, lps, scoring="sentence")["crows_pairs/metric"]
        return {**ours, "metrics": {"pct_stereotype": [v / 100.0 for v in score.values]},
                "lls": [float(sum(x)) for x in lps]}
    bos = R.resolve_add_bos(tok, None)
    raw = R.mc_pass(lm.model, tok, items, batch_size=batch_size, task=task, bos=bos)
    scores = R.mc_scores(items, raw, task, bos)
    # acc_norm only where trustedit (like lm-eval) reports it: piqa, arc, hellaswag
    return {**ours, "metrics": {m: list(scores[m].values) for m in ("acc", "acc_norm") if m in scores},
            "lls": list(raw["lls"])}


def make_lm_eval_model(folder: Path, batch_size: int, prefix_id: int, tokens_only: bool = False):
    """lm-eval's ``hf`` model exactly as ``simple_evaluate(model="hf", model_args=...)`` builds it,
    recording the token ids of every request its ``_loglikelihood_tokens`` receives.
    ``tokens_only``: record, and return (0.0, False) per request instead of running the model."""
    import lm_eval.api.registry

    model_args = {"pretrained": str(folder), "dtype": "float32", "prefix_token_id": prefix_id}
    lm = lm_eval.api.registry.get_model("hf").create_from_arg_obj(
        model_args, {"batch_size": batch_size, "max_batch_size": None, "device": "cpu"})
    seen: dict = {}
    inner = lm._loglikelihood_tokens

    def recording(requests, *a, **kw):
        for (strings, ctx_enc, cont_enc) in requests:
            seen[tuple(strings)] = (list(ctx_enc), list(cont_enc))
        return [(0.0, False)] * len(requests) if tokens_only else inner(requests, *a, **kw)

    lm._loglikelihood_tokens = recording
    return lm, seen, model_args


def run_lm_eval(lm, samples: dict[str, list[int]]) -> dict:
    """``simple_evaluate`` on our YAMLs with exactly ``samples``; returns its result dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=list(samples), num_fewshot=0, samples=samples, log_samples=True,
                                   task_manager=tm, bootstrap_iters=0)


def lm_eval_per_item(task: str, items, res: dict) -> dict:
    """lm-eval's per-item metrics, request strings and log-likelihoods, in our item order."""
    index = {}
    for name, samples in res["samples"].items():
        for s in samples:
            index[(name, int(s["doc_id"]))] = s
    order = []
    for k, it in enumerate(items):
        if task == "mmlu":
            subject, row = it.id.rsplit("/", 1)
            order.append(index[(f"trustedit_mmlu_{subject}", int(row))])
        else:
            order.append(index[(next(iter(LM_EVAL_TASKS[task])), k)])
    names = [m for m in ("acc", "acc_norm", "pct_stereotype") if m in order[0]] if order else []
    return {"metrics": {m: [float(s[m]) for s in order] for m in names},
            "strings": [tuple(a) for s in order for a in s["arguments"]],
            "lls": [float(r[0]) for s in order for r in s["filtered_resps"]],
            "aggregates": {name: {k.split(",")[0]: v for k, v in res["results"][name].items()
                                  if isinstance(v, (int, float)) and not k.startswith("alias")}
                           for name in {n for (n, _) in index}}}


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------


def _first_diff(a: list, b: list) -> int:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return k
    return min(len(a), len(b))


def _show_tokens(tok, ids) -> list[str]:
    return [tok.decode([t]) for t in ids]


def compare(task: str, items, ours: dict, theirs: dict, lm_tokens: dict, tokenizer) -> dict:
    """Agreement of one task (module docstring), with a diagnosis for every disagreeing item."""
    n = len(items)
    reqs_ours, reqs_lm = ours["strings"], theirs["strings"]
    toks_lm = [lm_tokens.get(tuple(r)) for r in reqs_lm]
    same_str = [a == tuple(b) for a, b in zip(map(tuple, reqs_ours), reqs_lm)] if len(reqs_ours) == len(reqs_lm) else []
    same_tok = [t is not None and (list(o[0]) + list(o[1]), len(o[1])) == (t[0] + t[1], len(t[1]))
                for o, t in zip(ours["tokens"], toks_lm)]
    dll = [abs(a - b) for a, b, s in zip(ours.get("lls", []), theirs["lls"], same_tok) if s]
    token_examples = []
    for k, (o, t, s) in enumerate(zip(ours["tokens"], toks_lm, same_tok)):
        if not s and t is not None and len(token_examples) < 3:
            token_examples.append(_token_diff(tokenizer, reqs_lm[k], o, t))
    metrics = {}
    for m, lm_vals in theirs["metrics"].items() if "metrics" in ours else ():
        our_vals = ours["metrics"].get(m)
        if our_vals is None:
            continue
        agree = sum(a == b for a, b in zip(our_vals, lm_vals))
        a_lm, a_ours = 100 * sum(lm_vals) / n, 100 * sum(our_vals) / n
        metrics[m] = {"agree": agree, "agree_pct": round(100 * agree / n, 2), "lm_eval": round(a_lm, 4),
                      "ours": round(a_ours, 4), "diff_points": round(a_ours - a_lm, 4)}
    disagreements = []
    starts = [sum(ours["per_item"][:k]) for k in range(n)]
    # the closest call: the smallest gap between an item's two best scores (lm-eval's log-likelihoods,
    # divided by the choice's length for acc_norm); an item can only flip on float noise below max |d-ll|
    for m, v in metrics.items():
        margins = []
        for a, k in zip(starts, ours["per_item"]):
            lls = theirs["lls"][a:a + k]
            if m == "acc_norm":
                lls = [x / max(1, len(c) - len(LM_EVAL_DELIMITER)) for x, (_, c) in zip(lls, reqs_lm[a:a + k])]
            margins.append(_margin(lls))
        v["closest_call"] = min(margins) if margins else None
    for k, it in enumerate(items):
        bad = [m for m in metrics if ours["metrics"][m][k] != theirs["metrics"][m][k]]
        if bad:
            sl = slice(starts[k], starts[k] + ours["per_item"][k])
            disagreements.append(_diagnose(task, it, bad, ours, theirs, sl, same_str, same_tok, toks_lm, tokenizer))
    ok = all(v["agree_pct"] >= TARGET_AGREEMENT_PCT and abs(v["diff_points"]) <= TARGET_DIFF_POINTS
             for v in metrics.values()) if metrics else sum(same_tok) == len(reqs_ours)
    return {"items": n, "requests": len(reqs_ours), "metrics": metrics,
            "strings_identical": sum(same_str), "tokens_identical": sum(same_tok),
            "max_abs_dll_same_tokens": max(dll) if dll else None, "meets_target": ok,
            "disagreements": disagreements, "token_examples": token_examples}


def _token_diff(tok, strings, o, t) -> dict:
    full_o, full_t = list(o[0]) + list(o[1]), t[0] + t[1]
    k = _first_diff(full_o, full_t)
    lo = max(0, k - 3)
    return {"context_tail": strings[0][-60:], "continuation": strings[1][:80],
            "split_ours": len(o[0]), "split_lm_eval": len(t[0]), "first_diff": k,
            "ours": _show_tokens(tok, full_o[lo:k + 4]), "lm_eval": _show_tokens(tok, full_t[lo:k + 4]),
            "what": "same ids, different context/continuation boundary" if full_o == full_t
            else "different ids"}


def _margin(values) -> float:
    top = sorted(values, reverse=True)
    return top[0] - top[1] if len(top) > 1 else float("inf")


def _diagnose(task, it, bad, ours, theirs, sl, same_str, same_tok, toks_lm, tok) -> dict:
    lo, lt = ours["lls"][sl], theirs["lls"][sl]
    d = {"item": getattr(it, "id", None), "metrics": bad, "ours_ll": [round(x, 5) for x in lo],
         "lm_eval_ll": [round(x, 5) for x in lt]}
    causes = []
    if same_str and not all(same_str[sl]):
        causes.append("request strings differ")
    if not all(same_tok[sl]):
        k = [j for j in range(sl.start, sl.stop) if not same_tok[j]][0]
        if toks_lm[k] is not None:
            d["tokens"] = _token_diff(tok, theirs["strings"][k], ours["tokens"][k], toks_lm[k])
        causes.append("token ids differ (" + (d.get("tokens", {}).get("what") or "not recorded") + ")")
    margin = min(_margin(lo), _margin(lt))
    if bad != ["acc_norm"] and margin < NEAR_TIE:
        causes.append(f"near tie: the top two log-likelihoods are {margin:.2e} nats apart")
    if "acc_norm" in bad and task != "crows_pairs":
        ours_len = [max(1, len(c[len(it.target_delimiter):] if c.startswith(it.target_delimiter) else c))
                    for c in it.choices]
        lm_len = [len(c) - len(LM_EVAL_DELIMITER) for _, c in theirs["strings"][sl]]
        if ours_len != lm_len:
            causes.append(f"acc_norm length definition (trustedit {ours_len}, lm-eval {lm_len} characters)")
        else:
            margin = min(_margin([x / n for x, n in zip(lt, lm_len)]), _margin([x / n for x, n in zip(lo, lm_len)]))
            if margin < NEAR_TIE:
                causes.append(f"near tie: the top two length-normalised scores are {margin:.2e} apart")
    d["cause"] = "; ".join(causes) or "unexplained (same strings and tokens, no near tie)"
    if task == "crows_pairs":
        d["sent_more"], d["sent_less"] = it.sent_more, it.sent_less
    else:
        d["context_tail"] = it.context[-80:]
        d["choices"], d["label"] = it.choices, it.label
    return d


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def markdown(report: dict) -> str:
    """The report as a Markdown table, a footnote on the set-up, and one line per finding."""
    if report["tokens_only"]:
        lines = ["| task | items | requests | strings identical | tokens identical |", "|---|---|---|---|---|"]
        lines += [f"| {t} | {r['items']} | {r['requests']} | {r['strings_identical']} | {r['tokens_identical']} |"
                  for t, r in report["tasks"].items()]
    else:
        lines = ["| task | items | metric | per-item agreement | lm-eval | trustedit | diff (points) | strings identical "
                 "| tokens identical | max abs d-ll (same tokens) | closest call | target |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for t, r in report["tasks"].items():
            dll = r["max_abs_dll_same_tokens"]
            for m, v in r["metrics"].items():
                lines.append(
                    f"| {t} | {r['items']} | {m} | {v['agree']}/{r['items']} ({v['agree_pct']:.1f} %) "
                    f"| {v['lm_eval']:.2f} | {v['ours']:.2f} | {v['diff_points']:+.2f} "
                    f"| {r['strings_identical']}/{r['requests']} | {r['tokens_identical']}/{r['requests']} "
                    f"| {_fmt(dll)} | {_fmt(v['closest_call'])} "
                    f"| {'ok' if r['meets_target'] else 'MISSED'} |")
    p = report["prefix_token"]
    lines += ["", f"lm-eval {report['lm_eval_version']}, model {report['model']}, fp32 CPU, zero-shot, "
                  f"first {report['limit']} items per task (MMLU: round-robin over its subjects); "
                  f"empty-context prefix token: id {p['id']} ({p['token']!r}, {p['source']}); "
                  f"trustedit BOS policy: {'BOS prepended' if report['bos_policy'] else 'no BOS'}; "
                  f"lm-eval adds BOS: {'yes' if report['lm_eval_adds_bos'] else 'no'}"
                  + ("; token ids only (no model pass)." if report["tokens_only"] else ".")]
    if report["template_problems"]:
        lines += ["", "Set-up problems (task templates, prefix token):"] + [f"- {x}" for x in report["template_problems"]]
    findings = []
    for t, r in report["tasks"].items():
        for d in r["disagreements"]:
            findings.append(f"- {t} item {d['item']}: {', '.join(d['metrics'])} differ: {d['cause']}")
        for e in r["token_examples"]:
            findings.append(f"- {t} tokens: {e['what']} at token {e['first_diff']}: trustedit {e['ours']} vs lm-eval "
                            f"{e['lm_eval']} (context ends {e['context_tail'][-30:]!r}, continuation "
                            f"{e['continuation'][:30]!r})")
    if findings:
        lines += ["", "Disagreements (with their cause) and token differences (first 3 per task):"] + findings
    return "\n".join(lines)


def crosscheck(tasks=ALL_TASKS, limit: int = 30, model: str | None = None, batch_size: int = 8,
               tokens_only: bool = False) -> dict:
    """Run both implementations on the first ``limit`` items of ``tasks``; the report dict.
    ``tokens_only``: compare request strings and token ids only, without model passes."""
    import lm_eval
    import transformers

    from trustedit.metrics.retention import resolve_add_bos
    from trustedit.models import load_model, save_plain

    items = {t: load_items(t, limit) for t in tasks}  # data problems surface before any model work
    lm = load_model(model)
    bos = resolve_add_bos(lm.tokenizer, None)
    prefix_id, prefix_src = prefix_token(lm.tokenizer, bos)
    report = {"lm_eval_version": lm_eval.__version__, "transformers_version": transformers.__version__,
              "model": lm.spec, "limit": limit, "batch_size": batch_size, "bos_policy": bos, "tokens_only": tokens_only,
              "prefix_token": {"id": prefix_id, "token": lm.tokenizer.convert_ids_to_tokens(prefix_id),
                               "source": prefix_src},
              "template_problems": check_templates(tasks), "tasks": {}}
    ours = {t: our_requests(lm, t, items[t]) for t in tasks}
    if "crows_pairs" in ours:
        used = {c[-1] for c, _ in ours["crows_pairs"]["tokens"] if c}
        if used - {prefix_id}:
            report["template_problems"].append(f"trustedit's CrowS requests start with token(s) {sorted(used)}, "
                                               f"not the prefix token {prefix_id}")
    if not tokens_only:
        ours = {t: run_ours(lm, t, items[t], batch_size, ours[t]) for t in tasks}
    with tempfile.TemporaryDirectory(prefix="trustedit-lmeval-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        save_plain(lm.model, lm.tokenizer, folder)
        hf, lm_tokens, model_args = make_lm_eval_model(folder, batch_size, prefix_id, tokens_only)
        report["lm_eval_model_args"] = {**model_args, "pretrained": f"<plain copy of {lm.spec}>", "device": "cpu",
                                        "batch_size": batch_size}
        report["lm_eval_adds_bos"] = bool(hf.tok_encode("a")[:1] == [lm.tokenizer.bos_token_id])
        samples = {}
        for t in tasks:
            samples.update(lm_eval_samples(t, items[t]))
        res = run_lm_eval(hf, samples)
    for t in tasks:
        theirs = lm_eval_per_item(t, items[t], res)
        report["tasks"][t] = compare(t, items[t], ours[t], theirs, lm_tokens, lm.tokenizer)
        if not tokens_only:
            report["tasks"][t]["lm_eval_results"] = theirs["aggregates"]
    report["meets_target"] = all(r["meets_target"] for r in report["tasks"].values()) and not report["template_problems"]
    return report


def _parse_tasks(value: str) -> list[str]:
    names = [x.strip() for x in value.split(",") if x.strip()]
    unknown = [x for x in names if x not in ALL_TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown} (known: {', '.join(ALL_TASKS)})" if unknown else "no tasks")
    return list(dict.fromkeys(names))


def main(argv=None) -> int:
    from trustedit.cli import OneLineParser
    from trustedit.errors import TrusteditError

    ap = OneLineParser(prog="lm_eval_crosscheck", description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=30, help="items per task (first N; MMLU round-robin), >= 1")
    ap.add_argument("--tasks", default=",".join(ALL_TASKS), help=f"comma-separated, of: {', '.join(ALL_TASKS)}")
    ap.add_argument("--model", default=None, help="model spec as for trustedit (default: the embedded model)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the full report as JSON here")
    ap.add_argument("--tokens-only", action="store_true",
                    help="compare request strings and token ids only, without model passes (fast; any --limit)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a task misses the agreement targets")
    args = ap.parse_args(argv)
    try:
        tasks = _parse_tasks(args.tasks)
    except ValueError as e:
        ap.error(f"--tasks: {e}")
    if args.limit < 1:
        ap.error(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None and (out.is_dir() or not out.parent.is_dir()):
        ap.error(f"--out {out}: " + ("is a directory" if out.is_dir() else f"no such directory {out.parent}"))
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        ap.error("lm-eval is not installed (pip install 'trustedit[crosscheck]')")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import logging

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        import datasets

        datasets.disable_progress_bars()
        report = crosscheck(tasks, args.limit, args.model, args.batch_size, args.tokens_only)
    except TrusteditError as e:
        print(f"trustedit: error: {e}", file=sys.stderr)
        return e.exit_code
    report["markdown"] = markdown(report)
    print(report["markdown"])
    if out is not None:
        out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return 1 if args.check and not report["meets_target"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
