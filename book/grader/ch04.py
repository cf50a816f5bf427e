"""Graded exercises of chapter 04 — self-attention: references, seeded cases, classic mistakes.

The chapter prints ``softmax``, ``scaled_dot_product_attention``, ``self_attention``,
``causal_mask`` and ``padding_mask`` line for line, so none of them is an exercise: these make the
learner debug, extend, derive and predict instead — fix a broken cross-attention over padded keys,
build a prefix-LM mask from token ids, attend to keys that arrive in blocks with a running max and
sum (the trick of FlashAttention), backpropagate through attention by hand, and predict a weight
and two shapes.
"""
from __future__ import annotations

import math

import torch

from book.attention import padding_mask, scaled_dot_product_attention, softmax
from book.grader.core import Case, Exercise, Mistake, bug_combinations

CHAPTER = "04_self_attention"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _close(a, b, atol=1e-5):
    return (isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(b.shape)
            and torch.allclose(a.detach().cpu().double(), b.detach().cpu().double(), atol=atol, rtol=1e-4))


def _tensors(got, n):
    """got as a list of n tensors, or None when it is not one."""
    if not isinstance(got, (tuple, list)) or len(got) != n or not all(isinstance(t, torch.Tensor) for t in got):
        return None
    return list(got)


# ----------------------------------------------------------------------------- 1. find and fix the bugs
def padded_cross_attention(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
    """Queries from x_q (B, T_q, d_model) attend to keys and values from x_kv (B, T_k, d_model),
    right-padded: row b has kv_lengths[b] real tokens. w_q, w_k: (d_model, d_k), w_v: (d_model, d_v).
    Padding keys get weight exactly 0; a row with no real key at all gets weights 0 and output 0.
    Returns output (B, T_q, d_v) and weights (B, T_q, T_k)."""
    is_real = padding_mask(kv_lengths, x_kv.shape[-2])  # (B, T_k)
    return scaled_dot_product_attention(x_q @ w_q, x_kv @ w_k, x_kv @ w_v, is_real[:, None, :])


BUGS = {  # the three bugs of the notebook's buggy_padded_cross_attention
    "scale": ("the scores divided by √d_model instead of √d_k",
              "the scale belongs to the dot products q·k, which have d_k = q.size(-1) terms; x_q.size(-1) is "
              "d_model, the width of the inputs before the projection."),
    "axis": ("the softmax over the queries (dim=1) instead of the keys",
             "each query's weights over the keys must sum to 1: the scores are (B, T_q, T_k), so the softmax "
             "runs over the last axis, dim=-1."),
    "empty": ("a sequence with no real token still puts weight on its padding",
              "with a fill of -1e9 a row whose keys are all padding becomes a uniform average of the padding. "
              "The docstring asks for weights 0 there: set the weights of padding keys to 0 after the softmax "
              "(masked_fill(~is_real[:, None, :], 0.0)), as the chapter's scaled_dot_product_attention does."),
}


def _cross_variant(bugs=(), scale=None, fill=None, lengths="ok", after=False, zero=None, invert=False):
    """The notebook's buggy function with the given bugs left in (all three: the function as given),
    or another classic mistake: scale "none" / "d_k" / "d_v", fill -inf, an off-by-one, the mask
    after the softmax, an inverted mask."""
    def attention(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
        q, k, v = x_q @ w_q, x_kv @ w_k, x_kv @ w_v
        how = scale or ("d_model" if "scale" in bugs else "d_k")
        div = {"d_model": math.sqrt(x_q.size(-1)), "d_k": math.sqrt(q.size(-1)), "none": 1.0,
               "d_k_squared": q.size(-1), "d_v": math.sqrt(v.size(-1))}[how]
        scores = q @ k.transpose(-2, -1) / div
        pos = torch.arange(x_kv.size(1))
        is_real = (pos[None, :] <= kv_lengths[:, None]) if lengths == "le" else (pos[None, :] < kv_lengths[:, None])
        if invert:
            is_real = ~is_real
        keys = is_real[:, None, :]
        if not after:
            scores = scores.masked_fill(~keys, fill if fill is not None else -1e9)
        weights = torch.softmax(scores, dim=1 if "axis" in bugs else -1)
        zeroing = ("empty" not in bugs) if zero is None else zero
        if after or zeroing:
            weights = weights * keys
        return weights @ v, weights

    return attention


def _cross_inputs(g, lengths, T_q, T_k, d_model, d_k, d_v, same=False, dtype=None):
    B = len(lengths)
    x_q = _randn(g, B, T_q, d_model)
    x_kv = x_q.clone() if same else _randn(g, B, T_k, d_model)
    w = lambda a, b: _randn(g, a, b, scale=a**-0.5)  # noqa: E731
    return x_q, x_kv, torch.tensor(lengths, dtype=dtype), w(d_model, d_k), w(d_model, d_k), w(d_model, d_v)


def _cross_cases(g):
    return [
        Case("B=2, T_q=3, T_k=5, d_model=8, d_k=4, d_v=6, lengths [5, 3]",
             _cross_inputs(g, [5, 3], 3, 5, 8, 4, 6)),
        Case("B=3, T_q=4, T_k=6, d_model=12, d_k=3, d_v=2, lengths [6, 1, 4]",
             _cross_inputs(g, [6, 1, 4], 4, 6, 12, 3, 2)),
        Case("self-attention (x_q is x_kv), T=5, d_model=6, d_k=2, d_v=4, lengths [5, 2]",
             _cross_inputs(g, [5, 2], 5, 5, 6, 2, 4, same=True)),
        Case("no padding at all (int32 lengths [7, 7]), T_q=2, T_k=7, d_model=8, d_k=4, d_v=3",
             _cross_inputs(g, [7, 7], 2, 7, 8, 4, 3, dtype=torch.int32)),
        Case("an empty sequence in the batch: lengths [4, 0, 2], T_q=3, T_k=4, d_model=8, d_k=2, d_v=5",
             _cross_inputs(g, [4, 0, 2], 3, 4, 8, 2, 5)),
    ]


def _cross_bug_mistakes():
    return bug_combinations(BUGS, _cross_variant,
                            ("it runs and every shape is right, but compare it with the chapter's "
                             "scaled_dot_product_attention on the same q, k, v and padding mask: look at the scale, "
                             "at the axis of the softmax, and at a batch with an empty sequence."))


def _explain_cross(got, want, x_q, x_kv, kv_lengths, *weights):
    got = _tensors(got, 2)
    if got is None or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(got, want)):
        return None
    out, w = (t.detach().cpu().double() for t in got)
    if not torch.isfinite(w).all():
        return None
    is_real = padding_mask(kv_lengths.cpu(), w.shape[-1])[:, None, :]  # (B, 1, T_k)
    if (w.abs() * ~is_real).amax() > 1e-6:
        empty = (kv_lengths.cpu() == 0)
        if empty.any() and (w[~empty].abs() * ~is_real[~empty]).amax() <= 1e-6:
            return ("Only the sequence with no real token goes wrong: its weights must all be 0 (and so its "
                    "output), not spread over its padding")
        return "`weights` put weight on padding keys: every key at or after a sequence's length must get exactly 0"
    sums = w.sum(-1)  # (B, T_q)
    has_real = (kv_lengths.cpu() > 0)[:, None].expand_as(sums)
    if not torch.allclose(sums[has_real], torch.ones_like(sums[has_real]), atol=1e-5):
        return "The rows of `weights` do not sum to 1 over the keys: which axis does the softmax run over?"
    if _close(got[1], want[1]):
        return "`weights` are right but `output` is not: output = weights @ v, with v = x_kv @ w_v"
    return ("`weights` sum to 1 and skip the padding, so the scores themselves are off: "
            "q kᵀ / √d_k, with q = x_q @ w_q, k = x_kv @ w_k and d_k the size of q's last axis")


PADDED_CROSS = Exercise(
    id=f"{CHAPTER}/padded_cross_attention",
    title="Find and fix the bugs: cross-attention over padded keys",
    reference=padded_cross_attention,
    cases=_cross_cases,
    output_names=("output", "weights"),
    nan_hint="a row whose scores are all -inf gives 0/0 in the softmax: check the softmax's axis, and give a "
             "query with no real key weights 0 after the softmax (as the chapter's scaled_dot_product_attention "
             "does)",
    forbidden=("scaled_dot_product_attention", "self_attention", "torch.nn.MultiheadAttention"),
    forbidden_why="fix the given function's lines rather than hand the work to a finished attention (compare "
                  "with the chapter's outside your function)",
    explain=_explain_cross,
    mistakes=_cross_bug_mistakes() + [
        Mistake("the -1e9 fill replaced by -inf but the weights not set to 0 after the softmax",
                _cross_variant(fill=float("-inf"), zero=False),
                "a row whose keys are all -inf is 0/0 = NaN after the softmax; set the padding keys' weights "
                "to 0 after it, as the chapter's scaled_dot_product_attention does."),
        Mistake("the padding mask one key too long (<= instead of <)", _cross_variant(lengths="le"),
                "positions are 0-based: a sequence of length n has real keys at 0 … n-1, so key j is real when "
                "j < n."),
        Mistake("an inverted padding mask (True at the padding)", _cross_variant(invert=True),
                "the real keys are the ones before each sequence's length; those are the ones that may be "
                "attended to."),
        Mistake("the scale removed altogether", _cross_variant(scale="none"),
                "the scores need the 1/√d_k of the chapter, with d_k = q.size(-1)."),
        Mistake("the scores divided by d_k instead of √d_k", _cross_variant(scale="d_k_squared"),
                "the spread of q·k grows like √d_k: divide by math.sqrt(d_k)."),
        Mistake("the scores divided by √d_v instead of √d_k", _cross_variant(scale="d_v"),
                "the scale belongs to the dot products q·k (d_k terms each), not to the values' size d_v."),
        Mistake("the padding applied only after the softmax (weights × mask, no -1e9 before)",
                _cross_variant(after=True),
                "zeroing weights after the softmax leaves rows that no longer sum to 1: the padding scores must "
                "be filled (-1e9 or -inf) before the softmax, and the zeroing after it only serves empty rows."),
    ],
)


# ----------------------------------------------------------------------------- 2. a prefix-LM mask from token ids
def prefix_lm_mask(token_ids: torch.Tensor, prefix_lengths: torch.Tensor, pad_id: int) -> torch.Tensor:
    """token_ids (B, T), right-padded with pad_id; prefix_lengths (B,) -> (B, T, T) bool, True = may
    attend: query t of row b may attend key j when token j is not padding and j <= t or
    j < prefix_lengths[b] (the prefix is read in both directions, the rest left to right)."""
    T = token_ids.shape[-1]
    pos = torch.arange(T, device=token_ids.device)
    past = pos[None, :] <= pos[:, None]  # (T, T): key j is at or before query t
    in_prefix = pos[None, :] < prefix_lengths.to(token_ids.device)[:, None]  # (B, T): key j lies in the prefix
    is_real = token_ids != pad_id  # (B, T)
    return (past[None] | in_prefix[:, None, :]) & is_real[:, None, :]  # (B, T, T)


def _prefix_variant(prefix="ok", combine="or", padding="keys", pad="ok", direction="past", invert=False,
                    transpose=False):
    def mask(token_ids, prefix_lengths, pad_id):
        B, T = token_ids.shape
        pos = torch.arange(T)
        past = (pos[None, :] >= pos[:, None]) if direction == "future" else (pos[None, :] <= pos[:, None])
        P = prefix_lengths.long()
        if prefix == "first_row":
            P = P[:1].expand(B)
        p = P[:, None, None]  # (B, 1, 1)
        key_in = (pos[None, None, :] <= p) if prefix == "plus_one" else (pos[None, None, :] < p)  # (B, 1, T)
        query_in = pos[None, :, None] < p  # (B, T, 1)
        if prefix == "ignored":
            allowed = past[None].expand(B, T, T)
        elif prefix == "query_sees_all":  # a query inside the prefix sees every key
            allowed = past[None] | query_in
        elif combine == "and":
            allowed = past[None] & key_in
        else:
            allowed = past[None] | key_in
        real = {"ok": token_ids != pad_id, "zero": token_ids != 0, "inverted": token_ids == pad_id}[pad]
        if padding == "keys":
            allowed = allowed & real[:, None, :]
        elif padding == "queries":
            allowed = allowed & real[:, :, None]
        if transpose:
            allowed = allowed.transpose(-2, -1)
        return ~allowed if invert else allowed

    return mask


def _ids(g, lengths, T, pad_id, vocab=10):
    """Random token ids (B, T) that avoid pad_id, right-padded with it after each length."""
    ids = torch.randint(0, vocab - 1, (len(lengths), T), generator=g)
    ids = ids + (ids >= pad_id).long()  # shift past the pad id: real tokens never equal it
    real = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return torch.where(real, ids, torch.full_like(ids, pad_id))


def _prefix_cases(g):
    return [
        Case("B=2, T=6, pad_id 0, lengths [6, 3], prefixes [2, 1]",
             (_ids(g, [6, 3], 6, 0), torch.tensor([2, 1]), 0)),
        Case("B=3, T=7, pad_id 0, lengths [7, 5, 2], prefixes [3, 4, 2]",
             (_ids(g, [7, 5, 2], 7, 0), torch.tensor([3, 4, 2]), 0)),
        Case("pad_id 3 (token 0 is a real word), B=2, T=5, lengths [5, 3], prefixes [1, 2]",
             (_ids(g, [5, 3], 5, 3), torch.tensor([1, 2]), 3)),
        Case("no prefix at all (prefixes [0, 0]): a plain decoder, B=2, T=5, lengths [4, 5]",
             (_ids(g, [4, 5], 5, 0), torch.tensor([0, 0]), 0)),
        Case("the whole sequence is the prefix (an encoder): B=2, T=4, lengths [4, 2], prefixes [4, 2]",
             (_ids(g, [4, 2], 4, 0), torch.tensor([4, 2]), 0)),
        Case("int32 prefixes [5, 0, 2, 6], pad_id 1, B=4, T=8, lengths [8, 6, 3, 6]",
             (_ids(g, [8, 6, 3, 6], 8, 1), torch.tensor([5, 0, 2, 6], dtype=torch.int32), 1)),
    ]


def _explain_prefix(got, want, token_ids, prefix_lengths, pad_id):
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or tuple(got.shape) != tuple(want.shape):
        return None
    got, want = got.cpu(), want.cpu()
    B, T = token_ids.shape
    pos = torch.arange(T)
    pad_key = (token_ids.cpu() == pad_id)[:, None, :].expand(B, T, T)
    query_in = (pos[None, :] < prefix_lengths.cpu().long()[:, None])[:, :, None].expand(B, T, T)
    future = (pos[None, :] > pos[:, None])[None].expand(B, T, T)
    wrong = got != want
    if (got & pad_key).any():
        return "Some query may attend a padding key (a position whose token is pad_id): padding is never attended"
    if (wrong & ~got & ~future).any():
        return ("Some query may not attend a real key at or before its own position: every query sees its own "
                "past, prefix or not")
    if (wrong & got & future & ~query_in).any():
        return "A query after the prefix may attend a later key: after the prefix, attention is causal"
    if (wrong & ~got & future & query_in).any():
        return ("A query inside the prefix cannot see a later token of the prefix: the prefix is read in both "
                "directions")
    return "A query inside the prefix may attend a key beyond the prefix: it sees the whole prefix, nothing after it"


PREFIX_LM = Exercise(
    id=f"{CHAPTER}/prefix_lm_mask",
    title="A prefix-LM mask, built from the token ids",
    reference=prefix_lm_mask,
    cases=_prefix_cases,
    explain=_explain_prefix,
    mistakes=[
        Mistake("the prefix ignored (a plain causal mask with padding)", _prefix_variant(prefix="ignored"),
                "inside the prefix a query also sees the later prefix tokens: allow key j when j <= t *or* j lies "
                "in the prefix (j < prefix_lengths[b])."),
        Mistake("the prefix one token too long (j <= prefix length)", _prefix_variant(prefix="plus_one"),
                "a prefix of length P holds the positions 0 … P-1: key j is in it when j < P."),
        Mistake("a query inside the prefix allowed to see the whole sequence",
                _prefix_variant(prefix="query_sees_all"),
                "the prefix is bidirectional only within itself: the extra keys a prefix query may see are the "
                "prefix keys (j < P), a condition on the key, not on the query."),
        Mistake("the prefix combined with & (and) instead of | (or)", _prefix_variant(combine="and"),
                "a key is visible if it is in the past *or* in the prefix: combine the two with |, then & with "
                "the padding."),
        Mistake("the padding ignored", _prefix_variant(padding="none"),
                "a padding key must never be attended: & the mask with token_ids != pad_id on the key axis."),
        Mistake("the padding applied to the queries (rows) instead of the keys (columns)",
                _prefix_variant(padding="queries"),
                "padding hides *keys*: (token_ids != pad_id)[:, None, :] broadcasts over the queries."),
        Mistake("the padding read the wrong way round (True at the pad tokens)", _prefix_variant(pad="inverted"),
                "the real tokens are the ones that differ from pad_id: token_ids != pad_id."),
        Mistake("the pad id taken to be 0", _prefix_variant(pad="zero"),
                "use the pad_id argument: in some vocabularies 0 is a real token and the padding has another id."),
        Mistake("query and key axes swapped (the transposed mask)", _prefix_variant(transpose=True),
                "rows are queries, columns are keys: mask[b, t, j] says whether query t may attend key j."),
        Mistake("the future instead of the past (j >= t)", _prefix_variant(direction="future"),
                "outside the prefix, query t may attend keys j <= t: on and *below* the diagonal."),
        Mistake("an inverted mask (True = blocked)", _prefix_variant(invert=True),
                "in this book True means 'may attend'."),
        Mistake("every row given the first sequence's prefix length", _prefix_variant(prefix="first_row"),
                "each sequence has its own prefix: compare the key positions with prefix_lengths[:, None]."),
    ],
)


# ----------------------------------------------------------------------------- 3. keys that arrive in blocks
class BlockStream(tuple):
    """The (k, v) blocks of one check, as a stream: one loop over them, in order. A second loop or
    indexing raises an error, as it would for blocks that arrive one by one (from disk, from another
    device). The copy the grader hands to a function is fresh each time; the case's own is not a stream."""

    def __new__(cls, blocks=(), template=False):
        self = super().__new__(cls, blocks)
        self._template, self._read = template, False
        return self

    def __iter__(self):
        if not self._template:
            if self._read:
                raise RuntimeError("the blocks are a stream and can be read only once: keep what you need from "
                                   "each block in running totals during a single loop")
            self._read = True
        return super().__iter__()

    def __getitem__(self, i):
        raise TypeError("the blocks are a stream: loop over them once (for k, v in kv_blocks) instead of indexing")

    def __repr__(self):
        return f"BlockStream of {len(self)} (k, v) blocks"


def streaming_attention(q: torch.Tensor, kv_blocks) -> torch.Tensor:
    """softmax(q Kᵀ / √d_k) V for keys and values that arrive in blocks [(k_1, v_1), (k_2, v_2), …],
    k_i (..., n_i, d_k), v_i (..., n_i, d_v), in one pass: per query a running maximum m of the scores,
    a running sum l of exp(score - m) and a running output acc = Σ exp(score - m) v, rescaled by
    exp(m_old - m_new) whenever a block raises the maximum. Returns (..., T_q, d_v)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    m = l = acc = None
    for k, v in kv_blocks:
        s = q @ k.transpose(-2, -1) * scale  # (..., T_q, n_i)
        block_max = s.amax(dim=-1, keepdim=True)  # (..., T_q, 1)
        m_new = block_max if m is None else torch.maximum(m, block_max)
        p = torch.exp(s - m_new)  # every exponent <= 0
        if m is None:
            l, acc = p.sum(dim=-1, keepdim=True), p @ v
        else:
            alpha = torch.exp(m - m_new)  # (..., T_q, 1) <= 1: the old totals, re-expressed
            l = alpha * l + p.sum(dim=-1, keepdim=True)
            acc = alpha * acc + p @ v
        m = m_new
    return acc / l


def _stream_variant(scale="sqrt", rescale="both", flip=False, divide=True, per_block=None, max_mode="running",
                    accumulate=True, start_at_zero=False):
    """Classic wrong versions: per_block "mean"/"sum" (each block normalised alone), rescale "sum"/"acc"/"none",
    flip (exp(m_new - m_old)), max_mode "first"/"own"/"global", divide=False, accumulate=False,
    start_at_zero (the running maximum starts at 0, so a row of very negative scores underflows)."""
    def attention(q, kv_blocks):
        d = q.shape[-1]
        factor = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d}[scale]
        m = l = acc = None
        parts = []
        for k, v in kv_blocks:
            s = q @ k.transpose(-2, -1) * factor
            if per_block is not None:
                parts.append(torch.softmax(s, dim=-1) @ v)
                continue
            if max_mode == "global":
                bm = s.amax(dim=(-2, -1), keepdim=True).expand(*s.shape[:-1], 1)
            else:
                bm = s.amax(dim=-1, keepdim=True)
            if m is None and start_at_zero:
                m_new = bm.clamp_min(0.0)
            elif m is None or max_mode == "own":
                m_new = bm
            elif max_mode == "first":
                m_new = m
            else:
                m_new = torch.maximum(m, bm)
            p = torch.exp(s - m_new)
            if m is None:
                l, acc = p.sum(dim=-1, keepdim=True), p @ v
            else:
                alpha = torch.exp(m_new - m) if flip else torch.exp(m - m_new)
                if max_mode == "own":
                    alpha = torch.ones_like(alpha)
                a_l = alpha if rescale in ("both", "sum") else 1.0
                a_acc = alpha if rescale in ("both", "acc") else 1.0
                l = a_l * l + p.sum(dim=-1, keepdim=True)
                acc = (a_acc * acc + p @ v) if accumulate else p @ v
            m = m_new
        if per_block == "mean":
            return sum(parts) / len(parts)
        if per_block == "sum":
            return sum(parts)
        return acc / l if divide else acc

    return attention


def _blocks(g, lead, sizes, d_k, d_v, scales=None):
    scales = scales or [1.0] * len(sizes)
    return BlockStream([(_randn(g, *lead, n, d_k, scale=s), _randn(g, *lead, n, d_v)) for n, s in zip(sizes, scales)],
                       template=True)


def _stream_cases(g):
    return [
        Case("q (3, 4), three blocks of 2 keys, d_v=5 (no batch)", (_randn(g, 3, 4), _blocks(g, (), [2, 2, 2], 4, 5))),
        Case("a batch: q (2, 5, 8), blocks of 3, 1 and 4 keys, d_v=3",
             (_randn(g, 2, 5, 8), _blocks(g, (2,), [3, 1, 4], 8, 3))),
        Case("a single block of 6 keys, q (2, 4, 6), d_v=6", (_randn(g, 2, 4, 6), _blocks(g, (2,), [6], 6, 6))),
        Case("one key per block (6 blocks), q (1, 3, 4), d_v=2",
             (_randn(g, 1, 3, 4), _blocks(g, (1,), [1] * 6, 4, 2))),
        Case("two leading batch dims: q (2, 3, 4, 8), blocks of 5 and 5 keys, d_v=4",
             (_randn(g, 2, 3, 4, 8), _blocks(g, (2, 3), [5, 5], 8, 4))),
        Case("large scores that grow block after block (keys × 5, × 20, × 60), q (2, 4, 8) × 10",
             (_randn(g, 2, 4, 8, scale=10.0), _blocks(g, (2,), [3, 4, 2], 8, 3, scales=[5.0, 20.0, 60.0]))),
        Case("large scores, the largest in the first block (keys × 60, × 20, × 5), q (2, 4, 8) × 10",
             (_randn(g, 2, 4, 8, scale=10.0), _blocks(g, (2,), [2, 4, 3], 8, 3, scales=[60.0, 20.0, 5.0]))),
        Case("every score far below zero (q (2, 3, 8) × 10 points away from every key × 20)",
             (-_randn(g, 2, 3, 8, scale=10.0).abs(),
              BlockStream([(_randn(g, 2, n, 8, scale=20.0).abs(), _randn(g, 2, n, 3)) for n in (3, 2)],
                          template=True))),
    ]


def _explain_stream(got, want, q, kv_blocks):
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return None
    if len(kv_blocks) == 1:
        return ("Even with a single block the result is wrong, so it is not the merging: check the scores' scale "
                "(1/√d_k) and that you divide by the sum of the exponentials")
    g, w = got.detach().cpu().double(), want.detach().cpu().double()
    ratio = g / w
    if torch.isfinite(ratio).all() and torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-3):
        return ("Each query's output is a multiple of the right one: the weights don't sum to 1 — divide the "
                "running output by the running sum, both rescaled to the same maximum")
    return ("With several blocks the result is wrong: when a block raises a query's maximum from m to m', "
            "both running totals must be multiplied by exp(m - m') before the block's terms are added")


STREAMING = Exercise(
    id=f"{CHAPTER}/streaming_attention",
    title="Attention over keys that arrive in blocks: a running max and sum",
    reference=streaming_attention,
    cases=_stream_cases,
    explain=_explain_stream,
    nan_hint="exp() of a large score overflowed, or a whole row underflowed to 0/0: shift each block's scores by "
             "the running maximum of each query — shape (..., T_q, 1), updated with every block — and rescale the "
             "running totals by exp(old max - new max), which is at most 1",
    forbidden=("torch.cat", "torch.concat", "torch.concatenate", "torch.stack", "torch.hstack", "torch.vstack",
               "scaled_dot_product_attention"),
    forbidden_why="read the blocks one at a time and keep running totals; never put the keys back together",
    mistakes=[
        Mistake("each block normalised on its own and the blocks' results averaged", _stream_variant(per_block="mean"),
                "a block's softmax only knows its own keys; the weights must be shared out over *all* the keys. "
                "Keep unnormalised totals (a sum of exponentials and a weighted sum of values) and divide once, "
                "at the end."),
        Mistake("each block normalised on its own and the blocks' results added", _stream_variant(per_block="sum"),
                "every block's weights then sum to 1, so the total weight is the number of blocks. Keep "
                "unnormalised totals and divide once, at the end."),
        Mistake("the running maximum started at 0 instead of the first block's maximum",
                _stream_variant(start_at_zero=True),
                "a shift of 0 is only safe when some score is >= 0: if every score of a query lies far below 0, "
                "every exp() underflows to 0 and acc / l is 0/0. Start from the first block's own maximum (or "
                "from -inf, made on q's device)."),
        Mistake("the maximum of the first block kept and never updated", _stream_variant(max_mode="first"),
                "a later block with larger scores then gives exp() of a large positive number, which overflows: "
                "update m = max(m, the block's maximum) with every block."),
        Mistake("one maximum for all the queries instead of one per query", _stream_variant(max_mode="global"),
                "a shift shared by all queries can lie far above a query's own scores, and its exponentials "
                "underflow to 0/0: take the maximum over the keys only, s.amax(dim=-1, keepdim=True)."),
        Mistake("the running output not rescaled when the maximum grows", _stream_variant(rescale="sum"),
                "acc was built with exponentials exp(s - m_old); before adding a block computed with the new "
                "maximum, multiply acc by exp(m_old - m_new), just like the running sum."),
        Mistake("the running sum not rescaled when the maximum grows", _stream_variant(rescale="acc"),
                "l was built with exponentials exp(s - m_old); before adding the new block's sum, multiply l by "
                "exp(m_old - m_new), just like the running output."),
        Mistake("neither running total rescaled when the maximum grows", _stream_variant(rescale="none"),
                "the old totals were computed with exp(s - m_old) and the new block's terms with exp(s - m_new): "
                "multiply both old totals by exp(m_old - m_new) before adding."),
        Mistake("the rescaling factor upside down (exp(m_new - m_old))", _stream_variant(flip=True),
                "e^(s - m_old) · e^(m_old - m_new) = e^(s - m_new): the factor is exp(m_old - m_new), at most 1."),
        Mistake("the 1/√d_k scaling missing", _stream_variant(scale="none"),
                "the scores are q·k / √d_k, as in the chapter: multiply them by 1/math.sqrt(q.size(-1))."),
        Mistake("the scores divided by d_k instead of √d_k", _stream_variant(scale="d"),
                "divide by math.sqrt(d_k), where d_k = q.size(-1)."),
        Mistake("the final division by the running sum forgotten", _stream_variant(divide=False),
                "acc is a sum of exp(s - m)·v; the weights are those exponentials divided by their sum: return "
                "acc / l."),
        Mistake("each block shifted by its own maximum and never re-aligned", _stream_variant(max_mode="own"),
                "terms shifted by different maxima can't be added: keep one running maximum per query and "
                "re-express the old totals with it (multiply by exp(m_old - m_new))."),
        Mistake("only the last block's values kept in the running output", _stream_variant(accumulate=False),
                "the output mixes the values of all blocks: add each block's p @ v to the (rescaled) running "
                "output instead of replacing it."),
    ],
)


# ----------------------------------------------------------------------------- 4. the backward pass, by hand
NO_AUTOGRAD = ("Tensor.backward", "torch.autograd.grad", "torch.autograd.backward", "torch.autograd.functional.jacobian",
               "torch.autograd.functional.vjp", "torch.func.grad", "torch.func.vjp", "torch.func.jacrev",
               "Tensor.requires_grad_")


def attention_backward(q, k, v, grad_out):
    """The gradients of a loss L through O = softmax(S) v, S = q kᵀ / √d_k (no mask), given
    grad_out = ∂L/∂O (..., T_q, d_v): returns ∂L/∂q (..., T_q, d_k), ∂L/∂k (..., T_k, d_k) and
    ∂L/∂v (..., T_k, d_v). With W = softmax(S) and G = ∂L/∂W = grad_out vᵀ, the softmax's Jacobian
    ∂w_j/∂s_j' = w_j(δ_jj' - w_j') gives ∂L/∂S = W ⊙ (G - Σ_j' G ⊙ W), summed over each row."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    w = softmax(q @ k.transpose(-2, -1) * scale, dim=-1)  # (..., T_q, T_k)
    grad_v = w.transpose(-2, -1) @ grad_out  # (..., T_k, d_v)
    grad_w = grad_out @ v.transpose(-2, -1)  # (..., T_q, T_k)
    grad_s = w * (grad_w - (w * grad_w).sum(dim=-1, keepdim=True))  # (..., T_q, T_k)
    grad_q = grad_s @ k * scale  # (..., T_q, d_k)
    grad_k = grad_s.transpose(-2, -1) @ q * scale  # (..., T_k, d_k)
    return grad_q, grad_k, grad_v


