"""Graded exercises of chapter 10 — BERT, GPT and T5.

The chapter uses ``mask_tokens``, ``top_k_filter``/``top_p_filter`` and
``relative_position_bucket`` from the book without printing them, and explains the key/value cache
without printing an attention step over it: those are the exercises. They make the learner write
BERT's 80/10/10 rule (graded on the statistics of seeded draws, since any random order of draws is
correct), the two sampling filters with their edge cases, one attention step over a growing cache,
T5's bucket function, and predict the memory a cache takes.
"""
from __future__ import annotations

import math

import torch

from book.bert import IGNORE
from book.decoding import top_k_filter, top_p_filter
from book.grader.core import Case, Exercise, Mistake, Probe
from book.multihead import KVCache
from book.t5 import relative_position_bucket

CHAPTER = "10_bert_gpt_t5"
INF = float("-inf")


# ----------------------------------------------------------------------------- 1. the 80/10/10 rule
def _mask_cases(g):
    def ids(shape, vocab):
        return torch.randint(5, vocab, shape, generator=g)  # ids 0-4 are special tokens

    x1 = ids((64, 128), 100)
    special1 = torch.zeros_like(x1, dtype=torch.bool)
    special1[:, 0] = special1[:, -1] = True  # [CLS] ... [SEP]
    x2 = ids((32, 256), 50)
    special2 = torch.rand(x2.shape, generator=g) < 0.2  # padding and separators scattered around
    x3 = ids((16, 64), 30)
    return [
        Case("ids (64, 128), vocabulary 100, p = 0.15, [CLS]/[SEP] in the first and last column",
             (x1, 4, 100, 0.15, special1, torch.Generator().manual_seed(1))),
        Case("ids (32, 256), vocabulary 50, p = 0.3, special tokens scattered (20 %)",
             (x2, 4, 50, 0.3, special2, torch.Generator().manual_seed(2))),
        Case("ids (16, 64), vocabulary 30, p = 1.0, no special tokens",
             (x3, 4, 30, 1.0, None, torch.Generator().manual_seed(3))),
        Case("ids (16, 64), vocabulary 30, p = 0.0", (x3, 4, 30, 0.0, None, torch.Generator().manual_seed(4))),
    ]


