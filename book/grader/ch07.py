"""Graded exercises of chapter 07 — the encoder–decoder: LayerNorm, the FFN, encoder and decoder layers.

The layer exercises are checked against PyTorch's own ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer`` (batch_first=True, dropout 0), into which the harness copies the
learner's parameter dict. Parameter dicts, as the exercise notebook describes them::

    {"self_attn": {"w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "w_o", "b_o"},   # (d, d) and (d,)
     "cross_attn": {...same keys...},                                         # decoder only
     "ffn": {"w1": (d_ff, d), "b1": (d_ff,), "w2": (d, d_ff), "b2": (d,)},
     "norm1": {"gamma": (d,), "beta": (d,)}, "norm2": {...}, "norm3": {...}}  # norm3: decoder only
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from book import convert
from book.attention import causal_mask
from book.grader.core import Case, Exercise, Mistake
from book.layers import DecoderLayer, decoder_self_mask, key_padding_mask, layer_norm, position_wise_ffn, torch_attn_mask
from book.multihead import multi_head_attention

CHAPTER = "07_encoder_decoder"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# ----------------------------------------------------------------------------- 1. layer_norm
def _layer_norm_cases(g):
    def gb(d):
        return 1.0 + 0.5 * _randn(g, d), 0.5 * _randn(g, d)  # gamma near 1, beta near 0, never trivial

    const = _randn(g, 3, 8)
    const[1] = 2.5  # one token whose features are all equal: variance 0
    return [
        Case("x of shape (5, 8)", (_randn(g, 5, 8), *gb(8))),
        Case("x of shape (2, 3, 16) (extra batch dims)", (_randn(g, 2, 3, 16, scale=3.0) + 1.0, *gb(16))),
        Case("one vector of 4 features", (_randn(g, 4), *gb(4))),
        Case("a token whose features are all equal (variance 0)", (const, *gb(8))),
        Case("tiny features (spread ~1e-3, smaller than √eps)", (_randn(g, 4, 8, scale=1e-3), *gb(8))),
        Case("eps = 0.1", (_randn(g, 3, 6), *gb(6), 0.1)),
        Case("features with a large common offset (~200)", (_randn(g, 4, 16) + 200.0, *gb(16))),
    ]


def _ln_variant(unbiased=False, eps_outside=False, fixed_eps=False, dims=(-1,), center=True,
                affine="normal", one_pass=False, no_sqrt=False):
    def ln(x, gamma, beta, eps=1e-5):
        eps = 1e-5 if fixed_eps else eps
        dims_ = tuple(range(x.dim())) if dims == "all" else dims
        mean = x.mean(dim=dims_, keepdim=True) if center else torch.zeros_like(x)
        if one_pass:
            var = (x * x).mean(dim=dims_, keepdim=True) - mean * mean
        elif center:
            var = x.var(dim=dims_, keepdim=True, unbiased=unbiased)
        else:
            var = (x * x).mean(dim=dims_, keepdim=True)  # RMSNorm: mean square, no centring
        x_hat = (x - mean) / (var.sqrt() + eps) if eps_outside else (x - mean) / torch.sqrt(var + eps)
        if no_sqrt:
            x_hat = (x - mean) / (var + eps)
        if affine == "swapped":
            return beta * x_hat + gamma
        if affine == "none":
            return x_hat
        return gamma * x_hat + beta

    return ln


LAYER_NORM = Exercise(
    id=f"{CHAPTER}/layer_norm",
    title="Layer normalisation",
    reference=layer_norm,
    cases=_layer_norm_cases,
    atol=3e-4,  # float32 rounding differs between correct formulas at a large offset
    rtol=1e-4,
    nan_hint="a token with equal features has variance 0: add eps *inside* the square root",
    forbidden=("torch.layer_norm", "torch.nn.LayerNorm"),
    forbidden_why="that is what you are writing: normalise with the mean and the variance yourself (x.mean, x.var "
                  "and torch.var_mean are fine)",
    mistakes=[
        Mistake("the unbiased variance (dividing by d − 1)", _ln_variant(unbiased=True),
                "LayerNorm divides the squared deviations by d, not d − 1: x.var(dim=-1, unbiased=False) "
                "or ((x - mean) ** 2).mean(-1)."),
        Mistake("eps outside the square root", _ln_variant(eps_outside=True),
                "the denominator is sqrt(var + eps), not sqrt(var) + eps; it matters when the variance is tiny."),
        Mistake("the eps argument ignored", _ln_variant(fixed_eps=True), "use the `eps` the caller passes."),
        Mistake("normalising over the first axis instead of the last", _ln_variant(dims=(0,)),
                "each token is normalised over its own features: mean and variance over dim=-1 (keepdim=True)."),
        Mistake("normalising over the whole tensor", _ln_variant(dims="all"),
                "LayerNorm gives every token its own mean and variance: reduce over dim=-1 only."),
        Mistake("RMSNorm (no mean subtracted)", _ln_variant(center=False),
                "that is RMSNorm, a later variant; LayerNorm first subtracts the mean, then divides by the std."),
        Mistake("gamma and beta swapped", _ln_variant(affine="swapped"),
                "gamma scales the normalised vector and beta shifts it: gamma * x_hat + beta."),
        Mistake("gamma and beta not applied", _ln_variant(affine="none"),
                "after normalising, scale by gamma and shift by beta."),
        Mistake("the variance computed as E[x²] − E[x]²", _ln_variant(one_pass=True),
                "with a large common offset both terms are huge and their difference loses all precision in "
                "float32; average the squared deviations from the mean instead."),
        Mistake("divided by the variance instead of the standard deviation", _ln_variant(no_sqrt=True),
                "normalise by sqrt(var + eps): the standard deviation has the units of x, the variance their square."),
    ],
)


# ----------------------------------------------------------------------------- 2. position_wise_ffn
def _ffn_weights(g, d, d_ff):
    return (_randn(g, d_ff, d, scale=d**-0.5), _randn(g, d_ff, scale=0.5),
            _randn(g, d, d_ff, scale=d_ff**-0.5), _randn(g, d, scale=0.5))


def _ffn_cases(g):
    return [
        Case("x (5, 8) with square weights (d_model = d_ff = 8)", (_randn(g, 5, 8), *_ffn_weights(g, 8, 8))),
        Case("x (5, 8), d_ff = 32", (_randn(g, 5, 8), *_ffn_weights(g, 8, 32))),
        Case("x (2, 3, 8) (extra batch dims), d_ff = 16", (_randn(g, 2, 3, 8), *_ffn_weights(g, 8, 16))),
        Case("one token: x (1, 4), d_ff = 12", (_randn(g, 1, 4), *_ffn_weights(g, 4, 12))),
    ]


def _gelu_ffn(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


FFN = Exercise(
    id=f"{CHAPTER}/position_wise_ffn",
    title="The position-wise feed-forward network",
    reference=position_wise_ffn,
    cases=_ffn_cases,
    mistakes=[
        Mistake("the ReLU missing", lambda x, w1, b1, w2, b2: F.linear(F.linear(x, w1, b1), w2, b2),
                "without a non-linearity two linear maps are one linear map; put a ReLU between them."),
        Mistake("the ReLU after the second linear map instead of the first",
                lambda x, w1, b1, w2, b2: torch.relu(F.linear(F.linear(x, w1, b1), w2, b2)),
                "the ReLU acts on the wide hidden layer (d_ff), between the two linear maps."),
        Mistake("a ReLU after both linear maps",
                lambda x, w1, b1, w2, b2: torch.relu(position_wise_ffn(x, w1, b1, w2, b2)),
                "only the hidden layer gets a ReLU; the output must be able to go negative."),
        Mistake("weights used without the transpose (x @ w1)",
                lambda x, w1, b1, w2, b2: torch.relu(x @ w1 + b1) @ w2 + b2,
                "the weights follow the nn.Linear layout (out, in): x @ w1.T + b1, or F.linear(x, w1, b1)."),
        Mistake("the biases left out", lambda x, w1, b1, w2, b2: position_wise_ffn(x, w1, 0 * b1, w2, 0 * b2),
                "add b1 after the first linear map and b2 after the second."),
        Mistake("a residual added inside the FFN (x + FFN(x))",
                lambda x, w1, b1, w2, b2: x + position_wise_ffn(x, w1, b1, w2, b2),
                "the FFN is only the sublayer; the layer adds the residual around it."),
        Mistake("GELU instead of ReLU", _gelu_ffn,
                "the original Transformer (and nn.TransformerEncoderLayer by default) uses ReLU: torch.relu."),
        Mistake("w1 and w2 swapped", lambda x, w1, b1, w2, b2: F.linear(torch.relu(F.linear(x, w2, b2)), w1, b1),
                "w1 (d_ff, d_model) widens first, w2 (d_model, d_ff) narrows back: F.linear(x, w1, b1) comes first."),
        Mistake("b1 added after the ReLU", lambda x, w1, b1, w2, b2: F.linear(torch.relu(F.linear(x, w1)) + b1, w2, b2),
                "the bias belongs to the linear map: max(0, x W1ᵀ + b1), the ReLU last."),
        Mistake("tanh instead of ReLU", lambda x, w1, b1, w2, b2: F.linear(torch.tanh(F.linear(x, w1, b1)), w2, b2),
                "the FFN's non-linearity is the ReLU, max(0, ·)."),
        Mistake("the ReLU applied to the input instead of the hidden layer",
                lambda x, w1, b1, w2, b2: F.linear(F.linear(torch.relu(x), w1, b1), w2, b2),
                "the ReLU acts on the hidden layer: relu(x W1ᵀ + b1), between the two maps."),
    ],
)


# ----------------------------------------------------------------------------- 3 and 5. layer params, torch references
def _attn_params(g, d):
    p = {}
    for n in "qkvo":
        p[f"w_{n}"] = _randn(g, d, d, scale=d**-0.5)
        p[f"b_{n}"] = _randn(g, d, scale=0.3)
    return p


def _norm_params(g, d):
    return {"gamma": 1.0 + 0.5 * _randn(g, d), "beta": 0.5 * _randn(g, d)}


def layer_params(g, d, d_ff, decoder=False):
    """A random parameter dict of an encoder (or decoder) layer, in the exercise's layout."""
    p = {"self_attn": _attn_params(g, d)}
    if decoder:
        p["cross_attn"] = _attn_params(g, d)
    p["ffn"] = dict(zip(("w1", "b1", "w2", "b2"), _ffn_weights(g, d, d_ff)))
    for i in range(1, 4 if decoder else 3):
        p[f"norm{i}"] = _norm_params(g, d)
    return p