def _backward_variant(jacobian="full", scale="sqrt", grad_v="ok", grad_k="ok", grad_w="ok", swap=False,
                      forward_scale=True):
    """jacobian: "none" (∂L/∂S = G), "diagonal" (W(1-W)G), "queries" (the row sum over dim=-2),
    "no_weight" (W G - Σ W G), "plain_sum" (W (G - Σ G)), "sign" (W (Σ W G - G))."""
    def backward(q, k, v, grad_out):
        d = q.shape[-1]
        factor = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d}[scale]
        w = torch.softmax(q @ k.transpose(-2, -1) * (factor if forward_scale else 1.0), dim=-1)
        gv = w @ grad_out if grad_v == "no_transpose" else w.transpose(-2, -1) @ grad_out
        G = (v @ grad_out.transpose(-2, -1)) if grad_w == "transposed" else grad_out @ v.transpose(-2, -1)
        wg = w * G
        gs = {"full": lambda: wg - w * wg.sum(-1, keepdim=True),
              "none": lambda: G,
              "diagonal": lambda: w * (1 - w) * G,
              "queries": lambda: wg - w * wg.sum(-2, keepdim=True),
              "no_weight": lambda: wg - wg.sum(-1, keepdim=True),
              "plain_sum": lambda: w * (G - G.sum(-1, keepdim=True)),
              "sign": lambda: w * wg.sum(-1, keepdim=True) - wg}[jacobian]()
        gq = gs @ k * factor
        gk = (gs @ q if grad_k == "no_transpose" else gs.transpose(-2, -1) @ q) * factor
        return (gk, gq, gv) if swap else (gq, gk, gv)

    return backward