def _mask_stats(out, ids, mask_id, vocab_size, special):
    """The numbers a correct draw must get right (None if the result cannot be read)."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        return None
    inputs, labels = out
    if inputs.shape != ids.shape or labels.shape != ids.shape:
        return None
    chosen = labels != IGNORE
    n_chosen = int(chosen.sum())
    special = torch.zeros_like(ids, dtype=torch.bool) if special is None else special
    eligible = int((~special).sum())
    masked = (inputs == mask_id) & chosen
    kept = (inputs == ids) & chosen
    other = chosen & ~masked & ~kept
    share = (lambda m: int(m.sum()) / n_chosen) if n_chosen else (lambda m: 0.0)
    return dict(inputs=inputs, labels=labels, chosen=chosen, special=special, n_chosen=n_chosen,
                eligible=eligible, masked=share(masked), kept=share(kept), other=share(other),
                other_ids=inputs[other], outside_changed=bool((inputs != ids)[~chosen].any()),
                labels_wrong=bool((labels != ids)[chosen].any()))


def _judge_mask(out, ids, mask_id, vocab_size, p=0.15, special=None, generator=None):
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return "return a pair (inputs, labels)"
    for name, t in zip(("inputs", "labels"), out):
        if not isinstance(t, torch.Tensor):
            return f"{name} is not a tensor"
        if t.shape != ids.shape:
            return f"{name} has shape {tuple(t.shape)}; it must have the shape of ids, {tuple(ids.shape)}"
        if t.dtype != ids.dtype:
            return f"{name} has dtype {t.dtype}; token ids stay {ids.dtype}"
    s = _mask_stats(out, ids, mask_id, vocab_size, special)
    if s["labels_wrong"]:
        return "at the chosen positions the labels must be the original tokens (what the model must predict)"
    other_labels = s["labels"][~s["chosen"]]
    if other_labels.numel() and (other_labels != IGNORE).any():
        return f"every position that is not a target must have the label IGNORE ({IGNORE})"
    if (s["chosen"] & s["special"]).any():
        return "a special token was chosen as a target: special positions are never chosen"
    if s["outside_changed"]:
        return "an input changed at a position that is not a target: only targets are corrupted"
    rate = s["n_chosen"] / max(1, s["eligible"])
    if abs(rate - p) > 0.02 + 0.03 * (0 < p < 1):
        return (f"{rate:.1%} of the eligible tokens were chosen as targets, far from p = {p:g}: "
                "choose each non-special token with probability p")
    if s["n_chosen"] < 400:
        return None
    if abs(s["masked"] - 0.8) > 0.05:
        return f"{s['masked']:.1%} of the targets became [MASK]; the rule says 80 %"
    if abs(s["other"] - 0.1) > 0.035 or abs(s["kept"] - 0.1) > 0.035:
        return (f"of the targets {s['other']:.1%} became another token and {s['kept']:.1%} stayed as they were; "
                "the rule says 10 % and 10 %")
    o = s["other_ids"]
    if o.numel() and (o.min() < 0 or o.max() >= vocab_size):
        return f"a random replacement is outside the vocabulary 0 … {vocab_size - 1}"
    if o.numel() > 50 and len(torch.unique(o)) < min(vocab_size // 3, 10):
        return "the random replacements are nearly all the same few tokens: draw them uniformly from the vocabulary"
    return None


def _mask_probe(test):
    """A mistake recognised by its symptom on the learner's output. ``test(stats, p)`` says True (the
    symptom is there), False, or None (this case cannot show it: then the output must be right)."""
    def fn(ids, mask_id, vocab_size, p=0.15, special=None, generator=None):
        def check(out):
            s = _mask_stats(out, ids, mask_id, vocab_size, special)
            if s is None:
                return False
            verdict = test(s, p)
            if verdict is None:
                return _judge_mask(out, ids, mask_id, vocab_size, p, special) is None
            return bool(verdict)
        return Probe(check)
    return fn


def _big(s):
    return s["n_chosen"] >= 400


def _all_eligible(s, p):
    return p >= 1 and not s["special"].any()  # every token is a target: labels everywhere are right


def _no_ignore(s):
    return not (s["labels"] == IGNORE).any()


MASK_TOKENS = Exercise(
    id=f"{CHAPTER}/mask_tokens",
    title="BERT's masked-LM targets: the 80/10/10 rule",
    reference=None,
    cases=_mask_cases,
    judge=_judge_mask,
    output_names=("inputs", "labels"),
    forbidden=("book.bert.mask_tokens",),
    mistakes=[
        Mistake("non-targets labelled 0 instead of IGNORE (-100)",
                _mask_probe(lambda s, p: None if _all_eligible(s, p) else
                            _no_ignore(s) and bool((s["labels"] == 0).any())),
                "0 is a real token id: the loss would train the model to predict it. Use IGNORE = -100."),
        Mistake("labels at every position (the loss would count tokens the model can see)",
                _mask_probe(lambda s, p: None if _all_eligible(s, p) else _no_ignore(s) and not s["labels_wrong"]),
                "only the chosen targets carry a label; everything else gets IGNORE (-100), which the loss skips."),
        Mistake("the labels hold the corrupted inputs instead of the original tokens",
                _mask_probe(lambda s, p: None if s["n_chosen"] == 0 else
                            s["labels_wrong"] and bool((s["labels"] == s["inputs"])[s["chosen"]].all())),
                "the label of a target is the token that was there before you replaced it."),
        Mistake("special tokens chosen as targets",
                _mask_probe(lambda s, p: None if p == 0 or not s["special"].any() else
                            bool((s["chosen"] & s["special"]).any())),
                "leave out the positions where `special` is True before you choose."),
        Mistake("every target replaced by [MASK] (no random, no unchanged tokens)",
                _mask_probe(lambda s, p: s["masked"] > 0.97 if _big(s) else None),
                "of the targets, 80 % become [MASK], 10 % a random token and 10 % stay as they are."),
        Mistake("90 % [MASK] and 10 % random, none left unchanged",
                _mask_probe(lambda s, p: abs(s["masked"] - 0.9) < 0.03 and s["kept"] < 0.03 if _big(s) else None),
                "draw one number per target: below 0.8 → [MASK], 0.8–0.9 → random token, above 0.9 → unchanged."),
        Mistake("90 % [MASK] and 10 % unchanged, no random tokens",
                _mask_probe(lambda s, p: abs(s["masked"] - 0.9) < 0.03 and s["other"] < 0.02 if _big(s) else None),
                "10 % of the targets become a random token from the whole vocabulary."),
        Mistake("the 10 % random tokens drawn over all positions, not only the targets",
                _mask_probe(lambda s, p: None if _all_eligible(s, p) else s["outside_changed"]),
                "corrupt the targets only: first choose them, then decide what happens to each chosen one."),
        Mistake("the share of targets taken as 1 - p",
                _mask_probe(lambda s, p: abs(s["n_chosen"] / max(1, s["eligible"]) - (1 - p)) < 0.03),
                "a token is a target when its random number is below p (15 % of tokens for p = 0.15)."),
    ],
)


# ----------------------------------------------------------------------------- 2. top-k and top-p
def filter_logits(logits, top_k=None, top_p=None):
    """The reference: top-k first, then top-p on what is left (as book.decoding.next_token does)."""
    return top_p_filter(top_k_filter(logits, top_k), top_p)


def _filter_cases(g):
    ties = torch.tensor([[2.0, 5.0, 1.0, 5.0, 3.0, 5.0, 0.0]])  # three tokens tied for first
    sure = torch.tensor([[12.0, 0.0, -1.0, 0.5, -3.0]])  # one token holds almost all the probability
    tail = torch.tensor([[30.0, -30.0, -40.0, -50.0, 0.0, -60.0]])  # probabilities that round to 0 in float32
    batch = torch.randn(4, 50, generator=g) * 2
    return [
        Case("logits (4, 50), top_k = 5", (batch, 5, None)),
        Case("a row with three tokens tied for the largest logit, top_k = 2", (ties, 2, None)),
        Case("logits (4, 50), top_p = 0.9", (batch, None, 0.9)),
        Case("one token with 99.99 % of the probability, top_p = 0.5", (sure, None, 0.5)),
        Case("logits (4, 50), top_p = 1.0", (batch, None, 1.0)),
        Case("a row whose small probabilities round to 0, top_p = 1.0", (tail, None, 1.0)),
        Case("logits (4, 50), top_k = 10 then top_p = 0.6", (batch, 10, 0.6)),
        Case("logits (4, 50), neither (top_k = None, top_p = None)", (batch, None, None)),
        Case("the tied row, top_k = 3, top_p = 0.5", (ties, 3, 0.5)),
    ]


def _topk(logits, k):
    """Top-k keeping ties (the grader's own copy, for the mistakes below)."""
    if k is None or k >= logits.size(-1):
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, INF)


