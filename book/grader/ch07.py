"""Graded exercises of chapter 07 — the encoder–decoder: LayerNorm, the FFN, encoder and decoder layers.

The chapter prints ``layer_norm``, ``position_wise_ffn`` and ``decoder_self_mask`` line for line, so
none of them is an exercise: the learner derives LayerNorm's backward pass by hand, debugs a pre-norm
SwiGLU sublayer (RMSNorm, a gate, a residual), and extends the decoder's mask to several documents
packed into one row (with their positions).

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
from book.grader.core import Case, Exercise, Mistake, bug_combinations, clone, compare
from book.layers import DecoderLayer, decoder_self_mask, key_padding_mask, layer_norm, position_wise_ffn, torch_attn_mask
from book.multihead import multi_head_attention

CHAPTER = "07_encoder_decoder"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


# ----------------------------------------------------------------------------- 1. derive: LayerNorm's backward pass
def layer_norm_backward(x, gamma, grad_out, eps=1e-5):
    """The gradients of a loss L through y = layer_norm(x, gamma, beta, eps), by hand.

    x, grad_out = ∂L/∂y: (..., d); gamma: (d,). Returns (grad_x (..., d), grad_gamma (d,),
    grad_beta (d,)): ∂L/∂x, and ∂L/∂γ, ∂L/∂β summed over every token.
    """
    d = x.shape[-1]
    mean = x.mean(dim=-1, keepdim=True)
    inv_std = torch.rsqrt(((x - mean) ** 2).mean(dim=-1, keepdim=True) + eps)  # 1 / s, s = sqrt(σ² + ε), (..., 1)
    x_hat = (x - mean) * inv_std  # (..., d)
    g = grad_out * gamma  # ∂L/∂x̂
    grad_x = inv_std * (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))
    grad_gamma = (grad_out * x_hat).reshape(-1, d).sum(dim=0)  # (d,)
    grad_beta = grad_out.reshape(-1, d).sum(dim=0)  # (d,)
    return grad_x, grad_gamma, grad_beta


def _lnb_cases(g):
    def gamma(d):
        return 1.0 + 0.5 * _randn(g, d)  # near 1, never trivial

    const = _randn(g, 3, 8)
    const[1] = 2.5  # one token whose features are all equal: variance 0
    return [
        Case("x of shape (5, 8)", (_randn(g, 5, 8), gamma(8), _randn(g, 5, 8))),
        Case("x of shape (2, 3, 16) (two batch axes: grad_gamma and grad_beta sum over both)",
             (_randn(g, 2, 3, 16, scale=3.0) + 1.0, gamma(16), _randn(g, 2, 3, 16))),
        Case("one vector of 4 features (no batch axis)", (_randn(g, 4), gamma(4), _randn(g, 4))),
        Case("eps = 0.1", (_randn(g, 3, 6), gamma(6), _randn(g, 3, 6), 0.1)),
        Case("small features (spread ~0.01, where eps matters)",
             (_randn(g, 4, 8, scale=0.01), gamma(8), _randn(g, 4, 8))),
        Case("a token whose features are all equal (variance 0)", (const, gamma(8), _randn(g, 3, 8))),
        Case("grad_out = 1 everywhere and gamma = 1 (the loss is y.sum())",
             (_randn(g, 4, 8), torch.ones(8), torch.ones(4, 8))),
    ]


def _lnb_variant(dx="full", gamma_in_dx=True, dgamma="x_hat", reduce="sum", unbiased=False, eps_outside=False,
                 swap=False):
    """layer_norm_backward with one classic slip (or several)."""
    def backward(x, gamma, grad_out, eps=1e-5):
        d = x.shape[-1]
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, correction=1 if unbiased else 0)
        std = var.sqrt() + eps if eps_outside else torch.sqrt(var + eps)
        x_hat = (x - mean) / std
        g = grad_out * gamma if gamma_in_dx else grad_out

        def avg(t):
            return t.mean(dim=-1, keepdim=True)

        grad_x = {
            "full": (g - avg(g) - x_hat * avg(g * x_hat)) / std,
            "constants": g / std,  # μ and σ² treated as constants
            "at_x_hat": g,  # stopped at x̂
            "no_mean": (g - x_hat * avg(g * x_hat)) / std,
            "no_var": (g - avg(g)) / std,
            "var_sign": (g - avg(g) + x_hat * avg(g * x_hat)) / std,
            "var_twice": (g - avg(g) - 2 * x_hat * avg(g * x_hat)) / std,
            "var_half": (g - avg(g) - 0.5 * x_hat * avg(g * x_hat)) / std,
            "sums": (g - g.sum(-1, keepdim=True) - x_hat * (g * x_hat).sum(-1, keepdim=True)) / std,
            "times_std": (g - avg(g) - x_hat * avg(g * x_hat)) * std,
            "sigma_once": (g - avg(g) - (x - mean) * avg(g * (x - mean))) / std,
        }[dx]
        flat = (lambda t: t.reshape(-1, d).mean(0)) if reduce == "mean" else (lambda t: t.reshape(-1, d).sum(0))
        grad_gamma = flat(grad_out * (x_hat if dgamma == "x_hat" else x))
        grad_beta = flat(grad_out)
        return (grad_x, grad_beta, grad_gamma) if swap else (grad_x, grad_gamma, grad_beta)

    return backward


def _lnb_explain(got, want, x, gamma, grad_out, eps=1e-5):
    """A property every right grad_x has: shifting all features of a token by the same amount
    does not change LayerNorm's output, so each token's grad_x sums to 0 over its features."""
    grad_x = got[0] if isinstance(got, (tuple, list)) and got else None
    if not isinstance(grad_x, torch.Tensor) or grad_x.shape != x.shape:
        return None
    if compare(grad_x, want[0], 1e-4, 1e-3) is None:
        return None  # grad_x is right: the message already names the output that is not
    sums = grad_x.detach().double().sum(-1).abs()
    scale = grad_x.detach().double().abs().sum(-1) + 1e-12
    if (sums > 1e-4 * scale + 1e-5).any():
        return ("Your grad_x does not sum to 0 over each token's features, and it must: adding the same "
                "number to every feature of a token leaves LayerNorm's output unchanged")
    return ("Your grad_x does sum to 0 over each token's features, as it must (the path through μ is in); "
            "the rest is off: check the path through σ², the overall factor 1/s, and that γ is in")


LAYER_NORM_BACKWARD = Exercise(
    id=f"{CHAPTER}/layer_norm_backward",
    title="Derive LayerNorm's backward pass",
    reference=layer_norm_backward,
    cases=_lnb_cases,
    output_names=("grad_x", "grad_gamma", "grad_beta"),
    atol=1e-4,
    rtol=1e-3,
    nan_hint="a token with equal features has variance 0: s = sqrt(σ² + eps) is never 0",
    forbidden=("torch.autograd.grad", "torch.autograd.backward", "Tensor.backward", "torch.func.grad",
               "torch.func.vjp", "torch.func.jacrev", "torch.autograd.functional.vjp",
               "torch.autograd.functional.jacobian", "native_layer_norm_backward"),
    forbidden_why="derive the gradients by hand; check them with autograd outside your function",
    explain=_lnb_explain,
    mistakes=[
        Mistake("the mean and the variance treated as constants (grad_x = γ·grad_out / s)", _lnb_variant(dx="constants"),
                "μ and σ² are functions of every feature of the token: moving x_j moves μ and σ² too, and that "
                "adds two terms to ∂L/∂x_i — one through μ, one through σ²."),
        Mistake("grad_x stopped at x̂ (γ·grad_out, without the chain rule through the normalisation)",
                _lnb_variant(dx="at_x_hat"),
                "that is ∂L/∂x̂; x̂ = (x − μ)/s still depends on x, through x itself, μ and σ²."),
        Mistake("the term through the mean missing", _lnb_variant(dx="no_mean"),
                "∂μ/∂x_j = 1/d for every j: the path through μ adds the same correction to every feature of the "
                "token."),
        Mistake("the term through the variance missing", _lnb_variant(dx="no_var"),
                "σ² depends on x as well (∂σ²/∂x_j = 2(x_j − μ)/d): the path through σ² adds a term proportional "
                "to x̂_i."),
        Mistake("the variance term with the wrong sign", _lnb_variant(dx="var_sign"),
                "a larger σ² makes every x̂ smaller: the term through σ² is subtracted."),
        Mistake("the variance term twice too large (the ½ of the square root's derivative lost)",
                _lnb_variant(dx="var_twice"),
                "d/dσ² of (σ² + ε)^(-1/2) is −½ (σ² + ε)^(-3/2); the ½ cancels the 2 of ∂σ²/∂x_j = 2(x_j − μ)/d."),
        Mistake("the variance term half as large (the 2 of ∂σ²/∂x lost)", _lnb_variant(dx="var_half"),
                "∂σ²/∂x_j = 2(x_j − μ)/d (the sum of the other features' parts through μ is 0); its 2 cancels "
                "the ½ from the square root."),
        Mistake("sums where the averages belong (the 1/d lost)", _lnb_variant(dx="sums"),
                "μ and σ² are averages over the d features: each of their derivatives carries a 1/d."),
        Mistake("multiplied by s = sqrt(σ² + ε) instead of divided", _lnb_variant(dx="times_std"),
                "x̂ = (x − μ)/s, so every path to x carries a factor 1/s."),
        Mistake("the variance term divided by s once instead of s³", _lnb_variant(dx="sigma_once"),
                "the path through σ² carries d/dσ² of (σ² + ε)^(-1/2), a 1/s³ when written with x − μ; only with "
                "x̂ = (x − μ)/s in place of x − μ does it shrink to 1/s."),
        Mistake("γ left out of grad_x", _lnb_variant(gamma_in_dx=False),
                "y = γ ⊙ x̂ + β: the gradient reaching x̂ is γ ⊙ grad_out, not grad_out."),
        Mistake("the unbiased variance (dividing by d − 1)", _lnb_variant(unbiased=True),
                "LayerNorm's σ² divides by d (the chapter's formula): so must your backward pass."),
        Mistake("eps outside the square root", _lnb_variant(eps_outside=True),
                "s = sqrt(σ² + eps), exactly as in the forward pass."),
        Mistake("grad_gamma from x instead of x̂", _lnb_variant(dgamma="x"),
                "y = γ ⊙ x̂ + β, so ∂y/∂γ is x̂, the normalised input."),
        Mistake("grad_gamma and grad_beta averaged over the tokens instead of summed", _lnb_variant(reduce="mean"),
                "every token uses the same γ and β, so their gradients add up over all tokens: sum, don't average."),
        Mistake("grad_gamma and grad_beta swapped", _lnb_variant(swap=True),
                "return (grad_x, grad_gamma, grad_beta) in that order; grad_beta is grad_out summed over the tokens."),
    ],
)


# ----------------------------------------------------------------------------- 2. debug: a gated FFN sublayer
def gated_ffn_sublayer(x, norm_weight, w_gate, w1, w2, eps=1e-6):
    """A pre-norm SwiGLU sublayer as in LLaMA (no biases): x + W2 (silu(W_g h) ⊙ W1 h), h = RMSNorm(x).

    x: (..., d_model); norm_weight: (d_model,); w_gate, w1: (d_ff, d_model); w2: (d_model, d_ff).
    """
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    h = x / rms * norm_weight  # RMSNorm
    hidden = F.silu(F.linear(h, w_gate)) * F.linear(h, w1)  # (..., d_ff): the gate decides what passes
    return x + F.linear(hidden, w2)  # the residual adds the sublayer's *input*


# each part of the sublayer, and the ways it goes wrong: option -> (what the learner did, hint)
GATED_NORM = {
    "eps_outside": ("eps added outside the square root",
                    "RMSNorm divides by sqrt(mean(x²) + eps), not sqrt(mean(x²)) + eps: the two differ when the "
                    "features are small."),
    "no_eps": ("eps left out of the norm", "keep eps, inside the square root: sqrt(mean(x²) + eps) is never 0."),
    "no_sqrt": ("divided by the mean square instead of its root", "RMS is the *root* of the mean square: "
                "sqrt(mean(x²) + eps)."),
    "layer": ("LayerNorm instead of RMSNorm (the mean subtracted)",
              "RMSNorm does not centre: it divides x by the root of its mean square, sqrt(mean(x²) + eps)."),
    "l2": ("the L2 norm instead of the root mean square (a sum of squares, no 1/d)",
           "RMS is the root of the *mean* of x² over the features, x.pow(2).mean(dim=-1, keepdim=True)."),
    "all": ("the mean square taken over the whole tensor instead of each token",
            "every token is normalised on its own: mean over the last axis (dim=-1, keepdim=True)."),
    "first_axis": ("the mean square taken over the first axis instead of each token's features",
                   "every token is normalised over its own features: mean over the last axis (dim=-1)."),
    "no_weight": ("the norm's weight not applied", "RMSNorm ends with a learned scale: multiply by norm_weight."),
    "divide_weight": ("divided by the norm's weight instead of multiplied",
                      "the learned scale multiplies: x / rms * norm_weight."),
}
GATED_GATE = {
    "swapped": ("silu applied to the W1 branch instead of the gate",
                "SwiGLU is silu(x W_gᵀ) ⊙ (x W1ᵀ): the non-linearity belongs to the gate's branch."),
    "both": ("silu on both branches", "only the gate goes through silu; the W1 branch stays linear."),
    "after": ("silu applied after the product",
              "silu acts on the gate's branch alone, before the product: silu(h W_gᵀ) ⊙ (h W1ᵀ)."),
    "sigmoid": ("a sigmoid gate (GLU) instead of silu (SwiGLU)",
                "SwiGLU gates with silu(z) = z·sigmoid(z) (F.silu), not with the sigmoid alone."),
    "relu": ("ReLU instead of silu on the gate", "the gate's non-linearity is silu (F.silu), as in the chapter's "
             "GatedFeedForward."),
}
GATED_RESIDUAL = {
    "h": ("the residual taken from the normalised h instead of x",
          "pre-norm is x + Sublayer(Norm(x)): the residual stream x itself is added back, never normalised."),
    "none": ("the residual connection missing", "the sublayer returns x + FFN(Norm(x)), not FFN(Norm(x)) alone."),
    "post": ("post-norm: RMSNorm applied after the residual",
             "this is a pre-norm sublayer: normalise the FFN's *input*, x + FFN(Norm(x))."),
}
GATED_BUGS = {"eps": ("norm", "eps_outside"), "gate": ("gate", "swapped"), "residual": ("residual", "h")}


def _gated_variant(norm="ok", gate="ok", residual="x"):
    """The sublayer with at most one slip in each of its three parts."""
    def sublayer(x, norm_weight, w_gate, w1, w2, eps=1e-6):
        def normalise(t):
            if norm == "layer":
                t = t - t.mean(dim=-1, keepdim=True)
            if norm == "all":
                ms = t.pow(2).mean()
            elif norm == "first_axis":
                ms = t.pow(2).mean(dim=0, keepdim=True)
            elif norm == "l2":
                ms = t.pow(2).sum(dim=-1, keepdim=True)
            else:
                ms = t.pow(2).mean(dim=-1, keepdim=True)
            denom = {"eps_outside": lambda: ms.sqrt() + eps, "no_eps": lambda: ms.sqrt(),
                     "no_sqrt": lambda: ms + eps}.get(norm, lambda: torch.sqrt(ms + eps))()
            if norm == "no_weight":
                return t / denom
            return t / denom / norm_weight if norm == "divide_weight" else t / denom * norm_weight

        h = x if residual == "post" else normalise(x)
        a, b = F.linear(h, w_gate), F.linear(h, w1)
        if gate == "swapped":
            a, b = b, a
        f = {"sigmoid": torch.sigmoid, "relu": torch.relu}.get(gate, F.silu)
        hidden = {"both": lambda: f(a) * f(b), "after": lambda: f(a * b)}.get(gate, lambda: f(a) * b)()
        out = F.linear(hidden, w2)
        return {"x": lambda: x + out, "h": lambda: h + out, "none": lambda: out,
                "post": lambda: normalise(x + out)}[residual]()

    return sublayer


def _slips(norm="ok", gate="ok", residual="x"):
    parts = [(GATED_NORM, norm), (GATED_GATE, gate), (GATED_RESIDUAL, residual)]
    return [table[option] for table, option in parts if option in table]


def _gated_explain(got, want, *args):
    """Which part went wrong, when the learner's result is one slip per part away from the formula."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    for norm in ("ok", *GATED_NORM):
        for gate in ("ok", *GATED_GATE):
            for residual in ("x", *GATED_RESIDUAL):
                if (norm, gate, residual) == ("ok", "ok", "x") or (norm != "ok" and residual == "post"):
                    continue
                try:
                    candidate = _gated_variant(norm, gate, residual)(*clone(args))
                except Exception:
                    continue
                if compare(got, candidate, 1e-5, 1e-4, equal_nan=True) is None:
                    slips = _slips(norm, gate, residual)
                    return ("Your result is what the formula gives with " + "; and with ".join(s[0] for s in slips)
                            + ". Hint: " + " ".join(s[1] for s in slips))
    return None


