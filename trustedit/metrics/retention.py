"""General-capability retention: lm-eval-style zero-shot log-likelihood MC accuracy and
token-level perplexity, each returned as a per-item :class:`~trustedit.metrics.scores.Score`.

Token ids (see :func:`encode_pair`): the context and the continuation are encoded *separately*
(``add_special_tokens=False``); trailing whitespace of the context is moved to the front of the
continuation first (as lm-eval does). A BOS id is prepended to the context only under the BOS policy
(``add_bos``; None = follow the tokenizer's ``add_bos_token``). An empty context is replaced by one
prefix token (BOS, else EOS) so the first continuation token has something to be predicted from.
Sequences longer than the model's window are truncated from the left.
"""

from __future__ import annotations

import inspect
import time
from typing import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from trustedit.data.retention import MC_TASKS, MCItem, load_mc, load_wikitext
from trustedit.distributed import merge, mine
from trustedit.errors import TrusteditError
from trustedit.metrics.scores import Score
from trustedit.prompts import pad_right
from trustedit.suites.retention import DEFAULT_TASKS  # noqa: F401  (the one default list, in the retention suite)

# Items per task for one suite pass (wikitext: documents). Measured on SmolLM2-135M fp32, 2-core
# CPU, batch 16, seconds per item: piqa 0.19, arc_easy 0.23, hellaswag 0.34, boolq 0.38,
# commonsenseqa 0.08, mmlu 0.24; wikitext ~4 ms per token (document 0 = 1,437 tokens, 6 s).
# These limits (mmlu: 4 per subject) cost ~80-85 s per model pass there (measured 86.6 s with mmlu 45).
DEFAULT_LIMITS = {"wikitext": 1, "piqa": 60, "arc_easy": 60, "hellaswag": 40, "boolq": 30,
                  "commonsenseqa": 100, "mmlu": 36}


# ---------------------------------------------------------------------------------------------
# tokenisation helpers
# ---------------------------------------------------------------------------------------------


def resolve_add_bos(tokenizer, add_bos: bool | None) -> bool:
    """The BOS policy: explicit ``add_bos``, else the tokenizer's own ``add_bos_token`` flag (or,
    when it has none, whether encoding with special tokens puts BOS first). False without a BOS."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        if add_bos:
            raise TrusteditError("add_bos=True but the tokenizer has no BOS token")
        return False
    if add_bos is not None:
        return bool(add_bos)
    flag = getattr(tokenizer, "add_bos_token", None)
    if isinstance(flag, bool):
        return flag
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:  # pragma: no cover - exotic tokenizers
        return False
    return bool(ids) and ids[0] == bos


def _encode(tokenizer, text: str, guard: bool = True) -> list[int]:
    """Token ids of ``text`` without special tokens. ``guard``: refuse first a text that cannot fit
    the model's context (:func:`trustedit.prompts.guard_length`); documents scored in windows pass
    ``guard=False``."""
    if not text:
        return []
    if guard:
        from trustedit.prompts import guard_length

        guard_length(tokenizer, text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


DOCUMENT_SEPARATORS = ("<|endoftext|>", "<|end_of_text|>")


def prefix_token(tokenizer) -> int:
    """The token a text without context is conditioned on: the document boundary the model was
    pretrained with, so that the first token of a sentence is predicted as at the start of a
    document. A model pretrained with a BOS prepended (the tokenizer's ``add_bos_token``: LLaMA,
    Mistral, Gemma) gets its BOS; otherwise the document separator of its pretraining corpus when
    the vocabulary has one (``<|endoftext|>``: GPT-2, SmolLM, Qwen), else BOS, else EOS.

    Why not simply the tokenizer's BOS: an instruct model's BOS can be a chat role marker
    (SmolLM2-Instruct's is ``<|im_start|>``), after which the model expects a role name ("The"
    after it has log-probability -8.2 on SmolLM2-135M)."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    if bos is not None and getattr(tokenizer, "add_bos_token", False) is True:
        return bos
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing
        vocab = {}
    for name in DOCUMENT_SEPARATORS:
        if name in vocab:
            return vocab[name]
    for tid in (bos, eos):
        if tid is not None:
            return tid
    raise TrusteditError("empty context and the tokenizer has neither a BOS nor an EOS token to condition on")