# the exercise's parameter names -> the book's module names (self_attn.w_q -> self_attn.w_q.weight, ...)
EXERCISE_NAMES = convert.NameMap(renames=tuple(
    [(f"{w}_{n}", f"w_{n}.{kind}") for n in "qkvo" for w, kind in (("w", "weight"), ("b", "bias"))]
    + [(f"{w}{i}", f"linear{i}.{kind}") for i in (1, 2) for w, kind in (("w", "weight"), ("b", "bias"))]
    + [("gamma", "weight"), ("beta", "bias")]))


def book_state(params) -> dict:
    """An exercise parameter dict ({"self_attn": {"w_q": ...}, "ffn": {...}, "norm1": {...}}) as the
    state dict of a book EncoderLayer/DecoderLayer."""
    flat = {f"{group}.{name}": t for group, d in params.items() for name, t in d.items()}
    return convert.to_book(flat, EXERCISE_NAMES)


def torch_encoder_layer(x, params, num_heads, mask=None, norm_first=False):
    """The reference: nn.TransformerEncoderLayer (batch_first, dropout 0) with the given parameters."""
    B, T, d = x.shape
    layer = nn.TransformerEncoderLayer(d, num_heads, params["ffn"]["w1"].shape[0], dropout=0.0,
                                       batch_first=True, norm_first=norm_first)
    convert.copy_to_torch(layer, book_state(params))
    src_mask = None if mask is None else torch_attn_mask(mask, B, num_heads, T, T)  # (B·h, T, T), True = blocked
    with torch.no_grad():
        return layer(x, src_mask=src_mask)


