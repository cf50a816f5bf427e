"""Training a sequence-to-sequence Transformer — chapter 08: warm-up schedule, label smoothing,
teacher forcing, and a loop with a progress bar that keeps its own history."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from book.foundations import progress_bar


def noam_lr(step: int, d_model: int, warmup: int) -> float:
    """The paper's schedule: d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), for step >= 1.

    It rises linearly for ``warmup`` steps, then decays like 1/√step.
    """
    if step < 1:
        raise ValueError(f"step counts from 1, got {step}")
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


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


@dataclass
class History:
    """What happened during training: per step the loss, learning rate and seconds of training so far."""

    loss: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    evals: list = field(default_factory=list)  # (step, seconds, metrics dict)


def lr_at(step: int, steps: int, d_model: int, warmup: int, lr_scale: float = 1.0, cooldown: float = 0.0) -> float:
    """The learning rate used at ``step`` (1-based): the warm-up schedule, annealed linearly to zero over
    the last ``cooldown`` fraction of the run so the final weights settle."""
    lr = lr_scale * noam_lr(step, d_model, warmup)
    if cooldown > 0:
        lr *= min(1.0, (steps - step + 1) / (cooldown * steps))
    return lr


def train(model, batches: Iterator, steps: int, *, pad_id: int, warmup: int = 200, lr_scale: float = 1.0,
          cooldown: float = 0.0,
          smoothing: float = 0.1, clip: float | None = 1.0, device=None, evaluate: Callable | None = None,
          eval_every: int = 0, desc: str = "training") -> History:
    """Adam with the warm-up schedule, teacher forcing, label smoothing and gradient clipping, for a
    fixed number of steps (not a time budget, so every run of the notebook gives the same model).

    ``evaluate(model) -> dict`` runs every ``eval_every`` steps; its time is not counted as training.
    """
    device = device or next(model.parameters()).device
    d_model = model.cfg.d_model
    opt = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_at(i + 1, steps, d_model, warmup, lr_scale, cooldown))
    hist, trained = History(), 0.0
    bar = progress_bar(range(1, steps + 1), desc=desc)  # a live bar in Jupyter, a text line on the site
    for step in bar:
        t0 = time.perf_counter()
        model.train()
        src, tgt = (t.to(device) for t in next(batches))
        loss = teacher_forcing_loss(model, src, tgt, pad_id, smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)  # tame the rare huge gradient
        opt.step()
        hist.lr.append(sched.get_last_lr()[0])
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        trained += time.perf_counter() - t0
        hist.loss.append(loss.item())
        hist.seconds.append(trained)
        if evaluate and eval_every and (step % eval_every == 0 or step == steps):
            model.eval()
            hist.evals.append((step, trained, evaluate(model)))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return hist


def time_steps(model, batches, steps: int, pad_id: int, lr: float = 1e-3) -> float:
    """Median milliseconds per training step (forward, backward, Adam) over ``steps`` steps."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    times = []
    for _ in range(steps):
        src, tgt = next(batches)
        t0 = time.perf_counter()
        loss = teacher_forcing_loss(model, src, tgt, pad_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]