def prefix_token_label(tokenizer) -> str:
    """``'<|endoftext|>' (id 0)``: for protocol strings."""
    tid = prefix_token(tokenizer)
    return f"{tokenizer.convert_ids_to_tokens(tid)!r} (id {tid})"


_prefix_token = prefix_token  # the name used before (kept for callers written against older code)


def encode_pair(tokenizer, context: str, continuation: str, add_bos: bool) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), encoded separately (see the module docstring)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    ctx = _encode(tokenizer, context)
    cont = _encode(tokenizer, continuation)
    if not cont:
        raise TrusteditError(f"continuation {continuation!r} encodes to no tokens")
    if add_bos:
        ctx = [tokenizer.bos_token_id] + ctx
    if not ctx:
        ctx = [prefix_token(tokenizer)]
    return ctx, cont


def model_max_length(model, cap: int | None = None) -> int:
    cfg = model.config
    n = None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            n = v
            break
    if n is None:
        n = 2048
    return min(n, cap) if cap else n


def _device(model, device=None):
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return v
    return 0


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, leave=False)  # tqdm itself honours $TQDM_DISABLE


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _forward(model, ids, mask, needed: list[int]):
    """Logits at input positions ``needed`` only (via ``logits_to_keep`` when the model takes
    it; the vocabulary projection is the costly part for small models), plus a position->column
    map; or all logits and ``None`` when the model cannot slice."""
    if needed and len(needed) < ids.shape[1] and _supports_logits_to_keep(model):
        keep = torch.tensor(needed, dtype=torch.long, device=ids.device)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
        if logits.shape[1] == len(needed):
            return logits, {p: c for c, p in enumerate(needed)}
        if logits.shape[1] != ids.shape[1]:  # pragma: no cover - unexpected slicing semantics
            raise RuntimeError(f"logits_to_keep returned {logits.shape[1]} positions, expected {len(needed)}")
        return logits, None
    return model(input_ids=ids, attention_mask=mask).logits, None


# ---------------------------------------------------------------------------------------------
# log-likelihood
# ---------------------------------------------------------------------------------------------


def loglikelihood(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16, device=None,
                  add_bos: bool | None = None, max_length: int | None = None,
                  desc: str = "loglikelihood") -> list[tuple[float, int, bool]]:
    """For each (context, continuation): (sum log p(continuation tokens | context) in nats,
    number of continuation tokens scored, whether every continuation token is the argmax).

    Batches are right-padded with an attention mask, sorted by length (longest first) and
    returned in request order. log-softmax is computed in float32 whatever the model dtype.
    """
    bos = resolve_add_bos(tokenizer, add_bos)
    max_len = max_length or model_max_length(model)
    dev = _device(model, device)
    pad = _pad_id(tokenizer)

    # Requests whose model input is identical (e.g. single-token choices " A".." D" after one
    # context) share one forward pass: logits depend only on the input ids.
    groups: dict[tuple, list] = {}  # input ids -> [(request index, continuation targets, n_cont)]
    for i, (ctx, cont) in enumerate(requests):
        c_ids, t_ids = encode_pair(tokenizer, ctx, cont, bos)
        full = c_ids + t_ids
        inp = full[:-1][-max_len:]
        n_cont = min(len(t_ids), len(inp))  # a continuation longer than the window is truncated too
        groups.setdefault(tuple(inp), []).append((i, full[-n_cont:], n_cont))
    jobs = sorted(groups.items(), key=lambda kv: -len(kv[0]))  # longest first

    results: list = [None] * len(requests)
    was_training = model.training
    model.eval()
    bar = _progress(len(requests), desc)
    try:
        with torch.inference_mode():
            for start in mine(range(0, len(jobs), batch_size)):
                chunk = jobs[start : start + batch_size]
                ids, mask = pad_right([inp for inp, _ in chunk], pad)
                # only the continuation positions need vocabulary logits (the union over the batch)
                needed = sorted({p for inp, reqs in chunk for _, _, n in reqs for p in range(len(inp) - n, len(inp))})
                logits, col = _forward(model, ids.to(dev), mask.to(dev), needed)
                for r, (inp, reqs) in enumerate(chunk):
                    L = len(inp)
                    for idx, tgt, n_cont in reqs:
                        # logits at input position p predict token p+1 of the full sequence; the
                        # continuation occupies the last n_cont targets, i.e. input positions L-n_cont..L-1.
                        pos = list(range(L - n_cont, L))
                        cols = pos if col is None else [col[p] for p in pos]
                        sl = logits[r, cols].float().log_softmax(-1)
                        tgt_t = torch.tensor(tgt, dtype=torch.long, device=sl.device)
                        assert sl.shape[0] == tgt_t.shape[0] == n_cont, "logit slice does not line up with the continuation"
                        # alignment: target k is the input token at the position after the one predicting it
                        assert list(inp[L - n_cont + 1 :]) == tgt[:-1], "targets are not the next input tokens"
                        lp = sl.gather(-1, tgt_t[:, None]).squeeze(-1)
                        greedy = bool((sl.argmax(-1) == tgt_t).all())
                        results[idx] = (float(lp.sum()), n_cont, greedy)
                bar.update(sum(len(reqs) for _, reqs in chunk))
    finally:
        bar.close()
        model.train(was_training)
    return merge(results)