def _backward_inputs(g, lead, T_q, T_k, d_k, d_v, scale=1.0):
    return (_randn(g, *lead, T_q, d_k, scale=scale), _randn(g, *lead, T_k, d_k, scale=scale),
            _randn(g, *lead, T_k, d_v), _randn(g, *lead, T_q, d_v))


def _backward_cases(g):
    return [
        Case("self-attention sizes: T_q = T_k = 4, d_k = 3, d_v = 5 (no batch)", _backward_inputs(g, (), 4, 4, 3, 5)),
        Case("a batch of 2, T_q=3, T_k=5, d_k=4, d_v=2", _backward_inputs(g, (2,), 3, 5, 4, 2)),
        Case("two leading batch dims (2, 3), T_q=2, T_k=6, d_k=8, d_v=3", _backward_inputs(g, (2, 3), 2, 6, 8, 3)),
        Case("peaked weights (q and k × 3), B=2, T_q = T_k = 5, d_k=4, d_v=4",
             _backward_inputs(g, (2,), 5, 5, 4, 4, scale=3.0)),
        Case("a single key (T_k = 1), B=2, T_q=3, d_k=2, d_v=3", _backward_inputs(g, (2,), 3, 1, 2, 3)),
    ]


def _explain_backward(got, want, *args):
    got = _tensors(got, 3)
    if got is None or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(got, want)):
        return None
    right = [_close(a, b) for a, b in zip(got, want)]
    if right[2] and not (right[0] or right[1]):
        return ("`grad_v` is right, `grad_q` and `grad_k` are not: the path through the scores goes wrong — "
                "the softmax's Jacobian (every weight of a row depends on every score of that row) or the 1/√d_k")
    if right[2]:
        wrong = "grad_q" if not right[0] else "grad_k"
        return (f"`grad_v` and ∂L/∂S look right, only `{wrong}` is not: S = q kᵀ / √d_k, so ∂L/∂q = ∂L/∂S · k "
                "/ √d_k and ∂L/∂k = (∂L/∂S)ᵀ · q / √d_k")
    if right[0] and right[1]:
        return "`grad_q` and `grad_k` are right but `grad_v` is not: O = W v, so ∂L/∂v = Wᵀ · grad_out"
    return ("`grad_v` is already wrong, and it needs no softmax Jacobian: O = W v with W = softmax(q kᵀ / √d_k), "
            "so ∂L/∂v = Wᵀ · grad_out")


