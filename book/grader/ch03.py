"""Graded exercises of chapter 03 — sequence models: references, seeded cases, classic mistakes.

The chapter prints ``lstm_cell``, ``gru_cell`` and ``additive_attention`` line for line, so none of
them is an exercise: these make the learner debug, extend and derive instead — fix a broken LSTM
layer that hoists its input projection out of the loop, run a GRU over a padded batch with the
state frozen after each sequence's end, backpropagate through time by hand, score every decoder
step at once with Luong's multiplicative attention, and predict two parameter counts.

Everything follows PyTorch's conventions (gate order i, f, g, o for the LSTM and r, z, n for the
GRU, weights of shape (out, in)), so the references are checked against ``torch.nn`` in the tests.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from book.attention import softmax
from book.grader.core import Case, Exercise, Mistake, bug_combinations
from book.rnn import gru_cell, lstm_cell, unroll

CHAPTER = "03_sequence_models"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _uniform(gen, H, scale=1.0):
    """U(-1/√H, 1/√H) × scale, like torch.nn's recurrent layers' initialisation."""
    k = H**-0.5
    return lambda *s: (torch.rand(*s, generator=gen) * 2 - 1) * k * scale


def _close(a, b):
    return (isinstance(a, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.detach().cpu().double(), b.detach().cpu().double(), atol=1e-5, rtol=1e-4))


def _tensors(got, n):
    """got as a list of n tensors, or None when it is not one."""
    if not isinstance(got, (tuple, list)) or len(got) != n or not all(isinstance(t, torch.Tensor) for t in got):
        return None
    return list(got)


# ----------------------------------------------------------------------------- 1. find and fix the bugs: an LSTM layer
def lstm_sequence(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
    """An LSTM layer over a batch of sequences (PyTorch's gate order i, f, g, o).

    xs: (B, T, D)   h0, c0: (B, H)   W_ih: (4H, D)   W_hh: (4H, H)   b_ih, b_hh: (4H,)
    returns outputs (B, T, H) — the h of every step — and the final h_T, c_T: (B, H) each
    """
    outputs, (h, c) = unroll(lambda x, s: lstm_cell(x, *s, W_ih, W_hh, b_ih, b_hh), xs, (h0, c0))
    return outputs, h, c


LSTM_BUGS = {  # the three bugs of the notebook's buggy_lstm_sequence
    "order": ("the gates split as i, f, o, g (PyTorch's order is i, f, g, o)",
              "the 4H rows are stacked input, forget, candidate, output: the candidate g is the *third* quarter."),
    "bias": ("the bias b_hh added twice",
             "hoisting W_ih x_t + b_ih + b_hh out of the loop is fine, but then the loop must not add b_hh again: "
             "each bias is added once per step."),
    "stale": ("h computed from the old cell state c",
              "update c first, then h = sigmoid(o) * tanh(c) with the *new* c: the output shows the memory after "
              "this step's write."),
}


def _lstm_seq_variant(order="ifgo", bias="ok", stale=False, collect="h", carry=True, time_major=False,
                      final="ok"):
    """The notebook's function with the given faults (all three LSTM_BUGS: the function as given)."""
    def run(xs, h0, c0, W_ih, W_hh, b_ih, b_hh):
        hoisted = {"ok": b_ih + b_hh, "twice": b_ih + b_hh, "no_hh": b_ih, "no_ih": None}[bias]
        in_loop = b_hh if bias in ("twice", "no_ih") else None
        from_inputs = F.linear(xs, W_ih, hoisted)  # (B, T, 4H)
        h, c, outputs = h0, c0, []
        for t in range(xs.size(1)):
            h_prev, c_prev = (h, c) if carry else (h0, c0)
            parts = dict(zip(order, (from_inputs[:, t] + F.linear(h_prev, W_hh, in_loop)).chunk(4, dim=-1)))
            i, f, g, o = parts["i"], parts["f"], parts["g"], parts["o"]
            c_new = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c_prev if stale else c_new)
            c = c_new
            outputs.append(h if collect == "h" else c)
        out = torch.stack(outputs, dim=0 if time_major else 1)
        if final == "swap":
            return out, c, h
        return out, h, c

    return run


_LSTM_BUG_FLAGS = {"order": {"order": "ifog"}, "bias": {"bias": "twice"}, "stale": {"stale": True}}


