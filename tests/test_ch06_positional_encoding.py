"""Chapter 06: the properties the chapter claims for book/positional.py (permutation equivariance,
offsets as rotations, RoPE's relative scores, ALiBi's slopes), the exercises' own claims (a chunk
decodes like its tokens one by one, the layout conversion keeps the scores, NTK keeps the fastest
pair), and the chapter's data for test_exercises.py (the chapter's copy of the code is checked by
test_single_source)."""
import math

import pytest
import torch

from book import positional as P
from book.attention import scaled_dot_product_attention
from book.multihead import MultiHeadAttention


# ----------------------------------------------------------------------------- data for test_exercises.py
# 1. read the position back: a nearest-row search, and the clock hands from slow to fast
def read_by_nearest_row(pe):
    d = pe.shape[-1]
    n = min(20000, math.ceil(2 * math.pi * 10000 ** ((d - 2) / d)))  # every position the statement allows
    table = P.sinusoidal_positional_encoding(n, d).to(pe.device)
    return torch.cdist(pe.reshape(-1, d), table).argmin(-1).reshape(pe.shape[:-1])


def read_slow_to_fast(pe):
    """The slowest hand gives a rough position; each faster hand refines it (its whole turns counted)."""
    d = pe.shape[-1]
    pe = pe.double()
    p = None
    for i in reversed(range(d // 2)):
        w = 10000.0 ** (-2 * i / d)
        a = torch.atan2(pe[..., 2 * i], pe[..., 2 * i + 1])
        if p is None:
            p = torch.remainder(a, 2 * math.pi) / w
        else:
            p = (a + 2 * math.pi * torch.round((p * w - a) / (2 * math.pi))) / w
    return p.round().float()


def _pe_loops(max_len, d_model):
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    for pos in range(max_len):
        for i in range(d_model // 2):
            pe[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
            pe[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
    return pe


# 2. the decoding step: the chapter's RoPE (a reference; not allowed in an answer), rotation matrices,
#    and one token at a time (a chunk equals its tokens decoded one by one)
def decode_via_chapter(q, k, v, k_cache, v_cache):
    T_past, T_new = k_cache.size(-2), q.size(-2)
    pos = torch.arange(T_past, T_past + T_new, device=q.device)
    k_all = torch.cat([k_cache, P.apply_rope(k, pos)], dim=-2)
    v_all = torch.cat([v_cache, v], dim=-2)
    allowed = torch.arange(T_past + T_new, device=q.device) <= pos[:, None]
    out, weights = scaled_dot_product_attention(P.apply_rope(q, pos), k_all, v_all, allowed)
    return out, weights, k_all, v_all


def _rotation_matrices(positions, d):
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * theta  # (T, d/2)
    R = torch.zeros(len(positions), d, d, dtype=torch.float64)
    e = torch.arange(0, d, 2)
    R[:, e, e], R[:, e, e + 1], R[:, e + 1, e], R[:, e + 1, e + 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    return R


def decode_with_matrices(q, k, v, k_cache, v_cache):
    T_past, T_new, d = k_cache.size(-2), q.size(-2), q.size(-1)
    R = _rotation_matrices(torch.arange(T_past, T_past + T_new), d).float()  # (T_new, d, d)
    q = torch.einsum("tij,bhtj->bhti", R, q)
    k = torch.einsum("tij,bhtj->bhti", R, k)
    k_all, v_all = torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k_all) / d ** 0.5
    future = torch.arange(T_past + T_new)[None, :] > torch.arange(T_past, T_past + T_new)[:, None]
    weights = torch.where(future, float("-inf"), scores).softmax(-1)
    return weights @ v_all, weights, k_all, v_all


def decode_token_by_token(q, k, v, k_cache, v_cache):
    T_past, T_new, d = k_cache.size(-2), q.size(-2), q.size(-1)
    R = _rotation_matrices(torch.arange(T_past + T_new), d).float()
    outs, maps = [], []
    for t in range(T_new):
        p = T_past + t
        k_cache = torch.cat([k_cache, (R[p] @ k[..., t, :, None]).squeeze(-1)[..., None, :]], -2)
        v_cache = torch.cat([v_cache, v[..., t:t + 1, :]], -2)
        qt = (R[p] @ q[..., t, :, None]).squeeze(-1)  # (B, h, d)
        w = torch.softmax((k_cache @ qt[..., None]).squeeze(-1) / math.sqrt(d), dim=-1)  # (B, h, p + 1)
        outs.append((w[..., None, :] @ v_cache).squeeze(-2))
        maps.append(torch.nn.functional.pad(w, (0, T_new - 1 - t)))  # later keys: weight 0
    return torch.stack(outs, -2), torch.stack(maps, -2), k_cache, v_cache


# 3. interleaved -> half: Hugging Face's permute() of its LLaMA conversion script, and a loop
def rows_hf_permute(w, num_heads):
    d_k = w.shape[0] // num_heads
    return w.reshape(num_heads, d_k // 2, 2, -1).transpose(1, 2).reshape(w.shape)


def rows_loop(w, num_heads):
    d_k = w.shape[0] // num_heads
    order = [j * d_k + r for j in range(num_heads) for r in [*range(0, d_k, 2), *range(1, d_k, 2)]]
    return torch.stack([w[r] for r in order])


# 4. stretched RoPE from scratch: complex numbers, frequencies scaled pair by pair
def stretch_complex(x, positions, scale, method):
    d = x.shape[-1]
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    theta = 10000.0 ** (-two_i / d)
    pos = torch.as_tensor(positions, dtype=torch.float64)
    if method == "interpolation":
        pos = pos / scale
    else:  # θ_i · s^(-2i/(d-2)): pair 0 unchanged, the last pair s times slower
        theta = theta * scale ** (-two_i / (d - 2))
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.exp(1j * pos[..., None] * theta)).reshape(x.shape).to(x.dtype)


def stretch_by_base(x, positions, scale, method):
    d = x.shape[-1]
    if method == "ntk":
        return P.apply_rope(x, positions, base=math.exp(math.log(10000.0) + d / (d - 2) * math.log(scale)))
    return P.apply_rope(x, torch.as_tensor(positions) * (1.0 / scale))


REFERENCES = {"rope_decode_step": decode_via_chapter}

ALTERNATIVES = {
    "position_from_encoding": [read_by_nearest_row, read_slow_to_fast],
    "rope_decode_step": [decode_with_matrices, decode_token_by_token],
    "rope_rows_to_half_layout": [rows_hf_permute, rows_loop],
    "stretched_rope": [stretch_complex, stretch_by_base],
}


def _read_unrounded(pe):
    d = pe.shape[-1]
    return torch.remainder(torch.atan2(pe[..., -2], pe[..., -1]), 2 * math.pi) * 10000 ** ((d - 2) / d)


def _rows_in_place(w, num_heads):
    w[:] = rows_hf_permute(w.clone(), num_heads)
    return w


def _stretch_not_a_rotation(x, positions, scale, method):
    return stretch_complex(x, positions, scale, method) * 1.5


WRONG = [  # the rules the statements state, and shapes: what the feedback must say
    ("rope_decode_step", decode_via_chapter, "`P.apply_rope`"),
    ("rope_decode_step", lambda *a: decode_with_matrices(*a)[:2], "expected a tuple of 4 values"),
    ("rope_decode_step", lambda *a: tuple(t.transpose(-2, -1) if i == 1 else t
                                          for i, t in enumerate(decode_with_matrices(*a))), "`weights` has shape"),
    ("position_from_encoding", _read_unrounded, "not whole numbers"),
    ("position_from_encoding", lambda pe: read_slow_to_fast(pe)[..., None], "shape"),
    ("rope_rows_to_half_layout", _rows_in_place, "modified its input"),
    ("rope_rows_to_half_layout", lambda w, h: rows_loop(w, h) * 2, "not rows of w"),
    ("stretched_rope", _stretch_not_a_rotation, "do not keep their lengths"),
    ("stretched_rope", lambda x, p, s, m: stretch_complex(x, p, s * s, m), "angles are wrong"),
]


# ----------------------------------------------------------------------------- what the chapter claims
def test_attention_without_positions_is_permutation_equivariant_and_with_positions_is_not():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    perm = torch.randperm(7)
    with torch.no_grad():
        out, w = mha(x, x)
        out_p, w_p = mha(x[:, perm], x[:, perm])
        torch.testing.assert_close(out_p, out[:, perm], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(w_p, w[:, :, perm][..., perm], atol=1e-6, rtol=1e-5)
        pe = P.sinusoidal_positional_encoding(7, 16)
        out_pe, _ = mha(x + pe, x + pe)
        out_pe_p, _ = mha(x[:, perm] + pe, x[:, perm] + pe)
    assert (out_pe_p - out_pe[:, perm]).abs().max() > 1e-2


def test_book_code_equals_independent_versions():
    torch.testing.assert_close(P.sinusoidal_positional_encoding(30, 12).double(), _pe_loops(30, 12), atol=1e-5, rtol=0)
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(P.apply_rope(x, torch.arange(5)), stretch_complex(x, torch.arange(5), 1.0, "ntk"),
                               atol=1e-5, rtol=1e-5)


def test_a_chunk_decodes_like_its_tokens_one_by_one():
    from book.grader.ch06 import rope_decode_step
    torch.manual_seed(3)
    q, k, v = torch.randn(3, 2, 2, 4, 8).unbind(0)
    k_cache, v_cache = P.apply_rope(torch.randn(2, 2, 3, 8), torch.arange(3)), torch.randn(2, 2, 3, 8)
    out, weights, k_all, v_all = rope_decode_step(q, k, v, k_cache, v_cache)
    kc, vc = k_cache, v_cache
    for t in range(4):
        o, w, kc, vc = rope_decode_step(q[..., t:t + 1, :], k[..., t:t + 1, :], v[..., t:t + 1, :], kc, vc)
        torch.testing.assert_close(o[..., 0, :], out[..., t, :])
        torch.testing.assert_close(w[..., 0, :], weights[..., t, : 4 + t])
    torch.testing.assert_close(kc, k_all)
    torch.testing.assert_close(vc, v_all)


def test_converted_rows_give_the_same_scores_in_the_half_layout():
    from book.grader.ch06 import rope_rows_to_half_layout
    from book.multihead import split_heads
    torch.manual_seed(4)
    x, w_q, w_k, b_q = torch.randn(2, 7, 16), torch.randn(16, 16), torch.randn(8, 16), torch.randn(16)
    pos = torch.arange(7)

    def scores(w_q, b_q, w_k, layout):  # 4 query heads, 2 key heads shared in groups of 2 (grouped-query)
        q = P.apply_rope(split_heads(x @ w_q.T + b_q, 4), pos, layout=layout)
        k = P.apply_rope(split_heads(x @ w_k.T, 2), pos, layout=layout).repeat_interleave(2, dim=1)
        return q @ k.transpose(-2, -1)

    converted = scores(rope_rows_to_half_layout(w_q, 4), rope_rows_to_half_layout(b_q, 4),
                       rope_rows_to_half_layout(w_k, 2), "half")
    torch.testing.assert_close(converted, scores(w_q, b_q, w_k, "interleaved"), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("d,scale", [(8, 4.0), (64, 16.0)])
def test_ntk_keeps_the_fastest_pair_and_slows_the_slowest_like_interpolation(d, scale):
    from book.grader.ch06 import stretched_rope
    x = torch.zeros(d // 2, d).double()
    x[torch.arange(d // 2), torch.arange(0, d, 2)] = 1.0  # row i: pair i points along its first axis

    def angles(method, pos):  # (d/2,) the angle each pair turns by at position pos
        y = stretched_rope(x, torch.tensor([float(pos)] * (d // 2)), scale, method)
        i = torch.arange(d // 2)
        return torch.atan2(y[i, 2 * i + 1], y[i, 2 * i])

    ntk, pi = angles("ntk", 1), angles("interpolation", 1)
    plain = P.apply_rope(x, torch.ones(d // 2))
    assert ntk[0].item() == pytest.approx(1.0) and pi[0].item() == pytest.approx(1 / scale)
    assert ntk[-1].item() == pytest.approx(pi[-1].item(), rel=1e-6)
    assert pi[-1].item() == pytest.approx(torch.atan2(plain[-1, -1], plain[-1, -2]).item() / scale, rel=1e-6)


def test_sinusoidal_formula_and_layout():
    pe = P.sinusoidal_positional_encoding(20, 8)
    assert pe.shape == (20, 8) and pe.dtype == torch.float32
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 4))
    assert pe[5, 2].item() == pytest.approx(math.sin(5 / 10000 ** (2 / 8)), abs=1e-6)
    assert pe[5, 3].item() == pytest.approx(math.cos(5 / 10000 ** (2 / 8)), abs=1e-6)
    with pytest.raises(ValueError):
        P.sinusoidal_positional_encoding(4, 7)


@pytest.mark.parametrize("k", [0, 1, 4, 33, -5])
def test_an_offset_is_a_rotation_independent_of_position(k):
    pe = P.sinusoidal_positional_encoding(300, 32).double()
    M = P.offset_matrix(k, 32).double()
    torch.testing.assert_close(M @ M.T, torch.eye(32, dtype=torch.float64), atol=1e-6, rtol=0)
    lo, hi = max(0, -k), 300 - max(0, k)
    torch.testing.assert_close(pe[lo:hi] @ M.T, pe[lo + k:hi + k], atol=1e-4, rtol=0)


def test_dot_product_of_encodings_depends_only_on_the_offset():
    pe = P.sinusoidal_positional_encoding(200, 64)
    for k in (1, 7, 40):
        dots = torch.stack([pe[p] @ pe[p + k] for p in range(0, 150, 13)])
        assert (dots - dots[0]).abs().max() < 1e-3


def test_rope_scores_depend_only_on_the_offset_and_keep_lengths():
    torch.manual_seed(1)
    q, k = torch.randn(2, 3, 1, 32).double(), torch.randn(2, 3, 1, 32).double()
    def score(m, n):
        return (P.apply_rope(q, [m]) * P.apply_rope(k, [n])).sum(-1)
    torch.testing.assert_close(score(3, 10), score(503, 510))
    assert not torch.allclose(score(3, 10), score(10, 3))
    x = torch.randn(4, 6, 16)
    torch.testing.assert_close(P.apply_rope(x, torch.arange(6)).norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(P.apply_rope(x, torch.zeros(6)), x)
    assert P.apply_rope(x.half(), torch.arange(6)).dtype == torch.float16
    with pytest.raises(ValueError):
        P.apply_rope(torch.randn(3, 5), torch.arange(3))


def test_rope_pairs_are_neighbours_and_rotate_counter_clockwise():
    x = torch.zeros(1, 4)
    x[0, 0] = 1.0  # the first pair is (1, 0)
    y = P.apply_rope(x, [1])  # pair 0 turns by 1 radian
    torch.testing.assert_close(y[0, :2], torch.tensor([math.cos(1.0), math.sin(1.0)]))
    assert y[0, 2:].abs().max() == 0


def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(P.alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s12 = P.alibi_slopes(12)
    ref = [2 ** (-(i + 1)) for i in range(8)] + [2 ** (-0.5 - i) for i in range(4)]  # paper's code for 12 heads
    assert torch.allclose(s12, torch.tensor(ref))
    b = P.alibi_bias(4, 5)
    assert b.shape == (4, 5, 5) and torch.all(b.diagonal(dim1=1, dim2=2) == 0)
    assert torch.equal(b, b.transpose(1, 2)) and (b <= 0).all()


def test_position_modules():
    x = torch.randn(3, 10, 16)
    fixed = P.SinusoidalPositionalEncoding(64, 16)
    torch.testing.assert_close(fixed(x), x + P.sinusoidal_positional_encoding(10, 16))
    assert list(fixed.parameters()) == [] and "pe" not in fixed.state_dict()
    learned = P.LearnedPositionalEmbedding(10, 16)
    torch.testing.assert_close(learned(x), x + learned.table.weight)
    assert sum(p.numel() for p in learned.parameters()) == 160
    for module in (fixed, learned):
        with pytest.raises(ValueError, match="max_len"):
            module(torch.randn(1, 65, 16))