BACKWARD = Exercise(
    id=f"{CHAPTER}/attention_backward",
    title="The backward pass of attention, by hand",
    reference=attention_backward,
    cases=_backward_cases,
    output_names=("grad_q", "grad_k", "grad_v"),
    explain=_explain_backward,
    forbidden=NO_AUTOGRAD,
    forbidden_why="derive the gradients on paper and compute them with tensor operations (autograd is what the "
                  "grader compares with; use it outside your function to check yourself)",
    mistakes=[
        Mistake("the softmax's Jacobian left out (∂L/∂S taken to be ∂L/∂W)", _backward_variant(jacobian="none"),
                "W = softmax(S) sits between S and the loss: ∂L/∂s_j' = Σ_j ∂L/∂w_j · w_j (δ_jj' - w_j')."),
        Mistake("only the diagonal of the softmax's Jacobian (w(1 - w) · ∂L/∂W)", _backward_variant(jacobian="diagonal"),
                "every weight of a row depends on every score of the row (the softmax's denominator): the "
                "off-diagonal terms -w_j w_j' count too. Sum over j."),
        Mistake("the softmax's correction term summed over the queries instead of the keys",
                _backward_variant(jacobian="queries"),
                "a softmax row couples the keys of one query: the sum Σ_j w_j ∂L/∂w_j runs over the last axis "
                "(dim=-1, keepdim=True)."),
        Mistake("the correction term without its factor w_j' (W⊙G - Σ W⊙G)", _backward_variant(jacobian="no_weight"),
                "∂L/∂s_j' = w_j' (g_j' - Σ_j w_j g_j): the whole bracket is multiplied by w_j'."),
        Mistake("the correction term Σ_j g_j without the weights (W ⊙ (G - Σ G))",
                _backward_variant(jacobian="plain_sum"),
                "the sum comes from Σ_j g_j · w_j (δ_jj' - w_j'): it is Σ_j w_j g_j, weighted by the weights."),
        Mistake("the sign of the softmax's correction flipped", _backward_variant(jacobian="sign"),
                "∂w_j/∂s_j' = w_j (δ_jj' - w_j'): the diagonal term is positive, the correction negative, "
                "∂L/∂S = W ⊙ (G - Σ W⊙G)."),
        Mistake("the 1/√d_k left out of grad_q and grad_k", _backward_variant(scale="none"),
                "S = q kᵀ / √d_k: the chain rule through that division brings a factor 1/√d_k to both."),
        Mistake("grad_q and grad_k divided by d_k instead of √d_k", _backward_variant(scale="d"),
                "the forward pass divides by √d_k, so the backward pass multiplies by 1/√d_k, once."),
        Mistake("the weights recomputed without the 1/√d_k", _backward_variant(forward_scale=False),
                "the backward pass needs the same weights as the forward pass: softmax(q kᵀ / √d_k)."),
        Mistake("grad_v computed as W · grad_out (no transpose)", _backward_variant(grad_v="no_transpose"),
                "O = W v, so ∂L/∂v = Wᵀ · grad_out: (T_k, T_q) @ (T_q, d_v) gives (T_k, d_v)."),
        Mistake("grad_k computed as ∂L/∂S · q (no transpose)", _backward_variant(grad_k="no_transpose"),
                "s_ij = q_i · k_j / √d_k, so ∂L/∂k_j = Σ_i ∂L/∂s_ij q_i / √d_k: (∂L/∂S)ᵀ · q."),
        Mistake("∂L/∂W transposed (v · grad_outᵀ)", _backward_variant(grad_w="transposed"),
                "o_i = Σ_j w_ij v_j, so ∂L/∂w_ij = grad_out_i · v_j: grad_out @ vᵀ, shape (T_q, T_k)."),
        Mistake("grad_q and grad_k returned in the wrong order", _backward_variant(swap=True),
                "return (grad_q, grad_k, grad_v), in the order of the arguments q, k, v."),
    ],
)


