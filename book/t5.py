"""T5's relative position bias — chapter 10 (text-to-text models).

T5 adds no position vectors to its tokens. Instead each attention score gets a learned number
that depends only on how far the key is from the query, b[h, bucket(j - i)], one table per model
shared by all its layers. Near distances get a bucket each; far ones share log-spaced buckets,
so the model tells "next word" from "two words on" exactly, and "50 words away" from "100" only
roughly — and any distance beyond ``max_distance`` looks the same, at any sequence length.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def relative_position_bucket(relative_position, bidirectional: bool = True, num_buckets: int = 32,
                             max_distance: int = 128):
    """Key position minus query position (any integer tensor) -> T5's bucket ids, same shape.

    bidirectional (encoder): half the buckets for keys before the query, half for keys after.
    Otherwise (decoder) only keys at or before the query count; later ones land in bucket 0.
    In each half: distances 0 … n/2 - 1 get a bucket each, larger ones share log-spaced buckets
    up to ``max_distance``; farther keys all land in the last bucket.
    """
    buckets = torch.zeros_like(relative_position)
    n = relative_position
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (n > 0).long() * num_buckets  # keys after the query: the upper half
        n = n.abs()
    else:
        n = (-n).clamp(min=0)  # how far back the key is; keys ahead count as distance 0
    exact = num_buckets // 2  # distances below this get a bucket of their own
    log_ratio = torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(n < exact, n, far)


class RelativePositionBias(nn.Module):
    """A learned (num_buckets, h) table -> the (h, T_q, T_k) bias added to every layer's scores."""

    def __init__(self, num_heads: int, bidirectional: bool = True, num_buckets: int = 32,
                 max_distance: int = 128):
        super().__init__()
        self.bidirectional, self.num_buckets, self.max_distance = bidirectional, num_buckets, max_distance
        self.table = nn.Embedding(num_buckets, num_heads)

    def forward(self, t_q: int, t_k: int, start: int = 0):
        """Bias for queries at positions start … start + t_q - 1 and keys at 0 … t_k - 1."""
        device = self.table.weight.device
        q = torch.arange(start, start + t_q, device=device)[:, None]  # (T_q, 1)
        k = torch.arange(t_k, device=device)[None, :]  # (1, T_k)
        buckets = relative_position_bucket(k - q, self.bidirectional, self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1)  # (T_q, T_k, h) -> (h, T_q, T_k)
