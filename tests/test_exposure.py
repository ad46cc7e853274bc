"""Exposure (Carlini et al. 2019): the exact digit-wise beam against brute force, the skew-normal
estimate against the exact value, and the model-backed helpers against plain full forwards."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from trustedit.data.privacy import SecretTokens
from trustedit.metrics.exposure import (candidate_nlls, digit_token_ids, exact_rank, exposure,
                                        make_children_logprobs, skewnorm_exposure)


# ---- synthetic digit trees --------------------------------------------------------------------


def synthetic_tree(n: int, seed: int = 0, spread: float = 2.0, mass: float = 0.6):
    """A ``children_logprobs`` over n-digit strings: the next digit's distribution depends on the
    position and the previous digit (a random but fixed table); the ten digits share only ``mass`` of
    the probability (like digit tokens in a full vocabulary), so they sum to < 1."""
    rng = random.Random(seed)
    table = {}
    for pos in range(n):
        for prev in range(11):  # 10 = no previous digit
            z = [rng.gauss(0, spread) for _ in range(10)]
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            table[pos, prev] = [v - lse + math.log(mass) for v in z]
    calls = []

    def children(prefixes):
        calls.append(len(prefixes))
        return [list(table[len(p), p[-1] if p else 10]) for p in prefixes]

    def total(cand):
        t = 0.0
        for i, d in enumerate(cand):
            t += table[i, cand[i - 1] if i else 10][d]
        return t

    return children, total, calls


def brute_rank(totals: dict, secret) -> int:
    t = totals[secret]
    return 1 + sum(1 for c, v in totals.items() if v > t)


def all_totals(n, total):
    return {c: total(c) for c in itertools.product(range(10), repeat=n)}


def test_exact_rank_equals_brute_force_on_three_digits():
    children, total, calls = synthetic_tree(3, seed=1)
    totals = all_totals(3, total)
    ordered = sorted(totals, key=lambda c: -totals[c])
    for secret in (ordered[0], ordered[1], ordered[499], ordered[730], ordered[-1]):
        r = exact_rank(children, "".join(map(str, secret)))
        want = brute_rank(totals, secret)
        assert r["exact"] and r["rank"] == want == r["rank_lower_bound"] == r["rank_upper_bound"]
        assert r["space"] == 1000
        assert r["logprob"] == pytest.approx(totals[secret])
        assert r["exposure"] == pytest.approx(math.log2(1000) - math.log2(want))
    # the best candidate prunes nearly everything; the worst expands the whole tree (1 + 10 + 100)
    assert exact_rank(children, ordered[0])["nodes"] < 30
    assert exact_rank(children, ordered[-1])["nodes"] == 111
    assert exact_rank(children, ordered[-1])["rank"] == 1000
    assert exact_rank(children, ordered[0])["exposure"] == pytest.approx(math.log2(1000))


def test_exact_rank_budget_gives_bounds_not_a_rank():
    children, total, _ = synthetic_tree(4, seed=2)
    totals = all_totals(4, total)
    ordered = sorted(totals, key=lambda c: -totals[c])
    secret = ordered[6000]
    want = brute_rank(totals, secret)
    full = exact_rank(children, secret)
    assert full["exact"] and full["rank"] == want
    for budget in (0, 5, 50, 300, full["nodes"] - 1):
        r = exact_rank(children, secret, node_budget=budget)
        assert not r["exact"] and r["rank"] is None
        assert 1 <= r["rank_lower_bound"] <= want <= r["rank_upper_bound"] <= 10_000
        assert r["exposure"] >= full["exposure"] - 1e-12 >= r["exposure_lower_bound"] - 2e-12
        assert r["nodes"] <= budget
    # with most of the tree in budget, the greedy dives find real candidates above the secret
    assert exact_rank(children, secret, node_budget=full["nodes"] - 1)["rank_lower_bound"] > 1
    # a budget exactly large enough is exact
    assert exact_rank(children, secret, node_budget=full["nodes"])["rank"] == want


def test_exact_rank_rejects_bad_input():
    children, _, _ = synthetic_tree(2)
    with pytest.raises(ValueError):
        exact_rank(children, "")
    with pytest.raises(ValueError):
        exact_rank(children, [3, 12])
    with pytest.raises(ValueError):
        exact_rank(lambda ps: [[0.0] * 9 for _ in ps], "12")


def test_skewnorm_agrees_with_exact_on_four_digits():
    children, total, _ = synthetic_tree(4, seed=3, spread=1.0)
    totals = all_totals(4, total)
    ordered = sorted(totals, key=lambda c: -totals[c])
    rng = random.Random(0)
    space = list(totals)
    sample = [-totals[rng.choice(space)] for _ in range(2000)]
    for k in (100, 300, 1000, 3000):  # secrets in the bulk: exact exposure 6.6 .. 1.7 bits
        secret = ordered[k]
        exact = exact_rank(children, secret)
        assert exact["exact"] and exact["rank"] == brute_rank(totals, secret)
        est = skewnorm_exposure(-totals[secret], sample)
        assert est["samples"] == 2000 and len(est["params"]) == 3
        assert abs(est["exposure"] - exact["exposure"]) < 1.0, (k, est, exact["exposure"])
    best = exact_rank(children, ordered[0])
    assert best["rank"] == 1 and best["exposure"] == pytest.approx(math.log2(10_000))


def test_skewnorm_tails_underflow_and_clip():
    rng = random.Random(0)
    sample = [rng.gauss(30.0, 2.0) for _ in range(500)]
    far = skewnorm_exposure(-50.0, sample)  # CDF underflows to 0 in linear space
    assert math.isfinite(far["exposure"]) and far["exposure"] > 100
    assert skewnorm_exposure(1e6, sample)["exposure"] == 0.0
    mid = skewnorm_exposure(30.0, sample)["exposure"]
    assert 0.5 < mid < 1.5  # about half the space ranks above the median
    with pytest.raises(ValueError):
        skewnorm_exposure(1.0, [1.0, 2.0])


def test_skewnorm_logcdf_in_the_far_tail():
    from scipy.stats import norm, skewnorm

    from trustedit.metrics.exposure import _skewnorm_logcdf

    assert skewnorm.logcdf(-50.0, 0.0, 30.0, 2.0) == -math.inf  # scipy: the log of an underflowed CDF
    assert _skewnorm_logcdf(-50.0, 0.0, 30.0, 2.0) == pytest.approx(norm.logcdf(-40.0), rel=1e-8)
    for a in (-3.0, 1.4, 5.0):
        for x in (25.0, 10.0, 0.0):  # where scipy is still finite, both agree (either side of the switch;
            want = skewnorm.logcdf(x, a, 28.0, 3.0)  # scipy loses ~1e-4 nats to cancellation far out)
            if math.isfinite(want):
                assert _skewnorm_logcdf(x, a, 28.0, 3.0) == pytest.approx(want, rel=1e-6, abs=1e-3)
        assert math.isfinite(_skewnorm_logcdf(-1000.0, a, 28.0, 3.0))


# ---- tokenizers ---------------------------------------------------------------------------------


def test_digit_token_ids(plain_tokenizer):
    from tokenizers import pre_tokenizers

    assert digit_token_ids(plain_tokenizer) is None  # word-level: "0123456789" is one (unknown) word
    tok = plain_tokenizer
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    ids = digit_token_ids(tok)
    assert ids == tok.convert_tokens_to_ids(list("0123456789"))


# ---- model-backed -------------------------------------------------------------------------------

PROMPT = "<s> Who wrote Hamlet ? the answer is"
DIGIT_WORDS = "Paris Berlin Rome Jupiter Saturn Mars Nile Amazon king queen".split()


def _ids(lm, text):
    return lm.tokenizer.convert_tokens_to_ids(text.split())


def _full_logprobs(lm, ids):
    import torch

    with torch.no_grad():
        return torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def test_children_logprobs_match_full_forward(tiny_llama):
    lm = tiny_llama
    prompt, digits = _ids(lm, PROMPT), _ids(lm, " ".join(DIGIT_WORDS))
    lm.model.train()
    children = make_children_logprobs(lm, prompt, digits, batch_size=3)
    prefixes = [(), (4,), (0, 9), (7, 7, 1), (2,), (9, 9)]
    got = children(prefixes)
    assert lm.model.training  # mode restored
    lm.model.eval()
    for p, row in zip(prefixes, got):
        full = _full_logprobs(lm, prompt + [digits[d] for d in p])[-1]
        assert row == pytest.approx([float(full[i]) for i in digits], abs=1e-5)
        assert sum(math.exp(v) for v in row) < 1  # full-vocabulary probabilities, not renormalised


def test_candidate_nlls_match_full_forward(tiny_llama):
    lm = tiny_llama
    prompt = _ids(lm, PROMPT)
    rng = random.Random(0)
    vocab = _ids(lm, " ".join(DIGIT_WORDS) + " the of 1 2 3")
    cands = [[rng.choice(vocab) for _ in range(rng.randint(1, 6))] for _ in range(9)] + [[]]
    got = candidate_nlls(lm, prompt, cands, batch_size=4)
    for c, v in zip(cands, got):
        if not c:
            assert v == 0.0
            continue
        lp = _full_logprobs(lm, prompt + c)
        want = -sum(float(lp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(c))
        assert v == pytest.approx(want, abs=1e-5)
    # a one-token prompt (no KV cache to keep) works the same way
    one = candidate_nlls(lm, prompt[:1], cands[:3])
    for c, v in zip(cands[:3], one):
        lp = _full_logprobs(lm, prompt[:1] + c)
        assert v == pytest.approx(-sum(float(lp[t, tok]) for t, tok in enumerate(c)), abs=1e-5)


def test_exact_rank_on_tiny_model_equals_brute_force(tiny_llama):
    lm = tiny_llama
    prompt, digits = _ids(lm, PROMPT), _ids(lm, " ".join(DIGIT_WORDS))
    space = list(itertools.product(range(10), repeat=3))
    nlls = dict(zip(space, candidate_nlls(lm, prompt, [[digits[d] for d in c] for c in space])))
    ordered = sorted(space, key=lambda c: nlls[c])
    children = make_children_logprobs(lm, prompt, digits)
    for secret in (ordered[0], ordered[123], ordered[640], ordered[-1]):
        r = exact_rank(children, secret)
        v = nlls[secret]
        lo = 1 + sum(1 for x in nlls.values() if x < v - 1e-4)  # float noise between the two paths
        hi = 1 + sum(1 for x in nlls.values() if x < v + 1e-4)
        assert r["exact"] and lo <= r["rank"] <= hi, (secret, r["rank"], lo, hi)
        assert -r["logprob"] == pytest.approx(v, abs=1e-4)
    assert exact_rank(children, ordered[0])["rank"] == 1


def test_exposure_on_tiny_model(tiny_llama):
    lm = tiny_llama
    prompt, digits = _ids(lm, PROMPT), _ids(lm, " ".join(DIGIT_WORDS))
    secret = [digits[d] for d in (3, 1, 4)]
    st = SecretTokens("canary-00", prompt, secret, prompt + secret, digit_wise=True)
    lm.model.train()
    r = exposure(lm, st, samples=200, seed=0, batch_size=64, digit_ids=digits)
    assert lm.model.training
    lm.model.eval()
    assert r["space"] == 1000 and not r["skipped"]
    assert r["nll"] == pytest.approx(candidate_nlls(lm, prompt, [secret])[0])
    direct = exact_rank(make_children_logprobs(lm, prompt, digits), "314")
    assert r["exact"]["exact"] and r["exact"]["rank"] == direct["rank"]
    assert -r["exact"]["logprob"] == pytest.approx(r["nll"], abs=1e-4)
    assert r["skewnorm"]["samples"] == 200 and r["skewnorm"]["exposure"] >= 0
    assert exposure(lm, st, samples=200, seed=0, batch_size=64, digit_ids=digits)["skewnorm"] == r["skewnorm"]
    # not digit-wise: both estimators are skipped with a reason; the secret's NLL is still there
    r2 = exposure(lm, SecretTokens("x", prompt, secret, prompt + secret, digit_wise=False), digit_ids=digits)
    assert r2["exact"] is None and r2["skewnorm"] is None and "digit-wise" in r2["skipped"]["exact"]
    assert r2["nll"] == pytest.approx(r["nll"])
    # the toy word-level tokenizer has no digit tokens: skipped as well
    r3 = exposure(lm, st)
    assert r3["exact"] is None and "digit" in r3["skipped"]["skewnorm"]


def test_module_imports_without_torch():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; import trustedit.metrics.exposure as e; "
            "print(e.exact_rank(lambda ps: [[-2.3] * 10 for _ in ps], '12')['rank'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
