"""Graded exercises of chapter 04 — self-attention: references, seeded cases, classic mistakes."""
from __future__ import annotations

import math

import torch

from book.attention import causal_mask, padding_mask, scaled_dot_product_attention, self_attention, softmax
from book.grader.core import Case, Exercise, Mistake

CHAPTER = "04_self_attention"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# ----------------------------------------------------------------------------- 1. softmax
def _softmax_cases(g):
    big = torch.stack([_randn(g, 6, scale=1e4), _randn(g, 6, scale=1e4) - 3e4])  # rows far apart
    masked = _randn(g, 3, 5)
    masked[:, 1] = float("-inf")  # a masked key: exp(-inf) = 0
    return [
        Case("a vector of 4 scores", (_randn(g, 4),)),
        Case("a (3, 5) matrix, dim=-1", (_randn(g, 3, 5), -1)),
        Case("a (2, 3, 4) tensor, dim=1", (_randn(g, 2, 3, 4), 1)),
        Case("a (5, 2) matrix, dim=0", (_randn(g, 5, 2), 0)),
        Case("large-magnitude scores (|x| ~ 1e4)", (big, -1)),
        Case("scores with -inf entries (masked positions)", (masked, -1)),
    ]


def _naive_softmax(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def _global_shift_softmax(x, dim=-1):
    e = torch.exp(x - x.max())
    return e / e.sum(dim=dim, keepdim=True)


def _last_axis_softmax(x, dim=-1):
    return softmax(x, dim=-1)


def _whole_tensor_softmax(x, dim=-1):
    e = torch.exp(x - x.max())
    return e / e.sum()


def _max_normalised_softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.amax(dim=dim, keepdim=True)


def _clamped_softmax(x, dim=-1):
    e = torch.exp(x.clamp(-80.0, 80.0))
    return e / e.sum(dim=dim, keepdim=True)


SOFTMAX = Exercise(
    id=f"{CHAPTER}/softmax",
    title="A numerically stable softmax",
    reference=softmax,
    cases=_softmax_cases,
    nan_hint="exp() of a large score overflows to inf; subtract the maximum along `dim` first (keepdim=True)",
    forbidden=("torch.softmax", "torch.nn.Softmax"),
    forbidden_why="that is what you are writing: exp, a sum and a division (torch.logsumexp is fine)",
    mistakes=[
        Mistake("the naive softmax exp(x) / sum(exp(x))", _naive_softmax,
                "exp(1e4) overflows to inf. Subtract the maximum along `dim` before exp(); the result is unchanged."),
        Mistake("a max-shift by the global maximum instead of the maximum along `dim`", _global_shift_softmax,
                "rows far below the global max underflow to 0/0. Use x.amax(dim=dim, keepdim=True)."),
        Mistake("softmax over the last axis whatever `dim` says", _last_axis_softmax,
                "use the `dim` argument in both the max and the sum."),
        Mistake("normalising over the whole tensor instead of along `dim`", _whole_tensor_softmax,
                "sum with .sum(dim=dim, keepdim=True) so each slice along `dim` sums to 1."),
        Mistake("divided by the largest exp instead of the sum", _max_normalised_softmax,
                "subtracting the max is only for stability; the probabilities come from dividing by the *sum* of "
                "the exponentials, so that each slice sums to 1."),
        Mistake("the scores clamped to keep exp() finite", _clamped_softmax,
                "clamping changes the scores themselves (1e4 and 5e3 both become 80); subtract the maximum instead "
                "— it changes nothing in the result."),
    ],
)


# ----------------------------------------------------------------------------- 2. scaled dot-product attention
def _sdpa_cases(g):
    causal = causal_mask(5)  # (5, 5), broadcast over the batch
    pad = padding_mask(torch.tensor([6, 4, 1]), 6)[:, None, :]  # (3, 1, 6): every query sees the real keys
    return [
        Case("q, k, v of shape (5, 8) — no batch", (_randn(g, 5, 8), _randn(g, 5, 8), _randn(g, 5, 8))),
        Case("a batch with T_q=4, T_k=6, d_k=8, d_v=3",
             (_randn(g, 2, 4, 8), _randn(g, 2, 6, 8), _randn(g, 2, 6, 3))),
        Case("three leading batch dims (2, 3, 2, T, d)",
             (_randn(g, 2, 3, 2, 4, 6), _randn(g, 2, 3, 2, 5, 6), _randn(g, 2, 3, 2, 5, 7))),
        Case("a causal mask of shape (5, 5) on a batch of 2",
             (_randn(g, 2, 5, 8), _randn(g, 2, 5, 8), _randn(g, 2, 5, 8), causal)),
        Case("a padding mask of shape (3, 1, 6)",
             (_randn(g, 3, 4, 8), _randn(g, 3, 6, 8), _randn(g, 3, 6, 8), pad)),
        Case("large-magnitude scores (q and k scaled by 40)",
             (_randn(g, 2, 4, 8, scale=40.0), _randn(g, 2, 4, 8, scale=40.0), _randn(g, 2, 4, 8))),
    ]


def _sdpa_variant(scale="sqrt", axis=-1, mask_mode="fill", naive=False, swap=False):
    def attention(q, k, v, mask=None):
        d_k = q.size(-1)
        scores = q @ k.transpose(-2, -1)
        scores = scores / {"sqrt": math.sqrt(d_k), "none": 1.0, "d": d_k, "d_v": math.sqrt(v.size(-1)),
                           "times": 1 / math.sqrt(d_k)}[scale]
        if mask is not None and mask_mode == "fill":
            scores = scores.masked_fill(~mask, float("-inf"))
        if mask is not None and mask_mode == "inverted":
            scores = scores.masked_fill(mask, float("-inf"))
        if mask is not None and mask_mode == "inverted_big":
            scores = scores.masked_fill(mask, -1e9)
        if mask is not None and mask_mode == "zero":
            scores = scores.masked_fill(~mask, 0.0)
        weights = torch.softmax(scores, dim=axis) if not naive else _naive_softmax(scores, axis)
        if mask is not None and mask_mode == "after":
            weights = weights * mask
        out = weights @ v
        return (weights, out) if swap else (out, weights)

    return attention


SDPA = Exercise(
    id=f"{CHAPTER}/scaled_dot_product_attention",
    title="Scaled dot-product attention with a mask",
    reference=scaled_dot_product_attention,
    cases=_sdpa_cases,
    output_names=("output", "weights"),
    atol=1e-5,
    rtol=1e-4,
    nan_hint="large scores overflow a hand-written exp(); use a stable softmax (subtract the row max) or torch.softmax",
    mistakes=[
        Mistake("missing the 1/√d_k scaling", _sdpa_variant(scale="none"),
                "divide the scores q·kᵀ by math.sqrt(d_k), where d_k = q.size(-1)."),
        Mistake("scaling by d_k instead of √d_k", _sdpa_variant(scale="d"),
                "the variance of q·k grows like d_k, so its spread grows like √d_k: divide by math.sqrt(d_k)."),
        Mistake("softmax over the wrong axis (over the queries)", _sdpa_variant(axis=-2),
                "each query's weights over the keys must sum to 1: softmax over the last axis (dim=-1)."),
        Mistake("the mask applied after the softmax", _sdpa_variant(mask_mode="after"),
                "masking after softmax leaves rows that no longer sum to 1; fill forbidden scores with -inf "
                "before the softmax."),
        Mistake("an inverted mask (True treated as 'blocked')", _sdpa_variant(mask_mode="inverted"),
                "in this book True means 'may attend': fill the scores where the mask is False (~mask)."),
        Mistake("masking with 0 instead of -inf", _sdpa_variant(mask_mode="zero"),
                "a score of 0 still gets weight exp(0) > 0; use float('-inf') (or a very large negative number)."),
        Mistake("the naive softmax exp(x) / sum(exp(x))", _sdpa_variant(naive=True),
                "big scores overflow exp(); subtract the row max first, or use torch.softmax."),
        Mistake("(weights, output) returned in the wrong order", _sdpa_variant(swap=True),
                "return output first, then weights: `return weights @ v, weights`."),
        Mistake("an inverted mask (True treated as 'blocked') filled with a large negative number",
                _sdpa_variant(mask_mode="inverted_big"),
                "in this book True means 'may attend': fill where the mask is False (~mask). With a finite fill "
                "such as -1e9 nothing turns NaN, so only the values show it: the weight sits on the blocked keys."),
        Mistake("scaling by √d_v instead of √d_k", _sdpa_variant(scale="d_v"),
                "the scale belongs to the dot products q·k, whose size is d_k = q.size(-1), not the values' d_v."),
        Mistake("the scores multiplied by √d_k instead of divided", _sdpa_variant(scale="times"),
                "the scaling shrinks the scores: q kᵀ / math.sqrt(d_k)."),
    ],
)


# ----------------------------------------------------------------------------- 3. causal mask
def _causal_cases(g):
    return [Case(f"n = {n}", (n,)) for n in (1, 2, 5, 8)]


CAUSAL = Exercise(
    id=f"{CHAPTER}/causal_mask",
    title="The causal mask",
    reference=causal_mask,
    cases=_causal_cases,
    mistakes=[
        Mistake("the upper triangle (queries looking into the future)",
                lambda n: torch.ones(n, n, dtype=torch.bool).triu(),
                "position i may attend to 0..i: that is on and *below* the diagonal (tril)."),
        Mistake("a mask that excludes the diagonal", lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1),
                "a token may attend to itself: keep the diagonal (tril with diagonal=0)."),
        Mistake("an inverted mask (True = blocked)", lambda n: ~torch.ones(n, n, dtype=torch.bool).tril(),
                "in this book True means 'may attend'."),
        Mistake("one step into the future allowed (tril(1))", lambda n: torch.ones(n, n, dtype=torch.bool).tril(1),
                "position i may attend to 0..i only: tril with diagonal=0, the default."),
        Mistake("a mask that allows everything", lambda n: torch.ones(n, n, dtype=torch.bool),
                "the future must be hidden: keep only the lower triangle, diagonal included (tril)."),
        Mistake("only the diagonal (each token sees only itself)", lambda n: torch.eye(n, dtype=torch.bool),
                "position i may attend to *every* earlier position too: the whole lower triangle."),
    ],
)


