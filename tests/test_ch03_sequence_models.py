"""Chapter 03: the cells equal torch.nn's, BPTT by hand equals autograd, the seq2seq model and its
task behave; the chapter's data for test_exercises.py (the exercises' references against nn.LSTM,
nn.GRU with packed sequences and chapter 04's attention) and the grader's special feedback."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import rnn
from book.grader import ch03, check


def _weights(module, suffix=""):
    return tuple(getattr(module, f"{n}{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


# ----------------------------------------------------------------------------- the cells equal torch.nn
@pytest.mark.parametrize("lead", [(5,), (), (1,)], ids=["batch", "unbatched", "batch-of-1"])
def test_cells_equal_torch_cells_with_copied_weights(lead):
    torch.manual_seed(0)
    D, H = 7, 6
    x, h, c = torch.randn(*lead, D), torch.randn(*lead, H), torch.randn(*lead, H)
    m = nn.RNNCell(D, H)
    torch.testing.assert_close(rnn.rnn_cell(x, h, *_weights(m)), m(x, h))
    m = nn.LSTMCell(D, H)
    for ours, theirs in zip(rnn.lstm_cell(x, h, c, *_weights(m)), m(x, (h, c))):
        torch.testing.assert_close(ours, theirs)
    m = nn.GRUCell(D, H)
    torch.testing.assert_close(rnn.gru_cell(x, h, *_weights(m)), m(x, h))


def test_unrolled_cells_equal_torch_layers():
    torch.manual_seed(1)
    B, T, D, H = 3, 9, 4, 5
    xs, h0 = torch.randn(B, T, D), torch.zeros(B, H)
    layer = nn.RNN(D, H, batch_first=True)
    w = _weights(layer, "_l0")
    torch.testing.assert_close(rnn.unroll(lambda x, s: rnn.rnn_cell(x, s, *w), xs, h0)[0], layer(xs)[0])
    layer = nn.LSTM(D, H, batch_first=True)
    w = _weights(layer, "_l0")
    out, (h, c) = rnn.unroll(lambda x, s: rnn.lstm_cell(x, *s, *w), xs, (h0, h0))
    ref, (h_ref, c_ref) = layer(xs)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(c, c_ref[0])
    layer = nn.GRU(D, H, batch_first=True)
    w = _weights(layer, "_l0")
    torch.testing.assert_close(rnn.unroll(lambda x, s: rnn.gru_cell(x, s, *w), xs, h0)[0], layer(xs)[0])


def test_gradients_flow_through_our_cells_like_torchs():
    torch.manual_seed(2)
    x, h = torch.randn(3, 4), torch.randn(3, 5)
    m = nn.GRUCell(4, 5)
    rnn.gru_cell(x, h, *_weights(m)).pow(2).sum().backward()
    ours = [p.grad.clone() for p in _weights(m)]
    m.zero_grad()
    m(x, h).pow(2).sum().backward()
    for a, p in zip(ours, _weights(m)):
        torch.testing.assert_close(a, p.grad)


# ----------------------------------------------------------------------------- backprop through time
def test_jacobian_norms_match_the_full_jacobian():
    torch.manual_seed(3)
    B, T, D, H = 3, 6, 4, 5
    m = nn.RNNCell(D, H)
    w = _weights(m)

    def last(xs):
        return rnn.unroll(lambda x, s: rnn.rnn_cell(x, s, *w), xs, torch.zeros(xs.size(0), H))[0][:, -1]

    xs = torch.randn(B, T, D)
    norms = rnn.jacobian_norms(last, xs)
    assert norms.shape == (B, T)
    for b in range(B):
        full = torch.autograd.functional.jacobian(last, xs[b:b + 1])  # (1, H, 1, T, D)
        torch.testing.assert_close(norms[b], full.pow(2).sum(dim=(0, 1, 2, 4)).sqrt())


def test_bptt_reference_equals_autograd():
    torch.manual_seed(4)
    T, D, H = 7, 3, 4
    xs, h0 = torch.randn(T, D), torch.randn(H)
    W_ih, W_hh, b_ih, b_hh = torch.randn(H, D), torch.randn(H, H), torch.randn(H), torch.randn(H)

    def last(xs):
        h = h0
        for x in xs:
            h = torch.tanh(W_ih @ x + b_ih + W_hh @ h + b_hh)
        return h

    want = torch.autograd.functional.jacobian(last, xs).permute(1, 0, 2)  # (T, H, D)
    torch.testing.assert_close(ch03.rnn_input_jacobians(xs, h0, W_ih, W_hh, b_ih, b_hh), want)


# ----------------------------------------------------------------------------- additive attention
def test_additive_attention_against_a_loop_and_masks():
    torch.manual_seed(5)
    B, T, d_q, d_k, d_a = 3, 6, 4, 5, 7
    q, k = torch.randn(B, d_q), torch.randn(B, T, d_k)
    W_q, W_k, v = torch.randn(d_a, d_q), torch.randn(d_a, d_k), torch.randn(d_a)
    mask = torch.arange(T)[None, :] < torch.tensor([6, 2, 4])[:, None]
    ctx, w = rnn.additive_attention(q, k, W_q, W_k, v, mask)
    for b in range(B):
        n = int(mask[b].sum())
        scores = torch.stack([v @ torch.tanh(W_q @ q[b] + W_k @ k[b, j]) for j in range(n)])
        alpha = torch.softmax(scores, 0)
        torch.testing.assert_close(w[b, :n], alpha)
        assert (w[b, n:] == 0).all()
        torch.testing.assert_close(ctx[b], alpha @ k[b, :n])
    assert ctx.shape == (B, d_k) and w.shape == (B, T)


def test_predicted_counts_are_the_real_counts():
    assert ch03.predict_parameter_counts() == (2560, 1920)


# ----------------------------------------------------------------------------- the task and the model
def test_reverse_digits():
    src, tgt = rnn.reverse_digits(5, 7, torch.Generator().manual_seed(0))
    assert src.shape == tgt.shape == (5, 7) and src.dtype == torch.long
    assert torch.equal(tgt, src.flip(1)) and 0 <= src.min() and src.max() <= 9
    again, _ = rnn.reverse_digits(5, 7, torch.Generator().manual_seed(0))
    assert torch.equal(src, again)
    with pytest.raises(ValueError):
        rnn.reverse_digits(0, 5)


@pytest.mark.parametrize("attention", [True, False])
def test_seq2seq_shapes_and_modes(attention):
    torch.manual_seed(6)
    model = rnn.Seq2Seq(rnn.Seq2SeqConfig(attention=attention, hidden=16, d_emb=8, d_attn=8))
    src, tgt = rnn.reverse_digits(3, 5)
    logits, w = model(src, tgt)
    assert logits.shape == (3, 5, 10)
    if attention:
        assert w.shape == (3, 5, 5)
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))
    else:
        assert w is None
    greedy, _ = model(src, length=7)
    assert greedy.shape == (3, 7, 10)
    # teacher forcing with the greedy output as target reproduces the greedy logits
    pred = model(src)[0].argmax(-1)
    torch.testing.assert_close(model(src, pred)[0], model(src)[0])


def test_train_seq2seq_runs_reduces_loss_and_validates():
    torch.manual_seed(7)
    model = rnn.Seq2Seq(rnn.Seq2SeqConfig(attention=True, hidden=16, d_emb=8, d_attn=8))
    seen = []
    losses = rnn.train_seq2seq(model, steps=60, batch_size=32, lengths=(3, 5), lr=1e-2,
                               on_step=lambda step, loss: seen.append(step)).loss
    assert len(losses) == 60 and seen == list(range(1, 61))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    exact, digits = rnn.reversal_accuracy(model, 4, n=20)
    assert digits > 0.2  # a trained model beats chance (10 %) on short sequences
    with pytest.raises(ValueError):
        rnn.train_seq2seq(model, steps=0)
    with pytest.raises(ValueError):
        rnn.train_seq2seq(model, steps=5, lengths=(6, 4))


class _KnownAccuracy(nn.Module):
    """A stand-in Seq2Seq that reverses its source, except at the given output positions (digit + 1)."""

    def __init__(self, wrong_positions=()):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # reversal_accuracy asks for the device
        self.wrong = list(wrong_positions)

    def forward(self, src, tgt=None, length=None):
        pred = src.flip(1).clone()
        pred[:, self.wrong] = (pred[:, self.wrong] + 1) % 10
        return F.one_hot(pred, 10).float(), None


@pytest.mark.parametrize("wrong,length,expected", [((), 4, (1.0, 1.0)), ((0,), 4, (0.0, 0.75)),
                                                   ((1, 3), 5, (0.0, 0.6)), (tuple(range(6)), 6, (0.0, 0.0))])
def test_reversal_accuracy_on_models_of_known_accuracy(wrong, length, expected):
    exact, digits = rnn.reversal_accuracy(_KnownAccuracy(wrong), length, n=30)
    assert (exact, digits) == pytest.approx(expected)


# ----------------------------------------------------------------------------- data for test_exercises.py
# 1. find and fix the bugs: PyTorch's layer (a reference, not allowed in an answer), fixed copies
def lstm_sequence_via_torch(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    layer = nn.LSTM(W_ih.shape[1], W_hh.shape[1], batch_first=True)
    with torch.no_grad():
        for p, w in zip(_weights(layer, "_l0"), (W_ih, W_hh, b_ih, b_hh)):
            p.copy_(w)
        out, (h, c) = layer(xs, (h0[None], c0[None]))
    return out, h[0], c[0]


def lstm_sequence_fixed(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """The notebook's buggy function with its three lines fixed (slices instead of chunk)."""
    H = h0.shape[-1]
    from_inputs = xs @ W_ih.T + (b_ih + b_hh)  # hoisted, both biases once
    h, c, outputs = h0, c0, []
    for t in range(xs.size(1)):
        gates = from_inputs[:, t] + h @ W_hh.T
        i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        h = o.sigmoid() * c.tanh()
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