def _gated_weights(g, d, d_ff):
    return (1.0 + 0.5 * _randn(g, d), _randn(g, d_ff, d, scale=d**-0.5), _randn(g, d_ff, d, scale=d**-0.5),
            _randn(g, d, d_ff, scale=d_ff**-0.5))


def _gated_cases(g):
    zero = _randn(g, 2, 4, 8)
    zero[0, 2] = 0.0  # one token that is all zeros
    return [
        Case("x (2, 5, 8), d_ff = 16", (_randn(g, 2, 5, 8), *_gated_weights(g, 8, 16))),
        Case("x (3, 4, 16), d_ff = 40", (_randn(g, 3, 4, 16, scale=2.0), *_gated_weights(g, 16, 40))),
        Case("x (6, 8) (no batch axis), d_ff = 24", (_randn(g, 6, 8), *_gated_weights(g, 8, 24))),
        Case("small features (spread ~1e-3: mean(x²) is as small as eps)",
             (_randn(g, 2, 3, 8, scale=1e-3), *_gated_weights(g, 8, 16))),
        Case("eps = 0.5", (_randn(g, 2, 3, 8), *_gated_weights(g, 8, 16), 0.5)),
        Case("a token whose features are all 0", (zero, *_gated_weights(g, 8, 12))),
    ]


