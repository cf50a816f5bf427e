"""Graded exercises of appendix A — chapter 08's Transformer in Keras 3: weights and masks across.

The appendix prints the Keras layers of ``book/keras_port.py`` and calls its weight copy and its
masks without printing how they are made, so the learner derives the three conversions a port
from PyTorch to Keras needs:

1. ``to_keras_heads``: an ``nn.Linear`` projection of multi-head attention (weight (out, in))
   as the per-head kernel and bias of ``keras.layers.MultiHeadAttention``, (in, h, d_k) and
   (h, d_k);
2. ``keras_padding_mask``: PyTorch's ``key_padding_mask`` (B, S), True = ignore, as Keras's
   ``attention_mask`` (B, T_q, S), True = may attend;
3. ``keras_decoder_mask``: the decoder's self-attention mask in Keras's convention from PyTorch's
   target padding mask — what ``attention_mask`` and ``use_causal_mask=True`` give together.

Every case is small, seeded and made here with torch: the grader needs neither Keras nor a model.
Beyond the catalogued mistakes, the feedback reads what a wrong answer holds: a kernel that is the
weight's numbers in the wrong places, a mask that lets a query see padding or the future, or
blocks a real key, or mixes up the samples of the batch — never the expected values. The
decoder's mask must also be made on the input's device, as its statement asks: the grader runs
it once more on a ``device="meta"`` mask (shapes without values, standing in for a GPU).
"""
from __future__ import annotations


import torch

from book.grader import core
from book.grader.core import Case, Exercise, Mistake, Probe, call_with_timeout, compare

CHAPTER = "a1_keras"


def _randn(g, *shape):
    return torch.randn(*shape, generator=g)


# ============================================================================= 1. nn.Linear -> per-head kernel
def to_keras_heads(weight, bias, num_heads):
    """weight (h·d_k, d_in) and bias (h·d_k,) of nn.Linear -> kernel (d_in, h, d_k), bias (h, d_k)."""
    d_out, d_in = weight.shape
    d_k = d_out // num_heads
    return weight.T.reshape(d_in, num_heads, d_k), bias.reshape(num_heads, d_k)


def _heads_cases(g):
    def case(name, d_in, num_heads, d_k):
        return Case(name, (_randn(g, num_heads * d_k, d_in), _randn(g, num_heads * d_k), num_heads))

    return [
        case("chapter 08's query projection: d_model 64, 4 heads of 16", 64, 4, 16),
        case("d_model 6, 2 heads of 3", 6, 2, 3),
        case("d_model 12, 3 heads of 4", 12, 3, 4),
        case("one head (h = 1) of 5 features", 5, 1, 5),
        case("key_dim chosen apart from d_model, as the TensorFlow tutorial does: d_in 6, "
             "4 heads of 6 (h·d_k = 24)", 6, 4, 6),
    ]


def _heads_variant(kind):
    """A catalogued mistake as code: (kernel, bias) with the slip ``kind`` in it."""
    def wrong(weight, bias, num_heads):
        d_out, d_in = weight.shape
        d_k = d_out // num_heads
        kernel, b = weight.T.reshape(d_in, num_heads, d_k), bias.reshape(num_heads, d_k)
        if kind == "no_transpose":  # the (out, in) numbers read as if they were (in, out)
            kernel = weight.reshape(d_in, num_heads, d_k)
        elif kind == "strided":  # head j = features j, j + h, j + 2h, ...
            kernel = weight.T.reshape(d_in, d_k, num_heads).transpose(1, 2)
            b = bias.reshape(d_k, num_heads).T
        elif kind == "heads_first":  # PyTorch's split_heads habit: heads in front
            kernel = weight.reshape(num_heads, d_k, d_in).transpose(1, 2)
        elif kind == "flat_bias":
            b = bias
        elif kind == "flat_kernel":  # a Dense kernel, not split into heads
            kernel = weight.T
        return kernel, b

    return wrong


def _same(got, want) -> bool:
    """got is want exactly: a tensor of the same shape, dtype kind and values."""
    return isinstance(got, torch.Tensor) and compare(got, want, 0.0, 0.0, equal_nan=True) is None


