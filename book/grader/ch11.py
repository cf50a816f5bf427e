"""Graded exercises of chapter 11 — a real small LLM (SmolLM2-135M) in the book's decoder.

The chapter prints ``read_gguf``'s use, the library's whole-tensor dequantisation, the GGUF → GPT
config and name map, and the logit lens; it states RMSNorm, SwiGLU's 2/3 rule, the two rotary
layouts and the chat template without writing them out for these cases. The learner

1. **derives** the decoding of one Q4_1 block from the format's description
   (``dequantize_q4_1_block``): which nibble of which byte is weight j, the float16 scale and
   minimum — without ``gguf`` or ``book.gguf_file``;
2. **extends** RMSNorm to 16-bit inputs (``rms_norm``): the statistic in float32, the result in
   the input's dtype — graded against a float64 computation, with a float16 case whose squares
   overflow (SmolLM2's residual stream holds a feature near 25,000);
3. **derives** the rotary permutation from Hugging Face's rotate-half layout to llama.cpp's
   interleaved one and **extends** it to a grouped-query attention block
   (``rope_half_to_interleaved``): which matrices move, with which head counts. Judged by what it
   must achieve: the attention output of the interleaved model with the new weights equals the
   rotate-half model's with the old ones;
4. **predicts** a LLaMA-family model's SwiGLU width from d_model (``swiglu_hidden_size``): 2/3 of
   4·d, the optional multiplier, rounded up to a multiple;
5. **applies** SmolLM2's chat template by hand (``chat_prompt``): no ``apply_chat_template``, no
   jinja2.

Every case is small, seeded and made here: nothing needs the model file.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from book.grader import core
from book.grader.core import Case, Exercise, Mistake, Probe
from book.positional import apply_rope

CHAPTER = "11_small_llm"


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


# ============================================================================= 1. one Q4_1 block
def dequantize_q4_1_block(block) -> torch.Tensor:
    """20 bytes (bytes, or a (20,) uint8 array) -> the block's 32 weights, (32,) float32.

    bytes 0-1: the scale d, bytes 2-3: the minimum m (float16, little-endian); bytes 4-19: 32
    four-bit levels q, byte j holding level j in its low nibble and level j + 16 in its high one;
    weight = d · q + m.
    """
    raw = _as_bytes(block)  # (20,) uint8
    if raw.size != 20:
        raise ValueError(f"a Q4_1 block has 20 bytes, not {raw.size}")
    d, m = raw[:4].view("<f2").astype(np.float32)  # (2,): the scale and the minimum
    packed = raw[4:]  # (16,)
    q = np.concatenate([packed & 0x0F, packed >> 4]).astype(np.float32)  # (32,): levels 0 … 15
    return torch.from_numpy(d * q + m)  # (32,)


def _as_bytes(block) -> np.ndarray:
    """bytes, bytearray or a uint8 array -> a flat (n,) uint8 array of the same bytes."""
    if isinstance(block, (bytes, bytearray, memoryview)):
        return np.frombuffer(block, dtype=np.uint8)
    return np.ascontiguousarray(block, dtype=np.uint8).reshape(-1)


def _q4_1_bytes(d, m, q) -> bytes:
    """A block from its fields: q (32,) ints 0-15, d and m rounded to float16."""
    q = np.asarray(q, dtype=np.uint8)
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)
    return np.array([d, m], dtype="<f2").tobytes() + packed.tobytes()


def _q4_1_cases(g):
    def levels():
        return torch.randint(0, 16, (32,), generator=g).numpy()

    row = np.frombuffer(b"".join(_q4_1_bytes(0.02 * (i + 1), -0.1 * i, levels()) for i in range(4)),
                        dtype=np.uint8)  # (80,): a row of four blocks
    return [
        Case("a block with d = 0.0123, m = -0.0957, given as 20 bytes", (_q4_1_bytes(0.0123, -0.0957, levels()),)),
        Case("a block given as a NumPy array of 20 uint8 (as a GGUF tensor's raw rows hold it), d = 0.031, m = -0.24",
             (np.frombuffer(_q4_1_bytes(0.031, -0.24, levels()), dtype=np.uint8).copy(),)),
        Case("a block with d = 0.5 and m = -3.75 (a wide range of weights)", (_q4_1_bytes(0.5, -3.75, levels()),)),
        Case("bytes 40-59 of a row of four blocks (the third block, a NumPy view)", (row[40:60],)),
        Case("a block with d = 0: all 32 weights equal to m = 0.0625", (_q4_1_bytes(0.0, 0.0625, levels()),)),
        Case("a block with d = 0.0041, m = 0.0167 (all weights positive)", (_q4_1_bytes(0.0041, 0.0167, levels()),)),
    ]


def _q4_1_fields(block, order="<f2", dm_offset=0, value_offset=4):
    raw = _as_bytes(block)
    d, m = raw[dm_offset:dm_offset + 4].view(order).astype(np.float32)
    return d, m, raw[value_offset:value_offset + 16]


def _q4_1_variant(kind):
    def wrong(block):
        d, m, packed = _q4_1_fields(block, order=">f2" if kind == "big_endian" else "<f2",
                                    value_offset=2 if kind == "offset" else 4)
        lo, hi = packed & 0x0F, packed >> 4
        if kind == "high_first":
            q = np.concatenate([hi, lo])
        elif kind == "interleaved":  # level 2j low, 2j + 1 high
            q = np.stack([lo, hi], axis=-1).reshape(-1)
        elif kind == "interleaved_high_first":
            q = np.stack([hi, lo], axis=-1).reshape(-1)
        elif kind == "low_only":
            q = lo
        else:
            q = np.concatenate([lo, hi])
        q = q.astype(np.float32)
        if kind == "as_integers":
            d, m = _as_bytes(block)[:4].view("<u2").astype(np.float32)
        if kind == "swap_dm":
            d, m = m, d
        if kind == "no_m":
            return torch.from_numpy(d * q)
        if kind == "signed":  # Q4_0's levels -8 … 7
            return torch.from_numpy(d * (q - 8) + m)
        if kind == "q4_0":
            return torch.from_numpy(d * (q - 8))
        if kind == "m_scaled":
            return torch.from_numpy(d * (q + m))
        return torch.from_numpy(d * q + m)

    return wrong


def _q4_1_judge(got, block):
    if got.dtype != torch.float32:
        return f"your weights have dtype {got.dtype}; return float32, as the library's dequantisation does"
    return None


def _q4_1_explain(got, want, block):
    if not isinstance(got, torch.Tensor) or got.dim() != 1 or got.numel() != 32:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else None
        return (f"A block holds 32 weights: return them as one (32,) tensor{f', not {shape}' if shape else ''}. "
                "Sixteen bytes of four-bit levels hold two levels each")
    if got.dtype != torch.float32:
        return (f"Your weights are {got.dtype}: compute d · q + m in float32 (convert d and m with "
                ".astype(np.float32) or float(...)), so that no weight is rounded on the way")
    g, w = got.double(), want.double()
    if torch.allclose(g.sort().values, w.sort().values, atol=1e-6, rtol=1e-5):
        return ("Your 32 weights are the right values in the wrong order: which nibble of which byte holds "
                "weight j? (Read the format's description again: level j and level j + 16 share a byte)")
    if w.std() > 0:
        a = ((g - g.mean()) * (w - w.mean())).sum() / ((w - w.mean()) ** 2).sum()
        b = g.mean() - a * w.mean()
        if torch.allclose(a * w + b, g, atol=1e-5, rtol=1e-4):
            return ("Your levels are right and in the right order, but the scale or the offset is not: d and m "
                    "are two little-endian float16 numbers (bytes 0-1, then 2-3), and weight = d · q + m")
    return ("Your weights are not d · q + m with this block's levels: check where the 16 bytes of levels "
            "start and how each byte holds two four-bit numbers (0 … 15)")


Q4_1 = Exercise(
    id=f"{CHAPTER}/dequantize_q4_1_block",
    title="Decode one Q4_1 block by hand",
    reference=dequantize_q4_1_block,
    cases=_q4_1_cases,
    atol=1e-6,
    rtol=1e-5,
    judge=_q4_1_judge,
    explain=_q4_1_explain,
    forbidden=("gguf", "dequantize", "dequantize_blocks", "book.gguf_file", "book.gguf_file.dequantize_q4_1"),
    forbidden_why="decode the bytes yourself (compare with the library outside your function)",
    mistakes=[
        Mistake("the high nibble read first (weight j from the high four bits)", _q4_1_variant("high_first"),
                "byte j holds weight j in its LOW four bits (byte & 0x0F) and weight j + 16 in its high four "
                "bits (byte >> 4)."),
        Mistake("the nibbles interleaved (weights 2j and 2j + 1 from byte j)", _q4_1_variant("interleaved"),
                "the two levels of a byte are 16 weights apart, not neighbours: all the low nibbles give "
                "weights 0-15, then all the high nibbles give weights 16-31."),
        Mistake("the nibbles interleaved, high nibble first", _q4_1_variant("interleaved_high_first"),
                "byte j holds weights j (low four bits) and j + 16 (high four bits): the first 16 weights are "
                "the 16 low nibbles, in byte order."),
        Mistake("only one nibble per byte read (16 weights, not 32)", _q4_1_variant("low_only"),
                "each of the 16 bytes holds TWO four-bit levels: the low nibble (byte & 0x0F) and the high "
                "one (byte >> 4)."),
        Mistake("d and m swapped", _q4_1_variant("swap_dm"),
                "the scale d comes first (bytes 0-1), the minimum m second (bytes 2-3)."),
        Mistake("the minimum m forgotten", _q4_1_variant("no_m"),
                "Q4_1 stores a minimum as well as a scale: weight = d · q + m (Q4_0 has no m)."),
        Mistake("the scale applied to the minimum too: d · (q + m)", _q4_1_variant("m_scaled"),
                "m is a weight, not a level: weight = d · q + m, so a block spans m … m + 15·d."),
        Mistake("signed levels q − 8 (Q4_0's rule) with m added", _q4_1_variant("signed"),
                "in Q4_1 the levels are unsigned, 0 … 15: the minimum m provides the offset. Q4_0, which "
                "has no m, is the format that centres them with q − 8."),
        Mistake("Q4_0's formula d · (q − 8)", _q4_1_variant("q4_0"),
                "that is Q4_0 (18-byte blocks, no minimum). A Q4_1 block has a minimum: weight = d · q + m, "
                "with q from 0 to 15."),
        Mistake("d and m read as integers (uint16) instead of float16", _q4_1_variant("as_integers"),
                "the two bytes of d are a half-precision float: view them with dtype float16 (NumPy "
                "'<f2', struct format 'e'), not as an integer."),
        Mistake("d and m read as big-endian float16", _q4_1_variant("big_endian"),
                "GGUF files are little-endian: the first byte of d is its low byte ('<f2', struct '<e')."),
        Mistake("the levels read from byte 2 on (m is two bytes too)", _q4_1_variant("offset"),
                "d takes bytes 0-1 and m bytes 2-3: the 16 bytes of levels are bytes 4-19."),
    ],
)


# ============================================================================= 2. RMSNorm for 16-bit inputs
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x / √(mean(x²) + eps) · weight over the last axis, computed in (at least) float32 and
    returned in x's dtype — as LLaMA's implementations do for float16 and bfloat16 models."""
    compute = torch.promote_types(x.dtype, torch.float32)
    x32 = x.to(compute)
    y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., d)
    return (y * weight.to(compute)).to(x.dtype)