def _gated_mistakes():
    bugs = {b: _slips(**dict([GATED_BUGS[b]]))[0] for b in GATED_BUGS}  # key -> (name, hint)
    out = bug_combinations(bugs, lambda combo: _gated_variant(**dict(GATED_BUGS[b] for b in combo)),
                           ("it runs and every shape is right, but compare it, line by line, with the formula "
                            "above the code: the norm's denominator, which branch goes through silu, what the "
                            "residual adds."))
    for part, table in (("norm", GATED_NORM), ("gate", GATED_GATE), ("residual", GATED_RESIDUAL)):
        for option, (name, hint) in table.items():
            if (part, option) not in GATED_BUGS.values():
                out.append(Mistake(name, _gated_variant(**{part: option}), hint))
    return out


GATED_FFN = Exercise(
    id=f"{CHAPTER}/gated_ffn_sublayer",
    title="Find and fix the bugs: a pre-norm SwiGLU sublayer",
    reference=gated_ffn_sublayer,
    cases=_gated_cases,
    atol=1e-5,
    rtol=1e-4,
    nan_hint="a token of zeros has mean(x²) = 0: eps belongs inside the square root, sqrt(mean(x²) + eps)",
    forbidden=("torch.rms_norm", "torch.nn.RMSNorm", "book.layers.RMSNorm", "book.layers.GatedFeedForward",
               "book.layers.make_norm", "book.layers.make_ffn"),
    forbidden_why="fix the given function's own lines rather than hand the work to a finished module",
    explain=_gated_explain,
    mistakes=_gated_mistakes(),
)


