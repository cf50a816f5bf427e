"""Graded exercises of chapter 03 — sequence models: references, seeded cases, classic mistakes.

The cells follow PyTorch's conventions (gate order i, f, g, o for the LSTM and r, z, n for the GRU,
weights of shape (out, in)), so the references are checked against ``torch.nn`` in the tests.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from book.attention import softmax
from book.grader.core import Case, Exercise, Mistake
from book.rnn import additive_attention, gru_cell, lstm_cell

CHAPTER = "03_sequence_models"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _cell_args(g, lead, D, H, gates, scale=1.0):
    """x (*lead, D), h (*lead, H) [, c], W_ih (gH, D), W_hh (gH, H), b_ih, b_hh (gH,), like nn.*Cell's init."""
    k = H**-0.5
    w = lambda *s: (torch.rand(*s, generator=g) * 2 - 1) * k * scale  # noqa: E731  U(-1/√H, 1/√H), like torch
    return _randn(g, *lead, D), _randn(g, *lead, H), w(gates * H, D), w(gates * H, H), w(gates * H), w(gates * H)


# ----------------------------------------------------------------------------- 1. LSTM cell
def _lstm_cases(g):
    def case(name, lead, D, H, scale=1.0):
        x, h, W_ih, W_hh, b_ih, b_hh = _cell_args(g, lead, D, H, 4, scale)
        c = _randn(g, *lead, H)
        return Case(name, (x, h, c, W_ih, W_hh, b_ih, b_hh))

    return [
        case("a batch of 3, D=5, H=4", (3,), 5, 4),
        case("a batch of 8, D=6, H=16", (8,), 6, 16),
        case("a single unbatched step, x (D,) and h, c (H,)", (), 3, 5),
        case("two leading batch dims (2, 3, D)", (2, 3), 4, 6),
        case("large weights (saturated gates)", (4,), 5, 4, scale=20.0),
        case("H=1", (2,), 3, 1),
    ]


def _lstm_variant(order="ifgo", g_act=torch.tanh, cell_tanh=True, old_c=False, bias_hh=True, swap=False,
                  gate_sigmoid=True, o_sigmoid=True):
    def cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
        gates = F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh if bias_hh else None)
        parts = dict(zip(order, gates.chunk(4, dim=-1)))
        i, f, gg, o = parts["i"], parts["f"], parts["g"], parts["o"]
        gate = torch.sigmoid if gate_sigmoid else (lambda t: t)
        c_new = gate(f) * c + gate(i) * g_act(gg)
        shown = c if old_c else c_new
        h_new = (torch.sigmoid(o) if o_sigmoid else o) * (torch.tanh(shown) if cell_tanh else shown)
        return (c_new, h_new) if swap else (h_new, c_new)

    return cell


LSTM_CELL = Exercise(
    id=f"{CHAPTER}/lstm_cell",
    title="An LSTM cell with PyTorch's gate order",
    reference=lstm_cell,
    cases=_lstm_cases,
    output_names=("h_new", "c_new"),
    mistakes=[
        Mistake("the gates in the order i, f, o, g (PyTorch's order is i, f, g, o)", _lstm_variant(order="ifog"),
                "split the 4H pre-activations with .chunk(4, dim=-1) into i, f, g, o — the candidate g is third."),
        Mistake("the input and forget gates swapped (f, i, g, o)", _lstm_variant(order="figo"),
                "the first quarter of the rows belongs to the input gate i, the second to the forget gate f."),
        Mistake("sigmoid and tanh swapped for the candidate g", _lstm_variant(g_act=torch.sigmoid),
                "i, f and o are gates (sigmoid, between 0 and 1); the candidate g is a value (tanh, between -1 and 1)."),
        Mistake("h_new without the tanh of the cell state", _lstm_variant(cell_tanh=False),
                "h_new = sigmoid(o) * tanh(c_new): the memory is squashed before it is shown."),
        Mistake("h_new computed from the old cell state c", _lstm_variant(old_c=True),
                "compute c_new first, then h_new = sigmoid(o) * tanh(c_new)."),
        Mistake("the bias b_hh left out", _lstm_variant(bias_hh=False),
                "PyTorch has two bias vectors and adds both: W_ih x + b_ih + W_hh h + b_hh."),
        Mistake("(c_new, h_new) returned in the wrong order", _lstm_variant(swap=True),
                "return h_new first, then c_new — the order of nn.LSTMCell's (h, c)."),
        Mistake("the input and forget gates used without their sigmoid", _lstm_variant(gate_sigmoid=False),
                "i and f are gates: squash them with torch.sigmoid into (0, 1) before they scale anything."),
        Mistake("the output gate used without its sigmoid", _lstm_variant(o_sigmoid=False),
                "h_new = sigmoid(o) * tanh(c_new): o is a gate too."),
        Mistake("TensorFlow's gate order i, g, f, o (PyTorch's is i, f, g, o)", _lstm_variant(order="igfo"),
                "Keras/TensorFlow stack input, candidate, forget, output; PyTorch stacks input, forget, candidate, "
                "output: the candidate is the third quarter."),
        Mistake("the candidate g used without its tanh", _lstm_variant(g_act=lambda t: t),
                "the candidate is a value in (-1, 1): torch.tanh(g) goes into the cell state."),
    ],
)


