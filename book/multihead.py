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
    """Multi-head attention as a module: the linear maps of multi_head_attention, learned.

    With the defaults it computes exactly ``multi_head_attention``. The options are the hooks that
    later models need (chapters 09–11 will load real checkpoints into this class):

    * ``bias=False``: projections without biases (LLaMA-style models);
    * ``n_kv_heads`` < ``num_heads``: grouped-query attention — only n_kv_heads key/value heads,
      each shared by num_heads / n_kv_heads query heads (n_kv_heads = 1: multi-query attention);
    * forward(..., score_bias=...): scores added before the softmax (ALiBi, T5's relative bias);
    * forward(..., rotary=...): a RotaryEmbedding that turns queries and keys (RoPE);
    * forward(..., cache=...): a KVCache, so incremental decoding computes keys and values of new
      tokens only.
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True, n_kv_heads: int | None = None):
        super().__init__()
        n_kv_heads = n_kv_heads or num_heads
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if num_heads % n_kv_heads:
            raise ValueError(f"num_heads={num_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.num_heads, self.n_kv_heads = num_heads, n_kv_heads
        d_kv = n_kv_heads * (d_model // num_heads)  # = d_model unless grouped-query
        self.w_q = nn.Linear(d_model, d_model, bias=bias)
        self.w_k = nn.Linear(d_model, d_kv, bias=bias)
        self.w_v = nn.Linear(d_model, d_kv, bias=bias)
        self.w_o = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, q_in, kv_in, mask=None, *, score_bias=None, rotary=None, cache=None):
        """(B, T_q, d_model), (B, T_k, d_model) -> (B, T_q, d_model), weights (B, h, T_q, T_k).

        With a cache, kv_in holds only the new tokens; the weights cover every token so far.
        """
        q = split_heads(self.w_q(q_in), self.num_heads)  # (B, h, T_q, d_k)
        k = split_heads(self.w_k(kv_in), self.n_kv_heads)  # (B, h_kv, T_k, d_k)
        v = split_heads(self.w_v(kv_in), self.n_kv_heads)  # (B, h_kv, T_k, d_k)
        if rotary is not None:
            start = cache.length if cache is not None else 0  # position of the first new token
            q, k = rotary(q, start), rotary(k, start)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, h_kv, T_past + T_k, d_k)
        group = self.num_heads // self.n_kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, h, T_k, d_k)
        out, weights = scaled_dot_product_attention(q, k, v, mask, score_bias)  # (B, h, T_q, d_k)
        return self.w_o(merge_heads(out)), weights  # (B, T_q, d_model), (B, h, T_q, T_k)


class KVCache:
    """The keys and values one attention layer has seen so far, for incremental decoding.

    Each decoding step appends the new tokens' keys and values (B, h_kv, T_new, d_k) and attends
    over all of them, instead of recomputing the whole prefix.
    """

    def __init__(self):
        self.k = self.v = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(-2)

    def append(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)  # (B, h_kv, T, d_k)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
        return self.k, self.v
