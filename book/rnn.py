"""Recurrent cells, backprop through time and additive attention — taught in chapter 03.

Weights follow PyTorch's own conventions, so every function here can be checked against
``torch.nn`` with copied weights: a linear map is ``F.linear(x, W, b) = x Wᵀ + b`` with ``W`` of
shape (out, in); an LSTM stacks its four gates in the order i, f, g, o (``W_ih`` is (4H, D)), a
GRU its three in the order r, z, n (``W_ih`` is (3H, D)).

The chapter's small generated task lives here too: reverse a sequence of digits
(``reverse_digits``), learned by a GRU encoder–decoder (``Seq2Seq``) with or without attention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from book.attention import softmax
from book.training import History, train, warmup_cosine


# ----------------------------------------------------------------------------- the three cells
def rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    """One step of a plain (Elman) RNN: h_new = tanh(W_ih x + b_ih + W_hh h + b_hh).

    x: (B, D)   h: (B, H)   W_ih: (H, D)   W_hh: (H, H)   b_ih, b_hh: (H,)   returns (B, H)
    """
    return torch.tanh(F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh))  # (B, H)


def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
    """One LSTM step with PyTorch's gate order i, f, g, o.

    x: (B, D)   h, c: (B, H)   W_ih: (4H, D)   W_hh: (4H, H)   b_ih, b_hh: (4H,)
    returns h_new, c_new: (B, H) each
    """
    gates = F.linear(x, W_ih, b_ih) + F.linear(h, W_hh, b_hh)  # (B, 4H): all four gates at once
    i, f, g, o = gates.chunk(4, dim=-1)  # (B, H) each: input, forget, candidate, output
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # keep some memory, write some
    h_new = torch.sigmoid(o) * torch.tanh(c_new)  # show some of the memory
    return h_new, c_new


def gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    """One GRU step with PyTorch's gate order r, z, n.

    x: (B, D)   h: (B, H)   W_ih: (3H, D)   W_hh: (3H, H)   b_ih, b_hh: (3H,)   returns (B, H)
    """
    x_r, x_z, x_n = F.linear(x, W_ih, b_ih).chunk(3, dim=-1)  # (B, H) each: the input's share
    h_r, h_z, h_n = F.linear(h, W_hh, b_hh).chunk(3, dim=-1)  # (B, H) each: the state's share
    r = torch.sigmoid(x_r + h_r)  # reset gate: how much of the old state the candidate may use
    z = torch.sigmoid(x_z + h_z)  # update gate: how much of the old state to keep
    n = torch.tanh(x_n + r * h_n)  # candidate; r multiplies the state's term *including* its bias
    return (1 - z) * n + z * h  # (B, H)


def unroll(cell: Callable, xs: torch.Tensor, state):
    """Run a cell along a sequence, one step after another.

    cell(x_t, state) -> new state, where state is h (B, H) or a tuple (h, c) whose first entry is h.
    xs: (B, T, D). returns outputs (B, T, H) — the h of every step — and the final state.
    """
    outputs = []
    for t in range(xs.size(1)):  # step t needs the state of step t - 1: no parallelism over time
        state = cell(xs[:, t], state)
        outputs.append(state[0] if isinstance(state, tuple) else state)  # (B, H)
    return torch.stack(outputs, dim=1), state  # (B, T, H), final state


# ----------------------------------------------------------------------------- backprop through time
def jacobian_norms(f: Callable, xs: torch.Tensor) -> torch.Tensor:
    """‖∂f(xs)[b] / ∂xs[b, t]‖ (Frobenius norm) for every sequence b and step t, by autograd.

    f maps xs (B, T, D) to a vector per sequence, (B, H), each sequence on its own (as an RNN does).
    returns (B, T). Backprop through the unrolled loop *is* backprop through time.
    """
    xs = xs.detach().requires_grad_()
    out = f(xs)  # (B, H)
    squares = torch.zeros(xs.shape[:2], device=xs.device)  # (B, T)
    for k in range(out.size(-1)):  # one backward pass per output unit k gives row k of every Jacobian
        (row,) = torch.autograd.grad(out[:, k].sum(), xs, retain_graph=True)  # (B, T, D): ∂out[b, k] / ∂xs[b, t]
        squares += row.pow(2).sum(dim=-1)  # (B, T)
    return squares.sqrt()  # (B, T)


# ----------------------------------------------------------------------------- additive attention
def additive_attention(query, keys, W_q, W_k, v, mask=None):
    """Additive (Bahdanau) attention: score_j = vᵀ tanh(W_q q + W_k k_j), weights = softmax(scores).

    query: (B, d_q)   keys: (B, T, d_k)   W_q: (d_a, d_q)   W_k: (d_a, d_k)   v: (d_a,)
    mask: optional (B, T) bool, True = may attend.
    returns context (B, d_k) — the weighted average of the keys — and weights (B, T)
    """
    hidden = torch.tanh(F.linear(query, W_q)[:, None, :] + F.linear(keys, W_k))  # (B, T, d_a)
    scores = hidden @ v  # (B, T): one score per key
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # padding gets weight exactly 0
    weights = softmax(scores, dim=-1)  # (B, T), each row sums to 1
    context = (weights[:, None, :] @ keys).squeeze(1)  # (B, 1, T) @ (B, T, d_k) -> (B, d_k)
    return context, weights


# ----------------------------------------------------------------------------- the generated task
def reverse_digits(batch_size: int, length: int, generator: torch.Generator | None = None, device=None):
    """A batch of the chapter's task: random digits 0–9 and the same digits in reverse order.

    returns src, tgt: (batch_size, length) int64 each, tgt[:, i] = src[:, length - 1 - i]
    """
    if batch_size < 1 or length < 1:
        raise ValueError(f"need batch_size >= 1 and length >= 1, got {batch_size} and {length}")
    src = torch.randint(0, 10, (batch_size, length), generator=generator)  # (B, T), on the CPU
    src = src.to(device) if device is not None else src
    return src, src.flip(1)  # (B, T), (B, T)


@dataclass
class Seq2SeqConfig:
    """A GRU encoder–decoder for digit sequences; attention=False makes the context one fixed vector."""

    attention: bool = True
    vocab: int = 10  # the digits 0–9; the decoder's input vocabulary adds BOS = vocab
    d_emb: int = 32
    hidden: int = 64  # each encoder direction, and the decoder
    d_attn: int = 64  # d_a, the size of additive attention's hidden layer


class Seq2Seq(nn.Module):
    """Encoder: a bidirectional GRU reads all the digits. Decoder: a GRU cell writes the output one
    digit at a time, reading a context vector at each step — the encoder's final states (no
    attention: the same vector every step) or an additive-attention average of all its states."""

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        self.cfg, self.bos = cfg, cfg.vocab
        E, H, A = cfg.d_emb, cfg.hidden, cfg.d_attn
        self.src_emb = nn.Embedding(cfg.vocab, E)
        self.tgt_emb = nn.Embedding(cfg.vocab + 1, E)  # + BOS, the "start writing" token
        self.encoder = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.init_state = nn.Linear(2 * H, H)
        self.decoder = nn.GRUCell(E + 2 * H, H)
        self.W_q = nn.Parameter(torch.randn(A, H) / H**0.5)  # (d_a, d_q)
        self.W_k = nn.Parameter(torch.randn(A, 2 * H) / (2 * H) ** 0.5)  # (d_a, d_k)
        self.v = nn.Parameter(torch.randn(A) / A**0.5)  # (d_a,)
        self.out = nn.Linear(H + 2 * H, cfg.vocab)

    def encode(self, src):
        """src (B, T) digits -> keys (B, T, 2H), one per input digit, and summary (B, 2H)."""
        keys, last = self.encoder(self.src_emb(src))  # (B, T, 2H), (2, B, H)
        summary = torch.cat([last[0], last[1]], dim=-1)  # (B, 2H): each direction's final state
        return keys, summary

    def step(self, y_prev, h, context, keys, summary):
        """One decoder step: read the previous digit (B,) and context (B, 2H) into the state (B, H),
        then fetch this step's context. Returns logits (B, V), state, context and weights (B, T) or None."""
        h = self.decoder(torch.cat([self.tgt_emb(y_prev), context], dim=-1), h)  # (B, H)
        if self.cfg.attention:
            context, weights = additive_attention(h, keys, self.W_q, self.W_k, self.v)  # (B, 2H), (B, T)
        else:
            context, weights = summary, None  # the same fixed-size vector at every step
        return self.out(torch.cat([h, context], dim=-1)), h, context, weights

    def forward(self, src, tgt=None, length=None):
        """Write `length` digits (default: len(tgt), else T). With tgt, the decoder reads the true
        previous digit (teacher forcing); without, its own best guess (greedy decoding).
        returns logits (B, L, V) and attention weights (B, L, T), or None without attention."""
        keys, summary = self.encode(src)  # (B, T, 2H), (B, 2H)
        h, context = torch.tanh(self.init_state(summary)), summary  # (B, H), (B, 2H)
        L = length or (tgt.size(1) if tgt is not None else src.size(1))
        y = torch.full((src.size(0),), self.bos, dtype=torch.long, device=src.device)  # (B,)
        logits, weights = [], []
        for t in range(L):
            step_logits, h, context, w = self.step(y, h, context, keys, summary)
            logits.append(step_logits)
            weights.append(w)
            y = tgt[:, t] if tgt is not None else step_logits.argmax(-1)  # (B,)
        return torch.stack(logits, dim=1), (torch.stack(weights, dim=1) if self.cfg.attention else None)


