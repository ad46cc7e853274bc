"""The closed forms of ROME, MEMIT and AlphaEdit on small random matrices (issue 14's tests)."""

from __future__ import annotations

import pytest
import torch

from trustedit.errors import NumericalError
from trustedit.methods.closed_form import (EditedKeys, alphaedit_update, memit_update, null_space_projector,
                                           rome_update, second_moment, spread_residual)

D_IN, D_OUT = 256, 64


def _setup(seed=0, correlated=False, n=4000):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D_OUT, D_IN, generator=g) / D_IN ** 0.5
    A = torch.eye(D_IN)
    if correlated:  # keys with a spread of variances along random directions (condition number ~100)
        Q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g))
        A = Q @ torch.diag(torch.logspace(-1, 1, D_IN)) @ Q.T
    keys = torch.randn(n, D_IN, generator=g) @ A  # ordinary text's keys, as rows
    return g, W, keys, second_moment(keys)


def _moved(dW, W, keys):
    """Mean relative change of the values of ``keys`` (rows)."""
    return ((keys @ dW.T).norm(dim=1) / (keys @ W.T).norm(dim=1)).mean().item()


def test_rome_maps_the_key_to_its_value_and_barely_moves_other_keys():
    g, W, keys, C = _setup()
    k = torch.randn(D_IN, generator=g)
    v = W @ k + torch.randn(D_OUT, generator=g) * (W @ k).norm() / D_OUT ** 0.5  # a new value, as far as W k
    for CC in (C, None):
        dW = rome_update(W, k, v, CC)
        sv = torch.linalg.svdvals(dW.double())
        assert sv[1] < 1e-5 * sv[0]  # rank one (up to float32 rounding)
        assert torch.allclose((W + dW) @ k, v, atol=1e-4, rtol=1e-4)
        assert _moved(dW, W, keys[:500]) < 0.1  # C well conditioned: other keys move by < 10 % of their value
    assert torch.equal(W, _setup()[1])  # arguments untouched


def test_rome_with_c_is_the_least_disturbing_update_under_c():
    """Among updates with W'k* = v*, ROME's minimises E||ΔW k||² = tr(ΔW C ΔWᵀ) over the keys of C;
    with correlated keys it beats the plain (C = I) rank-one update."""
    g, W, keys, C = _setup(1, correlated=True)
    k = keys[0] * 3
    v = torch.randn(D_OUT, generator=g)
    cost = lambda dW: torch.trace(dW.double() @ C @ dW.double().T).item()  # noqa: E731
    with_c, plain = rome_update(W, k, v, C), rome_update(W, k, v, None)
    assert torch.allclose((W + with_c) @ k, v, atol=1e-3, rtol=1e-3)
    assert cost(with_c) < 0.8 * cost(plain)
    # any other solution (ROME's plus a term that vanishes on k*) costs more
    z = torch.randn(D_OUT, D_IN, generator=g) * 1e-2
    z = z - torch.outer(z @ k, k) / (k @ k)
    assert cost(with_c + z) > cost(with_c)


def test_memit_batch_maps_keys_to_values_and_single_key_limit_is_rome():
    g, W, keys, C = _setup(2)
    K = torch.randn(D_IN, 10, generator=g)
    V = W @ K + torch.randn(D_OUT, 10, generator=g) * 0.5
    dW = memit_update(W, K, V - W @ K, C, lam=1.0)
    err = ((W + dW) @ K - V).norm() / (V - W @ K).norm()
    assert err < 0.02
    assert _moved(dW, W, keys[:500]) < 0.15
    # a larger λ keeps old keys closer and new keys farther
    dW_big = memit_update(W, K, V - W @ K, C, lam=1e3)
    assert _moved(dW_big, W, keys[:500]) < _moved(dW, W, keys[:500])
    assert ((W + dW_big) @ K - V).norm() > ((W + dW) @ K - V).norm()
    # one key, λ -> 0: MEMIT's update is ROME's (Sherman-Morrison)
    k, v = K[:, 0], V[:, 0]
    assert torch.allclose(memit_update(W, k[:, None], (v - W @ k)[:, None], C, lam=1e-8), rome_update(W, k, v, C),
                          atol=1e-5)


