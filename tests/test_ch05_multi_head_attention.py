"""Chapter 05: book/multihead.py against torch.nn.MultiheadAttention, and the chapter's data for
test_exercises.py (the chapter's copy of the code is checked by test_single_source)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import multihead as M
from book.attention import causal_mask, padding_mask, scaled_dot_product_attention
from book.convert import copy_from_torch


# ----------------------------------------------------------------------------- data for test_exercises.py
# 1. find and fix the bugs: PyTorch's module (a reference, not allowed in an answer), a fixed copy
def packed_via_torch_module(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None):
    d = x.shape[-1]
    ref = nn.MultiheadAttention(d, num_heads, bias=b_qkv is not None, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(w_qkv)
        ref.out_proj.weight.copy_(w_o)
        if b_qkv is not None:
            ref.in_proj_bias.copy_(b_qkv)
            ref.out_proj.bias.copy_(b_o)
        B, T = x.shape[:2]
        attn_mask = None if mask is None else ~mask.expand(B, num_heads, T, T).reshape(B * num_heads, T, T)
        return ref(x, x, x, attn_mask=attn_mask, average_attn_weights=False)


def packed_fixed(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None):
    """The notebook's buggy function with its three lines fixed (einsum for the products)."""
    B, T, d_model = x.shape
    d_k = d_model // num_heads
    qkv = F.linear(x, w_qkv, b_qkv)
    q, k, v = qkv.unflatten(-1, (3, num_heads, d_k)).permute(2, 0, 3, 1, 4)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -1e9)
    weights = scores.softmax(-1)
    out = torch.einsum("bhqk,bhkd->bqhd", weights, v).flatten(-2)
    return F.linear(out, w_o, b_o), weights


def packed_sdpa_kernel(x, w_qkv, b_qkv, w_o, b_o, num_heads, mask=None):
    q, k, v = (M.split_heads(t, num_heads) for t in F.linear(x, w_qkv, b_qkv).chunk(3, dim=-1))
    scores = q @ k.mT / math.sqrt(q.size(-1))
    if mask is not None:
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.linear(M.merge_heads(out), w_o, b_o), scores.softmax(-1)


# 2. a window per head
def window_loops(is_real, windows):
    B, T = is_real.shape
    out = torch.zeros(B, len(windows), T, T, dtype=torch.bool)
    for b in range(B):
        for i, w in enumerate(windows.tolist()):
            for t in range(T):
                for j in range(max(0, t - w + 1), t + 1):
                    out[b, i, t, j] = bool(is_real[b, j])
    return out


def window_bands(is_real, windows):
    T = is_real.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=is_real.device)
    bands = torch.stack([ones.tril() & ones.triu(-(int(w) - 1)) for w in windows])  # (h, T, T)
    return bands.unsqueeze(0) & is_real.unsqueeze(1).unsqueeze(1)


# 3. grouped-query attention: the book's module (a reference), PyTorch's GQA kernel, an index_select
def gqa_via_book_module(q_in, kv_in, w_q, w_k, w_v, w_o, num_heads, n_kv_heads, mask=None):
    mha = M.MultiHeadAttention(q_in.shape[-1], num_heads, bias=False, n_kv_heads=n_kv_heads)
    with torch.no_grad():
        for layer, w in ((mha.w_q, w_q), (mha.w_k, w_k), (mha.w_v, w_v), (mha.w_o, w_o)):
            layer.weight.copy_(w)
        return mha(q_in, kv_in, mask)