def _filter(logits, k, p):
    return _topp(_topk(logits, k), p)


def _topk_exact(logits, k):
    if k is None or k >= logits.size(-1):
        return logits
    idx = logits.topk(k, dim=-1).indices
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, True)
    return logits.masked_fill(~keep, INF)


def _topp(logits, p, rule="before", base=None):
    if p is None or (p >= 1.0 and rule != "rounding"):
        return logits
    source = logits if base is None else base
    sorted_logits, order = source.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    cum = probs.cumsum(dim=-1)
    if rule == "before":
        drop = cum - probs >= p
    elif rule == "cum_le":  # keep only while the running total stays within p
        drop = cum > p
    elif rule == "rounding":  # p = 1 not special-cased: the tail past a total of 1.0 is dropped
        drop = cum - probs >= p
    elif rule == "ascending":
        sorted_logits, order = source.sort(dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= p
    drop = drop.scatter(-1, order, drop)
    return logits.masked_fill(drop, INF)


FILTER = Exercise(
    id=f"{CHAPTER}/filter_logits",
    title="Top-k and top-p (nucleus) filtering",
    reference=filter_logits,
    cases=_filter_cases,
    atol=1e-6,
    nan_hint=("a token you dropped (-inf) should have been kept: check ties with the k-th largest logit, "
              "the token whose probability crosses p, and p = 1"),
    forbidden=("book.decoding.top_k_filter", "book.decoding.top_p_filter", "book.decoding.next_token"),
    mistakes=[
        Mistake("exactly k tokens kept, ties with the k-th dropped", lambda l, k=None, p=None: _topp(_topk_exact(l, k), p),
                "keep every token whose logit is at least the k-th largest: a tie with the k-th stays."),
        Mistake("top-p keeps a token only while the running total stays ≤ p",
                lambda l, k=None, p=None: _topp(_topk(l, k), p, "cum_le"),
                "keep a token if the tokens more likely than it add up to less than p — the token that crosses p "
                "stays, so the most likely token is always kept."),
        Mistake("top-p with p = 1 drops the tokens after the running total reaches 1.0 (float rounding)",
                lambda l, k=None, p=None: _topp(_topk(l, k), p, "rounding"),
                "p = 1 means keep everything: return the logits unchanged."),
        Mistake("top-p over the tokens sorted from least to most likely",
                lambda l, k=None, p=None: _topp(_topk(l, k), p, "ascending"),
                "sort in descending order: the nucleus is made of the most likely tokens."),
        Mistake("top-p computed on the distribution before top-k",
                lambda l, k=None, p=None: _topp(_topk(l, k), p, base=l),
                "apply top-k first, then top-p to the probabilities of the tokens top-k left (renormalised)."),
        Mistake("dropped tokens set to 0 instead of -inf",
                lambda l, k=None, p=None: _filter(l, k, p).masked_fill(_filter(l, k, p) == INF, 0.0),
                "a logit of 0 still has a probability after softmax; -inf gives exactly 0."),
        Mistake("probabilities returned instead of logits", lambda l, k=None, p=None: _filter(l, k, p).softmax(-1),
                "return the filtered logits (same shape, -inf where dropped); sampling applies the softmax later."),
    ],
)


# ----------------------------------------------------------------------------- 3. one step over a key/value cache
def attend_with_cache(q, k_new, v_new, cache_k, cache_v):
    """q, k_new, v_new (B, h, n, d) for n new tokens; cache_k, cache_v (B, h, t, d) -> (out, cache_k, cache_v).

    The new tokens stand at positions t … t + n - 1; each attends to every cached token and to the
    new tokens up to itself.
    """
    k = torch.cat([cache_k, k_new], dim=-2)  # (B, h, t + n, d)
    v = torch.cat([cache_v, v_new], dim=-2)
    t, n = cache_k.size(-2), q.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, n, t + n)
    allowed = torch.ones(n, t + n, dtype=torch.bool, device=q.device).tril(diagonal=t)
    weights = scores.masked_fill(~allowed, INF).softmax(dim=-1)
    return weights @ v, k, v