def _rms_exact(x, weight, eps):
    x64 = x.double()
    return x64 / torch.sqrt(x64.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.double()


def _rms_tolerance(dtype):
    """(rtol, atol) a float32 computation rounded to ``dtype`` stays within, with a margin."""
    if dtype in (torch.float16, torch.bfloat16):
        return 2 * torch.finfo(dtype).eps, 1e-5
    return 1e-5, 1e-6


def _rms_error(got, x, weight, eps):
    """The largest error of got against the float64 computation, in units of the allowed one."""
    exact = _rms_exact(x, weight, eps)
    rtol, atol = _rms_tolerance(x.dtype)
    g = got.double()
    if not torch.isfinite(g).all():
        return math.inf
    return ((g - exact).abs() / (atol + rtol * exact.abs())).max().item()


def _rms_cases(g):
    def case(name, shape, dtype, eps, scale=1.0, offset=0.0):
        x = _randn(g, *shape, scale=scale) + offset
        weight = 1.0 + _randn(g, shape[-1], scale=0.3)
        return x, weight, dtype, eps, name

    def done(x, weight, dtype, eps, name):
        return Case(name, (x.to(dtype), weight.to(dtype), eps))

    padded = case("float32 x (3, 12) whose second vector is all zeros (a padding position), eps = 1e-6",
                  (3, 12), torch.float32, 1e-6)
    padded[0][1] = 0.0
    massive = case("float16 x (2, 6, 64) with a massive activation — feature 7 near ±25,000 at four positions, "
                   "as in SmolLM2's residual stream after layer 11 — eps = 1e-5", (2, 6, 64), torch.float16, 1e-5)
    massive[0][:, 1:3, 7] = torch.tensor([[24926.0, -24790.0], [24538.0, 24830.0]])
    return [
        done(*case("float32 x (2, 5, 16), eps = 1e-5", (2, 5, 16), torch.float32, 1e-5)),
        done(*case("float32 x (3, 4, 24) whose vectors have a mean near 2, eps = 1e-5", (3, 4, 24), torch.float32,
                   1e-5, offset=2.0)),
        done(*case("float32 x (4, 32) of tiny activations (about 0.003 each, so eps matters), eps = 1e-5", (4, 32),
                   torch.float32, 1e-5, scale=0.003)),
        done(*padded),
        done(*case("bfloat16 x (2, 7, 576), SmolLM2's width, eps = 1e-5", (2, 7, 576), torch.bfloat16, 1e-5)),
        done(*massive),
        done(*case("float16 x (5, 48), ordinary sizes, eps = 1e-6", (5, 48), torch.float16, 1e-6)),
    ]


def _rms_variant(kind):
    def wrong(x, weight, eps=1e-5):
        compute = x.dtype if kind == "half" else torch.promote_types(x.dtype, torch.float32)
        x32, w = x.to(compute), weight.to(compute)
        ms = x32.pow(2).mean(dim=-1, keepdim=True)
        if kind == "eps_outside":
            y = x32 / (ms.sqrt() + eps)
        elif kind == "no_eps":
            y = x32 / ms.sqrt()
        elif kind == "sum":
            y = x32 / torch.sqrt(x32.pow(2).sum(dim=-1, keepdim=True) + eps)
        elif kind == "no_sqrt":
            y = x32 / (ms + eps)
        else:
            y = x32 * torch.rsqrt(ms + eps)
        out = y if kind == "no_weight" else y * w
        return out.to(x.dtype)

    return wrong


def _loosely(got, want):
    """The same within the catalogue's tolerance (NaN matching NaN)."""
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return False
    return torch.allclose(got.double(), want.double(), rtol=2e-2, atol=1e-2, equal_nan=True)


def _rms_shows(got, wrong, x, weight, eps):
    """Does got show the slip that gives ``wrong`` on this case? In x's dtype, loosely equal to wrong,
    and no further from the exact RMSNorm than wrong is (plus rounding) — so that on a case where the
    slip changes little, an answer wrong for another reason (its dtype, its precision) is not taken
    for this slip."""
    if not isinstance(got, torch.Tensor) or got.dtype != x.dtype or tuple(got.shape) != tuple(x.shape):
        return False
    g, w = got.double(), wrong.double()
    if not _loosely(g, w):
        return False
    right = _rms_exact(x, weight, eps)
    rtol, atol = _rms_tolerance(x.dtype)
    near = (g - right).abs() <= atol + rtol * right.abs() + 2 * (w - right).abs()
    return bool((near | (torch.isnan(g) & torch.isnan(w))).all())


def _rms_probe(variants):
    """A catalogued slip as a probe: variants(x, weight, eps) -> the wrong results it may give."""
    def fn(x, weight, eps=1e-5):
        wrongs = variants(x, weight, eps)
        return Probe(lambda got: any(_rms_shows(got, w, x, weight, eps) for w in wrongs))

    return fn


def _rms_slip(kind):
    return _rms_probe(lambda x, weight, eps: [_rms_variant(kind)(x, weight, eps)])


def _wrong_axes(x, weight, eps):
    """The mean of the squares over another axis, or over everything (and the right result, for a
    2-D x where dim=1 happens to be the last axis)."""
    x64, w = x.double(), weight.double()
    out = [x64 / torch.sqrt(x64.pow(2).mean() + eps) * w, _rms_exact(x, weight, eps)]
    for dim in range(x.dim() - 1):
        out.append(x64 / torch.sqrt(x64.pow(2).mean(dim=dim, keepdim=True) + eps) * w)
    return out


def _layer_norms(x, weight, eps):
    """LayerNorm's statistic: the mean subtracted from x, or inside the statistic, or both."""
    x64, w = x.double(), weight.double()
    centred = x64 - x64.mean(dim=-1, keepdim=True)
    out = [centred / torch.sqrt(x64.pow(2).mean(dim=-1, keepdim=True) + eps) * w]
    for unbiased in (False, True):
        var = x64.var(dim=-1, keepdim=True, unbiased=unbiased)
        for top in (x64, centred):
            out += [top / torch.sqrt(var + eps) * w, top / (var.sqrt() + eps) * w]
    return out


def _rms_float32_out(x, weight, eps=1e-5):
    """Probe: right values, returned as float32 whatever x's dtype."""
    return Probe(lambda got: isinstance(got, torch.Tensor) and got.dtype == torch.float32
                 and tuple(got.shape) == tuple(x.shape) and _rms_error(got, x, weight, eps) <= 1.0)


def _rms_judge(got, x, weight, eps=1e-5):
    if got.dtype != x.dtype:
        return (f"your result has dtype {got.dtype}; for x of dtype {x.dtype} return {x.dtype}: compute the "
                "statistic in float32, then cast the result back to x's dtype")
    err = _rms_error(got, x, weight, eps)
    if err <= 1.0:
        return None
    if math.isinf(err):
        return (f"your result has inf or NaN on {x.dtype} input where RMSNorm is finite: does a square overflow "
                f"in {x.dtype}?")
    if x.dtype in (torch.float16, torch.bfloat16):
        ulps = err * 2
        return (f"on {x.dtype} input your result is up to {ulps:.0f} units in the last place away from an exact "
                f"RMSNorm; computing in float32 and rounding once at the end stays within 1")
    factors = _rms_factors(got, x, weight, eps)
    if factors is not None:
        return ("your result is close but not right: each of your vectors is the right one times a factor close to "
                "1, a different factor for each — something small is off in the statistic: where does eps go?")
    return "your result is close but not right: compare each step with x / √(mean(x²) + eps) · weight"


def _rms_factors(got, x, weight, eps):
    """If every vector of got is the exact result times one number, those numbers (..., 1); else None."""
    exact = _rms_exact(x, weight, eps)
    if not (exact.abs() > 1e-6).all():
        return None
    ratio = got.double() / exact
    if not torch.isfinite(ratio).all():
        return None
    spread = (ratio.amax(-1) - ratio.amin(-1)) / ratio.abs().amax(-1)
    return ratio.mean(-1, keepdim=True) if bool((spread < 1e-3).all()) else None


def _rms_explain(got, want, x, weight, eps=1e-5):
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(x.shape):
        return (f"Return a tensor of x's shape, {tuple(x.shape)}: RMSNorm rescales every vector of the last axis "
                "(keep that axis in the mean with keepdim=True, so the division broadcasts)")
    if _rms_factors(got, x, weight, eps) is not None:
        return ("Each of your vectors is a scaled copy of the right one (a different factor for each): the "
                "statistic is off. It is the mean of x² over the last axis, plus eps, under the square root")
    return "Build it step by step: the mean of x² over the last axis, + eps, √, divide, × weight"


RMS_NORM = Exercise(
    id=f"{CHAPTER}/rms_norm",
    title="RMSNorm for float16 and bfloat16 inputs",
    reference=rms_norm,
    cases=_rms_cases,
    atol=1e-2,  # the catalogue's tolerance: 16-bit results differ by rounding; the judge is strict
    rtol=2e-2,
    judge=_rms_judge,
    explain=_rms_explain,
    nan_hint="a vector of zeros divided by its RMS is 0/0 unless eps sits under the square root; "
             "and in float16 a square above 65,504 is inf",
    forbidden=("torch.nn.functional.rms_norm", "torch.nn.RMSNorm", "book.layers.RMSNorm"),
    mistakes=[
        Mistake("eps added outside the square root", _rms_slip("eps_outside"),
                "eps goes under the root: x / √(mean(x²) + eps). Outside it, it makes a difference exactly "
                "where eps matters — for vectors whose mean square is not much larger than eps."),
        Mistake("eps forgotten", _rms_slip("no_eps"),
                "without eps a vector of zeros (a padding position) gives 0/0 = NaN: x / √(mean(x²) + eps)."),
        Mistake("the mean taken over the wrong axis", _rms_probe(_wrong_axes),
                "each vector is normalised on its own: the mean of x² over the LAST axis (dim=-1, "
                "keepdim=True), one number per position."),
        Mistake("the weight forgotten", _rms_slip("no_weight"),
                "RMSNorm ends with a learned scale, one number per feature: multiply by weight."),
        Mistake("the mean subtracted (that is LayerNorm)", _rms_probe(_layer_norms),
                "RMSNorm does not centre: no mean is subtracted, from x or inside the statistic; it divides "
                "by the root of the mean of x² itself."),
        Mistake("the sum of the squares instead of their mean", _rms_slip("sum"),
                "divide the sum of x² by the number of features — mean(x², dim=-1) — before the root."),
        Mistake("the square root forgotten", _rms_slip("no_sqrt"),
                "the root mean square is √(mean(x²)): divide by √(mean(x²) + eps), not by mean(x²) + eps."),
        Mistake("computed in x's 16-bit dtype", _rms_slip("half"),
                "float16's largest number is 65,504: a feature of 25,000 squared is inf, and x / inf = 0. "
                "Convert x to float32 first (x.float()), normalise, then cast the result back (.to(x.dtype))."),
        Mistake("returned as float32 instead of x's dtype", _rms_float32_out,
                "the statistic is computed in float32, but the layer's output must keep the model's dtype: "
                "cast the result back with .to(x.dtype) (after multiplying by the weight, or before)."),
    ],
)


# ============================================================================= 3. the rotary permutation, for a GQA block
def _half_to_interleaved_rows(w, num_heads, inverse=False, whole=False, swapped=False):
    """Rows of a q or k projection (num_heads·d_k, …), moved head by head: new row 2i of a head is
    its old row i and new row 2i + 1 its old row i + d_k/2 (llama.cpp's permute)."""
    h = 1 if whole else num_heads
    d_k = w.size(0) // h
    if inverse:  # interleaved -> half: new row i <- 2i, new row i + d_k/2 <- 2i + 1
        return w.unflatten(0, (h, d_k // 2, 2)).transpose(1, 2).flatten(0, 2)
    x = w.unflatten(0, (h, 2, d_k // 2))
    if swapped:
        x = x.flip(1)
    return x.transpose(1, 2).flatten(0, 2)


def rope_half_to_interleaved(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    """A rotate-half (Hugging Face) attention block's weights -> the same block for interleaved
    rotary positions (llama.cpp, the book): w_q's rows permuted in each of its num_heads heads,
    w_k's in each of its num_kv_heads heads; w_v and w_o unchanged (rotation never touches values)."""
    return (_half_to_interleaved_rows(w_q, num_heads), _half_to_interleaved_rows(w_k, num_kv_heads),
            w_v.clone(), w_o.clone())


ROPE_BASE = 10000.0
ROPE_NAMES = ("w_q", "w_k", "w_v", "w_o")


def _attention(x, positions, w_q, w_k, w_v, w_o, num_heads, num_kv_heads, layout):
    """Causal grouped-query attention with rotary positions, in float64: x (B, T, d) -> (scores, out)."""
    B, T, _ = x.shape
    q = (x @ w_q.T).unflatten(-1, (num_heads, -1)).transpose(1, 2)  # (B, h, T, d_k)
    k = (x @ w_k.T).unflatten(-1, (num_kv_heads, -1)).transpose(1, 2)  # (B, h_kv, T, d_k)
    v = (x @ w_v.T).unflatten(-1, (num_kv_heads, -1)).transpose(1, 2)
    q, k = apply_rope(q, positions, ROPE_BASE, layout), apply_rope(k, positions, ROPE_BASE, layout)
    group = num_heads // num_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # query head i reads i // group
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(2) @ w_o.T  # (B, T, d)
    return scores.masked_fill(future, 0.0), out


def _rope_cases(g):
    def case(name, h, h_kv, d_k, d_model):
        return Case(name, (_randn(g, h * d_k, d_model), _randn(g, h_kv * d_k, d_model),
                           _randn(g, h_kv * d_k, d_model), _randn(g, d_model, h * d_k), h, h_kv))

    return [
        case("2 query heads and 1 key/value head of size 8, d_model = 16", 2, 1, 8, 16),
        case("4 query heads and 2 key/value heads of size 8, d_model = 32", 4, 2, 8, 32),
        case("3 query heads and 3 key/value heads (no grouping) of size 6, d_model = 18", 3, 3, 6, 18),
        case("6 query heads and 2 key/value heads of size 4, d_model = 20 (not 6 · 4)", 6, 2, 4, 20),
        case("SmolLM2's shapes: 9 query heads and 3 key/value heads of size 64, d_model = 576", 9, 3, 64, 576),
    ]


def _rope_probe_inputs(w_q, num_heads):
    """The seeded inputs the judge runs both attention blocks on: x (2, 6, d) and positions."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 6, w_q.size(1), generator=g, dtype=torch.float64)
    positions = torch.tensor([0, 3, 10, 31, 100, 1000])  # fast and slow pairs both turn far
    return x, positions


def _rows_of(got, w):
    """Which row of w each row of got is (-1 where none), or None if the shapes differ."""
    if got.shape != w.shape:
        return None
    dist = torch.cdist(got.double().reshape(got.size(0), -1), w.double().reshape(w.size(0), -1),
                       compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros for equal rows
    best = dist.argmin(dim=1)
    found = dist.gather(1, best[:, None])[:, 0] < 1e-9
    return torch.where(found, best, torch.full_like(best, -1))


def _rope_judge(got, w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    given = (w_q, w_k, w_v, w_o)
    if not isinstance(got, (tuple, list)) or len(got) != 4:
        return f"your result is {core._describe(got)}; return the four matrices (w_q, w_k, w_v, w_o), in that order"
    for name, mine, theirs in zip(ROPE_NAMES, got, given):
        if not isinstance(mine, torch.Tensor):
            return f"`{name}` is {core._describe(mine)}; return a torch.Tensor"
        if tuple(mine.shape) != tuple(theirs.shape):
            return (f"`{name}` has shape {tuple(mine.shape)}; it must keep the shape of the {name} you were "
                    f"given, {tuple(theirs.shape)}")
    x, pos = _rope_probe_inputs(w_q, num_heads)
    half = _attention(x, pos, *(w.double() for w in given), num_heads, num_kv_heads, "half")
    mine = _attention(x, pos, *(w.double() for w in got), num_heads, num_kv_heads, "interleaved")
    if not torch.allclose(mine[0], half[0], rtol=1e-7, atol=1e-7):
        for name, w, h, new in (("w_q", w_q, num_heads, got[0]), ("w_k", w_k, num_kv_heads, got[1])):
            rows = _rows_of(new, w)
            if rows is None or (rows < 0).any():
                return (f"the attention scores differ from the rotate-half model's, and your {name}'s rows are not "
                        f"all rows of the {name} you were given: only move its rows, head by head")
            if torch.equal(rows, torch.arange(w.size(0))):
                return (f"the attention scores differ from the rotate-half model's: your {name} is unchanged. Both "
                        "w_q and w_k feed the rotation, so both must follow the new layout")
            if bool((rows // (w.size(0) // h) != torch.arange(w.size(0)) // (w.size(0) // h)).any()):
                return (f"the attention scores differ: some rows of your {name} moved from one head to another. "
                        f"{name} has {h} head{'s' * (h != 1)} of {w.size(0) // h} rows each; permute the rows "
                        "within each head")
        right = rope_half_to_interleaved(*given, num_heads, num_kv_heads)
        q_ok, k_ok = torch.equal(got[0], right[0]), torch.equal(got[1], right[1])
        if q_ok != k_ok:
            good, bad, heads = ("w_q", "w_k", num_kv_heads) if q_ok else ("w_k", "w_q", num_heads)
            return (f"your {good} is right, your {bad} is not: {bad} has {heads} head{'s' * (heads != 1)} of "
                    f"{(w_k if bad == 'w_k' else w_q).size(0) // heads} rows; permute the rows inside each of them "
                    f"exactly as inside a head of {good}")
        return ("the attention scores differ from the rotate-half model's: your w_q and w_k rows stay in their "
                "heads, but not in the order the interleaved layout needs. Which two features does rotate-half "
                "turn together, and where does the interleaved layout expect the two of a pair?")
    if not torch.allclose(mine[1], half[1], rtol=1e-7, atol=1e-7):
        return ("the attention scores are right but the block's output is not: rotary positions turn only "
                "queries and keys — the values and the output projection need no change")
    return None


def _rope_variant(q="perm", k="perm", v=False, o=False):
    """A conversion with one slip: q or k 'perm' (right), 'same', 'inverse', 'whole', 'swapped',
    'columns', 'query_heads' (k with the query heads' count)."""
    def rows(w, heads, how, query_heads):
        if how == "same":
            return w.clone()
        if how == "columns":  # the row permutation used to index the columns
            idx = _half_to_interleaved_rows(torch.arange(w.size(0)), heads)
            return w[:, idx]
        if how == "query_heads":
            return _half_to_interleaved_rows(w, query_heads)
        return _half_to_interleaved_rows(w, heads, inverse=how == "inverse", whole=how == "whole",
                                         swapped=how == "swapped")

    def convert(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
        new_q = rows(w_q, num_heads, q, num_heads)
        new_k = rows(w_k, num_kv_heads, k, num_heads)
        new_v = _half_to_interleaved_rows(w_v, num_kv_heads) if v else w_v.clone()
        new_o = w_o[:, _half_to_interleaved_rows(torch.arange(w_o.size(1)), num_heads)] if o else w_o.clone()
        return new_q, new_k, new_v, new_o

    return convert


ROPE = Exercise(
    id=f"{CHAPTER}/rope_half_to_interleaved",
    title="From rotate-half to interleaved rotary positions: convert an attention block",
    reference=None,  # judged: any weights that make the interleaved block compute the same output pass
    cases=_rope_cases,
    output_names=ROPE_NAMES,
    atol=1e-6,
    judge=_rope_judge,
    mistakes=[
        Mistake("the inverse permutation (interleaved → rotate-half)", _rope_variant(q="inverse", k="inverse"),
                "that is the permutation transformers uses to undo llama.cpp's. Here the rotate-half pair i is "
                "(row i, row i + d_k/2) of a head; in the interleaved layout pair i is rows 2i and 2i + 1. So new "
                "row 2i is old row i — not the other way round."),
        Mistake("one permutation over all the rows, not head by head", _rope_variant(q="whole", k="whole"),
                "rotary positions turn each head's d_k features on their own: split the rows into heads "
                "(unflatten(0, (num_heads, d_k))) and permute inside each head."),
        Mistake("the columns permuted instead of the rows", _rope_variant(q="columns", k="columns"),
                "q = x @ w_q.T: each ROW of w_q makes one feature of q. Permute the rows (dim 0); the columns are "
                "the model's input features, which the rotation never sees."),
        Mistake("the two rows of each pair in the wrong order", _rope_variant(q="swapped", k="swapped"),
                "within a pair, the first coordinate is the one multiplied by cos and from which sin times the "
                "other is subtracted: rotate-half's row i must become row 2i, and row i + d_k/2 row 2i + 1."),
        Mistake("w_k permuted with the number of query heads", _rope_variant(k="query_heads"),
                "with grouped-query attention w_k has only num_kv_heads heads: permute its rows inside each of "
                "those (its head size is the same d_k as the queries')."),
        Mistake("w_k left as it is (only w_q permuted)", _rope_variant(k="same"),
                "a score is q · k: both are turned by the rotation, so both w_q and w_k must follow the new "
                "layout, with the same permutation inside every head."),
        Mistake("w_q left as it is (only w_k permuted)", _rope_variant(q="same"),
                "a score is q · k: both are turned by the rotation, so both w_q and w_k must follow the new "
                "layout, with the same permutation inside every head."),
        Mistake("w_v's rows permuted too", _rope_variant(v=True),
                "the values are not rotated: permuting w_v's rows reorders the features each head outputs, and "
                "w_o then reads them in the wrong order. Leave w_v (and w_o) as they are."),
        Mistake("w_o's columns permuted to match w_q", _rope_variant(o=True),
                "w_o reads the heads' outputs, which are mixtures of VALUES, not of queries: w_v is unchanged, so "
                "w_o must be too."),
    ],
)


# ============================================================================= 4. SwiGLU's hidden size
def swiglu_hidden_size(d_model: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LLaMA's rule: 2/3 of 4·d_model (truncated), times the optional multiplier (truncated),
    rounded up to a multiple of multiple_of."""
    hidden = int(2 * (4 * d_model) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _swiglu_cases(g):
    return [
        Case("SmolLM2-135M: d_model 576, multiple_of 256, no multiplier", (576, 256, None)),
        Case("LLaMA-7B: d_model 4096, multiple_of 256, no multiplier", (4096, 256, None)),
        Case("LLaMA-13B: d_model 5120, multiple_of 256, no multiplier", (5120, 256, None)),
        Case("LLaMA-2-70B: d_model 8192, multiple_of 4096, ffn_dim_multiplier 1.3", (8192, 4096, 1.3)),
        Case("LLaMA-3-8B: d_model 4096, multiple_of 1024, ffn_dim_multiplier 1.3", (4096, 1024, 1.3)),
        Case("LLaMA-3.1-405B: d_model 16384, multiple_of 4096, ffn_dim_multiplier 1.2", (16384, 4096, 1.2)),
        Case("a small model: d_model 96, multiple_of 64, no multiplier", (96, 64, None)),
        Case("SmolLM2-360M: d_model 960, multiple_of 256, no multiplier", (960, 256, None)),
    ]


def _up(n, m):
    return m * ((n + m - 1) // m)


def _swiglu_variant(kind):
    def wrong(d_model, multiple_of=256, ffn_dim_multiplier=None):
        start = {"no_two_thirds": 4 * d_model, "of_d": int(2 * d_model / 3),
                 "three_halves": int(1.5 * 4 * d_model)}.get(kind, int(2 * (4 * d_model) / 3))
        mult = ffn_dim_multiplier
        hidden = int(mult * start) if mult is not None and kind not in ("no_multiplier", "multiplier_after") else start
        m = multiple_of
        if kind == "down":
            return m * (hidden // m)
        if kind == "nearest":
            return m * round(hidden / m)
        if kind == "no_rounding":
            return hidden
        if kind == "next_multiple":
            return m * (hidden // m + 1)
        if kind == "multiplier_after":
            rounded = _up(hidden, m)
            if mult is None:
                return rounded
            after = int(mult * rounded)
            return Probe(lambda got: got in (after, _up(after, m)))
        return _up(hidden, m)

    return wrong


def _swiglu_explain(got, want, d_model, multiple_of=256, ffn_dim_multiplier=None):
    if not isinstance(got, int):
        return None
    if got % multiple_of:
        return f"{got} is not a multiple of multiple_of = {multiple_of}: the last step rounds up to one"
    ratio = got / (4 * d_model)
    rule = "2/3 of it" + (f", times ffn_dim_multiplier = {ffn_dim_multiplier}," if ffn_dim_multiplier else "")
    off_by_one = (f" It is off by exactly one multiple_of ({multiple_of}): if your factors are right, look "
                  "at the rounding (up, and a size that is already a multiple stays).") \
        if abs(got - want) == multiple_of else ""
    return (f"Your size is too {'large' if got > want else 'small'}: it is {ratio:.2f} × 4·d_model. The rule "
            f"starts from 4·d_model, takes {rule} and only then rounds up to a multiple of "
            f"multiple_of.{off_by_one}")


SWIGLU = Exercise(
    id=f"{CHAPTER}/swiglu_hidden_size",
    title="Predict SwiGLU's hidden size",
    reference=swiglu_hidden_size,
    cases=_swiglu_cases,
    atol=0.0,
    rtol=0.0,
    returns=int,
    explain=_swiglu_explain,
    mistakes=[
        Mistake("no 2/3: the 4·d of a two-matrix FFN", _swiglu_variant("no_two_thirds"),
                "SwiGLU has three matrices, not two: to keep the same number of weights as a 4·d ReLU FFN "
                "(2 · d · 4d), its width is 2/3 of 4·d (3 · d · 8d/3 = 8d²)."),
        Mistake("2/3 of d_model instead of 2/3 of 4·d_model", _swiglu_variant("of_d"),
                "start from the classic FFN width, 4·d_model, then take 2/3 of it: 8·d_model/3."),
        Mistake("3/2 instead of 2/3", _swiglu_variant("three_halves"),
                "the three matrices must hold as many weights as the two of a 4·d FFN, so the width SHRINKS: "
                "× 2/3."),
        Mistake("rounded down instead of up", _swiglu_variant("down"),
                "the width is rounded UP to the next multiple of multiple_of: "
                "multiple_of · ⌈hidden / multiple_of⌉, in integers (hidden + multiple_of − 1) // multiple_of."),
        Mistake("rounded to the nearest multiple", _swiglu_variant("nearest"),
                "LLaMA rounds UP, never down: multiple_of · ⌈hidden / multiple_of⌉."),
        Mistake("a size already a multiple pushed to the next one", _swiglu_variant("next_multiple"),
                "(hidden // m + 1) · m adds a multiple even when hidden is one already (SmolLM2: 1536 = 6 · 256 "
                "stays 1536). Use (hidden + m − 1) // m · m."),
        Mistake("not rounded to a multiple of multiple_of", _swiglu_variant("no_rounding"),
                "the last step rounds the width up to a multiple of multiple_of (hardware likes round sizes)."),
        Mistake("the multiplier ignored", _swiglu_variant("no_multiplier"),
                "when ffn_dim_multiplier is given (LLaMA-2-70B, LLaMA-3: 1.3), multiply the 2/3 width by it, "
                "truncate to an integer, and only then round up."),
        Mistake("the multiplier applied after rounding", _swiglu_variant("multiplier_after"),
                "the order is: 2/3 of 4·d (an int), × ffn_dim_multiplier (an int again), THEN round up to a "
                "multiple of multiple_of."),
    ],
)


# ============================================================================= 5. the chat template by hand
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_prompt(messages, add_generation_prompt: bool = True) -> str:
    """SmolLM2's chat template (tokenizer.chat_template in the GGUF file), without jinja2."""
    parts = []
    if messages and messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    for message in messages:
        parts.append(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _chat_cases(g):
    def m(role, content):
        return {"role": role, "content": content}

    return [
        Case("one user message, with the generation prompt", ([m("user", "What is the capital of France?")], True)),
        Case("a system message, then a user message, with the generation prompt",
             ([m("system", "You are a pirate. Answer like one."), m("user", "Hello!")], True)),
        Case("user, assistant, user (a conversation going on), with the generation prompt",
             ([m("user", "Hi"), m("assistant", "Hello! How can I help?"), m("user", "Tell me a joke.")], True)),
        Case("system, user, assistant (a finished conversation, e.g. for training), add_generation_prompt=False",
             ([m("system", "Be brief."), m("user", "2 + 2?"), m("assistant", "4")], False)),
        Case("a user message that starts and ends with spaces and holds two newlines, with the generation prompt",
             ([m("user", "  Two lines:\nfirst\nsecond  ")], True)),
        Case("user, then a system message second, then user (the template looks at the first message only)",
             ([m("user", "Hi"), m("system", "Answer in French."), m("user", "What is a cat?")], True)),
        Case("one user message, add_generation_prompt=False", ([m("user", "Thanks!")], False)),
    ]


def _chat_variant(default="first", role_newline=True, end="<|im_end|>", end_newline=True, gen="asked",
                  gen_newline=True, strip=False):
    def prompt(messages, add_generation_prompt=True):
        out = ""
        first_is_system = bool(messages) and messages[0]["role"] == "system"
        anywhere = any(msg["role"] == "system" for msg in messages)
        if (default == "first" and not first_is_system) or default == "always" or (
                default == "anywhere" and not anywhere):
            out += f"<|im_start|>system{chr(10) if role_newline else ''}{DEFAULT_SYSTEM}{end}{chr(10) if end_newline else ''}"
        for msg in messages:
            content = msg["content"].strip() if strip else msg["content"]
            out += (f"<|im_start|>{msg['role']}{chr(10) if role_newline else ''}{content}{end}"
                    f"{chr(10) if end_newline else ''}")
        if gen == "always" or (gen == "asked" and add_generation_prompt):
            out += "<|im_start|>assistant" + ("\n" if gen_newline else "")
        return out

    return prompt


def _chat_segments(messages, add_generation_prompt=True):
    """(description, text) of each piece of the expected prompt, in order."""
    segs = []
    if messages and messages[0]["role"] != "system":
        segs.append(("the default system message (added because the first message is not a system one)",
                     f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"))
    for i, msg in enumerate(messages, start=1):
        role = msg["role"]
        segs.append((f"the header of message {i} ({role}): <|im_start|>, the role, a newline",
                     f"<|im_start|>{role}\n"))
        segs.append((f"the content of message {i} ({role}), exactly as given", msg["content"]))
        segs.append((f"the end of message {i}: <|im_end|>, then a newline", "<|im_end|>\n"))
    if add_generation_prompt:
        segs.append(("the generation prompt: <|im_start|>assistant and a newline", "<|im_start|>assistant\n"))
    return segs


def _chat_explain(got, want, messages, add_generation_prompt=True):
    if not isinstance(got, str):
        return f"Return the prompt as one str; yours is {core._describe(got)}"
    i = next((n for n, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    if i == len(want):
        return (f"Your prompt is right up to the end of the expected one, then goes on with {got[i:i + 40]!r}: "
                + ("no generation prompt was asked for" if not add_generation_prompt else "nothing comes after "
                   "the generation prompt"))
    at, where = 0, "the prompt"
    for description, text in _chat_segments(messages, add_generation_prompt):
        if at + len(text) > i:
            where = description
            break
        at += len(text)
    if i == len(got):
        return f"Your prompt stops too early, after {i} characters: it is missing {where}"
    return f"Your prompt is right for its first {i} characters, then goes wrong in {where}: yours reads {got[i:i + 40]!r} there"


CHAT = Exercise(
    id=f"{CHAPTER}/chat_prompt",
    title="SmolLM2's chat template, by hand",
    reference=chat_prompt,
    cases=_chat_cases,
    explain=_chat_explain,
    forbidden=("apply_chat_template", "jinja2", "render", "transformers"),
    forbidden_why="build the string yourself, from the template's rules",
    mistakes=[
        Mistake("the default system message missing", _chat_variant(default="never"),
                "the template starts with a system message of its own when the conversation does not: "
                "`if loop.first and messages[0]['role'] != 'system'`."),
        Mistake("the default system message added although the conversation starts with one",
                _chat_variant(default="always"),
                "the default system message comes only when the FIRST message is not a system message."),
        Mistake("a system message anywhere taken for the conversation's own", _chat_variant(default="anywhere"),
                "the template looks at messages[0] only: a system message that comes later does not replace the "
                "default one."),
        Mistake("no newline after the role", _chat_variant(role_newline=False),
                "each message is '<|im_start|>' + role + '\\n' + content + '<|im_end|>' + '\\n': the role sits on "
                "its own line."),
        Mistake("no newline after <|im_end|>", _chat_variant(end_newline=False),
                "every message, the default system one included, ends with '<|im_end|>' followed by '\\n'."),
        Mistake("<|endoftext|> instead of <|im_end|>", _chat_variant(end="<|endoftext|>"),
                "SmolLM2's messages end with '<|im_end|>' (token 2, the end-of-turn token generation stops at); "
                "'<|endoftext|>' is token 0, which the template never writes."),
        Mistake("the generation prompt never added", _chat_variant(gen="never"),
                "with add_generation_prompt=True the prompt ends with '<|im_start|>assistant\\n', so the model "
                "answers as the assistant."),
        Mistake("the generation prompt added even when not asked for", _chat_variant(gen="always"),
                "add '<|im_start|>assistant\\n' only when add_generation_prompt is True (a finished "
                "conversation, for training, has none)."),
        Mistake("the generation prompt without its newline", _chat_variant(gen_newline=False),
                "the generation prompt is '<|im_start|>assistant\\n', with the newline: the model's answer starts "
                "on the next line, as every message's content does."),
        Mistake("the content stripped of its spaces and newlines", _chat_variant(strip=True),
                "this template writes message['content'] exactly as given (some other templates trim it; this "
                "one does not)."),
    ],
)

EXERCISES = [Q4_1, RMS_NORM, ROPE, SWIGLU, CHAT]