def lstm_sequence_not_hoisted(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    h, c, outputs = h0, c0, []
    for x in xs.unbind(1):
        i, f, g, o = (torch.einsum("gd,bd->bg", W_ih, x) + b_ih + torch.einsum("gh,bh->bg", W_hh, h)
                      + b_hh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    return torch.stack(outputs, 1), h, c


# 2. a GRU over a padded batch: PyTorch's packed sequences (a reference), a float mask, one sequence at a time
def gru_lengths_via_packing(xs, lengths, h0, W_ih, W_hh, b_ih, b_hh):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    layer = nn.GRU(W_ih.shape[1], W_hh.shape[1], batch_first=True)
    with torch.no_grad():
        for p, w in zip(_weights(layer, "_l0"), (W_ih, W_hh, b_ih, b_hh)):
            p.copy_(w)
        packed = pack_padded_sequence(xs, lengths.long().cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = layer(packed, h0[None])
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=xs.shape[1])
    return out, h_n[0]


def gru_lengths_float_mask(xs, lengths, h0, W_ih, W_hh, b_ih, b_hh):
    T = xs.shape[1]
    keep = (torch.arange(T, device=xs.device)[None, :] < lengths[:, None]).to(xs.dtype)  # (B, T)
    h, outputs = h0, []
    for t in range(T):
        m = keep[:, t:t + 1]
        h = m * rnn.gru_cell(xs[:, t], h, W_ih, W_hh, b_ih, b_hh) + (1 - m) * h
        outputs.append(m * h)
    return torch.stack(outputs, 1), h


def gru_lengths_one_by_one(xs, lengths, h0, W_ih, W_hh, b_ih, b_hh):
    """Each sequence run alone over its real steps only, with a cell written out; then padded with zeros."""
    T, outs, finals = xs.shape[1], [], []
    for b in range(xs.shape[0]):
        h, states = h0[b], []
        for t in range(int(lengths[b])):
            r, z, n = W_ih.split(W_ih.shape[0] // 3)
            x_r, x_z, x_n = (w @ xs[b, t] for w in (r, z, n))
            b_r, b_z, b_n = b_ih.chunk(3)
            h_r, h_z, h_n = (W_hh @ h + b_hh).chunk(3)
            rr = torch.sigmoid(x_r + b_r + h_r)
            zz = torch.sigmoid(x_z + b_z + h_z)
            nn_ = torch.tanh(x_n + b_n + rr * h_n)
            h = (1 - zz) * nn_ + zz * h
            states.append(h)
        outs.append(F.pad(torch.stack(states), (0, 0, 0, T - len(states))))
        finals.append(h)
    return torch.stack(outs), torch.stack(finals)


# 4. multiplicative attention: chapter 04's scaled dot product with the scale undone, einsum, logsumexp
def multiplicative_via_scaled_dot_product(queries, keys, W, mask=None):
    from book.attention import scaled_dot_product_attention
    projected = F.linear(keys, W) * queries.shape[-1] ** 0.5  # (B, T, d_q), × √d_q undoes the 1/√d_q
    return scaled_dot_product_attention(queries, projected, keys, None if mask is None else mask[:, None, :])


def multiplicative_einsum(queries, keys, W, mask=None):
    scores = torch.einsum("bld,de,bte->blt", queries, W, keys)
    if mask is not None:
        scores = torch.where(mask.unsqueeze(1), scores, torch.finfo(scores.dtype).min)
    weights = scores.softmax(-1)
    return torch.einsum("blt,btd->bld", weights, keys), weights


def multiplicative_logsumexp(queries, keys, W, mask=None):
    scores = (queries @ W) @ keys.mT
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not().unsqueeze(-2), -1e30)
    weights = torch.exp(scores - scores.logsumexp(-1, keepdim=True))
    return torch.bmm(weights, keys), weights


def bptt_autograd(xs, h0, W_ih, W_hh, b_ih, b_hh):
    def last(xs):
        h = h0
        for x in xs:
            h = torch.tanh(F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh))
        return h

    return torch.autograd.functional.jacobian(last, xs).permute(1, 0, 2)


def bptt_products_from_scratch(xs, h0, W_ih, W_hh, b_ih, b_hh):
    hs, h = [], h0
    for x in xs:
        h = torch.tanh(W_ih @ x + b_ih + W_hh @ h + b_hh)
        hs.append(h)
    T = len(hs)
    out = []
    for t in range(T):
        J = torch.diag(1 - hs[t] ** 2) @ W_ih
        for s in range(t + 1, T):
            J = torch.diag(1 - hs[s] ** 2) @ W_hh @ J
        out.append(J)
    return torch.stack(out)


# the PyTorch layers and chapter 04's attention equal the exercises' references; an answer may not call nn.LSTM/nn.GRU
REFERENCES = {
    "lstm_sequence": lstm_sequence_via_torch,
    "gru_with_lengths": gru_lengths_via_packing,
    "multiplicative_attention": multiplicative_via_scaled_dot_product,
}

ALTERNATIVES = {
    "lstm_sequence": [lstm_sequence_fixed, lstm_sequence_not_hoisted],
    "gru_with_lengths": [gru_lengths_float_mask, gru_lengths_one_by_one],
    "rnn_input_jacobians": [bptt_autograd, bptt_products_from_scratch],
    "multiplicative_attention": [multiplicative_einsum, multiplicative_logsumexp],
    "predict_parameter_counts": [lambda: [2560, 1920], lambda: (4 * (20 * 10 + 20 * 20 + 40), 3 * 640)],
}


def _gru_stub(xs, lengths, h0, W_ih, W_hh, b_ih, b_hh):
    raise NotImplementedError("your code here")


def _lstm_with_the_books_cell(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    h, c, outputs = h0, c0, []
    for t in range(xs.size(1)):
        h, c = rnn.lstm_cell(xs[:, t], h, c, W_ih, W_hh, b_ih, b_hh)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


def _lstm_order_fixed_b_ih_dropped(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """Two faults at once (order right, but b_ih dropped and h from the old c): not catalogued."""
    from_inputs = F.linear(xs, W_ih)
    h, c, outputs = h0, c0, []
    for t in range(xs.size(1)):
        i, f, g, o = (from_inputs[:, t] + F.linear(h, W_hh, b_hh)).chunk(4, dim=-1)
        h = torch.sigmoid(o) * torch.tanh(c)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        outputs.append(h)
    return torch.stack(outputs, dim=1), h, c


def _lstm_h_not_carried(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    c, outputs = c0, []
    for t in range(xs.size(1)):
        i, f, g, o = (F.linear(xs[:, t], W_ih, b_ih) + F.linear(h0, W_hh, b_hh)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        outputs.append(torch.sigmoid(o) * torch.tanh(c))
    return torch.stack(outputs, dim=1), outputs[-1], c


def _gru_padding_outputs_h0(xs, lengths, h0, *w):
    out, h = ch03.gru_with_lengths(xs, lengths, h0, *w)
    pad = (torch.arange(xs.shape[1])[None, :] >= lengths[:, None])[..., None]
    return torch.where(pad, h0[:, None, :], out), h


def _gru_h_n_from_h0_for_short(xs, lengths, h0, *w):
    out, h = ch03.gru_with_lengths(xs, lengths, h0, *w)
    return out, torch.where((lengths < xs.shape[1])[:, None], h0, h)


def _mult_softmax_over_all_pairs(queries, keys, W, mask=None):
    scores = queries @ W @ keys.mT
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    weights = scores.flatten(1).softmax(-1).view_as(scores)  # one softmax over all L·T pairs
    return weights @ keys, weights


WRONG = [
    ("gru_with_lengths", _gru_stub, "not implemented yet"),
    ("gru_with_lengths", gru_lengths_via_packing, "does not allow"),
    ("gru_with_lengths", lambda *a: (ch03.gru_with_lengths(*a)[0].transpose(0, 1), ch03.gru_with_lengths(*a)[1]),
     "shape"),
    ("gru_with_lengths", _gru_padding_outputs_h0, "not at the padded ones"),
    ("gru_with_lengths", _gru_h_n_from_h0_for_short, "end before T"),
    ("lstm_sequence", lstm_sequence_via_torch, "`nn.LSTM`"),
    ("lstm_sequence", _lstm_with_the_books_cell, "`rnn.lstm_cell`"),
    ("lstm_sequence", _lstm_order_fixed_b_ih_dropped, "already wrong at the first step"),
    ("lstm_sequence", _lstm_h_not_carried, "wrong from step 1 on"),
    ("lstm_sequence", lambda *a: ch03.lstm_sequence(*a)[0], "expected a tuple of 3 values"),
    ("multiplicative_attention", _mult_softmax_over_all_pairs, "do not sum to 1"),
    ("multiplicative_attention", lambda q, k, W, mask=None: ch03.multiplicative_attention(q, k, W, mask)[1],
     "expected a tuple of 2 values"),
    ("multiplicative_attention", lambda q, k, W, mask=None: ch03.multiplicative_attention(q * 2, k, W, mask),
     "the scores themselves are off"),
]


def test_buggy_lstm_sequence_shows_each_bug_only_where_the_notebook_says():
    """The notebook's hunting hints: with b_hh = 0 the bias bug is invisible; the other two already
    show in the outputs of step 0."""
    ex = next(e for e in ch03.EXERCISES if e.name == "lstm_sequence")
    case = ex.cases(torch.Generator().manual_seed(0))[0]
    xs, h0, c0, W_ih, W_hh, b_ih, b_hh = case.args
    want = ch03.lstm_sequence(*case.args)
    for bug, flags in ch03._LSTM_BUG_FLAGS.items():
        got = ch03._lstm_seq_variant(**flags)(*case.args)
        assert not torch.allclose(got[0], want[0]), bug
        if bug != "bias":
            assert not torch.allclose(got[0][:, 0], want[0][:, 0]), bug
        zero = ch03._lstm_seq_variant(**flags)(xs, h0, c0, W_ih, W_hh, b_ih, torch.zeros_like(b_hh))
        same = torch.allclose(zero[0], ch03.lstm_sequence(xs, h0, c0, W_ih, W_hh, b_ih, torch.zeros_like(b_hh))[0])
        assert same == (bug == "bias"), bug


# ----------------------------------------------------------------------------- special grader feedback
def test_prediction_feedback_hides_the_answer():
    r = check("03_sequence_models/predict_parameter_counts", lambda: (1, 2))
    assert not r.passed and "2560" not in r.feedback and "1920" not in r.feedback
