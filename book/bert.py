"""BERT's pretraining objective, masked language modelling — chapter 10.

Pick ``p`` of the real tokens (15 % in BERT) as prediction targets. Of those, 80 % are replaced by
``[MASK]``, 10 % by a random token and 10 % are left as they are, so that the model cannot learn
that only ``[MASK]`` positions matter (Devlin et al., 2019). The loss is computed on the targets
only: every other position gets the label ``IGNORE`` (-100, which ``F.cross_entropy`` skips).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from book.layers import LayerNorm, tie_weights
from book.pretrained import BertConfig, BertEncoder

IGNORE = -100  # F.cross_entropy's default ignore_index


def mask_tokens(ids, mask_id: int, vocab_size: int, *, p: float = 0.15, special=None,
                generator: torch.Generator | None = None):
    """ids (B, T) -> (inputs, labels): the corrupted inputs and the targets (IGNORE elsewhere).

    ``special``: a bool tensor like ids, True where a token must never be chosen ([CLS], [SEP],
    padding). ``generator`` (on the ids' device) makes the draw reproducible.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    u = torch.rand(ids.shape, generator=generator, device=ids.device)  # which tokens are targets
    chosen = u < p
    if special is not None:
        chosen &= ~special
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    how = torch.rand(ids.shape, generator=generator, device=ids.device)  # what happens to a target
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, mask_id), ids)  # 80 %: [MASK]
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)  # 10 %: random
    return inputs, labels  # the other 10 % of targets keep their own token


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then scores over the vocabulary through the
    (tied) token-embedding table plus a bias of its own."""

    def __init__(self, cfg: BertConfig, embedding: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)
        tie_weights(self.decoder, embedding)  # the bias stays the head's own

    def forward(self, hidden):
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))  # (B, T, d_model) -> (B, T, V)


class BertForMaskedLM(nn.Module):
    """The encoder of chapter 09 (``BertEncoder``) with the masked-LM head: ids (B, T) -> logits (B, T, V)."""

    def __init__(self, cfg: BertConfig, dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.bert = BertEncoder(cfg, dropout)
        self.head = MaskedLMHead(cfg, self.bert.embeddings.tokens)
        for module in self.modules():  # BERT's initialisation for training from scratch: N(0, 0.02)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.head(self.bert(input_ids, attention_mask, token_type_ids))  # (B, T, V)


def masked_lm_loss(logits, labels):
    """Cross-entropy over the chosen positions only (labels IGNORE elsewhere)."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