# ----------------------------------------------------------------------------- 3 and 5. layer params, torch references
def _ffn_weights(g, d, d_ff):
    return (_randn(g, d_ff, d, scale=d**-0.5), _randn(g, d_ff, scale=0.5),
            _randn(g, d, d_ff, scale=d_ff**-0.5), _randn(g, d, scale=0.5))


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


# ----------------------------------------------------------------------------- 4. extend: a mask for packed documents
def packed_causal_mask(doc_ids):
    """doc_ids (B, T) int: the document each token of a packed row belongs to (contiguous runs) ->
    mask (B, 1, T, T) bool, True where query i may attend key j: the same document AND j <= i;
    positions (B, T) int64: each token's position inside its own document, from 0."""
    T = doc_ids.shape[-1]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    mask = same_doc & causal_mask(T, device=doc_ids.device)  # (B, T, T)
    positions = mask.sum(dim=-1) - 1  # (B, T): the earlier tokens of the token's own document
    return mask[:, None], positions


def _packed_mask(doc, causal="ok", doc_rule="eq", combine="and", heads=True, invert=False, pad_hidden=False):
    T = doc.shape[-1]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    tri = {"ok": j <= i, "upper": j >= i, "strict": j < i, "none": None}[causal]
    di, dj = doc[:, :, None], doc[:, None, :]
    same = {"eq": di == dj, "le": dj <= di, "ge": dj >= di, "none": None}[doc_rule]
    if same is None:
        m = tri.expand(doc.shape[0], T, T)
    elif tri is None:
        m = same
    else:
        m = (same | tri) if combine == "or" else (same & tri)
    if pad_hidden:
        m = m & (doc != -1)[:, None, :]
    m = ~m if invert else m
    return m[:, None] if heads else m


