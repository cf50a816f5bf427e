"""Decoding — chapter 08: greedy search and beam search for an encoder–decoder; chapter 10:
sampling from a decoder-only model (``generate``, with temperature, top-k and top-p).

``greedy_decode`` and ``beam_search`` work with any model that has ``encode(src) -> memory`` and
``decode(tgt, memory) -> logits`` (B, T, V), as ``book.transformer.Transformer`` does (the memory
is a tuple of tensors whose first dimension is the batch). ``generate`` works with any model
called as ``model(ids) -> logits (B, T, V)`` — and, for ``use_cache``, ``model(ids, cache)`` with
``model.new_cache()`` — as ``book.gpt.GPT`` is.
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


# ----------------------------------------------------------------------------- sampling (chapter 10)
def top_k_filter(logits, k: int | None):
    """(..., V) -> the logits with all but the k largest set to -inf (ties with the k-th are kept)."""
    if k is None or k >= logits.size(-1):
        return logits
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    kth = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p: float | None):
    """(..., V) -> nucleus filtering: keep the most likely tokens whose probabilities add up to p.

    A token is kept if the tokens more likely than it add up to less than p, so the most likely
    token always stays; p = 1 keeps everything.
    """
    if p is None or p >= 1.0:
        return logits
    if not 0.0 < p:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # (..., V): probability of the tokens ranked above
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               generator: torch.Generator | None = None):
    """(B, V) logits of the last position -> (B,) token ids; temperature 0 picks the most likely."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, input_ids, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, use_cache: bool = True, generator: torch.Generator | None = None,
             eos: int | None = None):
    """Continue ``input_ids`` (B, T) by up to ``max_new_tokens`` sampled tokens -> (B, T + new).

    temperature=0 is greedy decoding; top_k / top_p restrict sampling to the most likely tokens.
    With ``use_cache`` the prompt is read once and each step feeds only the newest token. Pass a
    ``generator`` (on the model's device) for reproducible samples. With ``eos`` (a token id),
    generation stops once every row has produced it; a finished row is padded with eos.
    """
    model.eval()
    cache = model.new_cache() if use_cache and hasattr(model, "new_cache") else None
    ids, fresh = input_ids, input_ids  # fresh: the tokens the model has not read yet
    done = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)  # (B,)
    for _ in range(max_new_tokens):
        logits = model(fresh, cache)[:, -1] if cache is not None else model(ids)[:, -1]  # (B, V)
        token = next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eos is not None:
            token = torch.where(done, eos, token)  # (B,): finished rows only repeat eos
            done |= token == eos
        ids = torch.cat([ids, token[:, None]], dim=1)  # (B, t + 1)
        fresh = token[:, None]
        if eos is not None and done.all():
            break
    return ids
