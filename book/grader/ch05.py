"""Graded exercises of chapter 05 — multi-head attention: references, seeded cases, classic mistakes."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from book.attention import causal_mask, padding_mask, scaled_dot_product_attention
from book.grader.core import Case, Exercise, Mistake
from book.multihead import merge_heads, multi_head_attention, split_heads

CHAPTER = "05_multi_head_attention"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# ----------------------------------------------------------------------------- 1. split_heads
def _split_cases(g):
    transposed = _randn(g, 2, 8, 6).transpose(1, 2)  # (2, 6, 8) but not contiguous
    return [
        Case("x of shape (2, 5, 8) with 2 heads", (_randn(g, 2, 5, 8), 2)),
        Case("x of shape (1, 7, 12) with 3 heads", (_randn(g, 1, 7, 12), 3)),
        Case("x of shape (3, 4, 6) with 1 head", (_randn(g, 3, 4, 6), 1)),
        Case("x of shape (2, 3, 6) with 6 heads (d_k = 1)", (_randn(g, 2, 3, 6), 6)),
        Case("a single token, x of shape (4, 1, 8) with 4 heads", (_randn(g, 4, 1, 8), 4)),
        Case("a non-contiguous x (made by a transpose) of shape (2, 6, 8) with 2 heads", (transposed, 2)),
    ]


def _split_no_transpose(x, h):
    B, T, d = x.shape
    return x.reshape(B, h, T, d // h)


def _split_transpose_forgotten(x, h):
    B, T, d = x.shape
    return x.reshape(B, T, h, d // h)


def _split_interleaved(x, h):
    B, T, d = x.shape
    return x.reshape(B, T, d // h, h).permute(0, 3, 1, 2)


def _split_last_axes_swapped(x, h):
    B, T, d = x.shape
    return x.reshape(B, T, h, d // h).permute(0, 2, 3, 1)


SPLIT = Exercise(
    id=f"{CHAPTER}/split_heads",
    title="Split the features into heads",
    reference=split_heads,
    cases=_split_cases,
    mistakes=[
        Mistake("a reshape to (B, h, T, d_k) without a transpose", _split_no_transpose,
                "the shape is right but rows now mix the features of different tokens. Reshape to "
                "(B, T, h, d_k) first, then swap the token and head axes."),
        Mistake("the transpose left out: (B, T, h, d_k)", _split_transpose_forgotten,
                "attention wants (…, T, d_k) blocks, so the head axis must come before the token axis: "
                "transpose axes 1 and 2."),
        Mistake("heads made of every h-th feature (interleaved) instead of contiguous slices", _split_interleaved,
                "head 0 owns features 0 … d_k-1, head 1 the next d_k, and so on: reshape to (B, T, h, d_k)."),
        Mistake("the last two axes swapped: (B, h, d_k, T)", _split_last_axes_swapped,
                "each head's block is tokens × features: (B, h, T, d_k)."),
    ],
)


# ----------------------------------------------------------------------------- 2. merge_heads
def _merge_cases(g):
    transposed = _randn(g, 2, 5, 2, 4).transpose(1, 2)  # (2, 2, 5, 4) but not contiguous
    return [
        Case("x of shape (2, 2, 5, 4)", (_randn(g, 2, 2, 5, 4),)),
        Case("x of shape (1, 3, 7, 4)", (_randn(g, 1, 3, 7, 4),)),
        Case("a single head, x of shape (3, 1, 4, 6)", (_randn(g, 3, 1, 4, 6),)),
        Case("six heads of d_k = 1, x of shape (2, 6, 3, 1)", (_randn(g, 2, 6, 3, 1),)),
        Case("a single token, x of shape (4, 4, 1, 2)", (_randn(g, 4, 4, 1, 2),)),
        Case("a non-contiguous x (made by a transpose) of shape (2, 2, 5, 4)", (transposed,)),
    ]


def _merge_no_transpose(x):
    B, h, T, d_k = x.shape
    return x.reshape(B, T, h * d_k)


def _merge_interleaved(x):
    B, h, T, d_k = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, h * d_k)


MERGE = Exercise(
    id=f"{CHAPTER}/merge_heads",
    title="Merge the heads back",
    reference=merge_heads,
    cases=_merge_cases,
    mistakes=[
        Mistake("a reshape to (B, T, d_model) without a transpose", _merge_no_transpose,
                "the memory order is (B, h, T, d_k): bring the tokens next to the batch axis first "
                "(transpose axes 1 and 2), then reshape."),
        Mistake("heads glued feature by feature (interleaved) instead of one after the other", _merge_interleaved,
                "token t's new row is head 0's d_k features, then head 1's, …: go through (B, T, h, d_k)."),
        Mistake("the heads summed instead of concatenated", lambda x: x.sum(1),
                "concatenate: the result has h · d_k features per token, not d_k."),
        Mistake("the heads averaged instead of concatenated", lambda x: x.mean(1),
                "concatenate: the result has h · d_k features per token, not d_k."),
    ],
)


# ----------------------------------------------------------------------------- 3. multi_head_attention
def _weights(g, d, bias=True):
    """w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o with (out, in) matrices, as F.linear wants them."""
    out = []
    for _ in range(4):
        out += [_randn(g, d, d, scale=d**-0.5), _randn(g, d, scale=0.3) if bias else None]
    return tuple(out)


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


def _mha_variant(scale="d_k", out_proj=True, split="ok", merge="ok", layout="linear", kv="kv",
                 use_mask=True, average=False, bias=True):
    def proj(x, w, b):
        b = b if bias else None
        if layout == "in_out":
            return x @ w + (0 if b is None else b)
        return F.linear(x, w, b)

    def mha(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
        src = kv_in if kv == "kv" else q_in
        splitter = split_heads if split == "ok" else _split_no_transpose
        q = splitter(proj(q_in, w_q, b_q), num_heads)
        k = splitter(proj(src, w_k, b_k), num_heads)
        v = splitter(proj(src, w_v, b_v), num_heads)
        d_model = q_in.shape[-1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1] if scale == "d_k" else d_model)
        if mask is not None and use_mask:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        merged = (merge_heads if merge == "ok" else _merge_no_transpose)(weights @ v)
        out = proj(merged, w_o, b_o) if out_proj else merged
        return out, (weights.mean(1) if average else weights)

    return mha


MHA = Exercise(
    id=f"{CHAPTER}/multi_head_attention",
    title="Multi-head attention",
    reference=multi_head_attention,
    cases=_mha_cases,
    output_names=("output", "weights"),
    nan_hint="a fully masked row gives NaN; check that True in the mask means 'may attend'",
    mistakes=[
        Mistake("scaling by √d_model instead of √d_k", _mha_variant(scale="d_model"),
                "each head compares vectors of size d_k = d_model / h: divide its scores by math.sqrt(d_k)."),
        Mistake("the output projection forgotten", _mha_variant(out_proj=False),
                "after merging the heads, apply W_O: F.linear(merged, w_o, b_o)."),
        Mistake("a reshape without a transpose when splitting the heads", _mha_variant(split="no_transpose"),
                "reshape to (B, T, h, d_k), then transpose to (B, h, T, d_k)."),
        Mistake("a reshape without a transpose when merging the heads", _mha_variant(merge="no_transpose"),
                "transpose (B, h, T, d_k) back to (B, T, h, d_k) before reshaping to (B, T, d_model)."),
        Mistake("weights used as (in, out): x @ W instead of x @ Wᵀ", _mha_variant(layout="in_out"),
                "the matrices have the nn.Linear layout (out, in): use F.linear(x, w, b), which is x @ w.T + b."),
        Mistake("keys and values computed from q_in instead of kv_in", _mha_variant(kv="q"),
                "queries come from q_in, keys and values from kv_in (they differ in cross-attention)."),
        Mistake("the mask ignored", _mha_variant(use_mask=False),
                "pass the mask on to the attention: masked scores become -inf before the softmax."),
        Mistake("attention weights averaged over the heads", _mha_variant(average=True),
                "return one map per head, shape (B, h, T_q, T_k) (PyTorch averages by default; we don't)."),
        Mistake("the biases left out", _mha_variant(bias=False),
                "every projection has a bias: F.linear(x, w, b) adds it (and accepts b=None)."),
    ],
)


# ----------------------------------------------------------------------------- 4. one head at a time
def _loop_variant(columns=False, stack_dim=1, out_proj=True, scale="d_k"):
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
            if mask is not None:
                scores = scores.masked_fill(~mask.squeeze(1) if mask.dim() == 4 else ~mask, float("-inf"))
            w = torch.softmax(scores, dim=-1)
            outs.append(w @ v)
            maps.append(w)
        merged = torch.cat(outs, dim=-1)
        out = F.linear(merged, w_o, b_o) if out_proj else merged
        return out, torch.stack(maps, dim=stack_dim)

    return mha_loop


LOOP = Exercise(
    id=f"{CHAPTER}/multi_head_attention_loop",
    title="One head at a time, from slices of the weights",
    reference=multi_head_attention,
    cases=_mha_cases,
    output_names=("output", "weights"),
    nan_hint="a fully masked row gives NaN; check that True in the mask means 'may attend'",
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
    ],
)

EXERCISES = [SPLIT, MERGE, MHA, LOOP, COUNT]