def digit_batches(batch_size: int, lengths=(4, 20), seed: int = 0):
    """An endless, seeded stream of reverse_digits batches, each of one random length in `lengths`."""
    if lengths[0] < 1 or lengths[1] < lengths[0]:
        raise ValueError(f"need 1 <= lengths[0] <= lengths[1], got {lengths}")
    gen = torch.Generator().manual_seed(seed)
    while True:
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=gen))
        yield reverse_digits(batch_size, length, gen)  # (B, T), (B, T) on the CPU


def seq2seq_loss(model: Seq2Seq, batch):
    """Cross-entropy of the digits written with teacher forcing."""
    src, tgt = batch  # (B, T), (B, T)
    logits, _ = model(src, tgt)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), tgt.flatten())


def train_seq2seq(model: Seq2Seq, steps: int = 300, batch_size: int = 64, lengths=(4, 20), lr: float = 1e-2,
                  seed: int = 0, on_step: Callable[[int, float], None] | None = None,
                  desc: str = "training") -> History:
    """The book's loop with Adam, a warm-up + cosine learning rate and gradient clipping at 1.0 (a
    safety net against exploding gradients). on_step(step, loss) runs after each update."""
    return train(model, digit_batches(batch_size, lengths, seed), seq2seq_loss, steps, lr=lr,
                 schedule=warmup_cosine(steps, 0.1), clip=1.0, on_step=on_step, desc=desc)


@torch.no_grad()
def reversal_accuracy(model: Seq2Seq, length: int, n: int = 200, seed: int = 1234):
    """Greedy decoding on n fresh sequences of one length -> (exact-match rate, per-digit accuracy)."""
    device = next(model.parameters()).device
    src, tgt = reverse_digits(n, length, torch.Generator().manual_seed(seed + length), device)
    pred = model(src)[0].argmax(-1)  # (n, length)
    correct = pred == tgt  # (n, length)
    return correct.all(dim=1).float().mean().item(), correct.float().mean().item()
