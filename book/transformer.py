"""The full encoder–decoder Transformer — assembled in chapter 08 from the code of chapters 04–07.

Nothing here is new machinery: the layers come from ``book.layers`` (ch. 07), attention from
``book.multihead`` / ``book.attention`` (ch. 04–05), positions from ``book.positional`` (ch. 06).
Parameter names (``encoder.layers.0.self_attn.w_q`` ...) line up with ``torch.nn.Transformer``, so
``book.convert.copy_from_torch`` loads its weights into ``model.encoder`` and ``model.decoder``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from book.attention import causal_mask
from book.layers import (DecoderLayer, EncoderLayer, LayerOptions, TokenEmbedding, decoder_self_mask,
                         key_padding_mask, make_norm, tie_weights)
from book.multihead import KVCache
from book.positional import LearnedPositionalEmbedding, RotaryEmbedding, sinusoidal_positional_encoding

POSITIONS = ("sinusoidal", "learned", "rope")


@dataclass
class TransformerConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 256
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2
    dropout: float = 0.0
    max_len: int = 64  # longest sequence the positional encoding covers
    norm_first: bool = False  # False: post-LN, as in the paper and nn.Transformer's default
    pad_id: int = 0
    tie_weights: bool = True  # the output projection reuses the target embedding table
    positions: str = "sinusoidal"  # added to the embeddings ("sinusoidal", "learned") or RoPE ("rope")
    layer: LayerOptions = field(default_factory=LayerOptions)  # activation, norm, biases, KV heads

    def __post_init__(self):
        if isinstance(self.layer, dict):  # read back from a checkpoint
            self.layer = LayerOptions(**self.layer)
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")


class Encoder(nn.Module):
    """A stack of encoder layers and a final LayerNorm (as nn.TransformerEncoder inside nn.Transformer)."""

    def __init__(self, cfg: TransformerConfig, rotary=None):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.dropout, cfg.norm_first,
                                                 cfg.layer, rotary) for _ in range(cfg.num_encoder_layers))
        self.norm = make_norm(cfg.d_model, cfg.layer)

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)  # (B, S, d_model)
        return self.norm(x)  # (B, S, d_model): the "memory"


class Decoder(nn.Module):
    """A stack of decoder layers and a final LayerNorm (as nn.TransformerDecoder inside nn.Transformer)."""

    def __init__(self, cfg: TransformerConfig, rotary=None):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.dropout, cfg.norm_first,
                                                 cfg.layer, rotary) for _ in range(cfg.num_decoder_layers))
        self.norm = make_norm(cfg.d_model, cfg.layer)

    def forward(self, x, memory, self_mask=None, cross_mask=None, cache=None):
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_mask, cross_mask, cache=cache[i] if cache else None)  # (B, T, d_model)
        return self.norm(x)  # (B, T, d_model)


class Transformer(nn.Module):
    """Token ids in, next-token logits out: embeddings + positions -> encoder -> decoder -> projection."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = TokenEmbedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.tgt_embed = TokenEmbedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("pe", sinusoidal_positional_encoding(cfg.max_len, cfg.d_model), persistent=False)
        self.learned_pe = LearnedPositionalEmbedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        rotary = RotaryEmbedding() if cfg.positions == "rope" else None  # turns queries and keys instead
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg, rotary)
        self.decoder = Decoder(cfg, rotary)
        self.generator = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.tie_weights:
            tie_weights(self.generator, self.tgt_embed)

    def embed(self, embedding: TokenEmbedding, tokens, start: int = 0):
        """Token ids (B, T) standing at positions start … start+T-1 -> vectors (B, T, d_model)."""
        T = tokens.size(1)
        if start + T > self.cfg.max_len:
            raise ValueError(f"sequence of length {start + T} is longer than max_len={self.cfg.max_len}")
        x = embedding(tokens)  # (B, T, d_model): token × √d_model
        if self.cfg.positions == "sinusoidal":
            x = x + self.pe[start:start + T]
        elif self.cfg.positions == "learned":
            x = x + self.learned_pe.table.weight[start:start + T]
        return self.dropout(x)  # (B, T, d_model)

    def encode(self, src):
        """src (B, S) -> memory: the encoder output (B, S, d_model) and the source mask (B, 1, 1, S)."""
        src_mask = key_padding_mask(src != self.cfg.pad_id)  # (B, 1, 1, S)
        return self.encoder(self.embed(self.src_embed, src), src_mask), src_mask

    def decode(self, tgt, memory, cache=None):
        """tgt (B, T) decoder input (starts with <bos>), memory from encode() -> logits (B, T, V).

        With ``cache`` (from new_cache()) tgt holds only the tokens not decoded yet; the cache keeps
        the keys and values of the others, so each step costs one position, not the whole prefix.
        """
        states, src_mask = memory
        start = cache[0].length if cache else 0  # tokens already in the cache
        if cache:  # no padding while decoding: each new token sees every earlier one
            self_mask = causal_mask(start + tgt.size(1), device=tgt.device)[start:]  # (T, start + T)
        else:
            self_mask = decoder_self_mask(tgt != self.cfg.pad_id)  # (B, 1, T, T): padding & causal
        y = self.embed(self.tgt_embed, tgt, start)  # (B, T, d_model)
        return self.generator(self.decoder(y, states, self_mask, src_mask, cache))  # (B, T, V)

    def new_cache(self) -> list[KVCache]:
        """One empty KVCache per decoder layer, for ``decode(..., cache=...)``."""
        return [KVCache() for _ in self.decoder.layers]

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src))  # (B, T, V)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once


def save_checkpoint(model: Transformer, path) -> None:
    """Weights and config in one file: enough to rebuild the model anywhere."""
    torch.save({"config": asdict(model.cfg), "state_dict": model.state_dict()}, path)


def load_checkpoint(path, map_location="cpu") -> Transformer:
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = Transformer(TransformerConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model


def attention_maps(model: Transformer) -> dict:
    """The attention weights of the model's last forward pass, per kind and layer.

    returns {"encoder self-attention": [(B, h, S, S) per layer], "decoder self-attention":
    [(B, h, T, T) ...], "cross-attention": [(B, h, T, S) ...]}
    """
    return {
        "encoder self-attention": [layer.self_attn_weights for layer in model.encoder.layers],
        "decoder self-attention": [layer.self_attn_weights for layer in model.decoder.layers],
        "cross-attention": [layer.cross_attn_weights for layer in model.decoder.layers],
    }