def torch_decoder_layer(x, memory, params, num_heads, self_mask=None, cross_mask=None, norm_first=False):
    """The reference: nn.TransformerDecoderLayer (batch_first, dropout 0) with the given parameters."""
    B, T, d = x.shape
    S = memory.shape[1]
    layer = nn.TransformerDecoderLayer(d, num_heads, params["ffn"]["w1"].shape[0], dropout=0.0,
                                       batch_first=True, norm_first=norm_first)
    convert.copy_to_torch(layer, book_state(params))
    tgt_mask = None if self_mask is None else torch_attn_mask(self_mask, B, num_heads, T, T)
    memory_mask = None if cross_mask is None else torch_attn_mask(cross_mask, B, num_heads, T, S)
    with torch.no_grad():
        return layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask)


# ----------------------------------------------------------------------------- 3. encoder layer
def _encoder_cases(g):
    pad = key_padding_mask(torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]).bool())
    return [
        Case("post-LN, x (2, 5, 16), 4 heads, no mask", (_randn(g, 2, 5, 16), layer_params(g, 16, 32), 4)),
        Case("post-LN, x (3, 6, 8), 2 heads, a padding mask (3, 1, 1, 6)",
             (_randn(g, 3, 6, 8), layer_params(g, 8, 24), 2, pad)),
        Case("pre-LN, x (2, 5, 16), 4 heads, no mask", (_randn(g, 2, 5, 16), layer_params(g, 16, 32), 4, None, True)),
        Case("pre-LN, x (3, 6, 8), 2 heads, a padding mask (3, 1, 1, 6)",
             (_randn(g, 3, 6, 8), layer_params(g, 8, 24), 2, pad, True)),
        Case("post-LN, x (1, 4, 8), 1 head, a causal mask (4, 4)",
             (_randn(g, 1, 4, 8), layer_params(g, 8, 16), 1, causal_mask(4))),
    ]