def loglikelihood_shared(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16, device=None,
                         add_bos: bool | None = None, max_length: int | None = None,
                         desc: str = "loglikelihood") -> list[tuple[float, int, bool]]:
    """:func:`loglikelihood`, with each distinct context encoded once: its KV cache is shared by
    every continuation that follows it (the choices of a multiple-choice item). Contexts are
    batched (right-padded, longest first); the continuations of a batch then run in one pass on
    the cache, rows repeated per continuation, their positions continuing each row's context.
    Requests that do not fit the window go through :func:`loglikelihood` (left-truncated there)."""
    from trustedit.prompts import cache_kwarg, output_cache

    bos = resolve_add_bos(tokenizer, add_bos)
    max_len = max_length or model_max_length(model)
    dev = _device(model, device)
    pad = _pad_id(tokenizer)
    groups: dict[tuple, list] = {}  # context ids -> [(request index, continuation ids)]
    long = []
    for i, (ctx, cont) in enumerate(requests):
        c_ids, t_ids = encode_pair(tokenizer, ctx, cont, bos)
        if len(c_ids) + len(t_ids) - 1 > max_len:
            long.append(i)
        else:
            groups.setdefault(tuple(c_ids), []).append((i, list(t_ids)))
    results: list = [None] * len(requests)
    if long:
        for i, r in zip(long, loglikelihood(model, tokenizer, [requests[i] for i in long], batch_size, device, bos,
                                            max_length, desc)):
            results[i] = r
    jobs = sorted(groups.items(), key=lambda kv: -len(kv[0]))
    was_training = model.training
    model.eval()
    bar = _progress(len(requests) - len(long), desc)
    try:
        with torch.inference_mode():
            for start in mine(range(0, len(jobs), batch_size)):
                chunk = jobs[start: start + batch_size]
                ids, mask = pad_right([list(c) for c, _ in chunk], pad)
                ids, mask = ids.to(dev), mask.to(dev)
                lens = [len(c) for c, _ in chunk]
                out = model(input_ids=ids, attention_mask=mask, use_cache=True,
                            **({"logits_to_keep": torch.tensor(sorted(set(n - 1 for n in lens)), device=dev)}
                               if _supports_logits_to_keep(model) else {}))
                keep = sorted(set(n - 1 for n in lens))
                col = {p: c for c, p in enumerate(keep)} if out.logits.shape[1] == len(keep) else None
                first = [out.logits[r, (col[n - 1] if col else n - 1)].float().log_softmax(-1) for r, n in enumerate(lens)]
                rows = [(r, i, t) for r, (_, reqs) in enumerate(chunk) for i, t in reqs]
                rest = None
                longest = max(len(t) for _, _, t in rows)
                if longest > 1:
                    cache = output_cache(out)
                    sel = torch.tensor([r for r, _, _ in rows], device=dev)
                    cache.batch_select_indices(sel)
                    cont, cmask = pad_right([t[:-1] or [pad] for _, _, t in rows], pad)
                    for k, (_, _, t) in enumerate(rows):
                        if len(t) == 1:
                            cmask[k, 0] = 0
                    cont, cmask = cont.to(dev), cmask.to(dev)
                    pos = torch.tensor([lens[r] for r, _, _ in rows], device=dev)[:, None] + \
                        torch.arange(cont.shape[1], device=dev)[None, :]
                    rest = model(input_ids=cont, attention_mask=torch.cat([mask[sel], cmask], 1), position_ids=pos,
                                 use_cache=True, **{cache_kwarg(model): cache}).logits
                for k, (r, i, t) in enumerate(rows):
                    sl = first[r][None, :] if len(t) == 1 else torch.cat(
                        [first[r][None, :], rest[k, : len(t) - 1].float().log_softmax(-1)], 0)
                    tgt = torch.tensor(t, dtype=torch.long, device=sl.device)
                    lp = sl.gather(-1, tgt[:, None]).squeeze(-1)
                    results[i] = (float(lp.sum()), len(t), bool((sl.argmax(-1) == tgt).all()))
                bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return merge(results)