def _packed_positions(doc, kind):
    T = doc.shape[-1]
    mask = doc[:, :, None] == doc[:, None, :]
    tri = torch.ones(T, T, dtype=torch.bool).tril()
    if kind == "global":
        return torch.arange(T).expand(doc.shape[0], T).clone()
    if kind == "from_one":
        return (mask & tri).sum(-1)
    if kind == "from_end":
        return (mask & tri.T).sum(-1) - 1
    if kind == "doc_length":
        return mask.sum(-1)
    if kind == "doc_index":
        start = torch.ones_like(doc, dtype=torch.bool)
        start[:, 1:] = doc[:, 1:] != doc[:, :-1]
        return start.long().cumsum(-1) - 1
    return (mask & tri).sum(-1) - 1


def _packed_variant(positions="ok", from_mask=False, **mask_kwargs):
    def fn(doc_ids):
        m = _packed_mask(doc_ids, **mask_kwargs)
        if from_mask:  # the positions counted from the (wrong) mask, as the reference does from the right one
            return m, m.reshape(m.shape[0], m.shape[-2], m.shape[-1]).sum(-1) - 1
        return m, _packed_positions(doc_ids, positions)

    return fn


def _packed_cases(g):
    def random_row(T):
        ids, doc = [], 0
        while len(ids) < T:
            n = int(torch.randint(1, 5, (1,), generator=g))
            ids += [doc] * n
            doc += 1
        return ids[:T]

    return [
        Case("one row packing two documents of 3 and 4 tokens", (torch.tensor([[0, 0, 0, 1, 1, 1, 1]]),)),
        Case("B = 2, three documents per row, ids not in increasing order",
             (torch.tensor([[5, 5, 2, 2, 2, 9, 9, 9], [1, 1, 1, 1, 1, 3, 3, 7]]),)),
        Case("a row holding one document only (T = 5)", (torch.tensor([[4, 4, 4, 4, 4]]),)),
        Case("every token a document of its own (T = 4)", (torch.tensor([[0, 1, 2, 3]]),)),
        Case("padding at the end of the rows, with id -1",
             (torch.tensor([[0, 0, 0, 1, 1, -1, -1], [2, 2, 2, 2, 2, 2, -1]]),)),
        Case("int32 ids, B = 3, T = 10, random document lengths",
             (torch.tensor([random_row(10) for _ in range(3)], dtype=torch.int32),)),
    ]


