"""Decoding a trained encoder–decoder — chapter 08: greedy search and beam search.

Both work with any model that has ``encode(src) -> memory`` and ``decode(tgt, memory) -> logits``
(B, T, V), as ``book.transformer.Transformer`` does. The memory is a tuple of tensors whose first
dimension is the batch.
"""
from __future__ import annotations

import torch


@torch.no_grad()
def greedy_decode(model, src, max_len: int, bos: int, eos: int, use_cache: bool = True):
    """Pick the most likely next token, max_len times or until every row has produced <eos>.

    src (B, S) -> (B, L) token ids starting with <bos>, L <= max_len + 1; a row that has finished is
    padded with <eos>. With ``use_cache`` (and a model that has ``new_cache()``), each step feeds
    only the newest token and reuses the keys and values of the others: the same tokens, less work.
    """
    memory = model.encode(src)
    cache = model.new_cache() if use_cache and hasattr(model, "new_cache") else None
    ys = torch.full((src.size(0), 1), bos, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)  # (B,)
    for _ in range(max_len):
        if cache is None:
            logits = model.decode(ys, memory)[:, -1]  # (B, V): the whole prefix again, keep the last
        else:
            logits = model.decode(ys[:, -1:], memory, cache)[:, -1]  # (B, V): only the newest token
        next_token = torch.where(done, eos, logits.argmax(dim=-1))  # (B,)
        ys = torch.cat([ys, next_token[:, None]], dim=1)  # (B, t + 1)
        done |= next_token == eos
        if done.all():
            break
    return ys


@torch.no_grad()
def beam_search(model, src, beam_size: int, max_len: int, bos: int, eos: int):
    """Keep the ``beam_size`` most likely prefixes at every step; return the most likely finished one.

    src (1, S) -> 1-D tensor <bos> ... <eos> (or the best unfinished prefix if none finished within
    max_len). A hypothesis' score is the sum of its tokens' log-probabilities. Since adding a token
    can only lower a score, the search stops once the best finished hypothesis beats every live one.
    """
    if src.size(0) != 1:
        raise ValueError(f"beam_search decodes one source at a time; got a batch of {src.size(0)}")
    memory = model.encode(src)
    beams = [(0.0, [bos])]  # (score, tokens)
    finished = []
    for _ in range(max_len):
        k = len(beams)
        ys = torch.tensor([tokens for _, tokens in beams], device=src.device)  # (k, t)
        mem = tuple(m.expand(k, *m.shape[1:]) for m in memory)  # the same source for every beam
        log_p = torch.log_softmax(model.decode(ys, mem)[:, -1], dim=-1)  # (k, V)
        top = log_p.topk(beam_size, dim=-1)  # the best continuations of each beam
        candidates = [(score + lp, tokens + [tok])
                      for (score, tokens), lps, toks in zip(beams, top.values.tolist(), top.indices.tolist())
                      for lp, tok in zip(lps, toks)]
        candidates.sort(key=lambda c: c[0], reverse=True)
        beams = []
        for score, tokens in candidates:
            (finished if tokens[-1] == eos else beams).append((score, tokens))
            if len(beams) == beam_size:
                break
        best_finished = max((s for s, _ in finished), default=float("-inf"))
        if not beams or best_finished >= beams[0][0]:
            break
    best = max(finished or beams, key=lambda c: c[0])
    return torch.tensor(best[1], device=src.device)