# ----------------------------------------------------------------------------- 2. GRU cell
def _gru_cases(g):
    def case(name, lead, D, H, scale=1.0):
        return Case(name, _cell_args(g, lead, D, H, 3, scale))

    return [
        case("a batch of 3, D=5, H=4", (3,), 5, 4),
        case("a batch of 8, D=6, H=16", (8,), 6, 16),
        case("a single unbatched step, x (D,) and h (H,)", (), 3, 5),
        case("two leading batch dims (2, 3, D)", (2, 3), 4, 6),
        case("large weights (saturated gates)", (4,), 5, 4, scale=20.0),
    ]


def _gru_variant(order="rzn", reset="torch", n_act=torch.tanh, swap_z=False, z_act=torch.sigmoid, update=True):
    def cell(x, h, W_ih, W_hh, b_ih, b_hh):
        gx = dict(zip(order, F.linear(x, W_ih, b_ih).chunk(3, dim=-1)))
        gh = dict(zip(order, F.linear(h, W_hh, b_hh).chunk(3, dim=-1)))
        r = torch.sigmoid(gx["r"] + gh["r"])
        z = z_act(gx["z"] + gh["z"])
        W_hn, b_hn = W_hh.chunk(3, dim=0)[order.index("n")], b_hh.chunk(3)[order.index("n")]
        if reset == "torch":
            n = n_act(gx["n"] + r * gh["n"])
        elif reset == "before":  # the original paper / Keras reset_after=False
            n = n_act(gx["n"] + F.linear(r * h, W_hn, b_hn))
        elif reset == "no_bias":
            n = n_act(gx["n"] + r * F.linear(h, W_hn) + b_hn)
        elif reset == "outside":
            n = n_act(r * (gx["n"] + gh["n"]))
        elif reset == "input":
            n = n_act(r * gx["n"] + gh["n"])
        else:  # "none"
            n = n_act(gx["n"] + gh["n"])
        if not update:
            return n
        return z * n + (1 - z) * h if swap_z else (1 - z) * n + z * h

    return cell


GRU_CELL = Exercise(
    id=f"{CHAPTER}/gru_cell",
    title="A GRU cell with PyTorch's gate order",
    reference=gru_cell,
    cases=_gru_cases,
    mistakes=[
        Mistake("z and 1 − z swapped", _gru_variant(swap_z=True),
                "PyTorch's update is h_new = (1 - z) * n + z * h: z is the share of the *old* state that is kept."),
        Mistake("the gates in the order z, r, n (PyTorch's order is r, z, n)", _gru_variant(order="zrn"),
                "split the 3H rows with .chunk(3, dim=-1) into r, z, n — the reset gate comes first."),
        Mistake("the reset gate applied to h before the matrix product (the original paper's variant)",
                _gru_variant(reset="before"),
                "PyTorch applies r *after* the product: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))."),
        Mistake("the reset gate applied outside the hidden-state product, missing its bias b_hn",
                _gru_variant(reset="no_bias"),
                "r multiplies the whole hidden-state term, bias included: r * (W_hn h + b_hn)."),
        Mistake("the reset gate applied to the whole pre-activation", _gru_variant(reset="outside"),
                "r multiplies only the hidden-state term (W_hn h + b_hn), not the input term W_in x + b_in."),
        Mistake("no reset gate in the candidate", _gru_variant(reset="none"),
                "the candidate is n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): r must scale the hidden part."),
        Mistake("sigmoid and tanh swapped for the candidate n", _gru_variant(n_act=torch.sigmoid),
                "r and z are gates (sigmoid); the candidate n is a value in (-1, 1): tanh."),
        Mistake("the reset gate applied to the input part of the candidate", _gru_variant(reset="input"),
                "r decides how much of the *old state* the candidate sees: it multiplies W_hn h + b_hn, not W_in x + b_in."),
        Mistake("h_new = n (the update gate z not used)", _gru_variant(update=False),
                "the new state mixes the candidate and the old state: (1 - z) * n + z * h."),
        Mistake("tanh instead of sigmoid for the update gate z", _gru_variant(z_act=torch.tanh),
                "z is a gate, a share between 0 and 1: torch.sigmoid."),
    ],
)


