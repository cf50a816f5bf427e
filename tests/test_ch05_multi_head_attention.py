"""Chapter 05: book/multihead.py against torch.nn.MultiheadAttention, and the chapter's data for
test_exercises.py (the chapter's copy of the code is checked by test_single_source)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import multihead as M
from book.attention import causal_mask, padding_mask, scaled_dot_product_attention
from book.convert import copy_from_torch, copy_to_torch


# ----------------------------------------------------------------------------- data for test_exercises.py
def split_einops_style(x, h):
    B, T, d = x.shape
    return torch.stack(x.chunk(h, dim=-1), dim=1)  # h tensors (B, T, d_k) -> (B, h, T, d_k)


def split_view_contiguous(x, h):
    B, T, d = x.shape
    return x.contiguous().view(B, T, h, d // h).permute(0, 2, 1, 3)


def merge_cat(x):
    return torch.cat(x.unbind(1), dim=-1)


def merge_contiguous_view(x):
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).contiguous().view(B, T, h * d_k)


def mha_torch_kernel(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
    q, k, v = (split_einops_style(F.linear(t, w, b), num_heads)
               for t, w, b in ((q_in, w_q, b_q), (kv_in, w_k, b_k), (kv_in, w_v, b_v)))
    scores = q @ k.mT / math.sqrt(q.size(-1))
    if mask is not None:
        scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, -1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.linear(merge_cat(out), w_o, b_o), weights


def mha_via_torch_module(q_in, kv_in, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, num_heads, mask=None):
    d = q_in.shape[-1]
    ref = nn.MultiheadAttention(d, num_heads, bias=b_q is not None, batch_first=True)
    ours = {"w_q.weight": w_q, "w_k.weight": w_k, "w_v.weight": w_v, "w_o.weight": w_o}
    if b_q is not None:
        ours.update({"w_q.bias": b_q, "w_k.bias": b_k, "w_v.bias": b_v, "w_o.bias": b_o})
    copy_to_torch(ref, ours)
    B, T_q, T_k = q_in.shape[0], q_in.shape[1], kv_in.shape[1]
    attn_mask = None
    if mask is not None:  # torch wants (B·h, T_q, T_k), True = blocked
        attn_mask = ~mask.expand(B, num_heads, T_q, T_k).reshape(B * num_heads, T_q, T_k)
    with torch.no_grad():
        return ref(q_in, kv_in, kv_in, attn_mask=attn_mask, average_attn_weights=False)


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


def count_by_building(d_model, h, d_k, d_v, bias=True):
    layers = [nn.Linear(d_model, h * d_k, bias=bias), nn.Linear(d_model, h * d_k, bias=bias),
              nn.Linear(d_model, h * d_v, bias=bias), nn.Linear(h * d_v, d_model, bias=bias)]
    return sum(p.numel() for layer in layers for p in layer.parameters())


ALTERNATIVES = {
    "split_heads": [split_einops_style, split_view_contiguous],
    "merge_heads": [merge_cat, merge_contiguous_view],
    "multi_head_attention": [mha_torch_kernel, mha_via_torch_module],
    "multi_head_attention_loop": [loop_einsum, lambda *a: M.multi_head_attention(*a)],
    "mha_parameter_count": [
        count_by_building,
        lambda d, h, dk, dv, bias=True: torch.tensor(2 * d * h * (dk + dv) + bias * (h * (2 * dk + dv) + d))],
}


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