def _heads_mistake(kind):
    """The mistake ``kind`` as a probe that looks at each output on its own: a kernel with the
    slip in it is named whatever the bias is (and a bias with it whatever the kernel is)."""
    variant = _heads_variant(kind)

    def fn(weight, bias, num_heads):
        wrong = variant(weight, bias, num_heads)
        right = to_keras_heads(weight, bias, num_heads)
        shows = [i for i in range(2) if not _same(wrong[i], right[i])]  # where the slip shows

        def test(got):
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                return False
            if not shows:  # a case this slip leaves right (e.g. one head): right it must be
                return all(_same(g, w) for g, w in zip(got, wrong))
            return any(_same(got[i], wrong[i]) for i in shows)

        return Probe(test)

    return fn


def _rearranged(got, source, right) -> bool:
    """got holds exactly source's numbers, each once, but not where right has them."""
    if not isinstance(got, torch.Tensor) or got.shape != right.shape or got.numel() != source.numel():
        return False
    g, s = got.detach().cpu().double().flatten(), source.detach().cpu().double().flatten()
    return torch.equal(g.sort().values, s.sort().values) and not torch.equal(g, right.double().flatten())


def _heads_explain(got, want, weight, bias, num_heads):
    d_out, d_in = weight.shape
    d_k = d_out // num_heads
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "Return a pair (kernel, bias)"
    shapes = [tuple(getattr(t, "shape", ())) for t in got]
    wanted = [tuple(w.shape) for w in want]
    if shapes == wanted[::-1]:
        return ("Your pair is (bias, kernel): return (kernel, bias), the kernel first, the order "
                "in which set_weights takes them")
    if shapes != wanted:
        return (f"Keras keeps the projection per head: the kernel is (d_in, h, d_k) = "
                f"({d_in}, {num_heads}, {d_k}) and the bias (h, d_k)")
    if _rearranged(got[0], weight, want[0]):
        return (f"Your kernel holds exactly the weight's numbers, in the wrong places: "
                f"kernel[i, j, k] must be weight[j·d_k + k, i] (input feature i, head j, its "
                f"feature k; here d_k = {d_k})")
    if _rearranged(got[1], bias, want[1]):
        return ("Your bias holds exactly the nn.Linear bias's numbers, in the wrong places: "
                "bias[j, k] must be the flat bias's [j·d_k + k]")
    return None


TO_KERAS_HEADS = Exercise(
    id=f"{CHAPTER}/to_keras_heads",
    title="An nn.Linear projection as a Keras MultiHeadAttention kernel",
    reference=to_keras_heads,
    cases=_heads_cases,
    output_names=("kernel", "bias"),
    atol=0.0,
    rtol=0.0,
    explain=_heads_explain,
    mistakes=[
        Mistake("the weight not transposed", _heads_mistake("no_transpose"),
                "nn.Linear stores its weight as (out, in) and computes x Wᵀ; a Keras kernel is (in, out) "
                "and computes x K. Transpose first (K = Wᵀ), then split the out axis into the heads."),
        Mistake("the heads cut as every h-th feature", _heads_mistake("strided"),
                "the book's split_heads gives head 0 the features 0 … d_k-1 of the projection, head 1 the "
                "next d_k, and so on: split the out axis as (h, d_k), heads outside, not (d_k, h)."),
        Mistake("the heads put first, (h, d_in, d_k)", _heads_mistake("heads_first"),
                "Keras's query kernel is (d_in, h, d_k): the input features first, as in every Keras "
                "kernel, then the heads and their d_k features."),
        Mistake("the bias left flat, (h·d_k,)", _heads_mistake("flat_bias"),
                "the bias has one number per head and feature: reshape it to (h, d_k), the same way as "
                "the kernel's out axis."),
        Mistake("a Dense kernel, (d_in, h·d_k), not split into heads", _heads_mistake("flat_kernel"),
                "the transpose is right, but MultiHeadAttention keeps a 3-D kernel: split the last axis "
                "into (h, d_k)."),
    ],
)