# ---------------------------------------------------------------------------------------------
# multiple choice
# ---------------------------------------------------------------------------------------------


def mc_protocol(task: str | None, add_bos: bool, n_items: int) -> str:
    spec = MC_TASKS.get(task or "")
    fmt = f"lm-eval '{spec.lm_eval_task}' prompt format" if spec else "caller-supplied prompts"
    note = f"; note: {spec.notes}" if spec and spec.notes else ""
    return (f"lm-eval-style zero-shot log-likelihood MC ({fmt}), n-shot 0, {n_items} items; "
            f"acc = argmax_i sum log p(choice_i | ctx)"
            + ("; " if task in ACC_ONLY else "; acc_norm = argmax_i sum log p(choice_i | ctx) / "
               "len(choice_i) in characters without the target delimiter (lm-eval acc_norm); ")
            + f"context and choice tokenised separately, BOS {'prepended' if add_bos else 'not added'}{note}")


def multiple_choice(model, tokenizer, items: Sequence[MCItem], batch_size: int = 16, task: str | None = None,
                    add_bos: bool | None = None, device=None) -> dict[str, Score]:
    """``acc`` and ``acc_norm`` (per-item 1.0/0.0) for lm-eval-style multiple choice."""
    bos = resolve_add_bos(tokenizer, add_bos)
    return mc_scores(items, mc_pass(model, tokenizer, items, batch_size, task, bos, device), task, bos)


def mc_requests(items: Sequence[MCItem]) -> list[tuple[str, str]]:
    """(context, choice) per choice of every item, in item order."""
    reqs = []
    for it in items:
        if not 0 <= it.label < len(it.choices):
            raise TrusteditError(f"item {it.id}: label {it.label} out of range for {len(it.choices)} choices")
        reqs += [(it.context, c) for c in it.choices]
    return reqs


def mc_pass(model, tokenizer, items: Sequence[MCItem], batch_size: int = 16, task: str | None = None,
            bos: bool = False, device=None) -> dict:
    """The model pass of :func:`multiple_choice` (JSON-ready): ``lls`` = sum log p per choice. Each
    item's context is encoded once and shared by its choices (:func:`loglikelihood_shared`)."""
    reqs = mc_requests(items)
    t0 = time.perf_counter()
    lls = loglikelihood_shared(model, tokenizer, reqs, batch_size=batch_size, device=device, add_bos=bos,
                               desc=f"{task or 'mc'}")
    return {"lls": [ll for ll, _, _ in lls], "seconds": round(time.perf_counter() - t0, 3), "n_requests": len(reqs)}


ACC_ONLY = ("boolq", "commonsenseqa", "mmlu")  # the tasks for which lm-evaluation-harness reports acc alone


