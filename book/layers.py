"""The Transformer's layers — taught in chapter 07, assembled into the full model in chapter 08.

* ``layer_norm`` / ``LayerNorm``, ``position_wise_ffn`` / ``FeedForward``: the two new pieces.
* ``EncoderLayer`` and ``DecoderLayer``: attention and the FFN, each inside a residual connection
  with a LayerNorm, post-LN (``norm_first=False``, the 2017 paper) or pre-LN (``norm_first=True``).
  Each keeps the attention weights of its last forward pass (``self_attn_weights``,
  ``cross_attn_weights``) so they can be drawn.
* ``LayerOptions``: what later model families change — the FFN's activation (ReLU, GELU, SwiGLU:
  ``GatedFeedForward``), the norm (``LayerNorm`` or ``RMSNorm``) and its eps, biases, grouped-query
  attention; a ``rotary`` hook (``book.positional.RotaryEmbedding``), an additive ``score_bias`` and
  a ``KVCache`` pass through the layers to ``MultiHeadAttention``.
* ``TokenEmbedding`` (×√d_model) and ``tie_weights`` for the output projection.
* Masks in the convention of chapter 04 (bool, True = may attend): ``key_padding_mask``,
  ``decoder_self_mask``, ``make_masks``; ``torch_attn_mask`` converts to PyTorch's convention.

Parameter names line up with PyTorch's after ``book.convert.TORCH``'s renaming, so
``book.convert.copy_from_torch`` loads ``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer``
or a whole ``nn.Transformer`` into modules built from these layers.

Linear maps follow ``torch.nn.functional.linear``: y = x Wᵀ + b, with W of shape (out, in).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from book.attention import causal_mask
from book.multihead import MultiHeadAttention


# ----------------------------------------------------------------------------- what differs between model families
ACTIVATIONS = {"relu": torch.relu, "gelu": F.gelu, "gelu_tanh": partial(F.gelu, approximate="tanh")}


@dataclass(frozen=True)
class LayerOptions:
    """The choices that differ between Transformer families; the defaults are the 2017 paper's.

    activation: the FFN's non-linearity — "relu", "gelu" (exact), "gelu_tanh" (its tanh
    approximation, GPT-2) or "swiglu" (a gated FFN with three matrices, LLaMA);
    norm: "layer" (LayerNorm) or "rms" (RMSNorm), with ``norm_eps`` inside the square root;
    bias: biases in the attention projections and the FFN;
    n_kv_heads: fewer key/value heads than query heads (grouped-query attention); None = num_heads.
    """

    activation: str = "relu"
    norm: str = "layer"
    norm_eps: float = 1e-5
    bias: bool = True
    n_kv_heads: int | None = None

    def __post_init__(self):
        if self.activation not in (*ACTIVATIONS, "swiglu"):
            raise ValueError(f"activation must be one of {[*ACTIVATIONS, 'swiglu']}, got {self.activation!r}")
        if self.norm not in ("layer", "rms"):
            raise ValueError(f"norm must be 'layer' or 'rms', got {self.norm!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")


# ----------------------------------------------------------------------------- LayerNorm and RMSNorm
def layer_norm(x, gamma, beta, eps=1e-5):
    """Normalise each vector over its last dimension to mean 0, variance 1, then scale and shift.

    x: (..., d)   gamma, beta: (d,)   returns (..., d); equal to F.layer_norm(x, (d,), gamma, beta, eps)
    """
    if gamma.shape != x.shape[-1:] or beta.shape != x.shape[-1:]:
        raise ValueError(f"gamma and beta must have shape {tuple(x.shape[-1:])}, "
                         f"got {tuple(gamma.shape)} and {tuple(beta.shape)}")
    mean = x.mean(dim=-1, keepdim=True)  # (..., 1)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # (..., 1) biased: divide by d, not d - 1
    x_hat = (x - mean) / torch.sqrt(var + eps)  # (..., d) eps inside the square root
    return gamma * x_hat + beta  # (..., d)


class LayerNorm(nn.Module):
    """layer_norm with learned gamma (``weight``) and beta (``bias``), named as in nn.LayerNorm."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))  # gamma: starts as "no scaling"
        self.bias = nn.Parameter(torch.zeros(d_model))  # beta: starts as "no shift"

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)  # (..., d_model)


class RMSNorm(nn.Module):
    """x / √(mean(x²) + eps) · weight: LayerNorm without the mean and the shift (T5, LLaMA).

    Equal to torch.nn.RMSNorm(d_model, eps=eps).
    """

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return x / rms * self.weight  # (..., d_model)


def make_norm(d_model: int, options: LayerOptions) -> nn.Module:
    return (LayerNorm if options.norm == "layer" else RMSNorm)(d_model, eps=options.norm_eps)