def _sublayers(p, num_heads):
    """Small closures over one parameter dict, for writing the variants below."""
    def attn(name, q, kv, mask):
        return multi_head_attention(q, kv, **p[name], num_heads=num_heads, mask=mask)[0]

    def ffn(x, relu=True):
        f = p["ffn"]
        return position_wise_ffn(x, **f) if relu else F.linear(F.linear(x, f["w1"], f["b1"]), f["w2"], f["b2"])

    def norm(i, x):
        return layer_norm(x, **p[f"norm{i}"])

    return attn, ffn, norm


def _encoder_variant(res_attn=True, res_ffn=True, order="flag", use_mask=True, norms=(1, 2), outside=False,
                     relu=True, invert=False, ffn_res_from_input=False):
    def encoder_layer(x, p, num_heads, mask=None, norm_first=False):
        attn, ffn, norm = _sublayers(p, num_heads)
        m = mask if use_mask else None
        if invert and m is not None:
            m = ~m
        if ffn_res_from_input:  # the FFN's residual taken from the layer's input instead of its own input
            x0 = x
            if norm_first:
                x = x + attn("self_attn", norm(1, x), norm(1, x), m)
                return x0 + ffn(norm(2, x), relu)
            x = norm(1, x + attn("self_attn", x, x, m))
            return norm(2, x0 + ffn(x, relu))
        pre = {"flag": norm_first, "inverted": not norm_first, "post": False, "pre": True}[order]
        a, b = norms
        if pre:
            x = (x if res_attn else 0) + attn("self_attn", norm(a, x), norm(a, x), m)
            return (x if res_ffn else 0) + ffn(norm(b, x), relu)
        if outside:  # x + LN(Sublayer(x))
            x = x + norm(a, attn("self_attn", x, x, m))
            return x + norm(b, ffn(x, relu))
        x = norm(a, (x if res_attn else 0) + attn("self_attn", x, x, m))
        return norm(b, (x if res_ffn else 0) + ffn(x, relu))

    return encoder_layer