def test_spread_residual_closes_the_gap_over_the_layers():
    R = torch.ones(3, 2)
    left = R.clone()
    for i in range(4):  # as MEMIT: each layer takes its share of what is still missing
        left = left - spread_residual(left, i, 4)
    assert torch.allclose(left, torch.zeros_like(left))
    with pytest.raises(ValueError):
        spread_residual(R, 4, 4)


def _preserved(g, r=128, n=3000):
    B = torch.randn(D_IN, r, generator=g)
    return (B @ torch.randn(r, n, generator=g)).T / r ** 0.5  # keys in an r-dimensional subspace, as rows


def test_null_space_projector_is_an_orthogonal_projector_onto_unused_directions():
    g = torch.Generator().manual_seed(3)
    K0 = _preserved(g)
    C0 = second_moment(K0)
    P = null_space_projector(C0)
    assert torch.allclose(P, P.T) and torch.allclose(P @ P, P, atol=1e-10)
    assert round(torch.trace(P).item()) == D_IN - 128
    assert (P @ C0).abs().max() < 1e-8 * C0.abs().max() * D_IN


def test_alphaedit_leaves_preserved_keys_unchanged_and_edits_new_ones():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(D_OUT, D_IN, generator=g) / D_IN ** 0.5
    K0 = _preserved(g)
    P = null_space_projector(second_moment(K0))
    K1 = torch.randn(D_IN, 10, generator=g)
    V1 = W @ K1 + torch.randn(D_OUT, 10, generator=g) * 0.5
    d = alphaedit_update(W, K1, V1 - W @ K1, P)
    alpha_moved = ((K0 @ d.T).norm() / (K0 @ W.T).norm()).item()
    assert alpha_moved < 1e-6  # preserved outputs unchanged
    assert (((W + d) @ K1 - V1).norm() / (V1 - W @ K1).norm()).item() < 0.05
    # MEMIT's update on the same edit, with the same keys as its C, moves them orders of magnitude more
    C0 = second_moment(K0)
    m = memit_update(W, K1, V1 - W @ K1, C0 + 1e-3 * torch.eye(D_IN, dtype=torch.float64), lam=1.0)
    assert ((K0 @ m.T).norm() / (K0 @ W.T).norm()).item() > 100 * alpha_moved


def test_alphaedit_sequential_keeps_earlier_edits_through_the_edited_keys_term():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(D_OUT, D_IN, generator=g) / D_IN ** 0.5
    P = null_space_projector(second_moment(_preserved(g)))
    batches = [torch.randn(D_IN, 10, generator=g) for _ in range(2)]
    values = [W @ K + torch.randn(D_OUT, 10, generator=g) * 0.5 for K in batches]

    def run(remember: bool):
        Wc, mem = W.clone(), EditedKeys(D_IN)
        for K, V in zip(batches, values):
            Wc = Wc + alphaedit_update(Wc, K, V - Wc @ K, P, previous=mem.matrix() if remember else None)
            mem.add(K)
        assert mem.n == 20
        return ((Wc @ batches[0] - values[0]).norm() / (values[0] - W @ batches[0]).norm()).item()

    assert run(True) < 0.5 * run(False)


def test_nan_input_is_refused_with_a_numerical_error():
    g, W, keys, C = _setup(6)
    k = torch.randn(D_IN, generator=g)
    bad = k.clone()
    bad[3] = float("nan")
    with pytest.raises(NumericalError, match="key holds NaN"):
        rome_update(W, bad, W @ k, C)
    with pytest.raises(NumericalError, match="null"):
        rome_update(W, torch.zeros(D_IN), W @ k, None)
