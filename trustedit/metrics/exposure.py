"""Exposure of a secret (Carlini et al. 2019, "The Secret Sharer: Evaluating and Testing Unintended
Memorization in Neural Networks", USENIX Security, §4).

A secret ``s`` (a canary's random digits) is drawn from a randomness space ``R`` (all 10^n digit
strings of its length). Its rank is its 1-based position among every candidate ``r`` in ``R`` sorted
by the model's log-perplexity (NLL) of ``r`` after the prompt, lowest NLL first; ties go the secret's
way (``rank = 1 + #{r : NLL(r) < NLL(s)}``). Then

    exposure(s) = log2 |R| − log2 rank(s)

which is 0 when the secret is the least likely candidate and log2 |R| (33.2 bits for 10 digits) when it
is the most likely one. Two estimators:

* **exact (digit-wise beam)** — :func:`exact_rank`: when every secret token is one digit token, the
  candidates form a 10-ary tree of depth n. Log-probabilities only fall along a path, so every partial
  candidate whose log-prob is already at or below the secret's total ``T`` can be pruned: no completion
  of it can rank above the secret. A breadth-first expansion of the surviving partial candidates counts
  exactly the candidates ranked above the secret, at the cost of one model row per surviving node. It is
  exact only when the search finishes inside its node budget; otherwise it reports proven bounds.
* **skew-normal (Carlini et al. 2019, §4.3)** — :func:`skewnorm_exposure`: fit a skew-normal
  distribution to the NLLs of candidates drawn uniformly from ``R`` and read the secret's rank fraction
  off its CDF: ``exposure ≈ −log2 CDF(NLL(s))``.

Digit probabilities are the model's probabilities of the digit *tokens* over the full vocabulary
(not renormalised over the ten digits), as in the paper's log-perplexity.

The pure pieces (:func:`exact_rank`, :func:`skewnorm_exposure`) know nothing of models; the model-backed
helpers (:func:`make_children_logprobs`, :func:`candidate_nlls`, :func:`exposure`) compute the prompt's
KV cache once (:class:`trustedit.prompts.PrefixCache`) and run batched continuations on it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from typing import Callable, Sequence

LN2 = math.log(2.0)
EXACT = "exact (digit-wise beam)"
SKEWNORM = "skew-normal (Carlini et al. 2019, §4.3)"
DIGITS = "0123456789"
# Relative slack on the probability-mass rank upper bound (float error in log-probs summing to <= 1).
_MASS_SLACK = 1e-6

ChildrenLogprobs = Callable[[list], list]


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------


def digit_token_ids(tokenizer) -> list[int] | None:
    """The ids of the ten one-digit tokens "0".."9" as they occur inside a run of digits (index =
    digit), or None when the tokenizer does not split a digit run into one token per digit (e.g.
    GPT-2's BPE, which merges "555" into one token).

    Read off the tokenisation of "is 0123456789" (the last ten tokens), then checked: each id decodes
    to its digit alone, and two other runs ("is 9876543210", "is 5551234567") tokenise to exactly the
    same per-digit ids."""
    def tail(text: str, n: int = 10):
        try:
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception:  # noqa: BLE001 - a tokenizer that cannot encode this is not digit-wise
            return None
        return ids[-n:] if len(ids) >= n else None

    ids = tail("is " + DIGITS)
    if ids is None or len(set(ids)) != 10:
        return None
    for d, i in zip(DIGITS, ids):
        if tokenizer.decode([i]).strip() != d:
            return None
    for run in ("9876543210", "5551234567"):
        if tail("is " + run) != [ids[int(c)] for c in run]:
            return None
    return [int(i) for i in ids]


# ---------------------------------------------------------------------------------------------
# exact (digit-wise beam)
# ---------------------------------------------------------------------------------------------


def _digits(secret, alphabet_size: int) -> tuple[int, ...]:
    t = tuple(int(c) for c in secret)
    if not t:
        raise ValueError("exact_rank: an empty secret")
    if any(not 0 <= d < alphabet_size for d in t):
        raise ValueError(f"exact_rank: secret digits must lie in 0..{alphabet_size - 1}, got {secret!r}")
    return t


def _exposure(space: int, rank: int) -> float:
    return math.log2(space) - math.log2(rank)


def _mass_bound(lp: float, total: float, depth_left: int, alphabet_size: int) -> int:
    """At most how many completions of a partial candidate of log-prob ``lp`` (``depth_left`` digits
    still to come) have a log-prob above ``total``: their probabilities are each > exp(total) and sum
    to at most exp(lp) (the children's probabilities of any node sum to <= 1), so fewer than
    exp(lp − total) of them; and there are only ``alphabet_size ** depth_left`` completions."""
    log_cap = depth_left * math.log(alphabet_size)
    if lp - total >= log_cap:
        return alphabet_size ** depth_left
    return min(alphabet_size ** depth_left, math.floor(math.exp(lp - total) * (1 + _MASS_SLACK)))


def exact_rank(children_logprobs: ChildrenLogprobs, secret_digits, alphabet_size: int = 10,
               node_budget: int = 200_000, chunk: int = 4096) -> dict:
    """Rank and exposure of a secret by the **exact (digit-wise beam)** estimator (Carlini et al.
    2019's exposure, counted exactly over the whole randomness space ``alphabet_size ** n``).

    ``children_logprobs(prefixes)`` takes a list of partial candidates (tuples of digit indices,
    ``()`` included) and returns, for each, the ``alphabet_size`` log-probabilities of the next digit
    (each <= 0, their exponentials summing to <= 1: e.g. digit-token probabilities over a full
    vocabulary). ``secret_digits`` is a digit string ("5551234567") or a sequence of digit indices.

    Algorithm: ``T`` = the secret's total log-prob (``n`` rows for its own prefixes). Then a breadth-
    first, level-by-level expansion (in batches of ``chunk`` rows) that keeps only partial candidates
    whose log-prob is > ``T`` — log-probs never rise along a path, so a partial candidate at or below
    ``T`` cannot finish above it — and at the last level counts the leaves > ``T`` (the secret itself
    never counts, whatever float noise its re-computed total carries). ``rank = 1 + that count``.

    **The count is exact only if the search finishes.** Before each level the number of partial
    candidates to expand is checked against ``node_budget`` (``nodes`` counts the search's rows, not
    the ``n`` rows of the secret's path); when it would be exceeded the search stops, and the result has
    ``exact=False``, ``rank=None`` and two proven bounds instead:

    * ``rank_lower_bound`` = 1 + the leaves *verified* above ``T``: the budget left is spent on greedy
      dives from the most likely surviving partial candidates (each extended by its argmax child down
      to the last level, where all of its children above ``T`` are counted); distinct dives give
      distinct leaves, so every leaf counted is a real candidate ranked above the secret;
    * ``rank_upper_bound`` = 1 + the sum over the surviving partial candidates of the mass bound
      (:func:`_mass_bound`: fewer than exp(lp − T) completions of a node can each exceed exp(T)).

    ``exposure`` is then the **upper bound** log2|R| − log2 rank_lower_bound (``exposure_lower_bound``
    the other end). Returns ``{"estimator", "rank", "rank_lower_bound", "rank_upper_bound", "exact",
    "exposure", "exposure_lower_bound", "logprob" (T, nats), "nodes", "space"}``.
    """
    from tqdm.auto import tqdm

    secret = _digits(secret_digits, alphabet_size)
    n = len(secret)
    space = alphabet_size ** n

    def expand(prefixes):
        out = []
        for s in range(0, len(prefixes), chunk):
            rows = children_logprobs(prefixes[s: s + chunk])
            if len(rows) != len(prefixes[s: s + chunk]) or any(len(r) != alphabet_size for r in rows):
                raise ValueError(f"children_logprobs must return {alphabet_size} log-probs per prefix")
            out.extend(rows)
        return out

    path = expand([secret[:i] for i in range(n)])
    total = 0.0
    for i, d in enumerate(secret):  # the same left-to-right float sums as the search below
        total += float(path[i][d])

    frontier: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    nodes = 0
    above = 0  # leaves verified strictly above T
    stopped_at = None
    for depth in tqdm(range(n), desc="exposure beam", leave=False):
        if nodes + len(frontier) > node_budget:
            stopped_at = depth
            break
        rows = expand([p for p, _ in frontier])
        nodes += len(frontier)
        last = depth == n - 1
        nxt = []
        for (p, lp), row in zip(frontier, rows):
            for d, c in enumerate(row):
                v = lp + float(c)
                if v > total:
                    if not last:
                        nxt.append((p + (d,), v))
                    elif p + (d,) != secret:
                        above += 1
        frontier = nxt
        if not frontier:  # nothing can finish above T: the count so far is final
            break

    if stopped_at is None:  # the search finished: the count is exact
        rank = 1 + above
        e = _exposure(space, rank)
        return {"estimator": EXACT, "rank": rank, "rank_lower_bound": rank, "rank_upper_bound": rank, "exact": True,
                "exposure": e, "exposure_lower_bound": e, "logprob": total, "nodes": nodes, "space": space}

    # Budget exhausted before level `stopped_at`; `above` is 0 here (leaves are only counted at the last
    # level, which was never expanded). Upper bound from the probability mass of the surviving nodes.
    left = n - stopped_at
    upper = min(space - 1, sum(_mass_bound(lp, total, left, alphabet_size) for _, lp in frontier))
    # Lower bound: greedy dives with the budget left, most likely partial candidates first.
    dives = min(len(frontier), (node_budget - nodes) // left)
    live = sorted(frontier, key=lambda x: -x[1])[:dives]
    for step in range(left):
        if not live:
            break
        rows = expand([p for p, _ in live])
        nodes += len(live)
        if step == left - 1:
            above += sum(1 for (p, lp), row in zip(live, rows) for d, c in enumerate(row)
                         if lp + float(c) > total and p + (d,) != secret)
        else:  # each dive follows its most likely child; a dive that falls to T or below ends
            nxt = []
            for (p, lp), row in zip(live, rows):
                d = max(range(alphabet_size), key=lambda k: row[k])
                if lp + float(row[d]) > total:
                    nxt.append((p + (d,), lp + float(row[d])))
            live = nxt
    lower = 1 + above
    return {"estimator": EXACT, "rank": None, "rank_lower_bound": lower, "rank_upper_bound": 1 + upper,
            "exact": False, "exposure": _exposure(space, lower), "exposure_lower_bound": _exposure(space, 1 + upper),
            "logprob": total, "nodes": nodes, "space": space, "stopped_at_depth": stopped_at}


# ---------------------------------------------------------------------------------------------
# skew-normal (Carlini et al. 2019, §4.3)
# ---------------------------------------------------------------------------------------------


def skewnorm_exposure(secret_nll: float, sample_nlls: Sequence[float]) -> dict:
    """Exposure by the **skew-normal (Carlini et al. 2019, §4.3)** estimator: fit a skew-normal
    (``scipy.stats.skewnorm.fit``, maximum likelihood) to the NLLs of candidates drawn uniformly from the
    randomness space; the fraction of the space ranked at or above the secret is ≈ CDF(secret NLL), so

        exposure ≈ −log2 CDF(secret_nll)

    computed as ``−ln CDF / ln 2`` (the CDF of a well-memorised secret underflows to 0, and so does
    ``skewnorm.logcdf``, the log of that CDF: :func:`_skewnorm_logcdf` integrates in log space there) and
    clipped at >= 0. Returns ``{"estimator", "exposure", "params": (a, loc, scale), "samples": n}``; when the
    samples are all equal (no spread to fit) ``params`` is None and exposure is 0 (secret at or above
    them) or ``inf``."""
    import warnings

    import numpy as np
    from scipy.stats import skewnorm

    x = np.asarray(list(sample_nlls), dtype=np.float64)
    if x.size < 3 or not np.all(np.isfinite(x)):
        raise ValueError("skewnorm_exposure: need at least 3 finite sample NLLs")
    out = {"estimator": SKEWNORM, "samples": int(x.size)}
    if float(np.ptp(x)) == 0.0:
        return {**out, "exposure": 0.0 if secret_nll >= x[0] else math.inf, "params": None}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        a, loc, scale = skewnorm.fit(x)
        logcdf = _skewnorm_logcdf(float(secret_nll), float(a), float(loc), float(scale))
    e = max(0.0, -logcdf / LN2) if not math.isnan(logcdf) else math.nan
    return {**out, "exposure": e, "params": (float(a), float(loc), float(scale))}


def _skewnorm_logcdf(x: float, a: float, loc: float, scale: float) -> float:
    """ln CDF of a skew-normal, finite far into the left tail. ``scipy.stats.skewnorm.logcdf`` is the log
    of the CDF, which underflows to 0 (logcdf −inf) a few dozen standard deviations out — exactly where
    a memorised secret sits. There the CDF is computed as its integral in log space: with
    g(t) = ln 2 + ln φ(t) + ln Φ(a t) (the standardised density), ln F(z) = g(z) + ln ∫_{−∞}^{z}
    exp(g(t) − g(z)) dt; g is concave and increasing on the left tail, so the integrand is <= 1."""
    from scipy.integrate import quad
    from scipy.stats import norm, skewnorm

    lc = float(skewnorm.logcdf(x, a, loc, scale))
    if math.isfinite(lc) and lc > -30.0:
        return lc
    z = (x - loc) / scale

    def g(t):
        return LN2 + float(norm.logpdf(t)) + float(norm.logcdf(a * t))

    gz = g(z)
    integral, _ = quad(lambda t: math.exp(g(t) - gz), -math.inf, z, limit=200)
    return gz + math.log(integral) if integral > 0 else lc


# ---------------------------------------------------------------------------------------------
# model-backed helpers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval(model):
    """``model.eval()`` and no autograd for the block; the previous train/eval mode afterwards."""
    import torch

    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was)


@functools.lru_cache(maxsize=None)
def _takes_logits_to_keep(cls) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


class _Prompt:
    """A prompt's KV cache (all but its last token, :class:`~trustedit.prompts.PrefixCache`) and the
    forward of right-padded rows that continue it; each row starts with the prompt's last token, so
    a row's logits at position ``t`` predict its token ``t + 1`` (position 0: the first candidate token)."""

    def __init__(self, model, prompt_ids):
        from trustedit.prompts import PrefixCache

        prompt_ids = [int(i) for i in prompt_ids]
        if not prompt_ids:
            raise ValueError("exposure: an empty prompt (nothing predicts the first secret token)")
        self.model = model
        self.device = next(model.parameters()).device
        self.last = prompt_ids[-1]
        self.prefix = PrefixCache(model, prompt_ids[:-1]) if len(prompt_ids) > 1 else None

    def logits(self, tails: list[list[int]], last_only: bool = False):
        """Logits ``(b, width, V)`` (``(b, 1, V)`` at each row's last real position when ``last_only``
        and every row has the same length) for rows ``[prompt[-1]] + tail``, right-padded."""
        import torch

        from trustedit.prompts import cache_kwarg

        rows = [[self.last] + [int(t) for t in tail] for tail in tails]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.last, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            mask[j, : len(r)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        kw = {}
        if last_only and all(len(r) == width for r in rows) and _takes_logits_to_keep(type(self.model)):
            kw["logits_to_keep"] = 1
        if self.prefix is not None:
            b = len(rows)
            mask = torch.cat([torch.ones((b, len(self.prefix)), dtype=mask.dtype, device=self.device), mask], 1)
            kw.update(use_cache=True, **{cache_kwarg(self.model): self.prefix.expand(b)})
        logits = self.model(input_ids=ids, attention_mask=mask, **kw).logits
        if last_only and "logits_to_keep" not in kw:
            logits = logits[:, width - 1: width]
        return logits


def make_children_logprobs(lm, prompt_ids, digit_ids, batch_size: int = 256) -> ChildrenLogprobs:
    """The ``children_logprobs`` callable of :func:`exact_rank` for a model: given partial candidates
    (tuples of digit indices), the log-probabilities of the ten digit tokens ``digit_ids[0..9]`` after
    ``prompt_ids + [digit_ids[d] for d in prefix]`` — a log-softmax over the FULL vocabulary gathered at
    the digit ids (not renormalised over the digits, so the children's probabilities sum to <= 1).

    The prompt goes through the model once (its KV cache, when it has more than one token, is kept and
    copied per batch); each call then runs batches of ``batch_size`` rows grouped by prefix length.
    Each call runs in eval mode without autograd and restores the model's previous mode."""
    import torch

    model = lm.model
    digit_ids = [int(i) for i in digit_ids]
    with _eval(model):
        prompt = _Prompt(model, prompt_ids)
    index = torch.tensor(digit_ids, dtype=torch.long, device=prompt.device)

    def children_logprobs(prefixes):
        prefixes = [tuple(int(d) for d in p) for p in prefixes]
        out: list = [None] * len(prefixes)
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prefixes):
            by_len.setdefault(len(p), []).append(i)
        with _eval(model):
            for _, idx in sorted(by_len.items()):
                for s in range(0, len(idx), batch_size):
                    part = idx[s: s + batch_size]
                    logits = prompt.logits([[digit_ids[d] for d in prefixes[i]] for i in part], last_only=True)
                    lp = torch.log_softmax(logits[:, -1].float(), dim=-1).index_select(-1, index).cpu().tolist()
                    for i, row in zip(part, lp):
                        out[i] = row
        return out

    return children_logprobs


def candidate_nlls(lm, prompt_ids, candidates: Sequence[Sequence[int]], batch_size: int = 256,
                   desc: str = "candidate NLL") -> list[float]:
    """Teacher-forced total NLL (nats, summed over tokens) of each candidate token sequence right after
    ``prompt_ids`` — the log-perplexity by which Carlini et al. 2019 rank candidates. The prompt's KV
    cache is computed once and copied per batch; candidates of unequal lengths are right-padded (sorted
    by length to cut padding), and an empty candidate has NLL 0. Eval mode, no autograd; the model's
    previous mode is restored."""
    import torch
    from tqdm.auto import tqdm

    model = lm.model
    cands = [[int(t) for t in c] for c in candidates]
    out = [0.0] * len(cands)
    order = sorted((i for i in range(len(cands)) if cands[i]), key=lambda i: -len(cands[i]))
    with _eval(model):
        prompt = _Prompt(model, prompt_ids)
        for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            part = order[s: s + batch_size]
            logits = prompt.logits([cands[i][:-1] for i in part])
            logp = torch.log_softmax(logits.float(), dim=-1)
            width = logits.shape[1]
            tgt = torch.zeros((len(part), width), dtype=torch.long, device=logp.device)
            keep = torch.zeros((len(part), width), dtype=torch.bool, device=logp.device)
            for j, i in enumerate(part):
                tgt[j, : len(cands[i])] = torch.tensor(cands[i])
                keep[j, : len(cands[i])] = True
            nll = -(logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) * keep).sum(1)
            for j, i in enumerate(part):
                out[i] = float(nll[j])
    return out


def exposure(lm, st, samples: int = 1000, seed: int = 0, node_budget: int = 5_000, batch_size: int = 256,
             digit_ids: Sequence[int] | None = None) -> dict:
    """Carlini et al. 2019's exposure of one secret (:class:`trustedit.data.privacy.SecretTokens`) by
    both estimators: **exact (digit-wise beam)** (:func:`exact_rank`, ``node_budget`` partial
    candidates at most; beyond it an upper bound) and **skew-normal (Carlini et al. 2019, §4.3)**
    (:func:`skewnorm_exposure` over ``samples`` candidates drawn uniformly from the 10^n digit strings of
    the secret's length with ``random.Random(seed)``, mapped to tokens through ``digit_ids``).

    Cost on SmolLM2-135M (fp32, one CPU thread): ~30 ms per sample (1,000 ten-digit candidates: 30 s)
    and ~20-30 ms per beam node; an unmemorised 10-digit secret exhausts any affordable budget (its
    surviving partial candidates grow ~10x per digit), so its exact exposure is then an upper bound.

    ``digit_ids``: the ten digit tokens (default :func:`digit_token_ids` of the model's tokenizer). Both
    estimators need a digit-wise secret (``st.digit_wise``: one digit token per digit) and digit ids;
    otherwise each is None and ``skipped`` says why. Returns ``{"exact": dict | None, "skewnorm": dict |
    None, "nll": the secret's NLL (nats), "space": 10**n, "skipped": {estimator: reason}}``."""
    secret = [int(t) for t in st.secret_ids]
    nll = candidate_nlls(lm, st.prompt_ids, [secret], batch_size)[0]
    res = {"exact": None, "skewnorm": None, "nll": nll, "space": 10 ** len(secret), "skipped": {}}
    if digit_ids is None:
        digit_ids = digit_token_ids(lm.tokenizer)
    digit_ids = None if digit_ids is None else [int(i) for i in digit_ids]
    why = None
    if not st.digit_wise:
        why = "the secret is not digit-wise (its tokens are not one digit token per digit)"
    elif digit_ids is None or len(digit_ids) != 10:
        why = "the tokenizer does not split digit runs into one token per digit"
    elif any(t not in digit_ids for t in secret):
        why = "a secret token is not one of the ten digit tokens"
    if why is not None:
        res["skipped"] = {"exact": why, "skewnorm": why}
        return res
    digits = [digit_ids.index(t) for t in secret]
    res["exact"] = exact_rank(make_children_logprobs(lm, st.prompt_ids, digit_ids, batch_size), digits,
                              node_budget=node_budget)
    rng = random.Random(seed)
    cands = [[digit_ids[rng.randrange(10)] for _ in secret] for _ in range(samples)]
    res["skewnorm"] = skewnorm_exposure(nll, candidate_nlls(lm, st.prompt_ids, cands, batch_size,
                                                            desc="exposure samples"))
    return res
