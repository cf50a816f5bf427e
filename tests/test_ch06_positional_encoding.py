"""Chapter 06: the properties the chapter claims for book/positional.py (permutation equivariance,
offsets as rotations, RoPE's relative scores, ALiBi's slopes), and the chapter's data for
test_exercises.py (the chapter's copy of the code is checked by test_single_source)."""
import math

import pytest
import torch

from book import positional as P
from book.multihead import MultiHeadAttention


# ----------------------------------------------------------------------------- data for test_exercises.py
def pe_loops(max_len, d_model):
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    for pos in range(max_len):
        for i in range(d_model // 2):
            pe[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
            pe[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
    return pe


def pe_annotated_transformer(max_len, d_model):
    pe = torch.zeros(max_len, d_model)
    position = torch.arange(0, max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def rope_complex(x, positions):
    d = x.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2).double() / d)
    angle = torch.as_tensor(positions).double()[..., None] * theta
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.exp(1j * angle)).reshape(x.shape).float()


def rope_matrix(x, positions):
    """Build each position's block-diagonal rotation and multiply."""
    d = x.shape[-1]
    pos = torch.as_tensor(positions, dtype=torch.float64)
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = pos[..., None] * theta  # (..., T, d/2)
    c, s = angle.cos(), angle.sin()
    R = torch.zeros(*angle.shape[:-1], d, d, dtype=torch.float64)
    e = torch.arange(0, d, 2)
    R[..., e, e], R[..., e, e + 1], R[..., e + 1, e], R[..., e + 1, e + 1] = c, -s, s, c
    return (R @ x.double()[..., None]).squeeze(-1).float()


def offset_matrix_exp(k, d_model):
    """M_k = exp(k·G), G the generator of the rotations: d/dk (sin, cos)(a + kω) = ω (cos, -sin)."""
    G = torch.zeros(d_model, d_model, dtype=torch.float64)
    for i in range(d_model // 2):
        w = 10000 ** (-2 * i / d_model)
        G[2 * i, 2 * i + 1], G[2 * i + 1, 2 * i] = w, -w
    return torch.linalg.matrix_exp(k * G).float()


def offset_kron(k, d_model):
    blocks = [torch.tensor([[math.cos(k * w), math.sin(k * w)], [-math.sin(k * w), math.cos(k * w)]])
              for w in (10000 ** (-2 * i / d_model) for i in range(d_model // 2))]
    return torch.block_diag(*blocks)


def alibi_loops(num_heads, n):
    out = torch.zeros(num_heads, n, n)
    for h in range(num_heads):
        m = 2 ** (-8 * (h + 1) / num_heads)
        for i in range(n):
            for j in range(n):
                out[h, i, j] = -m * abs(i - j)
    return out


ALTERNATIVES = {
    "sinusoidal_positional_encoding": [pe_loops, pe_annotated_transformer],
    "apply_rope": [rope_complex, rope_matrix],
    "offset_matrix": [offset_matrix_exp, offset_kron],
    "alibi_bias": [alibi_loops, lambda h, n: P.alibi_bias(h, n).double()],
}


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
