"""Appendix A: chapter 08's Transformer in Keras 3 (book/keras_port.py), and the exercise data.

Model tests, on CPU: the positional table is the book's; each attention kind, weights copied,
equals the book's multi-head attention under the book's masks; the whole Keras model with a
book model's weights gives the same logits (≤ 1e-4) and the same greedy translations; the
Noam schedule is book.training.lr_at, and model.fit's first steps use the book's first rates;
the masked loss is book.training.label_smoothing_loss. The grader's references are checked
against what Keras's MultiHeadAttention does with them.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported (book.keras_port)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from book import keras_port as kp  # noqa: E402
from book.data.dates import CharVocab, encode_pairs, examples, split_dates  # noqa: E402
from book.decoding import greedy_decode  # noqa: E402
from book.grader import a1  # noqa: E402
from book.layers import (LayerOptions, decoder_self_mask, key_padding_mask,  # noqa: E402
                         layer_norm)
from book.multihead import MultiHeadAttention  # noqa: E402
from book.positional import sinusoidal_positional_encoding  # noqa: E402
from book.training import label_smoothing_loss, lr_at  # noqa: E402
from book.transformer import Transformer, TransformerConfig  # noqa: E402

import keras  # noqa: E402  (already imported by book.keras_port, on the torch backend)
from keras import ops  # noqa: E402


def _np(x):
    return ops.convert_to_numpy(x)


def test_keras_runs_on_the_torch_backend():
    assert keras.config.backend() == "torch"


@pytest.mark.parametrize("max_len,d_model", [(64, 64), (10, 8), (3, 2)])
def test_positional_table_is_the_books(max_len, d_model):
    ours = kp.positional_table(max_len, d_model)
    assert ours.shape == (max_len, d_model) and ours.dtype == np.float32
    # float32 angles reach ~63 rad, where one float32 step is 3.8e-6: the two libraries' rounding of
    # pos / 10000^(2i/d) and their sin/cos kernels may differ by that much (1.9e-6 seen with numpy 2.4)
    np.testing.assert_allclose(ours, sinusoidal_positional_encoding(max_len, d_model).numpy(),
                               atol=1e-5)


# ----------------------------------------------------------------------------- one layer at a time
def _book_sublayer(mha, q_in, kv_in, mask):
    """The book's post-LN sublayer with LayerNorm's initial gamma 1, beta 0."""
    d = q_in.shape[-1]
    out, _ = mha(q_in, kv_in, mask)
    return layer_norm(q_in + out, torch.ones(d), torch.zeros(d))


def _real(lengths, width):
    return torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]  # (B, width)


@pytest.mark.parametrize("kind", ["global", "causal", "cross"])
def test_each_attention_kind_equals_the_books(kind):
    torch.manual_seed(0)
    d, h = 16, 4
    mha = MultiHeadAttention(d, h)
    x, memory = torch.randn(3, 6, d), torch.randn(3, 9, d)
    x_real, mem_real = _real([6, 4, 2], 6), _real([9, 5, 1], 9)
    layer = {"global": kp.GlobalSelfAttention, "causal": kp.CausalSelfAttention,
             "cross": kp.CrossAttention}[kind](d, h)
    if kind == "cross":
        layer(x.numpy(), memory.numpy(), mem_real.numpy())  # builds the weights
        kp._attention(layer, mha)
        got = layer(x.numpy(), memory.numpy(), mem_real.numpy())
        want = _book_sublayer(mha, x, memory, key_padding_mask(mem_real))
        assert _np(layer.last_attention_scores).shape == (3, h, 6, 9)
    else:
        layer(x.numpy(), x_real.numpy())
        kp._attention(layer, mha)
        got = layer(x.numpy(), x_real.numpy())
        mask = key_padding_mask(x_real) if kind == "global" else decoder_self_mask(x_real)
        want = _book_sublayer(mha, x, x, mask)
    np.testing.assert_allclose(_np(got), want.detach().numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- the whole model
@pytest.fixture(scope="module")
def date_models():
    vocab = CharVocab()
    cfg = TransformerConfig(src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), d_model=32,
                            num_heads=4, d_ff=64, pad_id=vocab.PAD)
    torch.manual_seed(0)
    book_model = Transformer(cfg).eval()
    with torch.no_grad():  # away from the initial LayerNorms (1 and 0) and small tables
        for p in book_model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    keras_model = kp.keras_like(cfg)
    kp.copy_from_book(book_model, keras_model)
    pairs = examples(split_dates(seed=0).test[:24], "zh", seed=5)  # targets of several lengths
    return vocab, cfg, book_model, keras_model, pairs


def test_the_keras_model_has_the_books_parameters(date_models):
    vocab, cfg, book_model, keras_model, _ = date_models
    assert keras_model.count_params() == book_model.num_parameters()


def test_copied_weights_give_the_books_logits(date_models):
    vocab, cfg, book_model, keras_model, pairs = date_models
    src, tgt = encode_pairs(pairs, vocab)
    assert (src == vocab.PAD).any() and (tgt == vocab.PAD).any()  # padding on both sides
    with torch.no_grad():
        want = book_model(src, tgt[:, :-1]).numpy()
    got = _np(keras_model((src.numpy(), tgt[:, :-1].numpy()), training=False))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4  # every position, padding included


def test_keras_greedy_decoding_writes_what_the_book_writes(date_models):
    vocab, cfg, book_model, keras_model, pairs = date_models
    src, _ = encode_pairs(pairs[:8], vocab)
    want = greedy_decode(book_model, src, 12, vocab.BOS, vocab.EOS)
    got = kp.greedy_decode(keras_model, src.numpy(), 12, vocab.BOS, vocab.EOS)
    np.testing.assert_array_equal(got, want.numpy())


def test_copy_refuses_models_the_port_does_not_have():
    vocab = CharVocab()
    base = dict(src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), d_model=16, num_heads=2,
                d_ff=32, num_encoder_layers=1, num_decoder_layers=1)
    keras_model = kp.keras_like(TransformerConfig(**base))
    for change in ({"norm_first": True}, {"positions": "rope"}, {"tie_weights": False},
                   {"layer": LayerOptions(activation="gelu")}):
        with pytest.raises(ValueError, match="chapter 08"):
            kp.copy_from_book(Transformer(TransformerConfig(**base, **change)), keras_model)


# ----------------------------------------------------------------------------- training pieces
@pytest.mark.parametrize("steps,cooldown", [(600, 0.3), (300, 0.0), (50, 0.5)])
def test_noam_schedule_is_the_books(steps, cooldown):
    schedule = kp.NoamSchedule(64, 200, 0.5, steps, cooldown)
    ours = _np(schedule(np.arange(steps)))  # Keras counts from 0
    book = np.array([lr_at(s, steps, 64, 200, 0.5, cooldown) for s in range(1, steps + 1)])
    np.testing.assert_allclose(ours, book, rtol=1e-5)
    assert kp.NoamSchedule(**schedule.get_config()).get_config() == schedule.get_config()


def test_fit_uses_the_books_rates_from_its_first_step():
    vocab = CharVocab()
    cfg = TransformerConfig(len(vocab), len(vocab), d_model=16, num_heads=2, d_ff=32,
                            num_encoder_layers=1, num_decoder_layers=1, pad_id=vocab.PAD)
    model = kp.keras_like(cfg)
    schedule = kp.NoamSchedule(16, 4, 0.5, 6, 0.5)
    optimizer = keras.optimizers.Adam(schedule, beta_1=0.9, beta_2=0.98, epsilon=1e-9)
    model.compile(optimizer=optimizer, loss=kp.masked_loss(vocab.PAD), metrics=[kp.masked_accuracy()])
    seen = []

    class Rates(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(_np(self.model.optimizer.learning_rate)))

    src, tgt = encode_pairs(examples(split_dates(seed=0).train[:8], "iso", seed=0), vocab)
    model.fit((src.numpy(), tgt[:, :-1].numpy()), tgt[:, 1:].numpy(), batch_size=4, epochs=3,
              shuffle=False, verbose=0, callbacks=[Rates()])
    np.testing.assert_allclose(seen, [lr_at(s, 6, 16, 4, 0.5, 0.5) for s in range(1, 7)], rtol=1e-5)


def test_masked_loss_and_accuracy_are_the_books():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    target = torch.randint(1, 7, (3, 5))
    target[1, 3:] = 0  # padding
    target[2, 1:] = 0
    want = label_smoothing_loss(logits.reshape(-1, 7), target.reshape(-1), 0.1, ignore_index=0)
    got = _np(kp.masked_loss(0, 0.1)(target.numpy(), logits.numpy()))
    np.testing.assert_allclose(got, want.item(), rtol=1e-5)
    real = target != 0
    right = ((logits.argmax(-1) == target) & real).sum() / real.sum()
    np.testing.assert_allclose(_np(kp.masked_accuracy(0)(target.numpy(), logits.numpy())),
                               right.item(), rtol=1e-6)


# ----------------------------------------------------------------------------- the grader's answers in Keras
def test_to_keras_heads_is_the_layout_copy_from_book_uses():
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3)
    layer = kp.GlobalSelfAttention(12, 3)
    layer(np.zeros((1, 2, 12), "float32"), np.ones((1, 2), bool))
    kp._attention(layer, mha)
    weights = layer.mha.get_weights()  # query kernel, query bias, key …, value …, output …
    for i, linear in enumerate((mha.w_q, mha.w_k, mha.w_v)):
        kernel, bias = a1.to_keras_heads(linear.weight.detach(), linear.bias.detach(), 3)
        np.testing.assert_array_equal(weights[2 * i], kernel.numpy())
        np.testing.assert_array_equal(weights[2 * i + 1], bias.numpy())


def test_the_graders_masks_do_in_keras_what_the_books_masks_do():
    torch.manual_seed(1)
    d, h = 8, 2
    mha = MultiHeadAttention(d, h)
    layer = kp.CrossAttention(d, h)
    y, memory = torch.randn(2, 5, d), torch.randn(2, 7, d)
    layer(y.numpy(), memory.numpy(), np.ones((2, 7), bool))
    kp._attention(layer, mha)
    pad = ~_real([7, 3], 7)  # PyTorch's convention: True = padding
    got = layer.mha(y.numpy(), memory.numpy(), attention_mask=a1.keras_padding_mask(pad, 5).numpy())
    want, _ = mha(y, memory, key_padding_mask(~pad))
    np.testing.assert_allclose(_np(got), want.detach().numpy(), atol=1e-5)

    tgt_pad = ~_real([5, 2], 5)
    mine = layer.mha(y.numpy(), y.numpy(), attention_mask=a1.keras_decoder_mask(tgt_pad).numpy())
    keras_own = layer.mha(y.numpy(), y.numpy(), attention_mask=(~tgt_pad)[:, None, :].numpy(),
                          use_causal_mask=True)
    book, _ = mha(y, y, decoder_self_mask(~tgt_pad))
    np.testing.assert_allclose(_np(mine), _np(keras_own), atol=1e-6)
    np.testing.assert_allclose(_np(mine), book.detach().numpy(), atol=1e-5)


# ---- exercise data (grader tests)
# Data for tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG).

# 1. nn.Linear -> per-head kernel
def heads_by_unflatten(weight, bias, num_heads):
    kernel = weight.unflatten(0, (num_heads, -1)).permute(2, 0, 1)  # (d_in, h, d_k)
    return kernel, bias.unflatten(0, (num_heads, -1))


def heads_by_einsum(weight, bias, num_heads):
    d_out, d_in = weight.shape
    w = weight.reshape(num_heads, d_out // num_heads, d_in)  # (h, d_k, d_in)
    return torch.einsum("hki->ihk", w), bias.view(num_heads, -1)


# 2. padding mask -> attention_mask
def padding_by_comparison(key_padding_mask, num_queries):
    return (key_padding_mask == False)[:, None, :].expand(-1, num_queries, -1)  # noqa: E712


def padding_by_broadcast(key_padding_mask, num_queries):
    B, S = key_padding_mask.shape
    return torch.broadcast_to(torch.logical_not(key_padding_mask).unsqueeze(1), (B, num_queries, S))


# 3. the decoder's mask
def decoder_by_tril(tgt_key_padding_mask):
    T = tgt_key_padding_mask.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=tgt_key_padding_mask.device))
    return causal & ~tgt_key_padding_mask.unsqueeze(1)


def decoder_from_the_padding_exercise(tgt_key_padding_mask):
    T = tgt_key_padding_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=tgt_key_padding_mask.device).tril()
    return a1.keras_padding_mask(tgt_key_padding_mask, T) & causal


def decoder_in_place(tgt_key_padding_mask):
    real = tgt_key_padding_mask.logical_not_()  # changes the caller's mask
    return decoder_by_tril(~real)


# wrong attempts from a learner's session (issue 17's review), each with what its feedback must say
def heads_strided_kernel_only(weight, bias, num_heads):  # the bias is split right
    d_out, d_in = weight.shape
    d_k = d_out // num_heads
    return weight.T.reshape(d_in, d_k, num_heads).transpose(1, 2), bias.reshape(num_heads, d_k)


def heads_no_transpose_bias_flat(weight, bias, num_heads):  # two slips: the kernel's is named
    d_out, d_in = weight.shape
    return weight.reshape(d_in, num_heads, d_out // num_heads), bias


def heads_out_axis_read_as_h_din_dk(weight, bias, num_heads):  # the weight's numbers, misplaced
    d_out, d_in = weight.shape
    return (weight.reshape(num_heads, d_in, d_out // num_heads).permute(1, 0, 2),
            bias.reshape(num_heads, -1))


def heads_bias_first(weight, bias, num_heads):
    return tuple(reversed(a1.to_keras_heads(weight, bias, num_heads)))


def padding_as_broadcast(key_padding_mask, num_queries):  # what the appendix passes Keras
    return (~key_padding_mask)[:, None, :]


def padding_rows_mixed_across_the_batch(key_padding_mask, num_queries):
    B, S = key_padding_mask.shape
    return (~key_padding_mask).repeat(num_queries, 1).view(B, num_queries, S)


def padding_queries_masked_too(key_padding_mask, num_queries):  # what mask_zero=True gives
    real = ~key_padding_mask
    return real[:, :, None] & real[:, None, :]


def padding_ignored(key_padding_mask, num_queries):
    B, S = key_padding_mask.shape
    return torch.ones(B, num_queries, S, dtype=torch.bool)


def padding_too_much(key_padding_mask, num_queries):  # the last real token dropped as well
    real = ~key_padding_mask
    real = real & torch.roll(real, -1, dims=1)
    return real[:, None, :].expand(-1, num_queries, -1)


def decoder_without_device(tgt_key_padding_mask):  # right values, the causal part on the CPU
    T = tgt_key_padding_mask.shape[1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))  # no device=
    return causal & ~tgt_key_padding_mask[:, None, :]


def decoder_result_on_the_cpu(tgt_key_padding_mask):  # no error, but a result on the CPU
    if tgt_key_padding_mask.is_meta:  # (a stand-in for code that builds its result there)
        T = tgt_key_padding_mask.shape[1]
        return torch.zeros(tgt_key_padding_mask.shape[0], T, T, dtype=torch.bool)
    return a1.keras_decoder_mask(tgt_key_padding_mask)


def decoder_strict_future(tgt_key_padding_mask):  # generate_square_subsequent_mask's pattern
    T = tgt_key_padding_mask.shape[1]
    future = torch.ones(T, T, dtype=torch.bool, device=tgt_key_padding_mask.device).triu(1)
    return future & ~tgt_key_padding_mask[:, None, :]


def decoder_or(tgt_key_padding_mask):  # OR instead of AND
    T = tgt_key_padding_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=tgt_key_padding_mask.device).tril()
    return causal | ~tgt_key_padding_mask[:, None, :]


def decoder_queries_masked_too(tgt_key_padding_mask):
    real = ~tgt_key_padding_mask
    return real[:, :, None] & a1.keras_decoder_mask(tgt_key_padding_mask)


def decoder_rows_mixed_across_the_batch(tgt_key_padding_mask):
    B, T = tgt_key_padding_mask.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=tgt_key_padding_mask.device).tril()
    return (~tgt_key_padding_mask).repeat(T, 1).view(B, T, T) & causal


def decoder_padding_blocks_the_past(tgt_key_padding_mask):  # a real key blocked: the padding
    T = tgt_key_padding_mask.shape[1]  # shifted by one
    real = ~tgt_key_padding_mask
    causal = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()
    return (real & torch.roll(real, -1, dims=1))[:, None, :] & causal


REFERENCES = {}
BUGGY = {  # code for the mistakes catalogued as probes (all of a judged exercise's)
    "the weight not transposed": a1._heads_variant("no_transpose"),
    "the heads cut as every h-th feature": a1._heads_variant("strided"),
    "the heads put first, (h, d_in, d_k)": a1._heads_variant("heads_first"),
    "the bias left flat, (h·d_k,)": a1._heads_variant("flat_bias"),
    "a Dense kernel, (d_in, h·d_k), not split into heads": a1._heads_variant("flat_kernel"),
    "the future allowed instead of the past": a1._decoder_variant("future"),
    "each token kept from attending to itself": a1._decoder_variant("no_diagonal"),
    "the padding mask not inverted": a1._decoder_variant("not_inverted"),
    "the target's padding laid along the queries": a1._decoder_variant("rows"),
    "the padding forgotten": a1._decoder_variant("no_padding"),
    "the mask in PyTorch's convention (True = blocked)": a1._decoder_variant("blocked"),
}

ALTERNATIVES = {
    "to_keras_heads": [heads_by_unflatten, heads_by_einsum],
    "keras_padding_mask": [padding_by_comparison, padding_by_broadcast],
    "keras_decoder_mask": [decoder_by_tril, decoder_from_the_padding_exercise],
}

WRONG = [  # what the feedback must say about slips outside the catalogue
    ("to_keras_heads", lambda w, b, h: tuple(t.numpy() for t in a1.to_keras_heads(w, b, h)), "numpy"),
    ("to_keras_heads", lambda w, b, h: a1.to_keras_heads(w, b, h)[0], "Return a pair"),
    ("to_keras_heads", lambda w, b, h: (a1.to_keras_heads(w, b, h)[0].transpose(1, 2),
                                        a1.to_keras_heads(w, b, h)[1]), "(d_in, h, d_k)"),
    ("keras_padding_mask", lambda m, n: a1.keras_padding_mask(m, n).int(), "masks must be bool"),
    ("keras_padding_mask", lambda m, n: (~m)[:, None, :].expand(-1, m.shape[1], -1),
     "Return (B, T_q, S)"),  # num_queries ignored: (B, S, S)
    ("keras_decoder_mask", lambda m: a1.keras_decoder_mask(m)[0], "Return (B, T, T)"),
    ("keras_decoder_mask", decoder_in_place, "modified its input"),
    # issue 17: the feedback names what is wrong, output by output and in the mask's values
    ("to_keras_heads", heads_strided_kernel_only, "looks like the heads cut as every h-th feature"),
    ("to_keras_heads", heads_no_transpose_bias_flat, "looks like the weight not transposed"),
    ("to_keras_heads", heads_out_axis_read_as_h_din_dk, "kernel[i, j, k] must be weight[j·d_k + k, i]"),
    ("to_keras_heads", heads_bias_first, "return (kernel, bias)"),
    ("keras_padding_mask", padding_as_broadcast,
     "Keras broadcasts (B, 1, S), as the appendix does; this exercise asks for the full (B, T_q, S)"),
    ("keras_padding_mask", padding_rows_mixed_across_the_batch,
     "row b does not match sample b's padding (a repeat or view along the wrong axis?)"),
    ("keras_padding_mask", padding_queries_masked_too,
     "padding queries' rows are blocked too: only keys are masked"),
    ("keras_padding_mask", padding_ignored, "some query may attend a padding key"),
    ("keras_padding_mask", padding_too_much, "a real key is blocked from some query"),
    ("keras_decoder_mask", decoder_without_device, "make every new tensor on the input's device"),
    ("keras_decoder_mask", decoder_result_on_the_cpu, "returned a mask on cpu"),
    ("keras_decoder_mask", decoder_strict_future, "looks like the future allowed instead of the past"),
    ("keras_decoder_mask", decoder_or, "a query may attend a later key (the future let in)"),
    ("keras_decoder_mask", decoder_queries_masked_too,
     "padding queries' rows are blocked too: only keys are masked"),
    ("keras_decoder_mask", decoder_rows_mixed_across_the_batch,
     "row b does not match sample b's padding (a repeat or view along the wrong axis?)"),
    ("keras_decoder_mask", decoder_padding_blocks_the_past, "a real key at or before the query is blocked"),
]