ENCODER_LAYER = Exercise(
    id=f"{CHAPTER}/encoder_layer",
    title="An encoder layer, checked against nn.TransformerEncoderLayer",
    reference=torch_encoder_layer,
    cases=_encoder_cases,
    atol=1e-4,
    rtol=1e-4,
    time_limit=3.0,
    mistakes=[
        Mistake("the residual connection around self-attention missing", _encoder_variant(res_attn=False),
                "add the sublayer's input back: x + SelfAttention(x) (post-LN: inside the LayerNorm)."),
        Mistake("the residual connection around the FFN missing", _encoder_variant(res_ffn=False),
                "the FFN sublayer needs its residual too: x + FFN(x)."),
        Mistake("post-LN and pre-LN swapped", _encoder_variant(order="inverted"),
                "norm_first=False is post-LN, LN(x + Sublayer(x)); norm_first=True is pre-LN, x + Sublayer(LN(x))."),
        Mistake("norm_first ignored (always post-LN)", _encoder_variant(order="post"),
                "with norm_first=True normalise the sublayer's *input*: x + Sublayer(LN(x))."),
        Mistake("norm_first ignored (always pre-LN)", _encoder_variant(order="pre"),
                "with norm_first=False normalise *after* the residual: LN(x + Sublayer(x))."),
        Mistake("the mask ignored", _encoder_variant(use_mask=False),
                "pass `mask` on to the self-attention."),
        Mistake("the two LayerNorms swapped (norm2 around self-attention)", _encoder_variant(norms=(2, 1)),
                "norm1 belongs to the self-attention sublayer, norm2 to the FFN sublayer."),
        Mistake("LayerNorm applied to the sublayer's output only: x + LN(Sublayer(x))", _encoder_variant(outside=True),
                "post-LN normalises the sum: LN(x + Sublayer(x))."),
        Mistake("the ReLU missing in the FFN", _encoder_variant(relu=False),
                "the FFN is max(0, x W1ᵀ + b1) W2ᵀ + b2."),
        Mistake("the mask inverted (~mask passed on)", _encoder_variant(invert=True),
                "the mask already says True = may attend, as multi_head_attention wants it: pass it on unchanged "
                "(PyTorch's own layers want the opposite; the grader converts for them)."),
        Mistake("the FFN's residual taken from the layer's input", _encoder_variant(ffn_res_from_input=True),
                "each sublayer adds its *own* input back: the FFN's residual is the output of the attention "
                "sublayer, not the x the layer started with."),
        Mistake("norm1 used for both sublayers", _encoder_variant(norms=(1, 1)),
                "each sublayer has its own LayerNorm: norm1 around self-attention, norm2 around the FFN."),
    ],
)


# ----------------------------------------------------------------------------- 4. the decoder's combined mask
def decoder_self_mask_for_new(is_real, n_new=None):
    """is_real (B, T): True at real tokens among all T keys so far; the queries are the last n_new
    positions (all T when n_new is None, the chapter's decoder_self_mask) -> (B, 1, n_new, T):
    query i, at position T - n_new + i, may attend key j if j is real and j <= T - n_new + i."""
    if n_new is None:
        return decoder_self_mask(is_real)
    T = is_real.size(-1)
    steps = torch.arange(T, device=is_real.device)
    not_future = steps[None, :] <= steps[T - n_new:, None]  # (n_new, T)
    return is_real[:, None, None, :] & not_future  # (B, 1, n_new, T)


