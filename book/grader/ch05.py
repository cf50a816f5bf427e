"""Graded exercises of chapter 05 — multi-head attention: references, seeded cases, classic mistakes.

The chapter prints ``split_heads``, ``merge_heads`` and ``multi_head_attention`` line for line, so
none of them is an exercise: these make the learner debug, extend and derive instead — fix a broken
packed-projection attention, build per-head window masks, grouped-query attention, the heads as a
loop over weight slices, and a parameter count for any head shape.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from book.attention import causal_mask, padding_mask, scaled_dot_product_attention
from book.grader.core import Case, Exercise, Mistake, bug_combinations
from book.multihead import merge_heads, multi_head_attention, split_heads

CHAPTER = "05_multi_head_attention"
NOT_A_REPLACEMENT = ("multi_head_attention", "MultiHeadAttention", "torch.nn.MultiheadAttention",
                     "torch.nn.functional.multi_head_attention_forward")


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _weights(g, d, bias=True):
    """w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o with (out, in) matrices, as F.linear wants them."""
    out = []
    for _ in range(4):
        out += [_randn(g, d, d, scale=d**-0.5), _randn(g, d, scale=0.3) if bias else None]
    return tuple(out)


def _masked(scores, mask, mode="fill"):
    """Scores with a bool mask (True = may attend) applied: the right way, or a classic wrong one."""
    if mask is None or mode == "ignore":
        return scores
    if mode == "inverted":
        return scores.masked_fill(mask, float("-inf"))
    if mode == "inverted_big":  # the same mistake with a finite fill: no NaN to give it away
        return scores.masked_fill(mask, -1e9)
    if mode == "zero":
        return scores.masked_fill(~mask, 0.0)
    return scores.masked_fill(~mask, float("-inf"))


MASK_MISTAKES = {  # mode -> (name, hint), shared by every exercise of the chapter that takes a mask
    "inverted": ("an inverted mask (True treated as 'blocked')",
                 "in this book True means 'may attend': fill the scores where the mask is False (~mask)."),
    "inverted_big": ("an inverted mask (True treated as 'blocked') filled with a large negative number",
                     "in this book True means 'may attend': fill where the mask is False (~mask). A finite "
                     "fill such as -1e9 hides the mistake — no NaN — but the weights sit on the wrong keys."),
    "ignore": ("the mask ignored", "pass the mask on to the attention: masked scores become -inf before the softmax."),
}


# ----------------------------------------------------------------------------- 1. find and fix the bugs
def packed_self_attention(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None):
    """Multi-head self-attention with one packed input projection, laid out as
    nn.MultiheadAttention's in_proj_weight: w_qkv (3·d_model, d_model) = [W_Q; W_K; W_V] stacked
    on the rows, b_qkv (3·d_model,) or None. Returns output (B, T, d_model), weights (B, h, T, T)."""
    w_q, w_k, w_v = w_qkv.chunk(3, dim=0)
    b_q, b_k, b_v = (None, None, None) if b_qkv is None else b_qkv.chunk(3)
    return multi_head_attention(x, x, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask)


BUGS = {  # the three bugs of the notebook's buggy_packed_self_attention
    "layout": ("the packed projection split as (h, 3, d_k) instead of (3, h, d_k)",
               "w_qkv stacks all of W_Q's rows, then W_K's, then W_V's: the 3·d_model features of a token "
               "are [q | k | v], each d_model long, so cut them as (3, h, d_k) — reshape(B, T, 3, h, d_k)."),
    "scale": ("the scores divided by √d_model instead of √d_k",
              "each head compares vectors of d_k = d_model / h features: divide its scores by math.sqrt(d_k)."),
    "mask": ("the mask still inverted (masked_fill(mask, …))",
             "True means 'may attend': fill the scores where the mask is False, masked_fill(~mask, -inf)."),
}


def _packed_variant(bugs=()):
    """The notebook's buggy function with the given bugs left in (all three: the function as given)."""
    def attention(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None):
        B, T, d_model = x.shape
        d_k = d_model // num_heads
        qkv = F.linear(x, w_qkv, b_qkv)  # (B, T, 3·d_model)
        if "layout" in bugs:
            q, k, v = qkv.reshape(B, T, num_heads, 3, d_k).permute(3, 0, 2, 1, 4)
        else:
            q, k, v = qkv.reshape(B, T, 3, num_heads, d_k).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d_model if "scale" in bugs else d_k)
        if mask is not None:
            scores = scores.masked_fill(mask, -1e9) if "mask" in bugs else scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        out = (weights @ v).transpose(1, 2).reshape(B, T, d_model)
        return F.linear(out, w_o, b_o), weights

    return attention


