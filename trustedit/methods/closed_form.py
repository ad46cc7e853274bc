"""The closed-form weight updates of the locate-then-edit editors, as pure functions of matrices.

A layer's MLP output projection ``W`` (``d_out x d_in``, the orientation of ``torch.nn.Linear``)
is read as a linear associative memory: it maps a *key* ``k`` (the projection's input, one
intermediate activation vector) to a *value* ``v = W k`` that is added to the residual stream. An
edit asks new keys to map to new values while every other key keeps its value. ``C`` is the
(uncentred) second moment of the keys the model meets in ordinary text, ``E[k kᵀ]``, estimated on
WikiText-2 by the editors (see their files).

* :func:`rome_update`: Meng et al. 2022 (ROME), eq. 2: the rank-one update
  ``ΔW = Λ (C⁻¹k*)ᵀ`` with ``Λ = (v* − W k*) / ((C⁻¹k*)ᵀ k*)``. It makes ``W' k* = v*`` exactly and
  moves other keys ``k`` by ``Λ (C⁻¹k*)ᵀ k``, which is small when ``k`` is decorrelated from ``k*``
  under ``C``. ``C = I`` gives the plain minimum-norm rank-one update.
* :func:`memit_update`: Meng et al. 2023 (MEMIT), eq. 14: for a batch of keys ``K`` (columns) with
  residuals ``R = V − W K``, ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹``: the least-squares compromise between the
  new associations and the ``λ``-weighted old ones. :func:`spread_residual` divides a batch's total
  residual over the remaining layers (MEMIT's ``r / (L − l + 1)``).
* :func:`null_space_projector` and :func:`alphaedit_update`: Fang et al. 2025 (AlphaEdit, ICLR
  2025): ``P = Û Ûᵀ`` spans the eigenvectors of the preserved keys' second moment whose eigenvalues
  are below a threshold (the directions preserved knowledge does not use), and the update
  ``Δ = R K₁ᵀ P (K_p K_pᵀ P + K₁ K₁ᵀ P + αI)⁻¹`` is applied as ``ΔP`` (paper eq. 13), so that
  ``(ΔP) k₀ ≈ 0`` for every preserved key ``k₀``. ``K_p K_pᵀ`` accumulates the keys of earlier
  edits in sequential editing (:class:`EditedKeys`).

Every solve runs in float64 (the matrices are ``d_in x d_in``, 1,536 for the embedded model; a
7B model's 11,008 or 14,336 still fit) and the result is cast back to ``W``'s dtype. None of the
functions changes its arguments.
"""

from __future__ import annotations

import torch


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float64)


def _check(name: str, x: torch.Tensor):
    if not torch.isfinite(x).all():
        from trustedit.errors import NumericalError

        raise NumericalError(f"{name} holds NaN or infinite values: no update was computed")


def second_moment(keys: torch.Tensor) -> torch.Tensor:
    """``E[k kᵀ]`` of the rows of ``keys`` (``n x d``): the uncentred second moment the editors use."""
    k = _f64(keys)
    return k.T @ k / k.shape[0]


def rome_factors(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor | None = None):
    """ROME's update as its two factors ``(Λ, u)`` (float64), ``ΔW = Λ uᵀ`` with ``u = C⁻¹k*``
    (``k*`` itself when ``C`` is None) and ``Λ = (v* − W k*) / (uᵀ k*)``."""
    for name, x in (("W", W), ("key", k), ("value", v)) + ((("C", C),) if C is not None else ()):
        _check(name, x)
    W64, k64, v64 = _f64(W), _f64(k).reshape(-1), _f64(v).reshape(-1)
    u = k64 if C is None else torch.linalg.solve(_f64(C), k64)  # C⁻¹ k*
    denom = u @ k64
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        from trustedit.errors import NumericalError

        raise NumericalError("ROME: (C⁻¹k*)ᵀk* is zero: the key is null (or C singular along it); no update")
    return (v64 - W64 @ k64) / denom, u


def rome_update(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor | None = None) -> torch.Tensor:
    """ROME's rank-one ``ΔW`` (``W``'s shape) that maps key ``k`` (``d_in``) to value ``v``
    (``d_out``); ``C`` (``d_in x d_in``) the keys' second moment, None for the identity."""
    lam, u = rome_factors(W, k, v, C)
    return torch.outer(lam, u).to(W.dtype)


def memit_update(W: torch.Tensor, K: torch.Tensor, R: torch.Tensor, C: torch.Tensor, lam: float) -> torch.Tensor:
    """MEMIT's ``ΔW = R Kᵀ (λC + K Kᵀ)⁻¹`` for keys ``K`` (``d_in x n``, one column per edit) and
    residuals ``R`` (``d_out x n``, the values still missing at this layer)."""
    for name, x in (("W", W), ("keys", K), ("residuals", R), ("C", C)):
        _check(name, x)
    K64, R64 = _f64(K), _f64(R)
    A = lam * _f64(C) + K64 @ K64.T
    # ΔW = R Kᵀ A⁻¹  <=>  A ΔWᵀ = K Rᵀ (A symmetric)
    return torch.linalg.solve(A, K64 @ R64.T).T.to(W.dtype)


def spread_residual(R: torch.Tensor, layer_position: int, n_layers: int) -> torch.Tensor:
    """MEMIT's share of the residual for the ``layer_position``-th (0-based) of ``n_layers`` edited
    layers: ``R / (n_layers − layer_position)``, so that the last layer closes what is left."""
    if not 0 <= layer_position < n_layers:
        raise ValueError(f"layer position {layer_position} outside 0..{n_layers - 1}")
    return R / (n_layers - layer_position)


def null_space_projector(C0: torch.Tensor, threshold: float = 1e-2) -> torch.Tensor:
    """AlphaEdit's ``P = Û Ûᵀ``: ``Û`` the eigenvectors of the preserved keys' second moment ``C0``
    whose eigenvalues are below ``threshold`` (the paper's 1e-2, on ``E[k kᵀ]``)."""
    _check("C0", C0)
    evals, evecs = torch.linalg.eigh(_f64(C0))
    U = evecs[:, evals < threshold]
    return U @ U.T


def alphaedit_update(W: torch.Tensor, K: torch.Tensor, R: torch.Tensor, P: torch.Tensor,
                     previous: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
    """AlphaEdit's projected update ``Δ P`` with ``Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + αI)⁻¹``;
    ``previous`` is ``K_p K_pᵀ`` of the keys edited before (None: the first batch)."""
    for name, x in (("W", W), ("keys", K), ("residuals", R), ("P", P)):
        _check(name, x)
    K64, R64, P64 = _f64(K), _f64(R), _f64(P)
    d = K64.shape[0]
    S = K64 @ K64.T if previous is None else _f64(previous) + K64 @ K64.T
    M = S @ P64 + alpha * torch.eye(d, dtype=torch.float64)
    # Δ = R Kᵀ P M⁻¹  <=>  Mᵀ Δᵀ = (R Kᵀ P)ᵀ = P K Rᵀ
    delta = torch.linalg.solve(M.T, P64 @ K64 @ R64.T).T
    return (delta @ P64).to(W.dtype)


class EditedKeys:
    """``K_p K_pᵀ`` over the batches of a sequential run (AlphaEdit's memory of earlier edits)."""

    def __init__(self, d: int):
        self.S = torch.zeros(d, d, dtype=torch.float64)
        self.n = 0

    def add(self, K: torch.Tensor):
        K64 = _f64(K)
        self.S += K64 @ K64.T
        self.n += K64.shape[1]

    def matrix(self) -> torch.Tensor | None:
        return self.S if self.n else None