# ----------------------------------------------------------------------------- 3. backprop through time by hand
def rnn_input_jacobians(xs, h0, W_ih, W_hh, b_ih, b_hh):
    """J[t] = ∂h_T/∂x_t for a plain RNN, by the backward recursion of backprop through time.

    xs: (T, D) one sequence   h0: (H,)   returns (T, H, D)
    """
    hs, h = [], h0
    for x in xs:  # forward: keep every state
        h = torch.tanh(W_ih @ x + b_ih + W_hh @ h + b_hh)
        hs.append(h)
    G = torch.eye(h0.numel(), dtype=xs.dtype, device=xs.device)  # ∂h_T/∂h_T
    jacobians = []
    for t in reversed(range(len(hs))):
        A = G * (1 - hs[t] ** 2)  # G @ diag(tanh'(a_t)) = ∂h_T/∂a_t
        jacobians.append(A @ W_ih)  # ∂h_T/∂x_t
        G = A @ W_hh  # ∂h_T/∂h_{t-1}
    return torch.stack(jacobians[::-1])  # (T, H, D)


def _bptt_variant(deriv="tanh", w_hh="plain", order="left", flip=False, carry=True, early=False):
    def jac(xs, h0, W_ih, W_hh, b_ih, b_hh):
        hs, pre, h = [h0], [None], h0
        for x in xs:
            a = W_ih @ x + b_ih + W_hh @ h + b_hh
            h = torch.tanh(a)
            hs.append(h)
            pre.append(a)
        G = torch.eye(h0.numel(), dtype=xs.dtype)
        W = W_hh.T if w_hh == "transposed" else W_hh
        out = []
        for t in reversed(range(len(xs))):
            h_t = hs[t] if deriv == "previous" else hs[-1] if deriv == "last" else hs[t + 1]
            d = {"tanh": 1 - h_t**2, "previous": 1 - h_t**2, "last": 1 - h_t**2, "none": torch.ones_like(h_t),
                 "linear": 1 - h_t, "pre": 1 - pre[t + 1] ** 2}[deriv]
            D = torch.diag(d)
            if early:  # G moved one step further back before J[t] branches off: one W_hh too many
                G = G @ D @ W
                out.append(G @ W_ih)
                continue
            out.append(G @ D @ W_ih)
            if carry:
                G = G @ D @ W if order == "left" else D @ W @ G
        out = out if flip else out[::-1]
        return torch.stack(out)

    return jac


def _bptt_cases(g):
    def case(name, T, D, H, scale=1.0):
        k = H**-0.5
        w = lambda *s: (torch.rand(*s, generator=g) * 2 - 1) * k * scale  # noqa: E731
        return Case(name, (_randn(g, T, D), _randn(g, H) * 0.5, w(H, D), w(H, H), w(H), w(H)))

    return [
        case("T=5 steps, D=3, H=4", 5, 3, 4),
        case("T=1 (a single step)", 1, 3, 4),
        case("T=12 steps, D=4, H=6, larger weights", 12, 4, 6, scale=2.5),
        case("T=8 steps, D=5, H=3", 8, 5, 3, scale=1.5),
    ]


