"""Fluency as in KnowEdit/ROME: weighted bi-/tri-gram entropy of generated text.

``ngram_entropy(text) = sum_n w_n * H_n / sum_n w_n`` with n in (2, 3) and weights (2/3, 4/3),
H_n the entropy (base 2) of the n-gram frequency distribution of the text's word tokens. This
is EasyEdit's ``n_gram_entropy``; we tokenise with a regex word splitter instead of NLTK's
``word_tokenize`` (no NLTK data download), which differs only on rare punctuation cases.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from trustedit.metrics.scores import Score

_WORD = re.compile(r"\w+|[^\w\s]")
PROTOCOL = ("KnowEdit fluency: weighted bi/tri-gram entropy (weights 2/3, 4/3, base 2, regex word tokens) "
            "of greedy continuations, {max_new} new tokens; prompt format {fmt}")


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    toks = _WORD.findall(text.lower())
    hs = []
    for n in ns:
        grams = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
        total = sum(grams.values())
        hs.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return sum(w * h for w, h in zip(weights, hs)) / sum(weights)


def fluency(generations, protocol: str) -> Score:
    return Score("fluency_ngram_entropy", protocol, [ngram_entropy(g) for g in generations])
