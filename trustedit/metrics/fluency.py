"""Fluency as in KnowEdit/ROME: weighted bi-/tri-gram entropy of generated text.

``ngram_entropy(text) = sum_n w_n * H_n / sum_n w_n`` with n in (2, 3) and weights (2/3, 4/3),
H_n the entropy (base 2) of the n-gram frequency distribution of the text's word tokens. This
is EasyEdit's ``n_gram_entropy`` (from ROME). Deviation: we tokenise with a regex word splitter
instead of NLTK's ``word_tokenize`` (no NLTK data download), which differs only on rare punctuation
cases. The text is *not* lower-cased, as in ROME and EasyEdit (trustedit lower-cased it before
2026-11; ``lowercase=True`` is that variant).
"""

from __future__ import annotations

import math
import re
from collections import Counter

from trustedit.metrics.scores import Score

_WORD = re.compile(r"\w+|[^\w\s]")
PROTOCOL = ("KnowEdit fluency: weighted bi/tri-gram entropy (weights 2/3, 4/3, base 2, regex word tokens) "
            "of greedy continuations, {max_new} new tokens; prompt format {fmt}")


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3), lowercase: bool = False) -> float:
    toks = _WORD.findall(text.lower() if lowercase else text)
    hs = []
    for n in ns:
        grams = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        total = sum(grams.values())
        hs.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * h for w, h in zip(weights, hs)) / sum(weights)


def fluency(generations, protocol: str) -> Score:
    return Score("fluency_ngram_entropy", protocol, [ngram_entropy(g) for g in generations], unit="bits")


def continuation_nll(model, prompts: list[list[int]], continuations: list[list[int]], pad_id: int = 0,
                     batch_size: int = 32, desc: str = "continuation perplexity"):
    """Per continuation ``(sum of token NLL, token count)`` under ``model`` given its prompt
    (teacher-forced). Empty continuations give ``(0.0, 0)``."""
    import torch
    from tqdm.auto import tqdm

    from trustedit.prompts import pad_right

    device = next(model.parameters()).device
    out = [(0.0, 0)] * len(prompts)
    order = [i for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(continuations[i]))
             if continuations[i]]
    with torch.inference_mode():
        for s in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[s: s + batch_size]
            seqs = [list(prompts[i]) + list(continuations[i]) for i in idx]
            ids, mask = pad_right(seqs, pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tgt = ids[:, 1:].to(device)
            tok_lp = logp.gather(-1, tgt[..., None]).squeeze(-1)
            for r, i in enumerate(idx):
                a, n = len(prompts[i]), len(continuations[i])
                out[i] = (float(-tok_lp[r, a - 1: a - 1 + n].sum()), n)
    return out


def perplexity_score(nll_counts, per_prompt: int, protocol: str) -> Score:
    """Continuation perplexity ``exp(sum NLL / sum tokens)`` pooled over every continuation. Items
    are prompts (each the sum over its ``per_prompt`` continuations), so before/after comparisons
    resample the same prompts."""
    rows = [nll_counts[i: i + per_prompt] for i in range(0, len(nll_counts), per_prompt)]
    return Score("continuation_ppl", protocol, [sum(s for s, _ in r) for r in rows],
                 weights=[sum(n for _, n in r) for r in rows], aggregation="ppl", higher_is_better=False, unit="perplexity")