BPTT = Exercise(
    id=f"{CHAPTER}/rnn_input_jacobians",
    title="Backprop through time by hand",
    reference=rnn_input_jacobians,
    cases=_bptt_cases,
    atol=1e-5,
    rtol=1e-4,
    mistakes=[
        Mistake("the tanh derivative left out", _bptt_variant(deriv="none"),
                "each step passes through tanh, whose derivative is 1 - h_t² at the new state h_t: a diag(1 - h_t²) factor per step."),
        Mistake("1 - h instead of 1 - h² for the derivative of tanh", _bptt_variant(deriv="linear"),
                "d tanh(a)/da = 1 - tanh(a)² = 1 - h_t²."),
        Mistake("the tanh derivative taken at the previous state h_{t-1}", _bptt_variant(deriv="previous"),
                "step t computes h_t = tanh(a_t); its derivative uses h_t, the state that step produced."),
        Mistake("W_hh transposed in the chain", _bptt_variant(w_hh="transposed"),
                "∂h_t/∂h_{t-1} = diag(1 - h_t²) W_hh with W_hh as it is (shape (H, H), out × in)."),
        Mistake("the Jacobians multiplied in the wrong order", _bptt_variant(order="right"),
                "matrices don't commute: going back in time, multiply the new factor on the right, G ← G · diag(1 - h_t²) · W_hh."),
        Mistake("the Jacobians returned in reverse time order", _bptt_variant(flip=True),
                "row t of the result must be ∂h_T/∂x_t: the last one, t = T-1, is diag(1 - h_T²) W_ih."),
        Mistake("the running product G not carried back (every J[t] as if t were the last step)",
                _bptt_variant(carry=False),
                "after J[t], move G one step further back: G ← G · diag(1 - h_t²) · W_hh, so that earlier inputs "
                "pass through every later step."),
        Mistake("G moved back before J[t] branches off (one W_hh too many)", _bptt_variant(early=True),
                "at step t, J[t] = G · diag(1 - h_t²) · W_ih with the G of *this* step; update G afterwards."),
        Mistake("1 − a² with the pre-activation a instead of 1 − h² (1 − tanh(a)²)", _bptt_variant(deriv="pre"),
                "d tanh(a)/da = 1 - tanh(a)², and tanh(a_t) is the state h_t: use 1 - h_t²."),
        Mistake("the last state's derivative used at every step", _bptt_variant(deriv="last"),
                "each step has its own tanh: step t uses 1 - h_t², the state that step produced."),
    ],
)


# ----------------------------------------------------------------------------- 4. additive attention
def _additive_cases(g):
    def case(name, B, T, d_q, d_k, d_a, mask=None, v_scale=1.0):
        return Case(name, (_randn(g, B, d_q), _randn(g, B, T, d_k), _randn(g, d_a, d_q, scale=d_q**-0.5),
                           _randn(g, d_a, d_k, scale=d_k**-0.5), _randn(g, d_a, scale=v_scale), mask))

    pad = torch.arange(6)[None, :] < torch.tensor([6, 3, 1, 4])[:, None]  # (4, 6): lengths 6, 3, 1, 4
    return [
        case("B=2, T=5, d_q=4, d_k=6, d_a=3", 2, 5, 4, 6, 3),
        case("B=3, T=7, d_q=8, d_k=5, d_a=10", 3, 7, 8, 5, 10),
        case("a single key (T=1)", 2, 1, 4, 6, 3),
        case("a padding mask of shape (4, 6), lengths 6, 3, 1, 4", 4, 6, 5, 7, 4, mask=pad),
        case("large scores (v scaled by 1000)", 3, 5, 4, 6, 3, v_scale=1000.0),
    ]


def _additive_variant(tanh=True, axis=-1, mask_mode="fill", naive=False, swap=False):
    def attention(query, keys, W_q, W_k, v, mask=None):
        pre = F.linear(query, W_q)[:, None, :] + F.linear(keys, W_k)
        scores = torch.tanh(pre @ v) if tanh == "after" else (torch.tanh(pre) if tanh else pre) @ v
        if mask is not None and mask_mode == "fill":
            scores = scores.masked_fill(~mask, float("-inf"))
        if mask is not None and mask_mode == "inverted":
            scores = scores.masked_fill(mask, float("-inf"))
        if mask is not None and mask_mode == "inverted_big":
            scores = scores.masked_fill(mask, -1e9)
        if mask is not None and mask_mode == "zero":
            scores = scores.masked_fill(~mask, 0.0)
        weights = scores.exp() / scores.exp().sum(axis, keepdim=True) if naive else softmax(scores, dim=axis)
        if mask is not None and mask_mode == "after":
            weights = weights * mask
        context = (weights[:, :, None] * keys).sum(1)
        return (weights, context) if swap else (context, weights)

    return attention