def _cache_cases(g):
    def r(*shape):
        return torch.randn(*shape, generator=g)

    return [
        Case("one new token, B = 2, h = 3, a cache of 5, d = 8",
             (r(2, 3, 1, 8), r(2, 3, 1, 8), r(2, 3, 1, 8), r(2, 3, 5, 8), r(2, 3, 5, 8))),
        Case("one new token, an empty cache (t = 0), d = 4", (r(1, 2, 1, 4), r(1, 2, 1, 4), r(1, 2, 1, 4),
                                                              r(1, 2, 0, 4), r(1, 2, 0, 4))),
        Case("a prompt of 4 new tokens and an empty cache (prefill)",
             (r(2, 2, 4, 8), r(2, 2, 4, 8), r(2, 2, 4, 8), r(2, 2, 0, 8), r(2, 2, 0, 8))),
        Case("3 new tokens after a cache of 6, d = 16",
             (r(1, 4, 3, 16), r(1, 4, 3, 16), r(1, 4, 3, 16), r(1, 4, 6, 16), r(1, 4, 6, 16))),
    ]


def _cache_variant(bug):
    def fn(q, k_new, v_new, cache_k, cache_v):
        t, n, d = cache_k.size(-2), q.size(-2), q.size(-1)
        if bug == "new_first":  # the right mask, the wrong order
            k, v = torch.cat([k_new, cache_k], dim=-2), torch.cat([v_new, cache_v], dim=-2)
        else:
            k, v = torch.cat([cache_k, k_new], dim=-2), torch.cat([cache_v, v_new], dim=-2)
        keys, values = (k_new, v_new) if bug == "no_cache" else (k, v)
        scores = q @ keys.transpose(-2, -1) / (1.0 if bug == "no_scale" else math.sqrt(d))
        T = keys.size(-2)
        if bug == "no_mask":
            allowed = torch.ones(n, T, dtype=torch.bool)
        elif bug == "top_left":
            allowed = torch.ones(n, T, dtype=torch.bool).tril()
        else:
            allowed = torch.ones(n, T, dtype=torch.bool).tril(diagonal=T - n)
        weights = scores.masked_fill(~allowed, INF).softmax(dim=-1 if bug != "softmax_q" else -2)
        out = weights @ values
        if bug == "old_cache":
            return out, cache_k, cache_v
        return out, k, v
    return fn