def _lstm_bug_mistakes():
    def variant(combo):
        return _lstm_seq_variant(**{k: v for b in combo for k, v in _LSTM_BUG_FLAGS[b].items()})

    return bug_combinations(LSTM_BUGS, variant,
                            ("it runs and every shape is right, but compare it with the chapter's lstm_cell unrolled "
                             "on the same weights: look at how the gates are split, how often each bias is added, "
                             "and which cell state h is made from."))


def _lstm_seq_cases(g):
    def case(name, B, T, D, H, scale=1.0, zero_state=False):
        w = _uniform(g, H, scale)
        xs = _randn(g, B, T, D)
        h0, c0 = (torch.zeros(B, H), torch.zeros(B, H)) if zero_state else (_randn(g, B, H, scale=0.5),
                                                                             _randn(g, B, H))
        return Case(name, (xs, h0, c0, w(4 * H, D), w(4 * H, H), w(4 * H), w(4 * H)))

    return [
        case("B=3, T=5, D=4, H=6", 3, 5, 4, 6),
        case("a single step (T=1), B=2, D=3, H=5", 2, 1, 3, 5),
        case("zero initial states, B=4, T=7, D=5, H=4", 4, 7, 5, 4, zero_state=True),
        case("one long sequence: B=1, T=12, D=2, H=8", 1, 12, 2, 8),
        case("large weights (saturated gates), B=3, T=4, D=5, H=4", 3, 4, 5, 4, scale=10.0),
        case("H=1, B=2, T=6, D=3", 2, 6, 3, 1),
    ]


def _explain_lstm_seq(got, want, *args):
    got = _tensors(got, 3)
    if got is None or got[0].shape != want[0].shape:
        return None
    steps = [_close(got[0][:, t], want[0][:, t]) for t in range(want[0].shape[1])]
    if not steps[0]:
        return ("`outputs` are already wrong at the first step (t = 0): look at one step on its own — how the "
                "gates are split, the biases, the order of the two updates")
    if not all(steps):
        k = steps.index(False)
        return (f"`outputs` are right up to step {k - 1} and wrong from step {k} on: look at what one step "
                "hands to the next (h and c)")
    return ("`outputs` are right at every step, the final state is not: return the h and c of the last step, "
            "in the order h_T, c_T")


LSTM_SEQUENCE = Exercise(
    id=f"{CHAPTER}/lstm_sequence",
    title="Find and fix the bugs: an LSTM layer with its input projection hoisted out of the loop",
    reference=lstm_sequence,
    cases=_lstm_seq_cases,
    output_names=("outputs", "h_T", "c_T"),
    forbidden=("lstm_cell", "unroll", "LSTM", "LSTMCell", "torch.lstm"),
    forbidden_why="fix the given function itself rather than call a finished cell or layer (compare with them "
                  "outside your function)",
    explain=_explain_lstm_seq,
    mistakes=_lstm_bug_mistakes() + [
        Mistake("the bias b_hh left out", _lstm_seq_variant(bias="no_hh"),
                "PyTorch adds both bias vectors at every step, W_ih x_t + b_ih + W_hh h + b_hh: keep b_hh in "
                "exactly one of the two places."),
        Mistake("the bias b_ih left out", _lstm_seq_variant(bias="no_ih"),
                "PyTorch adds both bias vectors at every step, W_ih x_t + b_ih + W_hh h + b_hh."),
        Mistake("the input and forget gates swapped (f, i, g, o)", _lstm_seq_variant(order="figo"),
                "the first quarter of the 4H rows belongs to the input gate i, the second to the forget gate f."),
        Mistake("the gates 'fixed' to TensorFlow's order i, g, f, o (PyTorch's is i, f, g, o)",
                _lstm_seq_variant(order="igfo"),
                "Keras/TensorFlow stack input, candidate, forget, output; PyTorch stacks input, forget, "
                "candidate, output: the forget gate is the second quarter, the candidate the third."),
        Mistake("outputs that collect the cell state c instead of h", _lstm_seq_variant(collect="c"),
                "the layer's output at step t is the hidden state h_t (what nn.LSTM returns); c stays inside."),
        Mistake("the state not carried from step to step (h0 and c0 used at every step)",
                _lstm_seq_variant(carry=False),
                "step t starts from the h and c of step t - 1: assign the new values to the variables the next "
                "step reads."),
        Mistake("outputs stacked time-major, (T, B, H)", _lstm_seq_variant(time_major=True),
                "the batch comes first, as in xs: stack the T states of shape (B, H) with dim=1."),
        Mistake("(c_T, h_T) returned in the wrong order", _lstm_seq_variant(final="swap"),
                "return outputs, then h_T, then c_T — the order of nn.LSTM's (h_n, c_n)."),
    ],
)