def gqa_torch_kernel(q_in, kv_in, w_q, w_k, w_v, w_o, num_heads, n_kv_heads, mask=None):
    q = M.split_heads(q_in @ w_q.T, num_heads)
    k, v = M.split_heads(kv_in @ w_k.T, n_kv_heads), M.split_heads(kv_in @ w_v.T, n_kv_heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    scores = torch.einsum("bgrqd,bgkd->bgrqk", q.unflatten(1, (n_kv_heads, -1)), k) / math.sqrt(q.size(-1))
    if mask is not None:
        grouped = mask.expand(q.shape[0], num_heads, q.shape[2], k.shape[2]).unflatten(1, (n_kv_heads, -1))
        scores = scores.masked_fill(~grouped, float("-inf"))
    return M.merge_heads(out) @ w_o.T, scores.softmax(-1).flatten(1, 2)


def gqa_index_select(q_in, kv_in, w_q, w_k, w_v, w_o, num_heads, n_kv_heads, mask=None):
    heads = torch.arange(num_heads, device=q_in.device) // (num_heads // n_kv_heads)  # kv head of each query head
    q = M.split_heads(F.linear(q_in, w_q), num_heads)
    k = M.split_heads(F.linear(kv_in, w_k), n_kv_heads).index_select(1, heads)
    v = M.split_heads(F.linear(kv_in, w_v), n_kv_heads).index_select(1, heads)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    return F.linear(M.merge_heads(out), w_o), weights


# 4. one head at a time
def loop_einsum(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
    d_k = q_in.shape[-1] // num_heads
    outs, maps = [], []
    for i in range(num_heads):
        r = slice(i * d_k, (i + 1) * d_k)
        q, k, v = (torch.einsum("btd,kd->btk", t, w[r]) + (0 if b is None else b[r])
                   for t, w, b in ((q_in, w_q, b_q), (kv_in, w_k, b_k), (kv_in, w_v, b_v)))
        m = None if mask is None else (mask[:, 0] if mask.dim() == 4 else mask)
        o, w = scaled_dot_product_attention(q, k, v, m)
        outs.append(o)
        maps.append(w)
    return torch.cat(outs, -1) @ w_o.T + (0 if b_o is None else b_o), torch.stack(maps, 1)


def loop_output_by_columns(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
    """W_O applied head by head through its column slices, its bias added once."""
    d_k = q_in.shape[-1] // num_heads
    out, maps = 0, []
    for i in range(num_heads):
        r = slice(i * d_k, (i + 1) * d_k)
        part = (lambda b: None if b is None else b[r])  # noqa: E731
        m = None if mask is None else mask.select(1, 0) if mask.dim() == 4 else mask
        o, w = scaled_dot_product_attention(F.linear(q_in, w_q[r], part(b_q)), F.linear(kv_in, w_k[r], part(b_k)),
                                            F.linear(kv_in, w_v[r], part(b_v)), m)
        out = out + o @ w_o[:, r].T
        maps.append(w)
    return out + (0 if b_o is None else b_o), torch.stack(maps, 1)


def count_by_building(d_model, h, d_k, d_v, bias=True):
    layers = [nn.Linear(d_model, h * d_k, bias=bias), nn.Linear(d_model, h * d_k, bias=bias),
              nn.Linear(d_model, h * d_v, bias=bias), nn.Linear(h * d_v, d_model, bias=bias)]
    return sum(p.numel() for layer in layers for p in layer.parameters())


# the book's (and PyTorch's) finished versions equal the exercises' references; an answer may not call them
REFERENCES = {
    "packed_self_attention": packed_via_torch_module,
    "grouped_query_attention": gqa_via_book_module,
    "multi_head_attention_loop": M.multi_head_attention,
}

ALTERNATIVES = {
    "packed_self_attention": [packed_fixed, packed_sdpa_kernel],
    "head_window_mask": [window_loops, window_bands],
    "grouped_query_attention": [gqa_torch_kernel, gqa_index_select],
    "multi_head_attention_loop": [loop_einsum, loop_output_by_columns],
    "mha_parameter_count": [count_by_building,
                            lambda d, h, dk, dv, bias=True: 2 * d * h * (dk + dv) + bias * (h * (2 * dk + dv) + d)],
}


def _loop_with_view(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
    B, T, d = q_in.shape
    q = F.linear(q_in, w_q, b_q).view(B, T, num_heads, -1)  # a reshape of the activations
    return M.multi_head_attention(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask)


def _window_heads_first(is_real, windows):
    return window_bands(is_real, windows).transpose(0, 1)  # (h, B, T, T)


WRONG = [  # the rules the statements state, and shapes: what the feedback must say
    ("multi_head_attention_loop", lambda *a: M.multi_head_attention(*a), "`M.multi_head_attention`"),
    ("multi_head_attention_loop", M.multi_head_attention, "does not allow"),
    ("multi_head_attention_loop", _loop_with_view, "`F.linear(q_in, w_q, b_q).view`"),
    ("packed_self_attention", packed_via_torch_module, "`nn.MultiheadAttention`"),
    ("grouped_query_attention", gqa_via_book_module, "`M.MultiHeadAttention`"),
    ("mha_parameter_count", lambda d, h, dk, dv, bias=True: torch.tensor(count_by_building(d, h, dk, dv, bias)),
     "the exercise asks for a Python int"),
    ("mha_parameter_count", lambda d, h, dk, dv, bias=True: float(count_by_building(d, h, dk, dv, bias)),
     "your result is a float; the exercise asks for a Python int"),
    ("head_window_mask", lambda r, w: window_bands(r, w).float(), "bool"),
    ("head_window_mask", _window_heads_first, "shape"),
]


# ----------------------------------------------------------------------------- book/multihead.py
def test_split_and_merge_are_inverse_and_validate_input():
    x = torch.randn(2, 5, 12)
    for h in (1, 2, 3, 4, 6, 12):
        s = M.split_heads(x, h)
        assert s.shape == (2, h, 5, 12 // h)
        assert torch.equal(M.merge_heads(s), x)
    assert torch.equal(M.split_heads(x, 3)[:, 1], x[..., 4:8])  # head 1 owns features 4..7
    with pytest.raises(ValueError, match="divisible"):
        M.split_heads(x, 5)
    with pytest.raises(ValueError, match="B, T, d_model"):
        M.split_heads(torch.randn(5, 12), 2)
    with pytest.raises(ValueError, match="B, h, T, d_k"):
        M.merge_heads(torch.randn(5, 12))
    with pytest.raises(ValueError, match="divisible"):
        M.MultiHeadAttention(10, 3)


@pytest.mark.parametrize("bias", [True, False])
def test_module_equals_torch_multihead_attention(bias):
    torch.manual_seed(0)
    d, h = 24, 4
    ref = nn.MultiheadAttention(d, h, bias=bias, batch_first=True).eval()
    ours = copy_from_torch(M.MultiHeadAttention(d, h, bias=bias), ref).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    xq, xkv = torch.randn(3, 7, d), torch.randn(3, 9, d)
    lengths = torch.tensor([9, 4, 1])
    pad = padding_mask(lengths, 9)  # (B, T_k) True = real
    with torch.no_grad():
        cases = [
            (ours(xq, xq), ref(xq, xq, xq, average_attn_weights=False)),
            (ours(xq, xkv), ref(xq, xkv, xkv, average_attn_weights=False)),
            (ours(xq, xq, causal_mask(7)), ref(xq, xq, xq, attn_mask=~causal_mask(7), average_attn_weights=False)),
            (ours(xq, xkv, pad[:, None, None, :]),
             ref(xq, xkv, xkv, key_padding_mask=~pad, average_attn_weights=False)),
        ]
    for (o, w), (o_ref, w_ref) in cases:
        assert w.shape == w_ref.shape
        torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(w, w_ref, atol=1e-5, rtol=1e-4)


def test_copy_from_torch_refuses_mismatched_modules():
    with pytest.raises(ValueError):
        copy_from_torch(M.MultiHeadAttention(16, 4), nn.MultiheadAttention(16, 2))
    with pytest.raises(ValueError):
        copy_from_torch(M.MultiHeadAttention(16, 4, bias=False), nn.MultiheadAttention(16, 4))


def test_heads_are_slices_of_the_big_projections():
    torch.manual_seed(1)
    d, h = 12, 3
    x = torch.randn(2, 4, d)
    ws = [torch.randn(d, d) for _ in range(4)]
    bs = [torch.randn(d) for _ in range(4)]
    _, weights = M.multi_head_attention(x, x, ws[0], bs[0], ws[1], bs[1], ws[2], bs[2], ws[3], bs[3], h)
    r = slice(4, 8)  # head 1
    _, w1 = scaled_dot_product_attention(*(F.linear(x, w[r], b[r]) for w, b in zip(ws[:3], bs[:3])))
    torch.testing.assert_close(w1, weights[:, 1])


def test_gradients_flow_to_every_parameter():
    mha = M.MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    out, _ = mha(x, x, causal_mask(3))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mha.parameters())