# ----------------------------------------------------------------------------- 4. padding mask, either side
def padding_mask_either_side(lengths: torch.Tensor, max_len: int, left: bool = False) -> torch.Tensor:
    """(B, max_len) bool, True at real tokens: at the start of each row (right padding, the chapter's
    padding_mask) or, with left=True, at its end (left padding, as batched generation uses)."""
    if not left:
        return padding_mask(lengths, max_len)
    positions = torch.arange(max_len, device=lengths.device)  # (max_len,)
    return positions[None, :] >= max_len - lengths[:, None]  # (B, max_len)


def _padding_cases(g):
    return [
        Case("lengths [3, 5, 1], max_len 5", (torch.tensor([3, 5, 1]), 5)),
        Case("lengths [0, 2], max_len 4 (an empty sequence)", (torch.tensor([0, 2]), 4)),
        Case("lengths [3, 5, 1], max_len 5, left padding", (torch.tensor([3, 5, 1]), 5, True)),
        Case("lengths [0, 2, 4], max_len 4, left padding (an empty sequence)", (torch.tensor([0, 2, 4]), 4, True)),
        Case("one full sequence, max_len 7, left padding", (torch.tensor([7]), 7, True)),
        Case("int32 lengths [2, 6, 4, 1], max_len 6, left padding",
             (torch.tensor([2, 6, 4, 1], dtype=torch.int32), 6, True)),
        Case("int32 lengths [2, 6, 4, 1], max_len 6, right padding (left=False)",
             (torch.tensor([2, 6, 4, 1], dtype=torch.int32), 6, False)),
    ]