def _packed_judge(got, doc_ids):
    positions = got[1]
    if positions.dtype.is_floating_point or positions.dtype == torch.bool:
        return (f"`positions` has dtype {positions.dtype}; positions index a table of position vectors, so "
                "return integers (torch.long), e.g. from a sum of a bool mask")
    return None


def _packed_explain(got, want, doc_ids):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return None
    mask, positions = got
    want_mask, want_pos = want
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != want_mask.shape:
        return None
    if torch.equal(mask.cpu(), want_mask):
        return ("Your mask is right; the positions are not: a token's position counts the tokens before it in "
                "its own document (the first token of every document is at 0)")
    T = doc_ids.shape[-1]
    extra, missing = mask.cpu() & ~want_mask, ~mask.cpu() & want_mask
    other_doc = (doc_ids[:, :, None] != doc_ids[:, None, :])[:, None]
    future = (torch.arange(T)[None, :] > torch.arange(T)[:, None])
    said = []
    if (extra & other_doc).any():
        said.append("lets a token attend to a token of another document")
    if (extra & future).any():
        said.append("lets a token attend to a key in its future")
    if missing.any():
        said.append("blocks a key the token may see (itself, or an earlier token of its own document)")
    return "Your mask " + "; it ".join(said) if said else None


_PACKED_MASK_MISTAKES = [  # (name, kwargs of _packed_mask, hint)
    ("the causal part missing (whole documents visible, the future included)", {"causal": "none"},
     "a token may see only the past of its own document: combine `same document` with j <= i using &."),
    ("the document part missing (a plain causal mask over the whole row)", {"doc_rule": "none"},
     "in a packed row the documents are unrelated: a key must also belong to the query's document "
     "(doc_ids[:, :, None] == doc_ids[:, None, :])."),
    ("the upper triangle (the future instead of the past)", {"causal": "upper"},
     "a query may attend to its own position and the ones before it: j <= i, the lower triangle."),
    ("a causal part that excludes the diagonal", {"causal": "strict"},
     "a token may attend to itself: keep j <= i, the diagonal included."),
    ("| (or) instead of & (and)", {"combine": "or"},
     "a key must be in the same document AND not in the future: use &."),
    ("an inverted mask (True = blocked)", {"invert": True}, "in this book True means 'may attend'."),
    ("earlier documents allowed (ids compared with <=, not ==)", {"doc_rule": "le"},
     "ids are labels, not an order (and need not increase): a key must have the query's own id, ==."),
    ("later-numbered documents allowed (ids compared with >=, not ==)", {"doc_rule": "ge"},
     "ids are labels, not an order (and need not increase): a key must have the query's own id, ==."),
    ("padding hidden from every query, its own rows included", {"pad_hidden": True},
     "padding is just one more id here: with the same rule it attends to earlier padding and no real token "
     "sees it. Hiding it from its own rows leaves those rows with no key at all (a 0/0 in the softmax)."),
]


