"""Foundations — the maths of chapter 01 and the PyTorch habits of chapter 02, reused by later chapters.

Chapter 01 (linear algebra & probability): ``cosine_similarity_matrix``, ``logsumexp``,
``log_softmax``, ``cross_entropy``, ``kl_divergence``. The softmax itself lives in
``book.attention`` (chapter 04).

Chapter 02 (PyTorch essentials): ``progress_bar`` (a tqdm bar that also shows on the website) and
``train``, the book's small full-batch training loop.
"""
from __future__ import annotations

import io
import math
from typing import Callable

import torch
from tqdm.auto import tqdm
from tqdm.std import tqdm as text_tqdm

from book.runtime import is_site_build


# ----------------------------------------------------------------------------- chapter 01
def cosine_similarity_matrix(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., N, d) -> (..., N, N): entry (i, j) is the cosine of the angle between rows i and j."""
    norms = x.norm(dim=-1, keepdim=True).clamp_min(eps)  # (..., N, 1); a zero row stays 0
    unit = x / norms  # (..., N, d) every row now has length 1
    return unit @ unit.transpose(-2, -1)  # (..., N, N): all dot products at once


def logsumexp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """log Σ exp(x) along dim, without overflow: m + log Σ exp(x - m) with m the maximum."""
    m = x.amax(dim=dim, keepdim=True)  # (..., 1, ...) the largest entry along dim
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))  # exp() of x - m <= 0
    return out if keepdim else out.squeeze(dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log softmax(x) along dim, as x - logsumexp(x): finite even for scores of size 1e4."""
    return x - logsumexp(x, dim=dim, keepdim=True)  # same shape as x


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of -log p(target): logits (..., C) unnormalised scores, targets (...) class indices."""
    log_p = log_softmax(logits, dim=-1)  # (..., C) log-probabilities
    picked = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (...) log p(true class)
    return -picked.mean()  # a scalar


def kl_divergence(p: torch.Tensor, q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(p ‖ q) = Σ p log(p / q) along dim for probability tensors; terms with p = 0 count 0."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(dim)  # xlogy(a, b) = a·log b; 0 if a = 0


# ----------------------------------------------------------------------------- chapter 02
class _SiteBar(text_tqdm):
    """A tqdm bar for the website build: silent while it runs, then prints its final line once."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()  # the running updates go nowhere
        kwargs.setdefault("ascii", False)  # the website shows the same unicode bar as a notebook
        super().__init__(*args, **kwargs)

    def close(self):
        if self.disable:  # already closed
            return
        final = str(self)  # "desc: 100%|██████████| 300/300 [00:01<00:00, 250it/s, loss=0.01]"
        super().close()
        print(final)


def progress_bar(iterable=None, **kwargs):
    """``tqdm.auto.tqdm`` in your notebook; on the website (no live widgets) its final state as text."""
    if is_site_build():
        return _SiteBar(iterable, **kwargs)
    return tqdm(iterable, **kwargs)


def train(model: torch.nn.Module, x, y, loss_fn: Callable, *, steps: int = 300,
          lr: float = 1e-2, desc: str = "training",
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Full-batch training with Adam and a progress bar; returns the loss before every step.

    ``loss_fn(model(x), y)`` must return a scalar. ``on_step(step, loss)`` is called after each
    update (e.g. to take snapshots of the weights).
    """
    if steps < 1 or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"need steps >= 1 and a learning rate > 0, got steps={steps}, lr={lr}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    bar = progress_bar(range(steps), desc=desc)
    for step in bar:
        loss = loss_fn(model(x), y)  # forward pass: a scalar tensor
        optimizer.zero_grad()  # forget the previous step's gradients
        loss.backward()  # backward pass: fills p.grad for every parameter
        optimizer.step()  # update every parameter using its p.grad
        losses.append(loss.item())
        if step % 25 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            on_step(step, losses[-1])
    bar.close()
    return losses
