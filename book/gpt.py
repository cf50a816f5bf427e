"""A decoder-only language model (GPT) from the book's blocks — chapter 10.

The encoder layer of chapter 07 with a causal mask *is* a GPT block: every position attends to
itself and the positions before it, and the model learns to predict the next token. Pre-LN
blocks (as in GPT-2), learned positions or rotary ones, a final norm, and an output projection
tied to the token embedding. ``forward(ids, cache)`` takes a list of ``KVCache`` (one per layer,
from ``new_cache()``) for incremental decoding: it then feeds only the new tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from book.attention import causal_mask
from book.layers import EncoderLayer, LayerOptions, make_norm, tie_weights
from book.multihead import KVCache
from book.positional import RotaryEmbedding


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    max_len: int = 256  # the longest context (learned positions have one vector per position)
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    positions: str = "learned"  # "learned" (GPT-2) or "rope" (LLaMA)
    rope_base: float = 10000.0  # rotary positions' base: θ_i = base^(-2i/d_k) (SmolLM2: 100000)
    options: LayerOptions = field(default_factory=lambda: LayerOptions(activation="gelu"))
    tie_weights: bool = True

    def __post_init__(self):
        if self.positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', got {self.positions!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        rotary = RotaryEmbedding(cfg.rope_base) if cfg.positions == "rope" else None
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.dropout, norm_first=True,
                                                 options=cfg.options, rotary=rotary)
                                    for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg.d_model, cfg.options)  # pre-LN stacks end with one more norm
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        for table in (self.tokens, self.positions):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)  # small vectors: tied logits start near 0
        if cfg.tie_weights:
            tie_weights(self.head, self.tokens)

    def forward(self, ids, cache: list[KVCache] | None = None):
        """ids (B, T) -> logits (B, T, V). With ``cache``, ids are the tokens after those cached."""
        start = cache[0].length if cache else 0  # tokens already seen
        T = ids.size(1)
        if start + T > self.cfg.max_len:
            raise ValueError(f"context of {start + T} tokens is longer than max_len={self.cfg.max_len}")
        x = self.tokens(ids)  # (B, T, d_model)
        if self.positions is not None:
            x = x + self.positions(torch.arange(start, start + T, device=ids.device))
        x = self.dropout(x)
        mask = causal_mask(start + T, device=ids.device)[start:]  # (T, start + T): earlier tokens only
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, cache=cache[i] if cache else None)  # (B, T, d_model)
        return self.head(self.norm(x))  # (B, T, V)

    def new_cache(self) -> list[KVCache]:
        """One empty KVCache per layer, for ``forward(ids, cache)`` and ``decoding.generate``."""
        return [KVCache() for _ in self.layers]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