def _pad_variant(right_op="lt", left_op="ge", side="ok", transpose=False, start=0):
    """Masks from comparisons of the positions with lengths (right) or max_len - lengths (left)."""
    ops = {"lt": torch.lt, "le": torch.le, "ge": torch.ge, "gt": torch.gt}

    def mask(lengths, n, left=False):
        if side == "right_only":
            left = False
        elif side == "flipped":  # left=True read as right padding and the other way round
            left = not left
        pos = torch.arange(start, start + n)
        p, l = (pos[:, None], lengths[None, :]) if transpose else (pos[None, :], lengths[:, None])
        return ops[left_op](p, n - l) if left else ops[right_op](p, l)

    return mask


PADDING = Exercise(
    id=f"{CHAPTER}/padding_mask",
    title="The padding mask, on either side",
    reference=padding_mask_either_side,
    cases=_padding_cases,
    mistakes=[
        Mistake("an off-by-one (<= instead of <)", _pad_variant(right_op="le", left_op="gt"),
                "positions are 0-based: a sequence of length 3 has real tokens at 0, 1, 2 (right padding), or at "
                "max_len - 3 … max_len - 1 (left padding)."),
        Mistake("an inverted mask (True at padding)", _pad_variant(right_op="ge", left_op="lt"),
                "True marks real tokens, the ones that may be attended to."),
        Mistake("a transposed mask of shape (max_len, B)", _pad_variant(transpose=True),
                "rows are sequences: the result has shape (B, max_len)."),
        Mistake("one real token too few (positions counted from 1 with <)", _pad_variant(start=1, left_op="gt"),
                "positions are 0, 1, …, max_len - 1, and position p is real when p < length."),
        Mistake("`left` ignored (always right padding)", _pad_variant(side="right_only"),
                "with left=True the padding comes first and the real tokens sit at the end of each row."),
        Mistake("`left` the wrong way round", _pad_variant(side="flipped"),
                "left=True means the *padding* is on the left, so the real tokens are the last ones of each row."),
        Mistake("left padding one position off (> max_len - length)", _pad_variant(left_op="gt"),
                "with left padding a sequence of length n has real tokens at max_len - n, …, max_len - 1: "
                "position p is real when p >= max_len - n."),
    ],
)


