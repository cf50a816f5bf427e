"""Scaled dot-product attention and its masks — taught in chapter 04, reused by every later chapter.

Mask convention (the one of ``torch.nn.functional.scaled_dot_product_attention``): a boolean mask
where **True means "may attend"**. The functions below are shown, line for line, in
``chapters/04_self_attention.ipynb``; ``tests/test_single_source.py`` proves the two copies agree.
"""
from __future__ import annotations

import math

import torch


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax: subtracting the max leaves the result unchanged but keeps exp() finite."""
    x_max = x.amax(dim=dim, keepdim=True)  # (..., 1, ...) largest score along dim
    e = torch.exp(x - x_max)  # every exponent is <= 0, so e is in [0, 1]
    return e / e.sum(dim=dim, keepdim=True)


def scaled_dot_product_attention(q, k, v, mask=None, bias=None):
    """softmax(q kᵀ / √d_k + bias) v, with an optional boolean mask (True = may attend).

    q: (..., T_q, d_k)   k: (..., T_k, d_k)   v: (..., T_k, d_v)
    bias: optional scores added before the softmax, broadcastable to (..., T_q, T_k)
    returns output (..., T_q, d_v) and weights (..., T_q, T_k). A query whose mask allows no key at
    all gets weights 0 and output 0 (as torch's F.scaled_dot_product_attention), not NaN.
    """
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)
    if bias is not None:
        scores = scores + bias  # e.g. ALiBi's distance penalty (chapter 06)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # forbidden keys get weight exactly 0
    weights = softmax(scores, dim=-1)  # (..., T_q, T_k), each row sums to 1
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)  # a row with no allowed key: 0, not 0 / 0 = NaN
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)


def self_attention(x, w_q, w_k, w_v, mask=None):
    """Self-attention: queries, keys and values are three learned projections of the same x.

    x: (..., T, d_model)   w_q, w_k: (d_model, d_k)   w_v: (d_model, d_v)
    """
    q, k, v = x @ w_q, x @ w_k, x @ w_v  # (..., T, d_k), (..., T, d_k), (..., T, d_v)
    return scaled_dot_product_attention(q, k, v, mask)  # (..., T, d_v), (..., T, T)


def causal_mask(n: int, device=None) -> torch.Tensor:
    """(n, n) bool: position i may attend to positions 0..i (on and below the diagonal)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool: True at real tokens, False at padding. lengths: (B,) integer tensor."""
    positions = torch.arange(max_len, device=lengths.device)  # (max_len,)
    return positions[None, :] < lengths[:, None]  # (B, max_len)