def _mask_cases(g):
    def real(lengths, T):
        return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)

    return [
        Case("lengths [4, 2, 3], T = 4", (real([4, 2, 3], 4),)),
        Case("lengths [1, 5], T = 5", (real([1, 5], 5),)),
        Case("one sequence without padding, T = 3", (real([3], 3),)),
        Case("lengths [6, 6, 1, 4], T = 6", (real([6, 6, 1, 4], 6),)),
        Case("one new token (n_new = 1) after 4 cached ones, lengths [5, 3]", (real([5, 3], 5), 1)),
        Case("n_new = 2 of T = 6, lengths [6, 4, 2]", (real([6, 4, 2], 6), 2)),
        Case("n_new = 3 of T = 3 (every position new), lengths [3, 2]", (real([3, 2], 3), 3)),
        Case("n_new = 4 of T = 7, lengths [7, 7]", (real([7, 7], 7), 4)),
    ]


def _mask_variant(causal="ok", padding="keys", combine="and", heads=True, invert=False, align="end", n_used=True):
    def mask(r, n_new=None):
        B, T = r.shape
        n = T if (n_new is None or not n_used) else n_new
        steps = torch.arange(T)
        rows = steps[T - n:] if align == "end" else steps[:n]
        back = rows[:, None] - steps[None, :]  # (n, T): how far key j lies behind query i
        tri = {"ok": back >= 0, "upper": back <= 0, "strict": back > 0}.get(causal)
        pad = {"keys": r[:, None, None, :], "queries": r[:, None, T - n:, None]}.get(padding)
        if causal == "none":
            out = pad
        elif padding == "none":
            out = tri if not heads else tri.expand(B, 1, n, T)
        else:
            out = (pad | tri) if combine == "or" else (pad & tri)
        if not heads:
            out = out[:, 0] if out.dim() == 4 else out
        return ~out if invert else out

    return mask


DECODER_MASK = Exercise(
    id=f"{CHAPTER}/decoder_self_mask",
    title="The decoder's mask: padding and causal combined, for new tokens too",
    reference=decoder_self_mask_for_new,
    cases=_mask_cases,
    mistakes=[
        Mistake("the causal part missing (a padding mask only)", _mask_variant(causal="none"),
                "the decoder must not see the future: combine with a causal mask using &."),
        Mistake("a (T, T) causal mask only, without the padding", lambda r, n_new=None: _causal(r, n_new),
                "padding keys must be hidden too, and the result needs batch and head axes: (B, 1, n_new, T)."),
        Mistake("the padding part missing (a causal mask only)", _mask_variant(padding="none"),
                "a key must be real AND not in the future: include is_real[:, None, None, :]."),
        Mistake("| (or) instead of & (and)", _mask_variant(combine="or"),
                "a key may be attended only if it is real AND not in the future: use &."),
        Mistake("the padding applied to the queries (rows) instead of the keys (columns)", _mask_variant(padding="queries"),
                "mask the padding *keys* (the last axis: is_real[:, None, None, :]). A padding query whose "
                "row is all False has no key left at all, and its softmax is 0/0 = NaN."),
        Mistake("the upper triangle (the future instead of the past)", _mask_variant(causal="upper"),
                "a query may attend to its own position and the ones before it."),
        Mistake("no head axis: shape (B, n_new, T)", _mask_variant(heads=False),
                "the attention scores are (B, h, T_q, T_k); a mask without a head axis would line B up with h. "
                "Return (B, 1, n_new, T)."),
        Mistake("an inverted mask (True = blocked)", _mask_variant(invert=True), "in this book True means 'may attend'."),
        Mistake("a causal part that excludes the diagonal", _mask_variant(causal="strict"),
                "a token may attend to itself: keep j <= i, the diagonal included."),
        Mistake("the new queries treated as the *first* n_new positions (the causal part aligned top-left)",
                _mask_variant(align="start"),
                "the new tokens are the *last* n_new positions: query i sits at position T - n_new + i, so it may "
                "see keys 0 … T - n_new + i (tril with diagonal T - n_new)."),
        Mistake("n_new ignored (the full (T, T) mask)", _mask_variant(n_used=False),
                "with n_new given, only the last n_new positions are queries: the result has n_new rows."),
    ],
)