# ----------------------------------------------------------------------------- 5–6. predict before you compute
def predict_weight():
    """The first key's weight for q = (1,1,1,1), k1 = (1,1,1,1), k2 = (1,-1,1,-1)."""
    q = torch.tensor([[1.0, 1, 1, 1]])
    k = torch.tensor([[1.0, 1, 1, 1], [1.0, -1, 1, -1]])
    _, w = scaled_dot_product_attention(q, k, k)
    return w[0, 0].item()


PREDICT_WEIGHT = Exercise(
    id=f"{CHAPTER}/predict_weight",
    title="Predict an attention weight",
    reference=predict_weight,
    cases=lambda g: [Case("your prediction", ())],
    atol=0.005,
    rtol=0.0,
    kind="prediction",
    mistakes=[
        Mistake("a prediction without the 1/√d_k scaling", lambda: 1 / (1 + math.exp(-4)),
                "the dot products are 4 and 0, but they are divided by √d_k = 2 before the softmax."),
        Mistake("a prediction that divides by d_k", lambda: 1 / (1 + math.exp(-1)),
                "divide by √d_k = 2, not by d_k = 4."),
        Mistake("equal weights", lambda: 0.5, "the two scores differ, so the softmax favours the larger one."),
        Mistake("the weight of the other key (k₂)", lambda: 1 / (1 + math.exp(2)),
                "k₁ points the same way as q, so it gets the larger score and the larger weight."),
        Mistake("the scores normalised without the exponential (4 / (4 + 0))", lambda: 1.0,
                "softmax exponentiates first: e^a / (e^a + e^b), with the scaled scores a and b."),
        Mistake("exp(2) without dividing by the sum", lambda: math.exp(2),
                "a weight is a share between 0 and 1: divide e^2 by e^2 + e^0."),
    ],
)


