"""The maths of chapter 01 (linear algebra & probability), reused by later chapters.

``cosine_similarity_matrix``, ``logsumexp``, ``log_softmax``, ``cross_entropy``,
``kl_divergence``. The softmax itself lives in ``book.attention`` (chapter 04).
"""
from __future__ import annotations

import torch


def cosine_similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., N, d) -> (..., N, N): entry (i, j) is the cosine of the angle between rows i and j."""
    norms = x.norm(dim=-1, keepdim=True).clamp_min(eps)  # (..., N, 1); a zero row stays 0
    unit = x / norms  # (..., N, d) every row now has length 1
    return unit @ unit.transpose(-2, -1)  # (..., N, N): all dot products at once


def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """log Σ exp(x) along dim, without overflow: m + log Σ exp(x - m) with m the maximum.

    A slice that is all -inf (every option masked out) gives -inf, as torch.logsumexp does.
    """
    m = x.amax(dim=dim, keepdim=True)  # (..., 1, ...) the largest entry along dim
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # ±inf max: shift by 0 (-inf - -inf is NaN)
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))  # exp() of x - m <= 0
    return out if keepdim else out.squeeze(dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log softmax(x) along dim, as x - logsumexp(x): finite even for scores of size 1e4."""
    return x - logsumexp(x, dim=dim, keepdim=True)  # same shape as x


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log p(target): logits (..., C) unnormalised scores, targets (...) class indices."""
    log_p = log_softmax(logits, dim=-1)  # (..., C) log-probabilities
    picked = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...) log p(true class)
    return -picked.mean()  # a scalar


def kl_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(p ‖ q) = Σ p log(p / q) along dim for probability tensors; terms with p = 0 count 0."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim)  # xlogy(a, b) = a·log b; 0 if a = 0