# ============================================================================= 2. padding mask -> attention_mask
def keras_padding_mask(key_padding_mask, num_queries):
    """(B, S) bool, True = ignore (PyTorch) -> (B, T_q, S) bool, True = may attend (Keras)."""
    B, S = key_padding_mask.shape
    return (~key_padding_mask)[:, None, :].expand(B, num_queries, S)


def _padding(g, lengths, width, left=False):
    """(B, width) bool, True at padding: each row has `length` real tokens."""
    pos = torch.arange(width)[None, :]
    lengths = torch.tensor(lengths)[:, None]
    return pos < width - lengths if left else pos >= lengths


def _padding_cases(g):
    return [
        Case("self-attention: 3 sources of 7 tokens, 7, 4 and 2 of them real, T_q = S = 7",
             (_padding(g, [7, 4, 2], 7), 7)),
        Case("cross-attention: 2 sources of 9 tokens (9 and 5 real), 4 queries",
             (_padding(g, [9, 5], 9), 4)),
        Case("one query (a decoding step) on 3 sources of 6 tokens", (_padding(g, [6, 3, 1], 6), 1)),
        Case("left padding: 2 sources of 8 tokens, the padding in front, 3 queries",
             (_padding(g, [5, 8], 8, left=True), 3)),
        Case("no padding at all: 2 sources of 5 tokens, 6 queries", (_padding(g, [5, 5], 5), 6)),
    ]


def _padding_variant(kind):
    def wrong(key_padding_mask, num_queries):
        B, S = key_padding_mask.shape
        attend = ~key_padding_mask
        if kind == "not_inverted":
            return key_padding_mask[:, None, :].expand(B, num_queries, S)
        if kind == "additive":  # PyTorch's float mask: 0 to keep, -inf to block
            blocked = torch.zeros(B, S).masked_fill(key_padding_mask, float("-inf"))
            return blocked[:, None, :].expand(B, num_queries, S)
        if kind == "on_queries":  # the padding laid along the rows
            return attend[:, :, None].expand(B, S, num_queries)
        if kind == "seq_first":  # (T_q, B, S): the sequence axis in front
            return attend[None, :, :].expand(num_queries, B, S)
        raise ValueError(kind)

    return wrong


def _mask_story(got, want, key_is_real, query_is_real=None, causal=False):
    """What a bool mask of the right shape (B, T_q, S) gets wrong, in words and without values;
    None when there is nothing to add. key_is_real (B, S); query_is_real (B, T_q) where the
    queries are the same tokens as the keys (self-attention)."""
    if not isinstance(got, torch.Tensor) or got.dtype != torch.bool or got.shape != want.shape:
        return None
    g, w, real = got.detach().cpu(), want.detach().cpu(), key_is_real.detach().cpu()
    B, T, S = w.shape
    rows = [tuple(bt) for bt in (g != w).any(-1).nonzero().tolist()]  # (b, t) of the wrong rows
    if not rows:
        return None
    lets_padding_in = bool((g & ~real[:, None, :]).any())
    blocks_a_real_key = bool((w & ~g).any())
    others = all(any(torch.equal(g[b, t], w[c, t]) for c in range(B) if c != b) for b, t in rows)
    if others and lets_padding_in and blocks_a_real_key:  # rows of the right masks, wrong samples
        b = rows[0][0]
        return ("In your mask, row b does not match sample b's padding (a repeat or view along the "
                f"wrong axis?): result[{b}] holds rows made from another sample's padding")
    if query_is_real is not None:
        q = query_is_real.detach().cpu()
        if all(not q[b, t] and not g[b, t].any() for b, t in rows):
            return ("In your mask, padding queries' rows are blocked too: only keys are masked. "
                    "key_padding_mask names the keys to ignore; a padding query's row keeps the "
                    "real keys, as in the book (Keras's implicit masks from "
                    "Embedding(mask_zero=True) would block it: not what this exercise builds)")
    said = ["some query may attend a padding key"] if lets_padding_in else []
    if causal:
        if (g & torch.ones(T, S, dtype=torch.bool).triu(1)).any():
            said.append("a query may attend a later key (the future let in)")
        if blocks_a_real_key:
            said.append("a real key at or before the query is blocked")
    elif blocks_a_real_key:
        said.append("a real key is blocked from some query")
    return "In your mask, " + "; ".join(said) if said else None