def _cache_explain(got, want, q, k_new, v_new, cache_k, cache_v):
    """When no single catalogued slip matches: say which of the three outputs is right."""
    if not (isinstance(got, (tuple, list)) and len(got) == 3 and all(isinstance(t, torch.Tensor) for t in got)):
        return None
    caches_right = all(g.shape == w.shape and torch.allclose(g, w, atol=1e-5) for g, w in zip(got[1:], want[1:]))
    if caches_right:
        return ("Your grown caches are right; `out` is not. Check two things: the scores are q·kᵀ/√d, and "
                "with several new tokens each one may see only the cache and the new tokens up to itself")
    return "Your caches are not right: they must be [cache, new] along dim -2, shape (B, h, t + n, d)"


CACHED_ATTENTION = Exercise(
    id=f"{CHAPTER}/attend_with_cache",
    title="One step of attention over a key/value cache",
    reference=attend_with_cache,
    cases=_cache_cases,
    output_names=("out", "cache_k", "cache_v"),
    explain=_cache_explain,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "book.attention.scaled_dot_product_attention",
               "book.multihead.KVCache"),
    mistakes=[
        Mistake("the new tokens attend only to themselves (the cache is not read)", _cache_variant("no_cache"),
                "append the new keys and values to the cache first, then attend over all of them."),
        Mistake("the new keys put before the cached ones", _cache_variant("new_first"),
                "the cache holds the earlier tokens: concatenate [cache, new] along the sequence axis (dim -2)."),
        Mistake("the old cache returned, without the new keys and values", _cache_variant("old_cache"),
                "return the grown cache, (B, h, t + n, d), so the next step can use it."),
        Mistake("no 1/√d_k scaling", _cache_variant("no_scale"), "divide the scores by √d, d = q.size(-1)."),
        Mistake("new tokens attend to later new tokens (no causal mask)", _cache_variant("no_mask"),
                "with n > 1 new tokens, token i of them may see the cache and new tokens 0 … i only."),
        Mistake("a causal mask that starts at the first cached token instead of the first new one",
                _cache_variant("top_left"),
                "the new tokens stand at positions t … t + n - 1: new token i sees keys 0 … t + i "
                "(tril with diagonal = t)."),
        Mistake("softmax over the queries instead of the keys", _cache_variant("softmax_q"),
                "each query's weights over the keys sum to 1: softmax over the last dimension."),
    ],
)


# ----------------------------------------------------------------------------- 4. T5's bucket function
def _bucket_cases(g):
    rel = torch.arange(-300, 301)
    q, k = torch.arange(40)[:, None], torch.arange(40)[None, :]
    return [
        Case("relative positions -300 … 300, bidirectional, 32 buckets, max_distance 128", (rel, True, 32, 128)),
        Case("relative positions -300 … 300, decoder (bidirectional=False), 32 buckets, max_distance 128",
             (rel, False, 32, 128)),
        Case("key − query for 40 positions (a 40 × 40 matrix), bidirectional, 16 buckets, max_distance 20",
             (k - q, True, 16, 20)),
        Case("relative positions -60 … 60, decoder, 8 buckets, max_distance 32", (torch.arange(-60, 61), False, 8, 32)),
    ]