def predict_shapes():
    """(output shape, weights shape) for q (2, 3, 5, 16), k (2, 3, 7, 16), v (2, 3, 7, 32)."""
    q, k, v = torch.zeros(2, 3, 5, 16), torch.zeros(2, 3, 7, 16), torch.zeros(2, 3, 7, 32)
    out, w = scaled_dot_product_attention(q, k, v)
    return tuple(out.shape), tuple(w.shape)


PREDICT_SHAPES = Exercise(
    id=f"{CHAPTER}/predict_shapes",
    title="Predict the shapes",
    reference=predict_shapes,
    cases=lambda g: [Case("your prediction", ())],
    kind="prediction",
    output_names=("output shape", "weights shape"),
    mistakes=[
        Mistake("the output's last dimension taken from d_k", lambda: ((2, 3, 5, 16), (2, 3, 5, 7)),
                "the output is a mix of value vectors, so its last dimension is d_v."),
        Mistake("(T_k, T_q) weights", lambda: ((2, 3, 5, 32), (2, 3, 7, 5)),
                "one row per query, one column per key: (..., T_q, T_k)."),
        Mistake("the two shapes swapped", lambda: ((2, 3, 5, 7), (2, 3, 5, 32)),
                "the first element is the output's shape, the second the weights' shape."),
        Mistake("the output with one row per key (T_k) instead of per query", lambda: ((2, 3, 7, 32), (2, 3, 5, 7)),
                "every query gets one output vector: (…, T_q, d_v)."),
        Mistake("the weights without the batch dimensions", lambda: ((2, 3, 5, 32), (5, 7)),
                "the leading (2, 3) are batch dimensions: each of the 6 attention problems has its own weights."),
        Mistake("the weights' last dimension taken from d_k", lambda: ((2, 3, 5, 32), (2, 3, 5, 16)),
                "a weight belongs to a (query, key) pair: the last dimension counts the keys, T_k = 7."),
    ],
)

EXERCISES = [PADDED_CROSS, PREFIX_LM, STREAMING, BACKWARD, PREDICT_WEIGHT, PREDICT_SHAPES]