# ----------------------------------------------------------------------------- position-wise feed-forward network
def position_wise_ffn(x, w1, b1, w2, b2):
    """FFN(x) = max(0, x W1ᵀ + b1) W2ᵀ + b2, applied to every position on its own.

    x: (..., d_model)   w1: (d_ff, d_model)   b1: (d_ff,)   w2: (d_model, d_ff)   b2: (d_model,)
    """
    hidden = torch.relu(F.linear(x, w1, b1))  # (..., d_ff): widen, then ReLU
    return F.linear(hidden, w2, b2)  # (..., d_model): back to the model width


class FeedForward(nn.Module):
    """position_wise_ffn as a module (names as in nn.TransformerEncoderLayer: linear1, linear2),
    with ReLU or another activation of ``ACTIVATIONS``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu", bias: bool = True):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)  # weight (d_ff, d_model)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)  # weight (d_model, d_ff)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        hidden = self.dropout(self.activation(self.linear1(x)))  # (..., d_ff)
        return self.linear2(hidden)  # (..., d_model)


class GatedFeedForward(nn.Module):
    """SwiGLU (Shazeer 2020; LLaMA): linear2(silu(gate(x)) ⊙ linear1(x)) — three matrices, the gate
    decides feature by feature how much of linear1's output passes."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=bias)  # weight (d_ff, d_model)
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)  # weight (d_ff, d_model)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)  # weight (d_model, d_ff)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        hidden = self.dropout(F.silu(self.gate(x)) * self.linear1(x))  # (..., d_ff)
        return self.linear2(hidden)  # (..., d_model)


def make_ffn(d_model: int, d_ff: int, dropout: float, options: LayerOptions) -> nn.Module:
    if options.activation == "swiglu":
        return GatedFeedForward(d_model, d_ff, dropout, options.bias)
    return FeedForward(d_model, d_ff, dropout, options.activation, options.bias)