def mc_scores(items: Sequence[MCItem], raw: dict, task: str | None, bos: bool) -> dict[str, Score]:
    """``acc``, and ``acc_norm`` where lm-evaluation-harness reports it (not for :data:`ACC_ONLY`:
    BoolQ, CommonsenseQA and MMLU, whose choices are single letters or " no"/" yes", where length
    normalisation is noise), from :func:`mc_pass` (no model pass here)."""
    lls = raw["lls"]
    acc, acc_norm, pos = [], [], 0
    for it in items:
        n = len(it.choices)
        ll = [lls[pos + j] for j in range(n)]
        pos += n
        lens = [max(1, len(_strip_delim(c, it.target_delimiter))) for c in it.choices]
        pred = max(range(n), key=lambda j: ll[j])
        pred_n = max(range(n), key=lambda j: ll[j] / lens[j])
        acc.append(1.0 if pred == it.label else 0.0)
        acc_norm.append(1.0 if pred_n == it.label else 0.0)
    prefix = f"{task}/" if task else ""
    proto = mc_protocol(task, bos, len(items))
    extra = {"seconds": raw["seconds"], "n_requests": raw["n_requests"]}
    out = {"acc": Score(f"{prefix}acc", proto, acc, extra=dict(extra), unit="fraction", display="percent")}
    if task not in ACC_ONLY:
        out["acc_norm"] = Score(f"{prefix}acc_norm", proto, acc_norm, extra=dict(extra), unit="fraction",
                                display="percent")
    return out


def _strip_delim(choice: str, delim: str) -> str:
    return choice[len(delim):] if delim and choice.startswith(delim) else choice


# ---------------------------------------------------------------------------------------------
# perplexity
# ---------------------------------------------------------------------------------------------


def _windows(n_tokens: int, max_length: int, stride: int):
    """Windows over a sequence of ``n_tokens`` ids: (begin, end, n_new): input ids[begin:end]
    predict ids[begin+1:end+1]; only the last ``n_new`` of those targets are scored, so every
    position 1..n_tokens-1 is scored exactly once."""
    out, scored_to, begin = [], 0, 0  # scored_to: highest target position already scored
    last = n_tokens - 1
    while scored_to < last:
        end = min(begin + max_length, last)
        out.append((begin, end, end - scored_to))
        scored_to = end
        begin += stride
    return out


def perplexity(model, tokenizer, documents: Sequence[str], max_length: int | None = None, stride: int | None = None,
               batch_size: int = 4, add_bos: bool | None = None, device=None, name: str = "wikitext/ppl") -> Score:
    """Token-level perplexity over ``documents``: per-window summed NLL (nats) of the newly scored
    tokens and their number (the Score's weights, aggregation "ppl"), so the bootstrap resamples
    windows.

    Each document is tokenised whole (plus BOS under the BOS policy; without BOS the first token
    is not predicted). Rolling windows of ``max_length`` tokens advance by ``stride``; a window
    scores only tokens not scored before (HF's strided perplexity), so with ``stride ==
    max_length`` windows are disjoint and the first token of each window is conditioned on
    nothing before it but is itself scored by the previous window.
    """
    return perplexity_score(perplexity_pass(model, tokenizer, documents, max_length, stride, batch_size, add_bos, device),
                            name)


def perplexity_pass(model, tokenizer, documents: Sequence[str], max_length: int | None = None, stride: int | None = None,
                    batch_size: int = 4, add_bos: bool | None = None, device=None) -> dict:
    """The model pass of :func:`perplexity` (JSON-ready): per-window summed NLL and token counts."""
    bos = resolve_add_bos(tokenizer, add_bos)
    L = max_length or model_max_length(model, cap=1024)
    if L > model_max_length(model):
        raise TrusteditError(f"max_length {L} exceeds the model's {model_max_length(model)} positions")
    S = stride or L
    if not 1 <= S <= L:
        raise TrusteditError(f"stride must be in 1..max_length ({L}), got {S}")
    dev = _device(model, device)
    pad = _pad_id(tokenizer)

    jobs = []  # (doc index, window ids, n_new)
    n_pred = []
    for d, doc in enumerate(documents):
        ids = _encode(tokenizer, doc, guard=False)
        if bos:
            ids = [tokenizer.bos_token_id] + ids
        n_pred.append(max(0, len(ids) - 1))
        for b, e, n_new in _windows(len(ids), L, S):
            jobs.append((d, ids[b : e + 1], n_new))
    nll: list = [None] * len(jobs)  # per window: windows are the bootstrap items
    order = sorted(range(len(jobs)), key=lambda k: -len(jobs[k][1]))
    was_training = model.training
    model.eval()
    bar = _progress(len(jobs), "perplexity")
    try:
        with torch.inference_mode():
            for start in mine(range(0, len(order), batch_size)):
                chunk = [jobs[k] for k in order[start : start + batch_size]]
                ids, mask = pad_right([w[:-1] for _, w, _ in chunk], pad)
                logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
                for r, ((d, w, n_new), k) in enumerate(zip(chunk, order[start : start + batch_size])):
                    n_in = len(w) - 1
                    sl = logits[r, n_in - n_new : n_in].float().log_softmax(-1)
                    tgt = torch.tensor(w[n_in - n_new + 1 :], dtype=torch.long, device=sl.device)
                    assert sl.shape[0] == tgt.shape[0] == n_new, "logit slice does not line up with the targets"
                    nll[k] = -float(sl.gather(-1, tgt[:, None]).sum())
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    nll = merge(nll)
    return {"nll": nll, "weights": [float(j[2]) for j in jobs], "tokens": int(sum(n_pred)), "windows": len(jobs),
            "documents": len(documents), "max_length": L, "stride": S, "bos": bos}


