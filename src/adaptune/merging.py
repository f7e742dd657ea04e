"""The merges of :mod:`adaptune.combine` on plain tensors: task arithmetic, TIES, DARE, and the truncated SVD
that writes a full delta back as low-rank factors. Every merge takes ``n`` deltas of one shape ``(out, in)`` and
one weight each, and gives one ``(out, in)`` delta; the papers and formulas are in :mod:`adaptune.combine`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: n deltas of one shape ``(out, in)``.
Deltas = Sequence[torch.Tensor]


# --- merges of full deltas: each takes n deltas of one shape (out, in) and gives one (out, in) ---------------------


def task_arithmetic(deltas: Deltas, weights: Sequence[float]) -> torch.Tensor:
    """``Σ_i w_i ΔW_i`` (Ilharco et al. 2023)."""
    return sum((w * d for w, d in zip(weights, deltas, strict=True)), torch.zeros_like(deltas[0]))


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim: keep the ``int(density * numel)`` entries of largest magnitude, zero the others (as peft's
    ``magnitude_based_pruning``); same shape as ``delta``."""
    flat = delta.reshape(-1)
    kept = torch.zeros_like(flat)
    k = int(density * flat.numel())
    if k > 0:
        top = flat.abs().topk(k).indices
        kept[top] = flat[top]
    return kept.view_as(delta)


def elect_sign(stacked: torch.Tensor) -> torch.Tensor:
    """TIES' sign election: ``(n, ...) -> (...)``, each entry ``+1`` where the sum over the ``n`` inputs is
    ``>= 0``, else ``-1`` (peft's ``total`` method)."""
    return torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0).to(stacked.dtype)


def disjoint_mean(weighted: torch.Tensor, stacked: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """TIES' disjoint merge: per entry, the mean of ``weighted`` ``(n, ...)`` over the inputs whose value in
    ``stacked`` ``(n, ...)`` has the elected ``sign`` ``(...)``; 0 where none has (zeros agree with no sign)."""
    agree = stacked.sign() == sign
    return (weighted * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)


def _weights_like(weights: Sequence[float], stacked: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(weights), dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))


def ties(deltas: Deltas, weights: Sequence[float], density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023): trim each delta, elect signs on the trimmed deltas, disjoint mean of the
    weighted trimmed deltas."""
    trimmed = torch.stack([trim(d, density) for d in deltas])
    return disjoint_mean(trimmed * _weights_like(weights, trimmed), trimmed, elect_sign(trimmed))


def dare_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2024): keep each entry where ``torch.rand(shape, generator) < density`` and rescale it by
    ``1 / density`` (so the expectation is ``delta``), zero the others; same shape as ``delta``."""
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def dare_linear(deltas: Deltas, weights: Sequence[float], density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE on each delta, then the weighted sum."""
    return task_arithmetic([dare_drop(d, density, generator) for d in deltas], weights)


def dare_ties(deltas: Deltas, weights: Sequence[float], density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE on each delta, then TIES' sign election and disjoint mean (in place of TIES' trim)."""
    dropped = torch.stack([dare_drop(d, density, generator) for d in deltas])
    return disjoint_mean(dropped * _weights_like(weights, dropped), dropped, elect_sign(dropped))


# --- low-rank factors ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Factors:
    """A written update ``B A`` with scaling 1: ``a`` ``(r, in)``, ``b`` ``(out, r)``; DoRA: ``magnitude``
    ``(out,)``. ``error``: relative Frobenius error of the refactoring (0 when exact)."""

    a: torch.Tensor
    b: torch.Tensor
    magnitude: torch.Tensor | None = None
    error: float = 0.0


def svd_factors(delta: torch.Tensor, rank: int) -> Factors:
    """Truncated SVD ``ΔW (out, in) ≈ U_r S_r V_r^T`` as ``B = U_r S_r^(1/2)`` ``(out, r)`` and
    ``A = S_r^(1/2) V_r^T`` ``(r, in)``, zero-padded to ``rank`` beyond ``min(out, in)``. The best rank-``r``
    approximation (Eckart-Young); ``error = sqrt(Σ_{k>r} σ_k²) / sqrt(Σ_k σ_k²)``."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    a = delta.new_zeros(rank, delta.shape[1])
    b = delta.new_zeros(delta.shape[0], rank)
    a[:k] = root[:, None] * vh[:k]
    b[:, :k] = u[:, :k] * root
    total = float(s.square().sum())
    return Factors(a, b, error=math.sqrt(float(s[k:].square().sum()) / total) if total > 0 else 0.0)