# ----------------------------------------------------------------------------- encoder and decoder layers
def _check_layer_args(d_model, num_heads, d_ff, dropout):
    for name, value in (("d_model", d_model), ("num_heads", num_heads), ("d_ff", d_ff)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class EncoderLayer(nn.Module):
    """Self-attention, then a position-wise FFN; each inside a residual connection with a LayerNorm.

    post-LN (norm_first=False, the 2017 paper, torch's default):  x = LN(x + Sublayer(x))
    pre-LN  (norm_first=True):                                    x = x + Sublayer(LN(x))
    ``options`` picks activation, norm, biases and key/value heads; ``rotary`` a RotaryEmbedding.
    With a causal mask this is also the block of a decoder-only model (GPT, LLaMA).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 options: LayerOptions = LayerOptions(), rotary: nn.Module | None = None):
        super().__init__()
        _check_layer_args(d_model, num_heads, d_ff, dropout)
        self.norm_first, self.rotary = norm_first, rotary
        self.self_attn = MultiHeadAttention(d_model, num_heads, options.bias, options.n_kv_heads)
        self.ffn = make_ffn(d_model, d_ff, dropout, options)
        self.norm1, self.norm2 = make_norm(d_model, options), make_norm(d_model, options)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.self_attn_weights = None  # (B, h, T, T) of the last forward pass, for pictures

    def forward(self, x, mask=None, *, score_bias=None, cache=None):
        """x: (B, T, d_model); mask: bool, True = may attend, broadcastable to (B, h, T, T).

        score_bias: added to the attention scores (ALiBi, T5); cache: a KVCache (decoding).
        """
        if self.norm_first:  # pre-LN
            x = x + self._self_attention(self.norm1(x), mask, score_bias, cache)  # (B, T, d_model)
            return x + self.dropout2(self.ffn(self.norm2(x)))  # (B, T, d_model)
        x = self.norm1(x + self._self_attention(x, mask, score_bias, cache))  # post-LN, (B, T, d_model)
        return self.norm2(x + self.dropout2(self.ffn(x)))  # (B, T, d_model)

    def _self_attention(self, x, mask, score_bias=None, cache=None):
        out, weights = self.self_attn(x, x, mask, score_bias=score_bias, rotary=self.rotary, cache=cache)
        self.self_attn_weights = weights.detach()  # (B, h, T, T)
        return self.dropout1(out)  # (B, T, d_model)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder's memory, then a position-wise FFN.

    Each of the three sublayers sits inside a residual connection with a LayerNorm (post-LN or
    pre-LN, as in EncoderLayer). Cross-attention: queries from the decoder, keys and values from
    the memory. ``options`` and ``rotary`` as in EncoderLayer (rotary turns self-attention only).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float = 0.0, norm_first: bool = False,
                 options: LayerOptions = LayerOptions(), rotary: nn.Module | None = None):
        super().__init__()
        _check_layer_args(d_model, num_heads, d_ff, dropout)
        self.norm_first, self.rotary = norm_first, rotary
        self.self_attn = MultiHeadAttention(d_model, num_heads, options.bias, options.n_kv_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, options.bias, options.n_kv_heads)
        self.ffn = make_ffn(d_model, d_ff, dropout, options)
        self.norm1, self.norm2, self.norm3 = (make_norm(d_model, options) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.self_attn_weights = None  # (B, h, T, T) of the last forward pass
        self.cross_attn_weights = None  # (B, h, T, S) of the last forward pass

    def forward(self, x, memory, self_mask=None, cross_mask=None, *, score_bias=None, cache=None):
        """x: (B, T, d_model) decoder side; memory: (B, S, d_model) the encoder's output.

        self_mask: broadcastable to (B, h, T, T), usually padding & causal (decoder_self_mask);
        cross_mask: broadcastable to (B, h, T, S), usually the source padding (key_padding_mask);
        score_bias: added to the self-attention scores (T5's relative bias);
        cache: a KVCache of the self-attention, for incremental decoding (x holds the new tokens only).
        """
        if self.norm_first:  # pre-LN
            x = x + self._self_attention(self.norm1(x), self_mask, score_bias, cache)  # (B, T, d_model)
            x = x + self._cross_attention(self.norm2(x), memory, cross_mask)  # (B, T, d_model)
            return x + self.dropout3(self.ffn(self.norm3(x)))  # (B, T, d_model)
        x = self.norm1(x + self._self_attention(x, self_mask, score_bias, cache))  # post-LN, (B, T, d_model)
        x = self.norm2(x + self._cross_attention(x, memory, cross_mask))  # (B, T, d_model)
        return self.norm3(x + self.dropout3(self.ffn(x)))  # (B, T, d_model)

    def _self_attention(self, x, mask, score_bias=None, cache=None):
        out, weights = self.self_attn(x, x, mask, score_bias=score_bias, rotary=self.rotary, cache=cache)
        self.self_attn_weights = weights.detach()  # (B, h, T, T)
        return self.dropout1(out)  # (B, T, d_model)

    def _cross_attention(self, x, memory, mask):
        out, weights = self.cross_attn(x, memory, mask)  # (B, T, d_model), (B, h, T, S)
        self.cross_attn_weights = weights.detach()
        return self.dropout2(out)


# ----------------------------------------------------------------------------- embeddings and the output projection
class TokenEmbedding(nn.Module):
    """Token ids (B, T) -> vectors (B, T, d_model), multiplied by √d_model as in the paper.

    The table starts with entries of spread 1/√d_model (the scale of an output projection it may be
    tied to), so after the ×√d_model the vectors have entries of order 1, like a positional encoding.
    """

    def __init__(self, vocab_size: int, d_model: int, padding_idx: int | None = None):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)
        if padding_idx is not None:
            with torch.no_grad():
                self.embedding.weight[padding_idx].zero_()

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight  # (vocab_size, d_model)

    def forward(self, tokens):
        if tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"token ids must be an integer tensor, got {tokens.dtype}")
        return self.embedding(tokens) * math.sqrt(self.d_model)  # (B, T, d_model)


def tie_weights(output_projection: nn.Linear, embedding) -> None:
    """Make the output projection use the embedding table itself: one (vocab, d_model) matrix, not two."""
    table = embedding.weight  # TokenEmbedding or nn.Embedding: (vocab_size, d_model)
    if output_projection.weight.shape != table.shape:
        raise ValueError(f"cannot tie: the output projection's weight has shape "
                         f"{tuple(output_projection.weight.shape)}, the embedding {tuple(table.shape)}")
    output_projection.weight = table  # the same Parameter: one set of numbers, two uses


# ----------------------------------------------------------------------------- masks (True = may attend)
def key_padding_mask(is_real):
    """(B, T_k) bool, True at real tokens -> (B, 1, 1, T_k): every head and every query skips padding."""
    return is_real[:, None, None, :]  # (B, 1, 1, T_k)


def decoder_self_mask(is_real):
    """(B, T) bool, True at real tokens -> (B, 1, T, T): a key must be real AND not in the future."""
    T = is_real.size(-1)
    return key_padding_mask(is_real) & causal_mask(T, device=is_real.device)  # (B, 1, T, T)


def make_masks(src, tgt, pad_id: int):
    """Token ids src (B, S) and tgt (B, T) -> the three masks of an encoder–decoder.

    returns encoder self-attention (B, 1, 1, S), decoder self-attention (B, 1, T, T),
    cross-attention (B, 1, 1, S)
    """
    src_mask = key_padding_mask(src != pad_id)  # (B, 1, 1, S)
    return src_mask, decoder_self_mask(tgt != pad_id), src_mask


def torch_attn_mask(mask, batch: int, num_heads: int, t_q: int, t_k: int):
    """The book's mask (True = may attend, broadcastable to (B, h, T_q, T_k)) in PyTorch's form for
    nn.MultiheadAttention / nn.Transformer*: (B·h, T_q, T_k) bool with True = blocked."""
    full = torch.broadcast_to(mask, (batch, num_heads, t_q, t_k))  # (B, h, T_q, T_k)
    return ~full.reshape(batch * num_heads, t_q, t_k)  # (B·h, T_q, T_k)
