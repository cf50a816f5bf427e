"""Graded exercises of chapter 06 — positional encoding: references, seeded cases, classic mistakes."""
from __future__ import annotations

import torch

from book.grader.core import Case, Exercise, Mistake
from book.positional import alibi_bias, apply_rope, offset_matrix, sinusoidal_positional_encoding

CHAPTER = "06_positional_encoding"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# ----------------------------------------------------------------------------- 1. sinusoidal encoding
def _pe_cases(g):
    return [
        Case("max_len=10, d_model=4", (10, 4)),
        Case("max_len=50, d_model=16", (50, 16)),
        Case("max_len=1, d_model=2 (a single position)", (1, 2)),
        Case("max_len=7, d_model=2 (a single pair)", (7, 2)),
        Case("max_len=128, d_model=64", (128, 64)),
        Case("max_len=30, d_model=12", (30, 12)),
    ]


def _pe_variant(swap=False, exponent="2i", layout="interleaved", pos_start=0, divide=True):
    def pe(max_len, d_model):
        pos = torch.arange(pos_start, pos_start + max_len, dtype=torch.float64)[:, None]
        i = torch.arange(d_model // 2, dtype=torch.float64)
        if exponent == "feature":  # every feature j its own exponent j / d_model
            j = torch.arange(d_model, dtype=torch.float64)
            angle = pos / 10000 ** (j / d_model)
            out = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
            return out.float()
        power = {"2i": 2 * i / d_model, "i": i / d_model, "int": (2 * i) // d_model, "4i": 4 * i / d_model}[exponent]
        angle = pos / 10000**power if divide else pos * 10000**power
        first, second = (torch.cos(angle), torch.sin(angle)) if swap else (torch.sin(angle), torch.cos(angle))
        if layout == "concatenated":
            return torch.cat([first, second], dim=-1).float()
        return torch.stack([first, second], dim=-1).flatten(-2).float()

    return pe


SINUSOIDAL = Exercise(
    id=f"{CHAPTER}/sinusoidal_positional_encoding",
    title="The sinusoidal positional encoding",
    reference=sinusoidal_positional_encoding,
    cases=_pe_cases,
    atol=1e-4,
    rtol=1e-4,
    mistakes=[
        Mistake("sin and cos swapped", _pe_variant(swap=True),
                "sine goes to the even features (0, 2, 4, …) and cosine to the odd ones: position 0 is (0, 1, 0, 1, …)."),
        Mistake("the exponent i/d_model instead of 2i/d_model", _pe_variant(exponent="i"),
                "pair i (features 2i and 2i+1) divides by 10000^(2i/d_model): use the even index 2i in the exponent."),
        Mistake("sines and cosines concatenated ([sin…, cos…]) instead of interleaved", _pe_variant(layout="concatenated"),
                "the features alternate: sin at 2i and cos at 2i+1 (pe[:, 0::2] and pe[:, 1::2])."),
        Mistake("each feature j with its own exponent j/d_model", _pe_variant(exponent="feature"),
                "the two features of a pair share one frequency: both use 2i/d_model, where 2i is the even one."),
        Mistake("positions multiplied by 10000^(2i/d) instead of divided", _pe_variant(divide=False),
                "the frequencies fall with i: the angle is pos / 10000^(2i/d_model)."),
        Mistake("positions counted from 1", _pe_variant(pos_start=1),
                "the first position is 0 (its encoding is 0, 1, 0, 1, …)."),
        Mistake("the exponent computed with integer division (2i // d_model)", _pe_variant(exponent="int"),
                "2i // d_model is 0 for every pair; use true division 2i / d_model."),
        Mistake("the even index doubled (2 · arange(0, d, 2), i.e. 4i/d_model)", _pe_variant(exponent="4i"),
                "torch.arange(0, d_model, 2) already *is* 2i (0, 2, 4, …): don't multiply it by 2 again."),
    ],
)


# ----------------------------------------------------------------------------- 2. RoPE
def _rope_cases(g):
    return [
        Case("x of shape (6, 8), positions 0…5", (_randn(g, 6, 8), torch.arange(6))),
        Case("x of shape (B, h, T, d) = (2, 4, 5, 16), positions 0…4", (_randn(g, 2, 4, 5, 16), torch.arange(5))),
        Case("positions 100…106 (as with a KV cache), x of shape (3, 7, 4)", (_randn(g, 3, 7, 4), torch.arange(100, 107))),
        Case("d = 2 (a single pair), x of shape (2, 5, 2)", (_randn(g, 2, 5, 2), torch.arange(5))),
        Case("float positions, x of shape (1, 2, 6, 32)", (_randn(g, 1, 2, 6, 32), torch.linspace(0.0, 2.5, 6))),
        Case("per-sequence positions of shape (B, 1, T) = (2, 1, 4), x of shape (2, 3, 4, 8)",
             (_randn(g, 2, 3, 4, 8), torch.tensor([[[0, 1, 2, 3]], [[5, 6, 7, 8]]]))),
    ]


def _rope_variant(layout="pairs", direction=1, exponent="2i", swap=False, rotate=True, output="interleaved"):
    def rope(x, positions):
        d = x.size(-1)
        i = torch.arange(d // 2, dtype=torch.float64)
        theta = 10000.0 ** (-({"2i": 2 * i, "i": i, "4i": 4 * i}[exponent]) / d)
        angle = direction * torch.as_tensor(positions, dtype=torch.float64)[..., None] * theta
        cos, sin = angle.cos().float(), angle.sin().float()
        if swap:
            cos, sin = sin, cos
        if not rotate:
            return x.clone()
        if layout == "halves":  # "rotate_half": pairs (i, i + d/2)
            x1, x2 = x[..., : d // 2], x[..., d // 2:]
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        y1, y2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        if output == "concatenated":
            return torch.cat([y1, y2], dim=-1)
        return torch.stack([y1, y2], dim=-1).flatten(-2)

    return rope


ROPE = Exercise(
    id=f"{CHAPTER}/apply_rope",
    title="Rotary position embedding",
    reference=lambda x, positions: apply_rope(x, positions),
    cases=_rope_cases,
    atol=1e-5,
    rtol=1e-4,
    mistakes=[
        Mistake("pairs (i, i + d/2) ('rotate half') instead of neighbours (2i, 2i+1)", _rope_variant(layout="halves"),
                "this book's convention rotates neighbouring features: x[..., 0::2] with x[..., 1::2]."),
        Mistake("a rotation in the wrong direction (angle -pos·θ)", _rope_variant(direction=-1),
                "rotate counter-clockwise: (a, b) -> (a·cos - b·sin, a·sin + b·cos)."),
        Mistake("θ_i = base^(-i/d) instead of base^(-2i/d)", _rope_variant(exponent="i"),
                "pair i uses the frequency of the sinusoidal encoding: base ** (-2i / d), with 2i = 0, 2, 4, …"),
        Mistake("sin and cos swapped", _rope_variant(swap=True),
                "a rotation by angle a is [[cos a, -sin a], [sin a, cos a]]; position 0 must leave x unchanged."),
        Mistake("no rotation at all (x returned unchanged)", _rope_variant(rotate=False),
                "each pair turns by the angle position · θ_i; only position 0 stays as it is."),
        Mistake("the rotated pairs returned as two halves instead of interleaved", _rope_variant(output="concatenated"),
                "put each rotated pair back in its place: torch.stack([y1, y2], dim=-1).flatten(-2)."),
        Mistake("the even index doubled (θ_i = base^(-4i/d))", _rope_variant(exponent="4i"),
                "torch.arange(0, d, 2) already gives 2i = 0, 2, 4, …: θ = base ** (-arange(0, d, 2) / d)."),
    ],
)


# ----------------------------------------------------------------------------- 3. offset matrix
def _offset_cases(g):
    return [
        Case("k=1, d_model=2", (1, 2)),
        Case("k=5, d_model=8", (5, 8)),
        Case("k=0, d_model=4 (no shift)", (0, 4)),
        Case("k=-3, d_model=16 (a shift backwards)", (-3, 16)),
        Case("k=37, d_model=32", (37, 32)),
        Case("k=2, d_model=6", (2, 6)),
    ]


def _offset_variant(transpose=False, exponent="2i", layout="pairs", angle="divide", use_k=True):
    def offset(k, d_model):
        i = torch.arange(d_model // 2, dtype=torch.float64)
        power = {"2i": 2 * i, "i": i, "4i": 4 * i}[exponent] / d_model
        phi = (k if use_k else 1) / 10000.0**power if angle == "divide" else k * 10000.0**power
        c, s = torch.cos(phi), torch.sin(phi)
        a = torch.arange(0, d_model, 2) if layout == "pairs" else torch.arange(d_model // 2)
        b = a + 1 if layout == "pairs" else a + d_model // 2
        m = torch.zeros(d_model, d_model, dtype=torch.float64)
        m[a, a], m[a, b], m[b, a], m[b, b] = c, s, -s, c
        return (m.T if transpose else m).float()

    return offset


OFFSET = Exercise(
    id=f"{CHAPTER}/offset_matrix",
    title="An offset is a rotation",
    reference=lambda k, d_model: offset_matrix(k, d_model),
    cases=_offset_cases,
    atol=1e-5,
    rtol=1e-4,
    mistakes=[
        Mistake("the transposed rotation (it shifts by -k)", _offset_variant(transpose=True),
                "check one pair: sin(a + φ) = cos φ · sin a + sin φ · cos a, so row 2i is (…, cos φ, sin φ, …)."),
        Mistake("the angle k/10000^(i/d) instead of k/10000^(2i/d)", _offset_variant(exponent="i"),
                "pair i turns by k · ω_i with ω_i = 1 / 10000^(2i/d_model), the encoding's frequency."),
        Mistake("pairs (i, i + d/2) instead of neighbours (2i, 2i+1)", _offset_variant(layout="halves"),
                "the encoding interleaves sin and cos, so each 2×2 block sits on features 2i and 2i+1."),
        Mistake("the even index doubled (the angle k/10000^(4i/d))", _offset_variant(exponent="4i"),
                "stepping through the features with range(0, d, 2) already gives 2i: don't double it."),
        Mistake("the angle k · 10000^(2i/d) (multiplied instead of divided)", _offset_variant(angle="multiply"),
                "pair i turns by k · ω_i with the *frequency* ω_i = 1 / 10000^(2i/d_model): divide."),
        Mistake("the offset k not used (every block turns by ω_i)", _offset_variant(use_k=False),
                "moving k positions turns pair i by k · ω_i: the angle grows with k (and k = 0 is the identity)."),
    ],
)


# ----------------------------------------------------------------------------- 4. ALiBi
def _alibi_cases(g):
    return [
        Case("1 head, n=4", (1, 4)),
        Case("2 heads, n=5", (2, 5)),
        Case("4 heads, n=6", (4, 6)),
        Case("8 heads, n=7", (8, 7)),
        Case("16 heads, n=3", (16, 3)),
        Case("8 heads, n=1 (a single position)", (8, 1)),
    ]


def _alibi_variant(sign=-1.0, slopes="paper", distance="abs"):  # distance: "abs", "signed" or "squared"
    def alibi(num_heads, n):
        h = torch.arange(1, num_heads + 1, dtype=torch.float64)
        m = {"paper": 2.0 ** (-8 * h / num_heads), "halving": 2.0 ** (-h),
             "from0": 2.0 ** (-8 * (h - 1) / num_heads), "reversed": 2.0 ** (-8 * h / num_heads).flip(0),
             "none": torch.ones(num_heads, dtype=torch.float64)}[slopes]
        pos = torch.arange(n, dtype=torch.float64)
        rel = pos[None, :] - pos[:, None]  # j - i
        dist = {"abs": rel.abs(), "signed": -rel, "squared": rel**2}[distance]
        return (sign * m[:, None, None] * dist).float()

    return alibi


ALIBI = Exercise(
    id=f"{CHAPTER}/alibi_bias",
    title="ALiBi's distance penalty",
    reference=alibi_bias,
    cases=_alibi_cases,
    atol=1e-6,
    rtol=1e-4,
    mistakes=[
        Mistake("a positive bias that rewards distance", _alibi_variant(sign=1.0),
                "the bias is a penalty: -m_h · |i - j|, zero on the diagonal and negative elsewhere."),
        Mistake("the signed offset m·(j - i) instead of -m·|i - j|", _alibi_variant(distance="signed"),
                "that form is fine under a causal mask, but here the bias must penalise both directions: -m·|i - j|."),
        Mistake("slopes 2^-h instead of 2^(-8h/H)", _alibi_variant(slopes="halving"),
                "the slopes are geometric from 2^(-8/H) down to 2^(-8), whatever H is."),
        Mistake("slopes counted from h = 0 (the first slope is 1)", _alibi_variant(slopes="from0"),
                "heads are numbered h = 1 … H: the first slope is 2^(-8/H), the last 2^(-8)."),
        Mistake("the slopes in reverse order", _alibi_variant(slopes="reversed"),
                "head 0 has the steepest slope 2^(-8/H); the last head the shallowest, 2^(-8)."),
        Mistake("no slope at all (-|i - j| in every head)", _alibi_variant(slopes="none"),
                "each head multiplies the distance by its own slope m_h."),
        Mistake("the squared distance -m·(i - j)²", _alibi_variant(distance="squared"),
                "ALiBi's penalty grows *linearly* with the distance: -m_h · |i - j|."),
    ],
)

EXERCISES = [SINUSOIDAL, ROPE, OFFSET, ALIBI]