# ----------------------------------------------------------------------------- 5. self-attention with projections
def causal_self_attention(x, w_q, w_k, w_v, mask=None, causal=False):
    """The chapter's self_attention, plus causal=True: every query also hides the keys after it
    (combined with `mask`, if one is given, by a logical and)."""
    if causal:
        allowed = causal_mask(x.shape[-2], device=x.device)  # (T, T)
        mask = allowed if mask is None else mask & allowed
    return self_attention(x, w_q, w_k, w_v, mask)


def _self_attention_cases(g):
    d, dk, dv = 8, 4, 6
    w = lambda a, b: _randn(g, a, b, scale=a**-0.5)  # noqa: E731
    pad = padding_mask(torch.tensor([6, 4, 2]), 6)[:, None, :]  # (3, 1, 6): every query skips the padding
    return [
        Case("x of shape (5, 8), d_k=4, d_v=6", (_randn(g, 5, d), w(d, dk), w(d, dk), w(d, dv))),
        Case("a batch x of shape (2, 7, 8)", (_randn(g, 2, 7, d), w(d, dk), w(d, dk), w(d, dv))),
        Case("a batch with a causal mask passed as mask", (_randn(g, 3, 6, d), w(d, dk), w(d, dk), w(d, dv),
                                                            causal_mask(6))),
        Case("causal=True, no mask, x of shape (3, 6, 8)", (_randn(g, 3, 6, d), w(d, dk), w(d, dk), w(d, dv), None, True)),
        Case("causal=True and a padding mask of shape (3, 1, 6)",
             (_randn(g, 3, 6, d), w(d, dk), w(d, dk), w(d, dv), pad, True)),
        Case("causal=True, x of shape (5, 8) (no batch)", (_randn(g, 5, d), w(d, dk), w(d, dk), w(d, dv), None, True)),
        Case("a padding mask, causal=False", (_randn(g, 3, 6, d), w(d, dk), w(d, dk), w(d, dv), pad, False)),
    ]


def _sa_variant(values=True, swap=False, use_mask=True, keys_from_q=False, causal_mode="and"):
    def attention(x, w_q, w_k, w_v, mask=None, causal=False):
        q, k, v = x @ w_q, x @ (w_q if keys_from_q else w_k), (x @ w_v) if values else x
        if swap:
            q, k = x @ w_k, x @ w_q
        m = mask if use_mask else None
        if causal and causal_mode != "ignore":
            T = x.shape[-2]
            tri = torch.ones(T, T, dtype=torch.bool)
            allowed = tri.triu() if causal_mode == "upper" else tri.tril()
            if causal_mode == "replace" or m is None:
                m = allowed
            else:
                m = (m | allowed) if causal_mode == "or" else (m & allowed)
        return scaled_dot_product_attention(q, k, v, m)

    return attention


SELF_ATTENTION = Exercise(
    id=f"{CHAPTER}/self_attention",
    title="Self-attention with learned projections, optionally causal",
    reference=causal_self_attention,
    cases=_self_attention_cases,
    output_names=("output", "weights"),
    mistakes=[
        Mistake("values not projected (v = x)", _sa_variant(values=False), "v = x @ w_v: the values are projected too."),
        Mistake("w_q and w_k swapped", _sa_variant(swap=True),
                "queries are x @ w_q and keys are x @ w_k; swapping them transposes the scores."),
        Mistake("the mask ignored", _sa_variant(use_mask=False),
                "pass the mask on to scaled_dot_product_attention (combined with the causal mask when causal=True)."),
        Mistake("keys projected with w_q", _sa_variant(keys_from_q=True),
                "keys have their own projection: k = x @ w_k (with w_q twice every score is a squared length)."),
        Mistake("causal=True ignored", _sa_variant(causal_mode="ignore"),
                "with causal=True query t may only attend keys 0 … t: build a (T, T) causal mask from x's length."),
        Mistake("the causal mask replacing the mask instead of combining with it", _sa_variant(causal_mode="replace"),
                "a key must be allowed by the mask AND not lie in the future: mask & causal."),
        Mistake("the causal mask combined with | (or) instead of & (and)", _sa_variant(causal_mode="or"),
                "a key may be attended only if both masks allow it: use &."),
        Mistake("the upper triangle as the causal mask (the future instead of the past)", _sa_variant(causal_mode="upper"),
                "query t may attend keys j <= t: on and *below* the diagonal (tril)."),
    ],
)


# ----------------------------------------------------------------------------- 6–7. predict before you compute
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

EXERCISES = [SOFTMAX, SDPA, CAUSAL, PADDING, SELF_ATTENTION, PREDICT_WEIGHT, PREDICT_SHAPES]