def _padding_explain(got, want, key_padding_mask, num_queries):
    B, S = key_padding_mask.shape
    if not isinstance(got, torch.Tensor):
        return None
    if tuple(got.shape) == (B, 1, S) and num_queries != 1:
        return ("Keras broadcasts (B, 1, S), as the appendix does; this exercise asks for the full "
                f"(B, T_q, S) = ({B}, {num_queries}, {S}), one row per query")
    if tuple(got.shape) != tuple(want.shape):
        return (f"Return (B, T_q, S) = ({B}, {num_queries}, {S}): one row per query, one column per "
                "source token")
    same_tokens = key_padding_mask if num_queries == S else None  # self-attention: queries = keys
    return _mask_story(got, want, ~key_padding_mask,
                       None if same_tokens is None else ~same_tokens)


KERAS_PADDING_MASK = Exercise(
    id=f"{CHAPTER}/keras_padding_mask",
    title="PyTorch's key_padding_mask as Keras's attention_mask",
    reference=keras_padding_mask,
    cases=_padding_cases,
    explain=_padding_explain,
    mistakes=[
        Mistake("the mask not inverted", _padding_variant("not_inverted"),
                "PyTorch's key_padding_mask is True where a key must be ignored; Keras's attention_mask "
                "is True where a query may attend. The same facts, opposite booleans: invert with ~."),
        Mistake("an additive float mask (0 and -inf)", _padding_variant("additive"),
                "an additive mask is PyTorch's float convention for attn_mask; Keras's attention_mask "
                "is boolean, True = may attend."),
        Mistake("the padding laid along the queries", _padding_variant("on_queries"),
                "padding hides keys, the columns of the mask: every query (row) sees the same real "
                "source tokens. Put the new axis for the queries in the middle: (B, 1, S) → (B, T_q, S)."),
        Mistake("the sequence axis first, (T_q, B, S)", _padding_variant("seq_first"),
                "Keras, like batch_first=True, puts the batch first: (B, T_q, S)."),
    ],
)


# ============================================================================= 3. the decoder's mask
def keras_decoder_mask(tgt_key_padding_mask):
    """(B, T) bool, True = padding (PyTorch) -> (B, T, T) bool, True = may attend: key j is real
    and j <= i — Keras's attention_mask combined with use_causal_mask=True."""
    B, T = tgt_key_padding_mask.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=tgt_key_padding_mask.device).tril()
    return (~tgt_key_padding_mask)[:, None, :] & causal  # (B, T, T)


def _decoder_cases(g):
    return [
        Case("3 targets of 6 tokens, 6, 4 and 2 real", (_padding(g, [6, 4, 2], 6),)),
        Case("2 targets of 9 tokens, 9 and 3 real", (_padding(g, [9, 3], 9),)),
        Case("one target of 5 tokens, no padding", (_padding(g, [5], 5),)),
        Case("one token per target (T = 1), 3 targets", (_padding(g, [1, 1, 1], 1),)),
        Case("4 targets of 7 tokens, 1, 7, 5 and 2 real", (_padding(g, [1, 7, 5, 2], 7),)),
        Case("left padding: 3 targets of 6 tokens, 6, 4 and 3 real, the padding in front",
             (_padding(g, [6, 4, 3], 6, left=True),)),
    ]


def _decoder_variant(kind):
    """A catalogued mistake as code."""
    def wrong(tgt_key_padding_mask):
        B, T = tgt_key_padding_mask.shape
        ones = torch.ones(T, T, dtype=torch.bool)
        causal, real = ones.tril(), ~tgt_key_padding_mask
        if kind == "future":
            causal = ones.triu()
        elif kind == "future_strict":  # where PyTorch's causal mask blocks: triu(1)
            causal = ones.triu(1)
        elif kind == "no_diagonal":
            causal = ones.tril(-1)
        elif kind == "not_inverted":
            real = tgt_key_padding_mask
        elif kind == "rows":  # padding on the queries
            return real[:, :, None] & causal
        elif kind == "no_padding":
            return causal.expand(B, T, T)
        elif kind == "blocked":  # the whole mask in PyTorch's True = blocked
            return ~(real[:, None, :] & causal)
        return real[:, None, :] & causal

    return wrong