# ----------------------------------------------------------------------------- 2. a GRU over a padded batch
def gru_with_lengths(xs, lengths, h0, W_ih, W_hh, b_ih, b_hh):
    """A GRU layer over a padded batch: sequence b has lengths[b] real steps, then padding.

    xs: (B, T, D)   lengths: (B,) integers in 1 … T   h0: (B, H)   W_ih: (3H, D)   W_hh: (3H, H)
    returns outputs (B, T, H) — h at every real step, exactly 0 at padded steps — and h_n (B, H),
    each sequence's state after its own last real step (what nn.GRU gives for a packed batch)
    """
    h, outputs = h0, []
    for t in range(xs.size(1)):
        real = (lengths.to(xs.device) > t)[:, None]  # (B, 1): is step t a real step of sequence b?
        h = torch.where(real, gru_cell(xs[:, t], h, W_ih, W_hh, b_ih, b_hh), h)  # frozen after the end
        outputs.append(torch.where(real, h, torch.zeros_like(h)))
    return torch.stack(outputs, dim=1), h


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
        else:  # "none"
            n = n_act(gx["n"] + gh["n"])
        if not update:
            return n
        return z * n + (1 - z) * h if swap_z else (1 - z) * n + z * h

    return cell


def _gru_len_variant(freeze=True, zero_pad=True, final="state", reach=0, left=False, use_h0=True,
                     cell=gru_cell):
    def run(xs, lengths, h0, W_ih, W_hh, b_ih, b_hh):
        T = xs.size(1)
        h, outputs = (h0 if use_h0 else torch.zeros_like(h0)), []
        for t in range(T):
            real = (T - lengths <= t) if left else (lengths + reach > t)
            real = real[:, None]
            new = cell(xs[:, t], h, W_ih, W_hh, b_ih, b_hh)
            h = torch.where(real, new, h) if freeze else new
            outputs.append(torch.where(real, h, torch.zeros_like(h)) if zero_pad else h)
        out = torch.stack(outputs, dim=1)
        return out, (out[:, -1] if final == "last_column" else h)

    return run


def _gru_len_cases(g):
    def case(name, lengths, T, D, H, scale=1.0, dtype=torch.int64):
        w = _uniform(g, H, scale)
        B = len(lengths)
        return Case(name, (_randn(g, B, T, D), torch.tensor(lengths, dtype=dtype), _randn(g, B, H, scale=0.5),
                           w(3 * H, D), w(3 * H, H), w(3 * H), w(3 * H)))

    return [
        case("B=3, T=5, lengths [5, 2, 4], D=4, H=6", [5, 2, 4], 5, 4, 6),
        case("no padding: lengths [6, 6] = T, D=3, H=5", [6, 6], 6, 3, 5),
        case("a sequence of length 1 among longer ones: lengths [1, 7, 3], T=7", [1, 7, 3], 7, 4, 4),
        case("one sequence shorter than T: lengths [3], T=8", [3], 8, 2, 6),
        case("int32 lengths [2, 6, 6, 1], large weights (saturated gates)", [2, 6, 6, 1], 6, 5, 4, scale=8.0,
             dtype=torch.int32),
        case("H=1, lengths [4, 1], T=4", [4, 1], 4, 3, 1),
    ]