def _packed_mistakes():
    out = []
    for name, kwargs, hint in _PACKED_MASK_MISTAKES:
        out.append(Mistake(name, _packed_variant(**kwargs), hint))
    for name, kwargs, hint in _PACKED_MASK_MISTAKES:
        out.append(Mistake(f"{name}, and the positions counted from that mask",
                           _packed_variant(from_mask=True, **kwargs), hint))
    out.append(Mistake("no head axis: a mask of shape (B, T, T)", _packed_variant(heads=False),
                       "the attention scores are (B, h, T, T); a mask without a head axis would line B up with h. "
                       "Return (B, 1, T, T)."))
    out += [
        Mistake("positions not restarted at each document (0 … T − 1 along the row)", _packed_variant("global"),
                "every document starts again at position 0, as if it were alone in its row."),
        Mistake("positions counted from 1", _packed_variant("from_one"),
                "the first token of a document is at position 0: count the tokens *before* it."),
        Mistake("positions counted from the document's end (the later tokens)", _packed_variant("from_end"),
                "a token's position counts the tokens of its document *before* it, not after it."),
        Mistake("every token given its document's length", _packed_variant("doc_length"),
                "count only the document's tokens up to the token itself (the causal part), minus one."),
        Mistake("the document's number in the row instead of the token's position in it", _packed_variant("doc_index"),
                "a cumulative sum of the document starts numbers the documents; the position counts tokens "
                "since the start of the token's own document."),
    ]
    return out


PACKED_MASK = Exercise(
    id=f"{CHAPTER}/packed_causal_mask",
    title="Several documents in one row: the packed causal mask and positions",
    reference=packed_causal_mask,
    cases=_packed_cases,
    output_names=("mask", "positions"),
    atol=0.0,
    rtol=0.0,
    judge=_packed_judge,
    explain=_packed_explain,
    mistakes=_packed_mistakes(),
)


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

EXERCISES = [LAYER_NORM_BACKWARD, GATED_FFN, ENCODER_LAYER, PACKED_MASK, DECODER_LAYER, PREDICT_PARAMS]
