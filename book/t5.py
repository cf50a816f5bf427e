"""T5's relative position bias — chapter 10 (text-to-text models).

T5 adds no position vectors to its tokens. Instead each attention score gets a learned number
that depends only on how far the key is from the query, b[h, bucket(j - i)], one table per model
shared by all its layers. Near distances get a bucket each; far ones share log-spaced buckets,
so the model tells "next word" from "two words on" exactly, and "50 words away" from "100" only
roughly — and any distance beyond ``max_distance`` looks the same, at any sequence length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from book.attention import causal_mask
from book.layers import (DecoderLayer, EncoderLayer, LayerOptions, decoder_self_mask, key_padding_mask, make_norm,
                         tie_weights)
from book.multihead import KVCache


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


# ----------------------------------------------------------------------------- a small T5
@dataclass(frozen=True)
class T5Config:
    """A text-to-text encoder–decoder in T5's style; the sizes are the book's, not T5-small's."""

    vocab_size: int
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 256
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    num_buckets: int = 32
    max_distance: int = 64
    dropout: float = 0.0
    pad_id: int = 0


class T5(nn.Module):
    """Token ids in, next-token logits out, with no position vectors anywhere.

    T5's choices on the book's layers: pre-LN with RMSNorm, no biases, one embedding table for
    source, target and output; a relative position bias computed once per stack and added to the
    self-attention scores of every layer of that stack (cross-attention has none).
    """

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        options = LayerOptions(norm="rms", norm_eps=1e-6, bias=False)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.encoder_bias = RelativePositionBias(cfg.num_heads, True, cfg.num_buckets, cfg.max_distance)
        self.decoder_bias = RelativePositionBias(cfg.num_heads, False, cfg.num_buckets, cfg.max_distance)
        layer_args = (cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*layer_args, norm_first=True, options=options)
                                     for _ in range(cfg.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*layer_args, norm_first=True, options=options)
                                     for _ in range(cfg.num_decoder_layers))
        self.encoder_norm, self.decoder_norm = make_norm(cfg.d_model, options), make_norm(cfg.d_model, options)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)
        tie_weights(self.head, self.embed)

    def encode(self, src):
        """src (B, S) -> memory: the encoder output (B, S, d_model) and the source mask (B, 1, 1, S)."""
        src_mask = key_padding_mask(src != self.cfg.pad_id)  # (B, 1, 1, S)
        bias = self.encoder_bias(src.size(1), src.size(1))  # (h, S, S): one table, every layer
        x = self.embed(src)  # (B, S, d_model): no positions added
        for layer in self.encoder:
            x = layer(x, src_mask, score_bias=bias)
        return self.encoder_norm(x), src_mask

    def decode(self, tgt, memory, cache=None):
        """tgt (B, T) starting with <bos>, memory from encode() -> logits (B, T, V); ``cache`` as in GPT."""
        states, src_mask = memory
        start = cache[0].length if cache else 0  # tokens already in the cache
        T = tgt.size(1)
        if cache:
            self_mask = causal_mask(start + T, device=tgt.device)[start:]  # (T, start + T)
        else:
            self_mask = decoder_self_mask(tgt != self.cfg.pad_id)  # (B, 1, T, T): padding & causal
        bias = self.decoder_bias(T, start + T, start)  # (h, T, start + T)
        y = self.embed(tgt)  # (B, T, d_model)
        for i, layer in enumerate(self.decoder):
            y = layer(y, states, self_mask, src_mask, score_bias=bias, cache=cache[i] if cache else None)
        return self.head(self.decoder_norm(y) * self.cfg.d_model**-0.5)  # (B, T, V): tied, rescaled

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src))  # (B, T, V)

    def new_cache(self) -> list[KVCache]:
        """One empty KVCache per decoder layer, for ``decode(..., cache=...)``."""
        return [KVCache() for _ in self.decoder]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