ADDITIVE = Exercise(
    id=f"{CHAPTER}/additive_attention",
    title="Additive (Bahdanau) attention",
    reference=additive_attention,
    cases=_additive_cases,
    output_names=("context", "weights"),
    nan_hint="a large score overflows exp(); subtract the row maximum first or use torch.softmax",
    mistakes=[
        Mistake("the tanh left out (scores vᵀ(W_q q + W_k k_j))", _additive_variant(tanh=False),
                "score_j = vᵀ tanh(W_q q + W_k k_j). Without tanh the query adds the same number to every "
                "score, so it cannot change the weights at all."),
        Mistake("the softmax over the batch axis", _additive_variant(axis=0),
                "each query's weights over its T keys must sum to 1: softmax over the last axis (dim=-1)."),
        Mistake("the mask ignored", _additive_variant(mask_mode="ignore"),
                "where mask is False, set the score to -inf before the softmax."),
        Mistake("an inverted mask (True treated as 'blocked')", _additive_variant(mask_mode="inverted"),
                "in this book True means 'may attend': fill the scores where the mask is False (~mask)."),
        Mistake("the naive softmax exp(s) / sum(exp(s))", _additive_variant(naive=True),
                "big scores overflow exp(); subtract the row max first, or use torch.softmax."),
        Mistake("(weights, context) returned in the wrong order", _additive_variant(swap=True),
                "return the context first, then the weights."),
        Mistake("an inverted mask (True treated as 'blocked') filled with a large negative number",
                _additive_variant(mask_mode="inverted_big"),
                "True means 'may attend': fill where the mask is False (~mask). A finite fill such as -1e9 gives no "
                "NaN, so the mistake only shows in the values: the weight sits on the padding."),
        Mistake("masking with 0 instead of -inf", _additive_variant(mask_mode="zero"),
                "a score of 0 still gets weight exp(0) > 0; use float('-inf') so padding gets weight exactly 0."),
        Mistake("the mask applied after the softmax", _additive_variant(mask_mode="after"),
                "zeroing weights after the softmax leaves rows that no longer sum to 1; mask the *scores* with -inf "
                "before it."),
        Mistake("the tanh applied after v (tanh(vᵀ(W_q q + W_k k)))", _additive_variant(tanh="after"),
                "the tanh is the hidden layer, inside: score_j = vᵀ tanh(W_q q + W_k k_j)."),
    ],
)


# ----------------------------------------------------------------------------- 5. predict before you compute
def predict_parameter_counts():
    """Trainable parameters of nn.LSTM(10, 20) and nn.GRU(10, 20), one layer each."""
    return tuple(sum(p.numel() for p in m(10, 20).parameters()) for m in (nn.LSTM, nn.GRU))


PREDICT_PARAMS = Exercise(
    id=f"{CHAPTER}/predict_parameter_counts",
    title="Predict the parameter counts",
    reference=predict_parameter_counts,
    cases=lambda g: [Case("your prediction", ())],
    kind="prediction",
    mistakes=[
        Mistake("counts without the biases", lambda: (2400, 1800),
                "each gate also has biases: PyTorch keeps two vectors, b_ih and b_hh, of 4H (LSTM) or 3H (GRU) each."),
        Mistake("counts with one bias vector instead of two", lambda: (2480, 1860),
                "PyTorch keeps two bias vectors, b_ih and b_hh, and counts both (in the GRU, b_hh's b_hn sits "
                "inside r * (W_hn h + b_hn), so it is not redundant there)."),
        Mistake("counts without the recurrent weights W_hh", lambda: (960, 720),
                "the gates read the previous state too: W_hh has shape (4H, H) for the LSTM, (3H, H) for the GRU."),
        Mistake("the LSTM and GRU counts swapped", lambda: (1920, 2560),
                "the LSTM has four blocks of rows (i, f, g, o), the GRU three (r, z, n): the LSTM is bigger."),
        Mistake("counts for a single gate", lambda: (640, 640),
                "every gate has its own rows in W_ih, W_hh and the biases: multiply by 4 (LSTM) or 3 (GRU)."),
        Mistake("a GRU with two blocks of rows (the candidate n forgotten)", lambda: (2560, 1280),
                "the GRU has three blocks: the gates r and z *and* the candidate n, each with its own rows."),
        Mistake("W_hh sized like W_ih (rows × input_size)", lambda: (1760, 1320),
                "W_hh multiplies the hidden state: it is (4H, H) for the LSTM, (3H, H) for the GRU, with H = 20."),
        Mistake("a single gate without biases", lambda: (600, 600),
                "count every gate (4 for the LSTM, 3 for the GRU), each with W_ih, W_hh rows and two biases."),
    ],
)

EXERCISES = [LSTM_CELL, GRU_CELL, BPTT, ADDITIVE, PREDICT_PARAMS]
