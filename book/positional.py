"""Positional encodings — taught in chapter 06, used by the full Transformer (ch. 08) and later models.

* ``sinusoidal_positional_encoding``: the original Transformer's fixed table (sin at even, cos at odd
  feature indices), and ``offset_matrix``, the rotation that shifts it by k positions;
* ``SinusoidalPositionalEncoding`` / ``LearnedPositionalEmbedding``: modules that add a position
  vector to each token embedding, (B, T, d_model) -> (B, T, d_model);
* ``apply_rope``: rotary position embedding for queries and keys: pairs of features are rotated by
  the angle pos · base^(-2i/d). Two layouts: *neighbouring* features (x[..., 2i], x[..., 2i+1]),
  the RoFormer paper's and llama.cpp's, and Hugging Face's "rotate_half", which pairs i with i + d/2;
  ``RotaryEmbedding`` is the same as a hook that ``MultiHeadAttention`` calls;
* ``alibi_slopes`` / ``alibi_bias``: ALiBi's per-head distance penalty, added to attention scores.

Everything here is shown, line for line, in ``chapters/06_positional_encoding.ipynb``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_positional_encoding(max_len: int, d_model: int,
                                   base: float = 10000.0) -> torch.Tensor:
    """(max_len, d_model): PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(…)."""
    if d_model % 2:
        raise ValueError(f"d_model must be even, got {d_model}")
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d_model/2,): 0, 2, 4, ...
    angle = pos / base ** (two_i / d_model)  # (max_len, d_model/2)
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(angle)  # even features
    pe[:, 1::2] = torch.cos(angle)  # odd features
    return pe


def offset_matrix(k: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """(d_model, d_model) M with PE[pos + k] = M @ PE[pos] for every pos.

    M is block-diagonal: one 2×2 rotation by the angle k·ω_i for each pair of features.
    """
    if d_model % 2:
        raise ValueError(f"d_model must be even, got {d_model}")
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d_model/2,)
    phi = k / base ** (two_i / d_model)  # (d_model/2,): the angle each pair turns by
    c, s = torch.cos(phi), torch.sin(phi)
    e = torch.arange(0, d_model, 2)  # each pair's sin feature; its cos feature is e + 1
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    m[e, e], m[e, e + 1] = c, s  # sin(a + φ) = cos φ · sin a + sin φ · cos a
    m[e + 1, e], m[e + 1, e + 1] = -s, c  # cos(a + φ) = -sin φ · sin a + cos φ · cos a
    return m.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table: (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        pe = sinusoidal_positional_encoding(max_len, d_model)  # (max_len, d_model)
        self.register_buffer("pe", pe, persistent=False)  # moves with .to(device)

    def forward(self, x):
        T = x.size(-2)
        if T > self.pe.size(0):
            raise ValueError(f"sequence length {T} > max_len={self.pe.size(0)}")
        return x + self.pe[:T]  # (B, T, d_model) + (T, d_model)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a trained vector per position (BERT, GPT-2): (B, T, d_model) -> same shape."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)  # one learned row per position

    def forward(self, x):
        T = x.size(-2)
        if T > self.table.num_embeddings:
            raise ValueError(f"sequence length {T} > max_len={self.table.num_embeddings}: "
                             "a learned table has no row for those positions")
        positions = torch.arange(T, device=x.device)  # (T,)
        return x + self.table(positions)  # (B, T, d_model) + (T, d_model)


def apply_rope(x: torch.Tensor, positions, base: float = 10000.0, layout: str = "interleaved") -> torch.Tensor:
    """Rotary position embedding: turn each pair of features of x by pos · θ_i.

    x: (..., T, d) with d even.  θ_i = base^(-2i/d), the sinusoidal encoding's frequencies.
    positions: (T,) ints or floats, or any shape broadcastable to x.shape[:-1].
    layout: which features form pair i — "interleaved": (x[..., 2i], x[..., 2i+1]) (RoFormer,
    llama.cpp); "half": (x[..., i], x[..., i + d/2]) (Hugging Face's rotate_half).
    """
    d = x.size(-1)
    if d % 2:
        raise ValueError(f"the last dimension of x must be even, got {d}")
    if layout not in ("interleaved", "half"):
        raise ValueError(f"layout must be 'interleaved' or 'half', got {layout!r}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    two_i = torch.arange(0, d, 2, device=x.device, dtype=dtype)  # (d/2,)
    theta = base ** (-two_i / d)  # (d/2,)
    pos = torch.as_tensor(positions, device=x.device, dtype=dtype)
    angle = pos[..., None] * theta  # (..., T, d/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    if layout == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., T, d/2): the two coordinates of each pair
    else:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    y1 = x1 * cos - x2 * sin  # rotate every pair by its angle
    y2 = x1 * sin + x2 * cos
    if layout == "interleaved":
        return torch.stack([y1, y2], dim=-1).flatten(-2)  # (..., T, d): pairs interleaved again
    return torch.cat([y1, y2], dim=-1)  # (..., T, d)


class RotaryEmbedding(nn.Module):
    """RoPE as a hook for attention: ``rotary(x, start)`` rotates queries or keys x (B, h, T, d_k)
    as if they stood at positions start, start + 1, …, start + T - 1 (start > 0 when decoding with a cache)."""

    def __init__(self, base: float = 10000.0, layout: str = "interleaved"):
        super().__init__()
        if layout not in ("interleaved", "half"):
            raise ValueError(f"layout must be 'interleaved' or 'half', got {layout!r}")
        self.base, self.layout = base, layout

    def forward(self, x, start: int = 0):
        positions = torch.arange(start, start + x.size(-2), device=x.device)  # (T,)
        return apply_rope(x, positions, self.base, self.layout)  # (B, h, T, d_k)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """(h,) slopes 2^(-8/h), 2^(-16/h), …, 2^(-8) when h is a power of 2.

    Other h: the powers of 2 below h, then in-between slopes (the ALiBi paper's recipe).
    """
    def geometric(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    n = 2 ** math.floor(math.log2(num_heads))  # the largest power of 2 <= num_heads
    extra = geometric(2 * n)[0::2][: num_heads - n]  # the other heads: in-between slopes
    return torch.tensor(geometric(n) + extra)


def alibi_bias(num_heads: int, n: int, device=None) -> torch.Tensor:
    """(h, n, n) bias[h, i, j] = -m_h · |i - j|, added to the scores before the softmax."""
    pos = torch.arange(n, device=device)
    distance = (pos[:, None] - pos[None, :]).abs()  # (n, n): |i - j|
    return -alibi_slopes(num_heads).to(device)[:, None, None] * distance  # (h, n, n)