def perplexity_score(raw: dict, name: str = "wikitext/ppl") -> Score:
    """The Score of :func:`perplexity` from :func:`perplexity_pass` (no model pass here)."""
    L, S, bos = raw["max_length"], raw["stride"], raw["bos"]
    proto = (f"token-level perplexity exp(sum NLL / sum predicted tokens) over {raw['documents']} documents, "
             f"raw text (no detokenisation), window {L} tokens, stride {S} "
             f"({'disjoint windows' if S == L else 'overlapping windows, only new tokens scored'}), "
             f"BOS {'prepended to each document (first token scored)' if bos else 'not added (first token of each document not scored)'}")
    return Score(name, proto + "; bootstrap items are the windows", raw["nll"], weights=raw["weights"],
                 aggregation="ppl", higher_is_better=False, unit="perplexity (tokenizer tokens)",
                 extra={"tokens": raw["tokens"], "windows": raw["windows"], "documents": raw["documents"]})


# ---------------------------------------------------------------------------------------------
# suite
# ---------------------------------------------------------------------------------------------


class RetentionResults(dict):
    """``{score name: Score}`` plus ``missing``: tasks skipped because their data was not found,
    and ``seconds``: wall time per task."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.missing: list[str] = []
        self.seconds: dict[str, float] = {}


def run_retention(model, tokenizer, tasks: Iterable[str] | None = None, limit: int | dict | None = None,
                  batch_size: int = 16, add_bos: bool | None = None, paths: dict | None = None,
                  ppl_max_length: int | None = None) -> RetentionResults:
    """Load and run each task. ``tasks=None`` runs :data:`DEFAULT_TASKS` and skips (listing in
    ``.missing``) those whose data is not found; explicitly named tasks raise instead.
    ``limit``: one int for every task, a dict per task, or None for :data:`DEFAULT_LIMITS`
    (wikitext's limit counts documents). ``paths``: optional explicit file per task."""
    explicit = tasks is not None
    names = list(tasks) if explicit else list(DEFAULT_TASKS)
    unknown = [t for t in names if t != "wikitext" and t not in MC_TASKS]
    if unknown:
        raise TrusteditError(f"unknown retention task(s) {unknown}; known: wikitext, {', '.join(MC_TASKS)}")
    paths = paths or {}
    out = RetentionResults()
    for t in names:
        lim = DEFAULT_LIMITS.get(t) if limit is None else (limit.get(t, DEFAULT_LIMITS.get(t)) if isinstance(limit, dict) else limit)
        try:
            data = load_wikitext(lim, paths.get(t)) if t == "wikitext" else load_mc(t, lim, paths.get(t))
        except TrusteditError as e:
            if explicit or "not found" not in str(e):
                raise
            out.missing.append(t)
            continue
        t0 = time.perf_counter()
        if t == "wikitext":
            out["wikitext/ppl"] = perplexity(model, tokenizer, data, max_length=ppl_max_length,
                                             batch_size=max(1, batch_size // 4), add_bos=add_bos)
        else:
            for s in multiple_choice(model, tokenizer, data, batch_size=batch_size, task=t, add_bos=add_bos).values():
                out[s.name] = s
        out.seconds[t] = round(time.perf_counter() - t0, 3)
    return out