def _packed_weights(g, d, bias=True):
    w_qkv = _randn(g, 3 * d, d, scale=d**-0.5)
    b_qkv = _randn(g, 3 * d, scale=0.3) if bias else None
    return w_qkv, b_qkv, _randn(g, d, d, scale=d**-0.5), _randn(g, d, scale=0.3) if bias else None


def _packed_cases(g):
    lengths = padding_mask(torch.tensor([6, 3, 5]), 6)[:, None, None, :]  # (3, 1, 1, 6)
    return [
        Case("B=2, T=5, d_model=8, 2 heads, no mask", (_randn(g, 2, 5, 8), *_packed_weights(g, 8), 2)),
        Case("a causal mask (6, 6), d_model=12, 3 heads", (_randn(g, 2, 6, 12), *_packed_weights(g, 12), 3,
                                                            causal_mask(6))),
        Case("a padding mask (3, 1, 1, 6), d_model=16, 4 heads", (_randn(g, 3, 6, 16), *_packed_weights(g, 16), 4,
                                                                   lengths)),
        Case("no biases (b_qkv and b_o are None), d_model=8, 4 heads",
             (_randn(g, 2, 4, 8), *_packed_weights(g, 8, bias=False), 4)),
        Case("a single head, d_model=6, a causal mask", (_randn(g, 2, 5, 6), *_packed_weights(g, 6), 1, causal_mask(5))),
        Case("d_model=64 with 8 heads, a causal mask", (_randn(g, 1, 7, 64), *_packed_weights(g, 64), 8, causal_mask(7))),
    ]


def _bug_mistakes():
    return bug_combinations(BUGS, _packed_variant,
                            ("it runs and has the right shapes, but compare it with multi_head_attention on the same "
                             "weights (w_qkv.chunk(3)): look at how the packed features are cut, at the scale, at the mask."))


PACKED = Exercise(
    id=f"{CHAPTER}/packed_self_attention",
    title="Find and fix the bugs: attention with a packed QKV projection",
    reference=packed_self_attention,
    cases=_packed_cases,
    output_names=("output", "weights"),
    nan_hint="a row whose mask allows no key gives 0/0: check which way round the mask is",
    forbidden=NOT_A_REPLACEMENT,
    forbidden_why="fix the given function itself rather than replace it with a finished implementation",
    mistakes=_bug_mistakes() + [
        Mistake("a reshape without a transpose when merging the heads",
                lambda x, w, b, wo, bo, h, mask=None: _merge_no_transpose_packed(x, w, b, wo, bo, h, mask),
                "(weights @ v) is (B, h, T, d_k): transpose to (B, T, h, d_k) before reshaping to (B, T, d_model)."),
    ],
)


