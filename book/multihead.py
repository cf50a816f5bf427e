"""Multi-head attention — taught in chapter 05, used by the encoder and decoder layers (ch. 07–08).

Linear maps follow ``torch.nn.functional.linear``: y = x Wᵀ + b, with W of shape (out, in).
The mask convention is chapter 04's: bool, True = may attend, broadcastable to (B, h, T_q, T_k).
Every function and the class below are shown, line for line, in
``chapters/05_multi_head_attention.ipynb``; tests check that the two copies agree. Weights of
PyTorch's ``nn.MultiheadAttention`` load with ``book.convert.copy_from_torch``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from book.attention import scaled_dot_product_attention


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Cut the features into heads: (B, T, d_model) -> (B, h, T, d_k), d_k = d_model / h.

    Head 0 gets features 0 … d_k-1 of every token, head 1 the next d_k, and so on.
    """
    if x.dim() != 3:
        raise ValueError(f"split_heads expects (B, T, d_model), got {tuple(x.shape)}")
    B, T, d_model = x.shape
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    x = x.reshape(B, T, num_heads, d_model // num_heads)  # (B, T, h, d_k)
    return x.transpose(1, 2)  # (B, h, T, d_k): heads next to the batch axis


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Glue the heads back: (B, h, T, d_k) -> (B, T, h·d_k), the inverse of split_heads."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads expects (B, h, T, d_k), got {tuple(x.shape)}")
    B, h, T, d_k = x.shape
    x = x.transpose(1, 2)  # (B, T, h, d_k): tokens next to the batch axis
    return x.reshape(B, T, h * d_k)  # (B, T, d_model): copies (x is not contiguous)


def multi_head_attention(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o,
                         num_heads, mask=None):
    """Project, split into heads, attend in parallel, merge, project back.

    q_in: (B, T_q, d_model)   kv_in: (B, T_k, d_model)
    w_*: (d_model, d_model) in the nn.Linear layout   b_*: (d_model,) or None
    mask: bool, True = may attend, broadcastable to (B, h, T_q, T_k)
    returns output (B, T_q, d_model) and weights (B, h, T_q, T_k)
    """
    h = num_heads
    q = split_heads(F.linear(q_in, w_q, b_q), h)  # (B, h, T_q, d_k)
    k = split_heads(F.linear(kv_in, w_k, b_k), h)  # (B, h, T_k, d_k)
    v = split_heads(F.linear(kv_in, w_v, b_v), h)  # (B, h, T_k, d_k)
    out, weights = scaled_dot_product_attention(q, k, v, mask)  # out: (B, h, T_q, d_k)
    out = F.linear(merge_heads(out), w_o, b_o)  # (B, T_q, d_model)
    return out, weights  # weights: (B, h, T_q, T_k)


class MultiHeadAttention(nn.Module):
    """Multi-head attention as a module: four d_model × d_model linear maps."""

    def __init__(self, d_model: int, num_heads: int, bias: bool = True):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_model, bias=bias)
        self.w_v = nn.Linear(d_model, d_model, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, q_in, kv_in, mask=None):
        """(B, T_q, d_model), (B, T_k, d_model) -> (B, T_q, d_model), (B, h, T_q, T_k)."""
        return multi_head_attention(
            q_in, kv_in,
            self.w_q.weight, self.w_q.bias, self.w_k.weight, self.w_k.bias,
            self.w_v.weight, self.w_v.bias, self.w_o.weight, self.w_o.bias,
            self.num_heads, mask,
        )