def _explain_gru_len(got, want, xs, lengths, *rest):
    got = _tensors(got, 2)
    if got is None or got[0].shape != want[0].shape:
        return None
    T = xs.shape[1]
    real = (torch.arange(T)[None, :] < lengths.cpu()[:, None])  # (B, T)
    out, w_out = got[0].detach().cpu().double(), want[0].detach().cpu().double()
    wrong = ~torch.isclose(out, w_out, atol=1e-5, rtol=1e-4).all(dim=-1)  # (B, T)
    if (wrong & real).any():
        t = int((wrong & real).any(dim=0).nonzero()[0])
        if t == 0:
            return ("`outputs` are wrong already at the first step of a real sequence: look at the start state "
                    "h0 and the cell itself (gate order r, z, n; r inside on W_hn h + b_hn; (1 - z) * n + z * h)")
        return (f"`outputs` are right at the first real steps but wrong from step {t} on, inside a sequence: "
                "look at which steps count as real (step t is real when t < lengths[b]) and at the state carried")
    if (wrong & ~real).any():
        return "`outputs` are right at every real step but not at the padded ones: they must be exactly 0 there"
    short = lengths.cpu() < T
    bad = ~torch.isclose(got[1].detach().cpu().double(), want[1].detach().cpu().double(),
                         atol=1e-5, rtol=1e-4).all(dim=-1)
    if (bad & short).any() and not (bad & ~short).any():
        return ("`outputs` are right, but `h_n` is wrong for the sequences that end before T: h_n is each "
                "sequence's state after its own last real step")
    return None