def _bucket_variant(bug):
    def fn(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
        n = -relative_position if bug == "sign" else relative_position
        buckets = torch.zeros_like(n)
        if bidirectional:
            if bug != "no_halving":
                num_buckets //= 2
            buckets = buckets + (n > 0).long() * num_buckets
            n = n.abs()
        else:
            n = n.abs() if bug == "abs_decoder" else ((n.clamp(min=0)) if bug == "future" else (-n).clamp(min=0))
        exact = num_buckets if bug == "exact_all" else num_buckets // 2
        ratio = torch.log(n.float().clamp(min=1) / exact) / (
            math.log(max_distance) if bug == "log_base" else math.log(max_distance / exact))
        scaled = ratio * (num_buckets - exact)
        far = exact + (scaled.round() if bug == "round" else scaled).long()
        if bug != "no_clamp":
            far = far.clamp(max=num_buckets - 1)
        return buckets + torch.where(n < exact, n, far)
    return fn


BUCKETS = Exercise(
    id=f"{CHAPTER}/relative_position_bucket",
    title="T5's relative position buckets",
    reference=relative_position_bucket,
    cases=_bucket_cases,
    atol=0.0,
    rtol=0.0,
    forbidden=("book.t5.relative_position_bucket", "transformers"),
    mistakes=[
        Mistake("query − key instead of key − query", _bucket_variant("sign"),
                "relative_position is already key position − query position: keys after the query are positive."),
        Mistake("all the buckets used for each direction in the encoder", _bucket_variant("no_halving"),
                "bidirectional: half the buckets for keys before the query, half (offset by num_buckets // 2) "
                "for keys after it."),
        Mistake("the decoder treats keys after the query like keys before it", _bucket_variant("abs_decoder"),
                "in the decoder only earlier keys count: distance = max(−relative_position, 0), so later keys "
                "land in bucket 0."),
        Mistake("the decoder counts the keys after the query, not before it", _bucket_variant("future"),
                "a key before the query has a negative relative position: its distance is −relative_position."),
        Mistake("every bucket exact (no log-spaced buckets)", _bucket_variant("exact_all"),
                "only distances below num_buckets // 2 (of the direction's buckets) get a bucket each; "
                "the rest share log-spaced buckets."),
        Mistake("log-spaced buckets rounded instead of floored", _bucket_variant("round"),
                "truncate to an integer (.long() / floor), as T5 does."),
        Mistake("the log scaled by log(max_distance) instead of log(max_distance / exact)", _bucket_variant("log_base"),
                "the log-spaced part runs from `exact` to `max_distance`: divide log(n / exact) by "
                "log(max_distance / exact)."),
        Mistake("far distances not clamped to the last bucket", _bucket_variant("no_clamp"),
                "every distance beyond max_distance lands in the last bucket: clamp at num_buckets − 1 "
                "(of the direction's buckets)."),
    ],
)


# ----------------------------------------------------------------------------- 5. predict the cache's memory
def predict_cache_bytes() -> int:
    """Bytes of the key/value cache: 24 layers, 16 query heads, 4 key/value heads of size 64, 8 sequences of
    2,048 tokens, float16. Measured by filling one KVCache per layer with (empty) meta tensors."""
    total = 0
    for _ in range(24):
        cache = KVCache()
        k = torch.empty(8, 4, 2048, 64, dtype=torch.float16, device="meta")  # (B, h_kv, T, d_k)
        cache.append(k, k.clone())
        total += cache.k.nbytes + cache.v.nbytes
    return total


def _bytes(layers=24, heads=4, d=64, tokens=2048, batch=8, size=2, kv=2):
    return kv * layers * heads * d * tokens * batch * size


PREDICT_CACHE = Exercise(
    id=f"{CHAPTER}/predict_cache_bytes",
    title="Predict the size of a key/value cache",
    reference=predict_cache_bytes,
    cases=lambda g: [Case("your prediction", ())],
    atol=0.5,
    rtol=0.0,
    kind="prediction",
    returns=int,
    mistakes=[
        Mistake("keys only (the values forgotten)", lambda: _bytes(kv=1),
                "the cache keeps a key AND a value vector per token, head and layer."),
        Mistake("the query heads counted instead of the key/value heads", lambda: _bytes(heads=16),
                "with grouped-query attention only the 4 key/value heads are cached; the 16 query heads share them."),
        Mistake("4 bytes per number (float32)", lambda: _bytes(size=4), "float16 takes 2 bytes per number."),
        Mistake("one layer only", lambda: _bytes(layers=1), "every one of the 24 layers keeps its own cache."),
        Mistake("one sequence only", lambda: _bytes(batch=1), "the batch holds 8 sequences, each with its own cache."),
        Mistake("bits instead of bytes", lambda: _bytes() * 8, "a float16 number is 16 bits = 2 bytes; count bytes."),
    ],
)

EXERCISES = [MASK_TOKENS, FILTER, CACHED_ATTENTION, BUCKETS, PREDICT_CACHE]