def _future(tgt_key_padding_mask):
    """The future let in, with the diagonal (triu()) or without it (triu(1)), as a probe."""
    wrongs = [_decoder_variant(k)(tgt_key_padding_mask) for k in ("future", "future_strict")]
    return Probe(lambda got: any(_same(got, w) for w in wrongs))


def _decoder_explain(got, want, tgt_key_padding_mask):
    if isinstance(got, torch.Tensor) and tuple(got.shape) != tuple(want.shape):
        B, T = tgt_key_padding_mask.shape
        return f"Return (B, T, T) = ({B}, {T}, {T}): one row per query, one column per key"
    real = ~tgt_key_padding_mask
    return _mask_story(got, want, real, real, causal=True)


def _decoder_on_another_device(got, tgt_key_padding_mask):
    """The statement says "make any new tensor on the input's device": call the function once
    more on the same mask on the meta device (shapes, no values), which stands in for a GPU.
    Only a device error or a result on another device fails; code that reads values (which meta
    tensors do not have) is not judged here."""
    fn = core.graded_function()  # the learner's function: called again on a meta mask
    if fn is None:
        return None
    meta = torch.empty(tgt_key_padding_mask.shape, dtype=torch.bool, device="meta")
    try:
        out = call_with_timeout(fn, (meta,), 2.0)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the timeout too: never the grader's crash
        text = str(e).splitlines()[0] if str(e) else ""
        if "device" not in text:
            return None
        return ("your mask is right on the CPU, but make every new tensor on the input's device, "
                "as the statement asks (device=tgt_key_padding_mask.device): given the same mask on "
                f"another device (device='meta', standing in for a GPU) your function raised "
                f"{type(e).__name__}: {text}{core._where_in_learner_code(e, fn)}")
    if isinstance(out, torch.Tensor) and out.device != meta.device:
        return ("your mask is right on the CPU, but make every new tensor on the input's device, "
                "as the statement asks (device=tgt_key_padding_mask.device): given a mask on another "
                f"device (device='meta', standing in for a GPU), your function returned a mask on "
                f"{out.device}")
    return None


KERAS_DECODER_MASK = Exercise(
    id=f"{CHAPTER}/keras_decoder_mask",
    title="The decoder's self-attention mask, Keras's way",
    reference=keras_decoder_mask,
    cases=_decoder_cases,
    explain=_decoder_explain,
    judge=_decoder_on_another_device,
    mistakes=[
        Mistake("the future allowed instead of the past", _future,
                "query i may attend to keys 0 … i: True on and below the diagonal (tril), as Keras's "
                "use_causal_mask builds it (row index >= column index). triu, with the diagonal or "
                "without it, is the future: triu(1) is where PyTorch's causal mask blocks "
                "(generate_square_subsequent_mask puts its -inf there), the complement of what "
                "Keras lets through."),
        Mistake("each token kept from attending to itself", _decoder_variant("no_diagonal"),
                "the diagonal belongs to the past: token i sees itself (its input is the token before "
                "the one it predicts), so keep tril with the diagonal."),
        Mistake("the padding mask not inverted", _decoder_variant("not_inverted"),
                "the input is PyTorch's key_padding_mask, True at padding; in Keras's mask True means "
                "may attend, so the real tokens are ~key_padding_mask."),
        Mistake("the target's padding laid along the queries", _decoder_variant("rows"),
                "padding hides keys, the columns: (B, 1, T), broadcast over the rows. With the padding "
                "in front (left padding), a real token's row must still block the padding before it."),
        Mistake("the padding forgotten", _decoder_variant("no_padding"),
                "with the padding at the end, the causal mask happens to hide it from every real token — "
                "but not with the padding in front: AND the keys' padding into the causal mask."),
        Mistake("the mask in PyTorch's convention (True = blocked)", _decoder_variant("blocked"),
                "nn.Transformer's masks are True where attention is blocked; Keras's attention_mask is "
                "True where it is allowed."),
    ],
)

EXERCISES = [TO_KERAS_HEADS, KERAS_PADDING_MASK, KERAS_DECODER_MASK]