GRU_LENGTHS = Exercise(
    id=f"{CHAPTER}/gru_with_lengths",
    title="A GRU over a padded batch: freeze the state after each sequence's end",
    reference=gru_with_lengths,
    cases=_gru_len_cases,
    output_names=("outputs", "h_n"),
    forbidden=("GRU", "torch.gru", "pack_padded_sequence"),
    forbidden_why="write the loop and the masking yourself (gru_cell from the chapter is allowed; compare with "
                  "nn.GRU outside your function)",
    explain=_explain_gru_len,
    mistakes=[
        Mistake("the padding steps run through the cell (the state not frozen after a sequence ends)",
                _gru_len_variant(freeze=False),
                "after its last real step a sequence must not change any more: keep the old h where step t is "
                "padding, torch.where(real, new_h, h), so that h_n is the state after the last *real* step."),
        Mistake("no masking at all (a plain GRU over the padding)", _gru_len_variant(freeze=False, zero_pad=False),
                "step t is padding for sequence b when t >= lengths[b]: there the state must stay as it was and "
                "the output must be 0."),
        Mistake("the padded outputs not zeroed (the frozen state repeated)", _gru_len_variant(zero_pad=False),
                "the state is frozen correctly, but at padded steps the *output* must be exactly 0 (as "
                "pad_packed_sequence gives): torch.where(real, h, 0) for the output only."),
        Mistake("h_n taken at the last time step T − 1 (zeros for a sequence that ended earlier)",
                _gru_len_variant(final="last_column"),
                "outputs[:, -1] is padding for every sequence shorter than T; h_n is the state the loop carried, "
                "frozen after each sequence's own last real step (and never reset to 0)."),
        Mistake("one padding step read (t <= lengths[b])", _gru_len_variant(reach=1),
                "a sequence of length L has the real steps t = 0, 1, …, L - 1: step t is real when t < L."),
        Mistake("each sequence's last real step dropped (t < lengths[b] - 1)", _gru_len_variant(reach=-1),
                "a sequence of length L has the real steps t = 0, 1, …, L - 1: step L - 1 is real too."),
        Mistake("the padding taken to be at the start (left-padded sequences)", _gru_len_variant(left=True),
                "here the padding comes *after* each sequence: the real steps are t = 0 … lengths[b] - 1."),
        Mistake("h0 ignored (the loop starts from zeros)", _gru_len_variant(use_h0=False),
                "start the loop from the given h0."),
        Mistake("z and 1 − z swapped in the cell", _gru_len_variant(cell=_gru_variant(swap_z=True)),
                "PyTorch's update is h_new = (1 - z) * n + z * h; or simply call the chapter's gru_cell."),
        Mistake("the reset gate applied to h before the product (the original paper's GRU)",
                _gru_len_variant(cell=_gru_variant(reset="before")),
                "PyTorch's candidate is n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); or call the chapter's "
                "gru_cell."),
        Mistake("the gates in the order z, r, n (PyTorch's order is r, z, n)",
                _gru_len_variant(cell=_gru_variant(order="zrn")),
                "the 3H rows are stacked r, z, n; or call the chapter's gru_cell."),
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


# ----------------------------------------------------------------------------- 4. multiplicative attention, every step at once
def multiplicative_attention(queries, keys, W, mask=None):
    """Luong's "general" attention for all L decoder steps at once: s_bij = q_biᵀ W k_bj.

    queries: (B, L, d_q)   keys: (B, T, d_k)   W: (d_q, d_k)   mask: optional (B, T) bool, True = real key
    returns context (B, L, d_k) — for each step the weighted average of the keys — and weights (B, L, T)
    """
    scores = queries @ F.linear(keys, W).transpose(-2, -1)  # (B, L, d_q) @ (B, d_q, T) -> (B, L, T)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))  # the same keys hidden from every step
    weights = torch.softmax(scores, dim=-1)  # (B, L, T)
    return weights @ keys, weights  # (B, L, d_k), (B, L, T)


def _mult_variant(transpose_w=False, axis=-1, mask_mode="fill", mask_axis="keys", scale=None, tanh=False,
                  values="keys", naive=False, swap=False):
    def attention(queries, keys, W, mask=None):
        if transpose_w:  # q Wᵀ k: only runs when d_q = d_k
            scores = F.linear(queries, W) @ keys.transpose(-2, -1)
        else:
            scores = queries @ F.linear(keys, W).transpose(-2, -1)
        if scale is not None:
            scores = scores / math.sqrt((keys if scale == "d_k" else queries).shape[-1])
        if tanh:
            scores = torch.tanh(scores)
        m = None
        if mask is not None:
            m = {"keys": mask[:, None, :], "queries": mask[:, :, None], "flat": mask}[mask_axis]
            if mask_mode == "fill":
                scores = scores.masked_fill(~m, float("-inf"))
            elif mask_mode == "inverted":
                scores = scores.masked_fill(m, float("-inf"))
            elif mask_mode == "inverted_big":
                scores = scores.masked_fill(m, -1e9)
            elif mask_mode == "zero":
                scores = scores.masked_fill(~m, 0.0)
        if naive:
            weights = scores.exp() / scores.exp().sum(axis, keepdim=True)
        else:
            weights = torch.softmax(scores, dim=axis)
        if m is not None and mask_mode == "after":
            weights = weights * m
        ctx = weights @ (keys if values == "keys" else F.linear(keys, W))
        return (weights, ctx) if swap else (ctx, weights)

    return attention


def _mult_cases(g):
    def case(name, B, L, T, d_q, d_k, lengths=None, q_scale=1.0):
        mask = None if lengths is None else torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
        return Case(name, (_randn(g, B, L, d_q, scale=q_scale), _randn(g, B, T, d_k),
                           _randn(g, d_q, d_k, scale=(d_q * d_k) ** -0.25), mask))

    return [
        case("B=2, L=4 decoder steps, T=5 keys, d_q = d_k = 6, no mask", 2, 4, 5, 6, 6),
        case("B=4, L=4, T=4, d_q = d_k = 5, a padding mask (4, 4), lengths 4, 2, 3, 1", 4, 4, 4, 5, 5,
             lengths=[4, 2, 3, 1]),
        case("B=2, L=5, T=7, d_q=4, d_k=8, a padding mask (2, 7), lengths 7, 3", 2, 5, 7, 4, 8, lengths=[7, 3]),
        case("one decoder step (L=1), B=3, T=6, d_q=6, d_k=3, lengths 6, 1, 4", 3, 1, 6, 6, 3,
             lengths=[6, 1, 4]),
        case("large scores (queries × 100), B=2, L=3, T=5, d_q = d_k = 4, lengths 5, 2", 2, 3, 5, 4, 4,
             lengths=[5, 2], q_scale=100.0),
        case("a single key (T=1), B=2, L=3, d_q=3, d_k=2", 2, 3, 1, 3, 2),
    ]


def _explain_mult(got, want, queries, keys, W, mask=None):
    got = _tensors(got, 2)
    if got is None or any(a.shape != b.shape for a, b in zip(got, want)):
        return None
    ctx, weights = (t.detach().cpu().double() for t in got)
    if not torch.isfinite(weights).all():
        return None
    if not torch.allclose(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5):
        return "The rows of `weights` do not sum to 1 over the T keys: the softmax goes over the last axis"
    if mask is not None and (weights.abs() * ~mask[:, None, :].cpu()).amax() > 1e-6:
        return ("`weights` put weight on padded keys (mask False): every decoder step must give them exactly 0 — "
                "the (B, T) mask hides the same keys from all L steps")
    if _close(got[1], want[1]):
        return "`weights` are right but `context` is not: for each step it is the weighted average of the keys"
    return ("`weights` sum to 1 and skip the padding, so the scores themselves are off: "
            "s_bij = q_biᵀ W k_bj with W of shape (d_q, d_k) — no scale, no tanh")


MULTIPLICATIVE = Exercise(
    id=f"{CHAPTER}/multiplicative_attention",
    title="Multiplicative (Luong) attention for every decoder step at once",
    reference=multiplicative_attention,
    cases=_mult_cases,
    output_names=("context", "weights"),
    nan_hint="a large score overflows exp(): use torch.softmax (it subtracts the row maximum); a row whose "
             "mask allows no key also gives 0/0",
    explain=_explain_mult,
    mistakes=[
        Mistake("W applied the other way round (q Wᵀ k)", _mult_variant(transpose_w=True),
                "W has shape (d_q, d_k): it maps a key into the query's space, W k_j (F.linear(keys, W)), or "
                "equivalently q_i W on the query's side — not F.linear(queries, W)."),
        Mistake("the softmax over the decoder steps (dim=1) instead of the keys", _mult_variant(axis=1),
                "each decoder step's weights over the T keys must sum to 1: softmax over the last axis."),
        Mistake("the softmax over the batch axis (dim=0)", _mult_variant(axis=0),
                "each decoder step's weights over its T keys must sum to 1: softmax over the last axis."),
        Mistake("the mask ignored", _mult_variant(mask_mode="ignore"),
                "where the mask is False the key is padding: its score becomes -inf before the softmax."),
        Mistake("an inverted mask (True treated as 'blocked')", _mult_variant(mask_mode="inverted"),
                "in this book True means a real key that may be attended: fill where the mask is False (~mask)."),
        Mistake("an inverted mask (True treated as 'blocked') filled with a large negative number",
                _mult_variant(mask_mode="inverted_big"),
                "True means a real key: fill where the mask is False (~mask). A finite fill such as -1e9 hides "
                "the mistake — no NaN — but the weight sits on the padding."),
        Mistake("the mask put on the decoder-step axis (mask[:, :, None])", _mult_variant(mask_axis="queries"),
                "the (B, T) mask marks *keys*: it must broadcast over the L decoder steps, mask[:, None, :] "
                "against scores (B, L, T)."),
        Mistake("the (B, T) mask used as it is against (B, L, T) scores (broadcast as (1, B, T))",
                _mult_variant(mask_axis="flat"),
                "broadcasting lines up the *last* axes, so a (B, T) mask reads as (1, B, T): insert the "
                "decoder-step axis, mask[:, None, :] (B, 1, T)."),
        Mistake("masking with 0 instead of -inf", _mult_variant(mask_mode="zero"),
                "a score of 0 still gets weight exp(0) > 0: use float('-inf') so padding gets weight exactly 0."),
        Mistake("the mask applied after the softmax", _mult_variant(mask_mode="after"),
                "zeroing weights after the softmax leaves rows that no longer sum to 1: mask the scores before it."),
        Mistake("a 1/√d_k scale (chapter 04's dot product, not Luong's general score)", _mult_variant(scale="d_k"),
                "Luong's general score is q_iᵀ W k_j with no scale: a learned W can set its own size."),
        Mistake("a 1/√d_q scale (chapter 04's dot product, not Luong's general score)", _mult_variant(scale="d_q"),
                "Luong's general score is q_iᵀ W k_j with no scale: a learned W can set its own size."),
        Mistake("a tanh around the score (mixing in additive attention)", _mult_variant(tanh=True),
                "the multiplicative score is the bilinear form q_iᵀ W k_j itself; the tanh belongs to the "
                "additive score's hidden layer."),
        Mistake("the context averaged from the projected keys W k_j instead of the keys",
                _mult_variant(values="projected"),
                "W only serves the score: the context is the weighted average of the keys themselves, "
                "weights @ keys (B, L, d_k)."),
        Mistake("the naive softmax exp(s) / sum(exp(s))", _mult_variant(naive=True),
                "big scores overflow exp(): subtract the row maximum first, or use torch.softmax."),
        Mistake("(weights, context) returned in the wrong order", _mult_variant(swap=True),
                "return the context first, then the weights."),
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

EXERCISES = [LSTM_SEQUENCE, GRU_LENGTHS, BPTT, MULTIPLICATIVE, PREDICT_PARAMS]