def _merge_no_transpose_packed(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None):
    B, T, d = x.shape
    w_q, w_k, w_v = w_qkv.chunk(3)
    b_q, b_k, b_v = (None,) * 3 if b_qkv is None else b_qkv.chunk(3)
    q, k, v = (split_heads(F.linear(x, w, b), num_heads) for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    return F.linear(out.reshape(B, T, d), w_o, b_o), weights


# ----------------------------------------------------------------------------- 2. a window per head
def head_window_mask(is_real: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """(B, T) bool (True at real tokens), (h,) window sizes -> (B, h, T, T) bool, True = may attend:
    in head i, query t sees key j when j is real, j <= t and t - j < windows[i] (its windows[i]
    most recent tokens, itself included)."""
    T = is_real.shape[-1]
    pos = torch.arange(T, device=is_real.device)
    back = pos[:, None] - pos[None, :]  # (T, T): how far key j lies behind query t
    w = windows.to(is_real.device)[:, None, None]  # (h, 1, 1)
    allowed = (back >= 0) & (back < w)  # (h, T, T)
    return allowed[None] & is_real[:, None, None, :]  # (B, h, T, T)


def _window_variant(reach="ok", direction="back", padding="keys", invert=False, first_window=False,
                    from_start=False, no_window=False):
    def mask(is_real, windows):
        T = is_real.shape[-1]
        pos = torch.arange(T)
        back = pos[:, None] - pos[None, :]  # t - j
        w = windows.long()
        if first_window:
            w = w[:1].expand_as(w)
        w = w[:, None, None]
        if no_window:
            allowed = (back >= 0).expand(w.shape[0], -1, -1)
        elif from_start:  # the first w tokens of the sequence instead of the w most recent
            allowed = (back >= 0) & (pos[None, :] < w)
        else:
            dist = back.abs() if direction == "both" else back
            near = (dist <= w) if reach == "plus_one" else (dist < w)
            allowed = near & (back >= 0) if direction == "back" else near
        if padding == "keys":
            out = allowed[None] & is_real[:, None, None, :]
        elif padding == "queries":
            out = allowed[None] & is_real[:, None, :, None]
        else:
            out = allowed[None].expand(is_real.shape[0], -1, -1, -1)
        return ~out if invert else out

    return mask


def _real(lengths, T):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]


def _window_cases(g):
    return [
        Case("4 heads with windows [1, 2, 3, 8], lengths [6, 4], T = 6", (_real([6, 4], 6), torch.tensor([1, 2, 3, 8]))),
        Case("one head with window 3, one sequence of 7 real tokens", (_real([7], 7), torch.tensor([3]))),
        Case("3 heads, windows [2, 5, 2] (int32), lengths [5, 1, 3], T = 5",
             (_real([5, 1, 3], 5), torch.tensor([2, 5, 2], dtype=torch.int32))),
        Case("2 heads whose windows reach past the sequence ([9, 20]), lengths [4, 2], T = 4",
             (_real([4, 2], 4), torch.tensor([9, 20]))),
        Case("8 heads, windows 1 … 8, lengths [8, 8, 6], T = 8", (_real([8, 8, 6], 8), torch.arange(1, 9))),
    ]


HEAD_WINDOW = Exercise(
    id=f"{CHAPTER}/head_window_mask",
    title="A window per head: masks of shape (B, h, T, T)",
    reference=head_window_mask,
    cases=_window_cases,
    mistakes=[
        Mistake("a window one token too wide (t - j <= w)", _window_variant(reach="plus_one"),
                "a window of w holds w keys, the query itself included: t - j = 0, 1, …, w - 1."),
        Mistake("a window that also looks ahead (|t - j| < w, no causal part)", _window_variant(direction="both"),
                "the window only reaches back: key j must not lie in the future (j <= t) as well as be near."),
        Mistake("the causal part missing (every future key allowed)", _window_variant(direction="any"),
                "t - j < w is true for every j > t: also require t - j >= 0."),
        Mistake("the padding applied to the queries (rows) instead of the keys (columns)",
                _window_variant(padding="queries"),
                "padding hides *keys*: the padding mask goes on the last axis, is_real[:, None, None, :]."),
        Mistake("the padding missing", _window_variant(padding="none"),
                "a padding key must never be attended: combine with is_real[:, None, None, :] using &."),
        Mistake("an inverted mask (True = blocked)", _window_variant(invert=True),
                "in this book True means 'may attend'."),
        Mistake("every head given the first head's window", _window_variant(first_window=True),
                "head i uses windows[i]: put the windows on the head axis, windows[:, None, None] against a (T, T) "
                "table of distances."),
        Mistake("the first w tokens of the sequence instead of the w most recent", _window_variant(from_start=True),
                "the window slides with the query: it is about the distance t - j, not about j alone."),
        Mistake("the windows not applied (a plain causal mask in every head)", _window_variant(no_window=True),
                "besides j <= t, head i also needs t - j < windows[i]: compare the distances with "
                "windows[:, None, None]."),
    ],
)


# ----------------------------------------------------------------------------- 3. grouped-query attention
def grouped_query_attention(q_in, kv_in, w_q, w_k, w_v, w_o, num_heads, n_kv_heads, mask=None):
    """Multi-head attention with n_kv_heads key/value heads, each shared by num_heads / n_kv_heads
    consecutive query heads (query head i uses key/value head i // group). No biases.

    w_q, w_o: (d_model, d_model); w_k, w_v: (n_kv_heads·d_k, d_model), d_k = d_model / num_heads.
    returns output (B, T_q, d_model) and weights (B, num_heads, T_q, T_k)
    """
    q = split_heads(F.linear(q_in, w_q), num_heads)  # (B, h, T_q, d_k)
    k = split_heads(F.linear(kv_in, w_k), n_kv_heads)  # (B, h_kv, T_k, d_k)
    v = split_heads(F.linear(kv_in, w_v), n_kv_heads)  # (B, h_kv, T_k, d_k)
    group = num_heads // n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, h, T_k, d_k)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    return F.linear(merge_heads(out), w_o), weights


def _gqa_weights(g, d, h, h_kv):
    d_kv = h_kv * (d // h)
    return (_randn(g, d, d, scale=d**-0.5), _randn(g, d_kv, d, scale=d**-0.5), _randn(g, d_kv, d, scale=d**-0.5),
            _randn(g, d, d, scale=d**-0.5))


def _gqa_cases(g):
    pad = padding_mask(torch.tensor([6, 2]), 6)[:, None, None, :]  # (2, 1, 1, 6)
    return [
        Case("self-attention, d_model=16, 4 query heads sharing 2 key/value heads",
             (*(2 * (_randn(g, 2, 5, 16),)), *_gqa_weights(g, 16, 4, 2), 4, 2)),
        Case("multi-query: 8 query heads, 1 key/value head, d_model=32",
             (*(2 * (_randn(g, 2, 4, 32),)), *_gqa_weights(g, 32, 8, 1), 8, 1)),
        Case("cross-attention T_q=3, T_k=6, d_model=12, 6 query heads, 3 key/value heads",
             (_randn(g, 2, 3, 12), _randn(g, 2, 6, 12), *_gqa_weights(g, 12, 6, 3), 6, 3)),
        Case("a causal mask (6, 6), d_model=16, 4 query heads, 2 key/value heads",
             (*(2 * (_randn(g, 3, 6, 16),)), *_gqa_weights(g, 16, 4, 2), 4, 2, causal_mask(6))),
        Case("a padding mask (2, 1, 1, 6), cross-attention, d_model=16, 8 query heads, 2 key/value heads",
             (_randn(g, 2, 4, 16), _randn(g, 2, 6, 16), *_gqa_weights(g, 16, 8, 2), 8, 2, pad)),
        Case("as many key/value heads as query heads (plain multi-head attention), d_model=8, 2 heads",
             (*(2 * (_randn(g, 2, 5, 8),)), *_gqa_weights(g, 8, 2, 2), 2, 2)),
    ]


def _gqa_variant(share="interleave", scale="d_k", out_proj=True, mask_mode="fill", kv="kv", average=False):
    def attention(q_in, kv_in, w_q, w_k, w_v, w_o, num_heads, n_kv_heads, mask=None):
        src = kv_in if kv == "kv" else q_in
        q = split_heads(F.linear(q_in, w_q), num_heads)
        k = split_heads(F.linear(src, w_k), n_kv_heads)
        v = split_heads(F.linear(src, w_v), n_kv_heads)
        group = num_heads // n_kv_heads
        if share == "interleave":
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        else:  # tiled: query head i gets key/value head i % n_kv_heads
            k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
        d_model = q_in.shape[-1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1] if scale == "d_k" else d_model)
        weights = torch.softmax(_masked(scores, mask, mask_mode), dim=-1)
        out = merge_heads(weights @ v)
        out = F.linear(out, w_o) if out_proj else out
        return out, (weights.mean(1) if average else weights)

    return attention


GQA = Exercise(
    id=f"{CHAPTER}/grouped_query_attention",
    title="Grouped-query attention: fewer key/value heads",
    reference=grouped_query_attention,
    cases=_gqa_cases,
    output_names=("output", "weights"),
    nan_hint="a row whose mask allows no key gives 0/0: check that True in the mask means 'may attend'",
    forbidden=NOT_A_REPLACEMENT,
    forbidden_why="build it from the projections, split_heads and the attention of chapter 04 (you may compare "
                  "with the finished ones outside your function)",
    mistakes=[
        Mistake("the key/value heads tiled (head i uses key/value head i % n_kv_heads)", _gqa_variant(share="tile"),
                "consecutive query heads share one key/value head: query head i uses key/value head "
                "i // (num_heads // n_kv_heads). k.repeat(1, g, 1, 1) tiles [0, 1, 0, 1]; you need [0, 0, 1, 1] "
                "(repeat_interleave on the head axis)."),
        Mistake("scaling by √d_model instead of √d_k", _gqa_variant(scale="d_model"),
                "every head, query or key, has d_k = d_model / num_heads features: divide by math.sqrt(d_k)."),
        Mistake("the output projection forgotten", _gqa_variant(out_proj=False),
                "after merging the heads, apply W_O: F.linear(merged, w_o)."),
        Mistake("keys and values computed from q_in instead of kv_in", _gqa_variant(kv="q"),
                "queries come from q_in, keys and values from kv_in (they differ in cross-attention)."),
        Mistake("attention weights averaged over the heads", _gqa_variant(average=True),
                "return one map per *query* head, shape (B, num_heads, T_q, T_k)."),
        *(Mistake(name, _gqa_variant(mask_mode=mode), hint) for mode, (name, hint) in MASK_MISTAKES.items()),
    ],
)


# ----------------------------------------------------------------------------- 4. one head at a time
def multi_head_attention_loop(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
    """multi_head_attention computed head by head from row slices of the weights (no reshapes)."""
    d_k = q_in.shape[-1] // num_heads
    outs, maps = [], []
    for i in range(num_heads):
        rows = slice(i * d_k, (i + 1) * d_k)

        def proj(x, w, b):
            return F.linear(x, w[rows], None if b is None else b[rows])

        m = mask
        if mask is not None and mask.dim() == 4:  # (B, h or 1, T_q or 1, T_k): this head's slice
            m = mask[:, i if mask.size(1) > 1 else 0]
        out, w = scaled_dot_product_attention(proj(q_in, w_q, b_q), proj(kv_in, w_k, b_k), proj(kv_in, w_v, b_v), m)
        outs.append(out)
        maps.append(w)
    return F.linear(torch.cat(outs, dim=-1), w_o, b_o), torch.stack(maps, dim=1)


def _mha_cases(g):
    x = _randn(g, 2, 5, 8)
    pad = padding_mask(torch.tensor([6, 3]), 6)[:, None, None, :]  # (B, 1, 1, T_k)
    return [
        Case("self-attention: B=2, T=5, d_model=8, 2 heads", (x, x.clone(), *_weights(g, 8), 2)),
        Case("cross-attention: T_q=3, T_k=6, d_model=12, 3 heads",
             (_randn(g, 2, 3, 12), _randn(g, 2, 6, 12), *_weights(g, 12), 3)),
        Case("a causal mask of shape (T, T), d_model=16, 4 heads",
             (*(2 * (_randn(g, 3, 6, 16),)), *_weights(g, 16), 4, causal_mask(6))),
        Case("a padding mask of shape (B, 1, 1, T_k), cross-attention, d_model=8, 2 heads",
             (_randn(g, 2, 4, 8), _randn(g, 2, 6, 8), *_weights(g, 8), 2, pad)),
        Case("a single head, d_model=6", (*(2 * (_randn(g, 2, 4, 6),)), *_weights(g, 6), 1)),
        Case("d_model=64 with 8 heads", (*(2 * (_randn(g, 1, 7, 64),)), *_weights(g, 64), 8)),
        Case("no biases (every b_* is None), cross-attention, 2 heads",
             (_randn(g, 2, 3, 8), _randn(g, 2, 5, 8), *_weights(g, 8, bias=False), 2)),
    ]


def _loop_variant(columns=False, stack_dim=1, out_proj=True, scale="d_k", mask_mode="fill", bias_per_head=False):
    def mha_loop(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
        d_model = q_in.shape[-1]
        d_k = d_model // num_heads
        outs, maps = [], []
        for i in range(num_heads):
            r = slice(i * d_k, (i + 1) * d_k)

            def proj(x, w, b):
                bb = 0 if b is None else b[r]
                return x @ w[:, r] + bb if columns else F.linear(x, w[r], None if b is None else b[r])

            q, k, v = proj(q_in, w_q, b_q), proj(kv_in, w_k, b_k), proj(kv_in, w_v, b_v)
            scores = q @ k.transpose(-2, -1) / math.sqrt(d_k if scale == "d_k" else d_model)
            m = None if mask is None else (mask.squeeze(1) if mask.dim() == 4 else mask)
            w = torch.softmax(_masked(scores, m, mask_mode), dim=-1)
            outs.append(w @ v)
            maps.append(w)
        if bias_per_head:  # W_O applied head by head (column slices), its bias added every time
            out = sum(F.linear(o, w_o[:, i * d_k:(i + 1) * d_k], b_o) for i, o in enumerate(outs))
        else:
            merged = torch.cat(outs, dim=-1)
            out = F.linear(merged, w_o, b_o) if out_proj else merged
        return out, torch.stack(maps, dim=stack_dim)

    return mha_loop


LOOP = Exercise(
    id=f"{CHAPTER}/multi_head_attention_loop",
    title="One head at a time, from slices of the weights",
    reference=multi_head_attention_loop,
    cases=_mha_cases,
    output_names=("output", "weights"),
    nan_hint="a fully masked row gives NaN; check that True in the mask means 'may attend'",
    forbidden=("torch.reshape", "Tensor.view", "torch.flatten", "torch.unflatten", "split_heads", "merge_heads",
               "rearrange", *NOT_A_REPLACEMENT),
    forbidden_why="loop over the heads and slice the weights instead (indexing, torch.cat and torch.stack are fine)",
    mistakes=[
        Mistake("column slices w[:, i·d_k:(i+1)·d_k] (treating W as (in, out))", _loop_variant(columns=True),
                "F.linear's matrices are (out, in): head i owns the *rows* i·d_k … (i+1)·d_k-1 of w_q, w_k, w_v, "
                "and the same slice of each bias."),
        Mistake("the per-head maps stacked on the first axis: (h, B, T_q, T_k)", _loop_variant(stack_dim=0),
                "stack the h maps with torch.stack(maps, dim=1) to get (B, h, T_q, T_k)."),
        Mistake("the output projection forgotten", _loop_variant(out_proj=False),
                "concatenate the head outputs along the features, then apply F.linear(…, w_o, b_o)."),
        Mistake("scaling by √d_model instead of √d_k", _loop_variant(scale="d_model"),
                "each head's vectors have d_k = d_model / h features: divide by math.sqrt(d_k)."),
        Mistake("W_O's bias added once per head", _loop_variant(bias_per_head=True),
                "applying w_o head by head (its columns) is fine, but b_o belongs to the sum: add it once."),
        *(Mistake(name, _loop_variant(mask_mode=mode), hint) for mode, (name, hint) in MASK_MISTAKES.items()),
    ],
)


# ----------------------------------------------------------------------------- 5. parameter count
def mha_parameter_count(d_model: int, num_heads: int, d_k: int, d_v: int, bias: bool = True) -> int:
    """W_Q, W_K: d_model × h·d_k; W_V: d_model × h·d_v; W_O: h·d_v × d_model; one bias per output feature."""
    weights = d_model * num_heads * (2 * d_k + d_v) + num_heads * d_v * d_model
    biases = num_heads * (2 * d_k + d_v) + d_model
    return weights + (biases if bias else 0)


def _count_cases(g):
    return [
        Case("the base Transformer: d_model=512, h=8, d_k=d_v=64, with biases", (512, 8, 64, 64, True)),
        Case("the same without biases", (512, 8, 64, 64, False)),
        Case("d_model=256, h=4, d_k=32, d_v=128", (256, 4, 32, 128, True)),
        Case("wide heads: d_model=64, h=16, d_k=d_v=8", (64, 16, 8, 8, True)),
        Case("one head: d_model=10, h=1, d_k=3, d_v=5", (10, 1, 3, 5, True)),
        Case("d_model=1024, h=16, d_k=128, d_v=64, no biases", (1024, 16, 128, 64, False)),
    ]


COUNT = Exercise(
    id=f"{CHAPTER}/mha_parameter_count",
    title="Count the parameters of a general configuration",
    reference=mha_parameter_count,
    cases=_count_cases,
    atol=0.0,
    rtol=0.0,
    returns=int,
    mistakes=[
        Mistake("the formula 4·d_model² + 4·d_model, which only holds when h·d_k = h·d_v = d_model",
                lambda d, h, dk, dv, bias=True: 4 * d * d + (4 * d if bias else 0),
                "here h·d_k and h·d_v need not equal d_model: count each matrix as (inputs × outputs)."),
        Mistake("the biases forgotten", lambda d, h, dk, dv, bias=True: mha_parameter_count(d, h, dk, dv, False),
                "with bias=True every linear map has one bias per output feature."),
        Mistake("the output projection forgotten",
                lambda d, h, dk, dv, bias=True: d * h * (2 * dk + dv) + (h * (2 * dk + dv) if bias else 0),
                "W_O maps the h·d_v concatenated features back to d_model, with a bias of size d_model."),
        Mistake("the heads forgotten (d_k and d_v counted once, not h times)",
                lambda d, h, dk, dv, bias=True: mha_parameter_count(d, 1, dk, dv, bias),
                "every head has its own d_k query, d_k key and d_v value features: multiply by h."),
        Mistake("W_O's bias counted with h·d_v entries instead of d_model",
                lambda d, h, dk, dv, bias=True: mha_parameter_count(d, h, dk, dv, bias) + (h * dv - d if bias else 0),
                "a bias has one entry per *output* feature; W_O outputs d_model features."),
        Mistake("the values sized d_k instead of d_v",
                lambda d, h, dk, dv, bias=True: mha_parameter_count(d, h, dk, dk, bias),
                "W_V and W_O involve d_v, the size of each head's value vectors."),
        Mistake("W_O's bias forgotten (biases for W_Q, W_K, W_V only)",
                lambda d, h, dk, dv, bias=True: mha_parameter_count(d, h, dk, dv, bias) - (d if bias else 0),
                "W_O is a linear map too: with bias=True it has a bias of d_model entries."),
        Mistake("4·d_model², whatever the head sizes and bias",
                lambda d, h, dk, dv, bias=True: 4 * d * d,
                "count each of the four matrices as (inputs × outputs) — h·d_k, h·d_v need not be d_model — "
                "and add one bias per output feature when bias=True."),
    ],
)

EXERCISES = [PACKED, HEAD_WINDOW, GQA, LOOP, COUNT]
