"""Multi-head attention — taught in chapter 05, used by the encoder and decoder layers (ch. 07–08).

Linear maps follow ``torch.nn.functional.linear``: y = x Wᵀ + b, with W of shape (out, in).
The mask convention is chapter 04's: bool, True = may attend, broadcastable to (B, h, T_q, T_k).
Every function and the class below are shown, line for line, in
``chapters/05_multi_head_attention.ipynb``; tests check that the two copies agree.
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


def load_torch_mha(module: MultiHeadAttention, ref: nn.MultiheadAttention):
    """Copy the weights of PyTorch's nn.MultiheadAttention into our module; return it."""
    theirs = (ref.embed_dim, ref.num_heads, ref.in_proj_bias is None)
    mine = (module.w_q.in_features, module.num_heads, module.w_q.bias is None)
    if theirs != mine or not ref._qkv_same_embed_dim:
        raise ValueError(f"(d_model, num_heads, no bias) differ: {mine} vs {theirs}"
                         " (or PyTorch's kdim/vdim is not d_model)")
    layers = (module.w_q, module.w_k, module.w_v)
    with torch.no_grad():
        # in_proj_weight, (3·d_model, d_model), holds W_Q, W_K, W_V stacked on rows
        for layer, w in zip(layers, ref.in_proj_weight.chunk(3)):
            layer.weight.copy_(w)
        module.w_o.weight.copy_(ref.out_proj.weight)
        if ref.in_proj_bias is not None:
            for layer, b in zip(layers, ref.in_proj_bias.chunk(3)):
                layer.bias.copy_(b)
            module.w_o.bias.copy_(ref.out_proj.bias)
    return module
