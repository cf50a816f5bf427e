"""Training: the book's one loop, its progress bar, and the schedules and losses later chapters use.

* ``progress_bar``: a tqdm bar in your notebook; on the website (no live widgets) its final line;
* ``train``: the one training loop — taught in chapter 02, called by every later chapter. It takes
  the model, a stream of batches, a loss function and a number of steps, with an optional
  learning-rate schedule, gradient clipping and an evaluation callback, on CPU or CUDA;
* schedules (``noam_lr``, ``lr_at``, ``warmup_cosine``) give the learning-rate factor of a step;
* losses: ``label_smoothing_loss`` and ``teacher_forcing_loss`` (chapter 08);
* ``time_steps``: median milliseconds per training step, synchronised on CUDA.
"""
from __future__ import annotations

import io
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm
from tqdm.std import tqdm as text_tqdm

from book.runtime import is_site_build


# ----------------------------------------------------------------------------- progress bar
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


# ----------------------------------------------------------------------------- the loop
@dataclass
class History:
    """What happened during training: per step the loss, learning rate and seconds of training so far."""

    loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    evals: list = field(default_factory=list)  # (step, seconds, metrics dict)


def to_device(batch, device):
    """A tensor, or a tuple/list of tensors, moved to ``device`` (anything else is left as it is)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def train(model: torch.nn.Module, batches: Iterable, loss_fn: Callable, steps: int, *,
          optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3,
          schedule: Callable[[int], float] | None = None, clip: float | None = None,
          evaluate: Callable | None = None, eval_every: int = 0,
          on_step: Callable[[int, float], None] | None = None, desc: str = "training",
          quiet: bool = False) -> History:
    """Take ``steps`` optimiser steps on ``model`` and return their History.

    batches: an iterator of batches (a tensor or a tuple of tensors, moved to the model's device);
             a tuple of tensors is used at every step (full-batch training).
    loss_fn(model, batch) -> a scalar loss tensor.
    optimizer: default Adam(lr). schedule(step) -> factor on each group's learning rate (step from 1).
    clip: largest gradient norm allowed (None: no clipping).
    evaluate(model) -> {name: number}, every ``eval_every`` steps and at the end, in eval mode and
    without gradients; its time is not counted as training time.
    on_step(step, loss) is called after each update (e.g. to take snapshots of the weights).
    quiet=True hides the progress bar (e.g. for many small runs under one bar of their own).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"the learning rate must be > 0, got {lr}")
    device = next(model.parameters()).device
    batches = itertools.repeat(batches) if isinstance(batches, tuple) else iter(batches)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    hist = History()
    bar = progress_bar(range(1, steps + 1), desc=desc, disable=quiet)
    for step in bar:
        start = time.perf_counter()
        model.train()  # dropout on; evaluate() runs in eval mode
        if schedule is not None:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * schedule(step)
        loss = loss_fn(model, to_device(next(batches), device))  # forward: a scalar tensor
        optimizer.zero_grad(set_to_none=True)  # forget the previous step's gradients
        loss.backward()  # backward: fills p.grad for every parameter
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)  # tame the rare huge gradient
        optimizer.step()  # update every parameter using its p.grad
        value = loss.item()  # waits for the device, so the time below is real on CUDA too
        hist.loss.append(value)
        hist.lr.append(optimizer.param_groups[0]["lr"])
        hist.seconds.append((hist.seconds[-1] if hist.seconds else 0.0) + time.perf_counter() - start)
        if on_step is not None:
            on_step(step, value)
        if evaluate is not None and eval_every and (step % eval_every == 0 or step == steps):
            model.eval()
            with torch.no_grad():
                hist.evals.append((step, hist.seconds[-1], evaluate(model)))
        if step % max(1, steps // 50) == 0 or step == steps:
            bar.set_postfix(loss=f"{value:.4f}")
    bar.close()
    model.eval()
    return hist


# ----------------------------------------------------------------------------- learning-rate schedules
def noam_lr(step: int, d_model: int, warmup: int) -> float:
    """The paper's schedule: d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), for step >= 1.

    It rises linearly for ``warmup`` steps, then decays like 1/√step.
    """
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def lr_at(step: int, steps: int, d_model: int, warmup: int, lr_scale: float = 1.0, cooldown: float = 0.0) -> float:
    """The learning rate used at ``step`` (1-based): the warm-up schedule, annealed linearly to zero over
    the last ``cooldown`` fraction of the run so the final weights settle."""
    lr = lr_scale * noam_lr(step, d_model, warmup)
    if cooldown > 0:
        lr *= min(1.0, (steps - step + 1) / (cooldown * steps))
    return lr


def warmup_cosine(steps: int, warmup: float = 0.1) -> Callable[[int], float]:
    """A factor for ``train(schedule=...)``: linear warm-up over the first ``warmup`` fraction of the
    steps, then a cosine down to 0 at the last step."""
    n_warm = max(1, round(warmup * steps))

    def factor(step: int) -> float:
        if step <= n_warm:
            return step / n_warm
        return 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    return factor


# ----------------------------------------------------------------------------- sequence-to-sequence losses
def label_smoothing_loss(logits, target, smoothing: float, ignore_index: int):
    """Cross-entropy against a smoothed target: 1 - ε on the right token, ε spread over all V tokens.

    logits (N, V), target (N,); positions whose target is ``ignore_index`` are left out of the mean.
    Equal to F.cross_entropy(logits, target, label_smoothing=ε, ignore_index=ignore_index).
    """
    log_p = torch.log_softmax(logits, dim=-1)  # (N, V)
    nll = -log_p.gather(-1, target.clamp(min=0)[:, None]).squeeze(-1)  # (N,) -log p(right token)
    uniform = -log_p.mean(dim=-1)  # (N,) cross-entropy with the uniform distribution
    loss = (1 - smoothing) * nll + smoothing * uniform  # (N,)
    keep = target != ignore_index  # (N,)
    return loss[keep].mean()


def teacher_forcing_loss(model, src, tgt, pad_id: int, smoothing: float = 0.0):
    """Feed tgt[:, :-1] (starting with <bos>), predict tgt[:, 1:] (ending with <eos>) all at once."""
    logits = model(src, tgt[:, :-1])  # (B, T-1, V)
    return label_smoothing_loss(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1), smoothing, pad_id)


def transformer_adam(model) -> torch.optim.Adam:
    """The paper's optimiser: Adam with β = (0.9, 0.98), ε = 1e-9; lr 1 so a schedule gives the rate."""
    return torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)


# ----------------------------------------------------------------------------- timing
def time_steps(model, batches, steps: int, loss_fn: Callable, lr: float = 1e-3) -> float:
    """Median milliseconds per training step (forward, backward, Adam) over ``steps`` steps.

    ``loss_fn(model, batch)`` as in ``train``. On CUDA the clock waits for the device after each step.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    times = []
    for _ in range(steps):
        batch = to_device(next(batches), device)
        sync()
        t0 = time.perf_counter()
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]
