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


SOFTMAX = Exercise(
    id=f"{CHAPTER}/softmax",
    title="A numerically stable softmax",
    reference=softmax,
    cases=_softmax_cases,
    nan_hint="exp() of a large score overflows to inf; subtract the maximum along `dim` first (keepdim=True)",
    mistakes=[
        Mistake("the naive softmax exp(x) / sum(exp(x))", _naive_softmax,
                "exp(1e4) overflows to inf. Subtract the maximum along `dim` before exp(); the result is unchanged."),
        Mistake("a max-shift by the global maximum instead of the maximum along `dim`", _global_shift_softmax,
                "rows far below the global max underflow to 0/0. Use x.amax(dim=dim, keepdim=True)."),
        Mistake("softmax over the last axis whatever `dim` says", _last_axis_softmax,
                "use the `dim` argument in both the max and the sum."),
        Mistake("normalising over the whole tensor instead of along `dim`", _whole_tensor_softmax,
                "sum with .sum(dim=dim, keepdim=True) so each slice along `dim` sums to 1."),
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
        scores = scores / {"sqrt": math.sqrt(d_k), "none": 1.0, "d": d_k}[scale]
        if mask is not None and mask_mode == "fill":
            scores = scores.masked_fill(~mask, float("-inf"))
        if mask is not None and mask_mode == "inverted":
            scores = scores.masked_fill(mask, float("-inf"))
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
    ],
)


# ----------------------------------------------------------------------------- 4. padding mask
def _padding_cases(g):
    return [
        Case("lengths [3, 5, 1], max_len 5", (torch.tensor([3, 5, 1]), 5)),
        Case("lengths [0, 2], max_len 4 (an empty sequence)", (torch.tensor([0, 2]), 4)),
        Case("one full sequence, max_len 7", (torch.tensor([7]), 7)),
        Case("int32 lengths [2, 6, 4, 1], max_len 6", (torch.tensor([2, 6, 4, 1], dtype=torch.int32), 6)),
    ]


PADDING = Exercise(
    id=f"{CHAPTER}/padding_mask",
    title="The padding mask",
    reference=padding_mask,
    cases=_padding_cases,
    mistakes=[
        Mistake("an off-by-one (<= instead of <)",
                lambda lengths, n: torch.arange(n)[None, :] <= lengths[:, None],
                "positions are 0-based: a sequence of length 3 has real tokens at 0, 1, 2."),
        Mistake("an inverted mask (True at padding)",
                lambda lengths, n: torch.arange(n)[None, :] >= lengths[:, None],
                "True marks real tokens, the ones that may be attended to."),
        Mistake("a transposed mask of shape (max_len, B)",
                lambda lengths, n: torch.arange(n)[:, None] < lengths[None, :],
                "rows are sequences: the result has shape (B, max_len)."),
    ],
)


# ----------------------------------------------------------------------------- 5. self-attention with projections
def _self_attention_cases(g):
    d, dk, dv = 8, 4, 6
    w = lambda a, b: _randn(g, a, b, scale=a**-0.5)  # noqa: E731
    return [
        Case("x of shape (5, 8), d_k=4, d_v=6", (_randn(g, 5, d), w(d, dk), w(d, dk), w(d, dv))),
        Case("a batch x of shape (2, 7, 8)", (_randn(g, 2, 7, d), w(d, dk), w(d, dk), w(d, dv))),
        Case("a batch with a causal mask", (_randn(g, 3, 6, d), w(d, dk), w(d, dk), w(d, dv), causal_mask(6))),
    ]


SELF_ATTENTION = Exercise(
    id=f"{CHAPTER}/self_attention",
    title="Self-attention with learned projections",
    reference=self_attention,
    cases=_self_attention_cases,
    output_names=("output", "weights"),
    mistakes=[
        Mistake("values not projected (v = x)",
                lambda x, wq, wk, wv, m=None: scaled_dot_product_attention(x @ wq, x @ wk, x, m),
                "v = x @ w_v: the values are projected too."),
        Mistake("w_q and w_k swapped",
                lambda x, wq, wk, wv, m=None: scaled_dot_product_attention(x @ wk, x @ wq, x @ wv, m),
                "queries are x @ w_q and keys are x @ w_k; swapping them transposes the scores."),
        Mistake("the mask ignored", lambda x, wq, wk, wv, m=None: scaled_dot_product_attention(x @ wq, x @ wk, x @ wv),
                "pass the mask on to scaled_dot_product_attention."),
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
    ],
)

EXERCISES = [SOFTMAX, SDPA, CAUSAL, PADDING, SELF_ATTENTION, PREDICT_WEIGHT, PREDICT_SHAPES]