def _causal(is_real, n_new=None):
    T = is_real.shape[-1]
    return causal_mask(T)[T - (n_new or T):]


# ----------------------------------------------------------------------------- 5. decoder layer
def _decoder_cases(g):
    tgt_real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()  # (2, 5)
    src_real = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]]).bool()  # (2, 7)
    return [
        Case("post-LN, x (2, 5, 16), memory (2, 7, 16), 4 heads, no masks",
             (_randn(g, 2, 5, 16), _randn(g, 2, 7, 16), layer_params(g, 16, 32, True), 4)),
        Case("pre-LN, x (2, 4, 8), memory (2, 6, 8), 2 heads, no masks",
             (_randn(g, 2, 4, 8), _randn(g, 2, 6, 8), layer_params(g, 8, 16, True), 2, None, None, True)),
        Case("post-LN, x (3, 6, 8), memory (3, 5, 8), 2 heads, a causal self_mask (6, 6)",
             (_randn(g, 3, 6, 8), _randn(g, 3, 5, 8), layer_params(g, 8, 16, True), 2, causal_mask(6))),
        Case("post-LN, padding + causal self_mask (2, 1, 5, 5), source padding cross_mask (2, 1, 1, 7)",
             (_randn(g, 2, 5, 16), _randn(g, 2, 7, 16), layer_params(g, 16, 32, True), 4,
              decoder_self_mask(tgt_real), key_padding_mask(src_real))),
        Case("pre-LN with both masks",
             (_randn(g, 2, 5, 16), _randn(g, 2, 7, 16), layer_params(g, 16, 32, True), 4,
              decoder_self_mask(tgt_real), key_padding_mask(src_real), True)),
    ]


def _decoder_variant(self_mask_on=True, cross_mask_on=True, cross_kv="memory", cross=True, res_cross=True,
                     order="self-cross", norm="flag", invert=False, cross_params="cross_attn"):
    def decoder_layer(x, memory, p, num_heads, self_mask=None, cross_mask=None, norm_first=False):
        attn, ffn, ln = _sublayers(p, num_heads)
        sm = self_mask if self_mask_on else None
        cm = cross_mask if cross_mask_on else None
        if invert:
            sm = None if sm is None else ~sm
            cm = None if cm is None else ~cm
        pre = norm_first if norm == "flag" else norm == "pre"

        def self_block(h):
            return attn("self_attn", h, h, sm)

        def cross_block(h):
            return attn(cross_params, h, memory if cross_kv == "memory" else h, cm)

        blocks = [(self_block, 1, True), (cross_block, 2, res_cross)] if cross else [(self_block, 1, True)]
        if order == "cross-self":
            blocks = blocks[::-1]
        for block, i, res in blocks:
            if pre:
                x = (x if res else 0) + block(ln(i, x))
            else:
                x = ln(i, (x if res else 0) + block(x))
        return x + ffn(ln(3, x)) if pre else ln(3, x + ffn(x))

    return decoder_layer


