"""Chapter 14, project 1: is a Chinese review positive or negative?

* ``ClassifierConfig`` / ``CharClassifier``: a character-level Transformer encoder from the
  book's layers — ``TokenEmbedding`` (chapter 07), learned positions (chapter 06), pre-LN
  ``EncoderLayer``s with a padding mask, a final ``LayerNorm`` — reading a learned class token
  (chapter 12) in front of the characters;
* ``predict``: class probabilities for many reviews, in batches;
* ``bag_of_characters``: the baseline — which characters occur, and a logistic regression
  (scikit-learn);
* ``confusion``: the 2 × 2 table of (true, predicted) counts.

The chapter's figures of these are ``viz.confusion_heatmap`` and ``viz.character_attention_explorer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from book.layers import EncoderLayer, LayerNorm, LayerOptions, TokenEmbedding, key_padding_mask
from book.positional import LearnedPositionalEmbedding


@dataclass(frozen=True)
class ClassifierConfig:
    """A small character-level encoder; the defaults are chapter 14's model."""

    vocab_size: int
    pad_id: int = 1
    max_len: int = 128  # characters read, the class token not counted
    d_model: int = 64
    num_heads: int = 4
    d_ff: int = 128
    num_layers: int = 2
    num_classes: int = 2
    dropout: float = 0.1

    def __post_init__(self):
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is not an id of a {self.vocab_size}-token vocabulary")
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of num_heads {self.num_heads}")


class CharClassifier(nn.Module):
    """Characters -> a class token and the book's pre-LN encoder -> scores per class."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed = TokenEmbedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.positions = LearnedPositionalEmbedding(cfg.max_len + 1, d)  # + 1: the class token
        self.layers = nn.ModuleList(
            EncoderLayer(d, cfg.num_heads, cfg.d_ff, cfg.dropout, norm_first=True,
                         options=LayerOptions(activation="gelu")) for _ in range(cfg.num_layers))
        self.norm = LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_classes)

    def forward(self, ids):
        """ids (B, T) character ids, padded with pad_id, T <= max_len -> logits (B, num_classes)."""
        if ids.size(1) > self.cfg.max_len:
            raise ValueError(f"{ids.size(1)} characters > max_len={self.cfg.max_len}: cut the reviews first")
        x = self.embed(ids)  # (B, T, d)
        cls = self.cls_token.expand(ids.size(0), -1, -1)  # (B, 1, d)
        x = self.positions(torch.cat([cls, x], dim=1))  # (B, T + 1, d): class token first
        real = torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids != self.cfg.pad_id], dim=1)
        mask = key_padding_mask(real)  # (B, 1, 1, T + 1): nobody attends to padding
        for layer in self.layers:
            x = layer(x, mask)  # (B, T + 1, d)
        return self.head(self.norm(x[:, 0]))  # (B, num_classes): read the class token

    def attention_maps(self) -> torch.Tensor:
        """(num_layers, B, h, T + 1, T + 1): every head's weights from the last forward pass."""
        return torch.stack([layer.self_attn_weights for layer in self.layers])


@torch.no_grad()
def predict(model: nn.Module, ids: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, T) padded ids -> (N, num_classes) probabilities, in eval mode; in batches of reviews of
    similar length, each cut to its longest (the padding changes nothing: it is masked)."""
    model.eval()
    lengths = (ids != model.cfg.pad_id).sum(1)  # (N,)
    order = torch.argsort(lengths, stable=True)
    probs = torch.zeros(len(ids), model.cfg.num_classes, device=ids.device)
    for idx in torch.split(order, batch_size):
        T = max(1, int(lengths[idx].max()))
        probs[idx] = model(ids[idx, :T]).softmax(-1)  # (b, num_classes)
    return probs


def bag_of_characters(texts: Sequence[str], labels: Sequence[int], C: float = 1.0):
    """The baseline: which characters a review contains (0/1 each, order ignored), and a logistic
    regression on them. Returns a fitted scikit-learn pipeline (``.predict(texts)``)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(CountVectorizer(analyzer="char", lowercase=False, binary=True),
                         LogisticRegression(C=C, max_iter=2000))
    return pipe.fit(list(texts), list(labels))


def confusion(true: Sequence[int], predicted: Sequence[int], num_classes: int = 2) -> np.ndarray:
    """(num_classes, num_classes) counts: row = the true class, column = the predicted one."""
    table = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(table, (np.asarray(true, dtype=int), np.asarray(predicted, dtype=int)), 1)
    return table