DECODER_LAYER = Exercise(
    id=f"{CHAPTER}/decoder_layer",
    title="A decoder layer, checked against nn.TransformerDecoderLayer",
    reference=torch_decoder_layer,
    cases=_decoder_cases,
    atol=1e-4,
    rtol=1e-4,
    time_limit=3.0,
    mistakes=[
        Mistake("the self-attention mask ignored (the decoder sees the future)", _decoder_variant(self_mask_on=False),
                "pass self_mask (padding & causal) to the masked self-attention."),
        Mistake("cross-attention keys and values from the decoder instead of the encoder memory",
                _decoder_variant(cross_kv="decoder"),
                "cross-attention: queries from the decoder, keys and values from `memory`."),
        Mistake("the cross_mask ignored", _decoder_variant(cross_mask_on=False),
                "pass cross_mask to the cross-attention, so the decoder skips the source's padding."),
        Mistake("the cross-attention sublayer missing", _decoder_variant(cross=False),
                "a decoder layer has three sublayers: masked self-attention, cross-attention, FFN."),
        Mistake("the residual connection around cross-attention missing", _decoder_variant(res_cross=False),
                "every sublayer gets its residual: x + CrossAttention(x, memory)."),
        Mistake("cross-attention before self-attention", _decoder_variant(order="cross-self"),
                "the order is: masked self-attention (norm1), cross-attention (norm2), FFN (norm3)."),
        Mistake("norm_first ignored (always post-LN)", _decoder_variant(norm="post"),
                "with norm_first=True each sublayer is x + Sublayer(LN(x))."),
        Mistake("norm_first ignored (always pre-LN)", _decoder_variant(norm="pre"),
                "with norm_first=False each sublayer is LN(x + Sublayer(x))."),
        Mistake("the masks inverted (~mask passed on)", _decoder_variant(invert=True),
                "self_mask and cross_mask already say True = may attend, as multi_head_attention wants: pass them "
                "on unchanged."),
        Mistake("the self-attention's parameters used for the cross-attention", _decoder_variant(cross_params="self_attn"),
                "cross-attention has its own projections: **params[\"cross_attn\"]."),
    ],
)


# ----------------------------------------------------------------------------- 6. predict before you compute
def predict_decoder_params() -> int:
    """Parameters of one decoder layer with d_model = 512, 8 heads, d_ff = 2048 (the paper's base model)."""
    return sum(p.numel() for p in DecoderLayer(512, 8, 2048).parameters())


def _params(d=512, d_ff=2048, bias=True, norms=3, attns=2, proj=4):
    attn = proj * d * d + (proj * d if bias else 0)
    ffn = 2 * d * d_ff + ((d_ff + d) if bias else 0)
    return attns * attn + ffn + norms * 2 * d


PREDICT_PARAMS = Exercise(
    id=f"{CHAPTER}/predict_decoder_params",
    title="Predict the size of a decoder layer",
    reference=predict_decoder_params,
    cases=lambda g: [Case("your prediction", ())],
    atol=0.5,
    rtol=0.0,
    kind="prediction",
    mistakes=[
        Mistake("an encoder layer's count (no cross-attention)", lambda: _params(attns=1, norms=2),
                "a decoder layer has two attention blocks (self and cross) and three LayerNorms."),
        Mistake("a count without the biases", lambda: _params(bias=False),
                "every nn.Linear has a bias: d_model for each attention projection, d_ff and d_model in the FFN."),
        Mistake("a count without the LayerNorm parameters", lambda: _params(norms=0),
                "each of the three LayerNorms has a gamma and a beta of d_model numbers each."),
        Mistake("attention counted without its output projection W_O", lambda: _params(proj=3),
                "multi-head attention has four d_model × d_model projections: W_Q, W_K, W_V and W_O."),
        Mistake("one LayerNorm parameter vector per norm instead of two", lambda: _params() - 3 * 512,
                "a LayerNorm has both gamma and beta."),
        Mistake("the FFN counted with one matrix instead of two", lambda: _params() - 512 * 2048,
                "the FFN has two linear maps: d_model → d_ff (W1, b1) and d_ff → d_model (W2, b2)."),
        Mistake("every head counted with its own d_model × d_model projections", lambda: _params(attns=16),
                "the heads are slices of the same four d_model × d_model matrices: the head count does not change "
                "the number of parameters."),
        Mistake("the FFN's biases forgotten", lambda: _params() - 2048 - 512,
                "both FFN maps have a bias: d_ff numbers for the first, d_model for the second."),
    ],
)

EXERCISES = [LAYER_NORM, FFN, ENCODER_LAYER, DECODER_MASK, DECODER_LAYER, PREDICT_PARAMS]
