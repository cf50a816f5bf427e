"""Data-parallel training of a small date translator — chapter 13's demo of DistributedDataParallel.

Two ways to take the same training steps:

* ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m book.distributed --steps 30 --out ddp.json``
  starts two processes (gloo backend, CPU); each builds the same model from the same seed, draws
  the same global batch of 2·B dates and trains on its half; DDP averages their gradients;
* ``python -m book.distributed --steps 30 --out one.json`` is one process training on the whole
  batch of 2·B.

The loss is a sum over a half's real tokens divided by the global batch's token count (× the world
size, since DDP averages): the two runs then compute the same gradient up to float rounding, and
their loss curves agree. Rank 0 writes {"losses", "seconds", "examples_per_second", ...} as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass(frozen=True)
class DemoConfig:
    """The demo's model and batch: chapter 08's task, a model small enough for seconds of CPU."""

    d_model: int = 32
    num_heads: int = 4
    d_ff: int = 64
    layers: int = 1  # encoder layers = decoder layers
    batch_per_rank: int = 32  # B: each of the two processes takes B of the 2·B dates
    lr: float = 2e-3
    seed: int = 0


def local_loss(model, src, tgt, pad_id: int, global_tokens: int, world_size: int):
    """This process's share of the global mean loss, scaled so DDP's gradient *average* is the
    gradient of the mean over all 2·B examples' tokens: sum of my tokens' losses / all tokens × world."""
    logits = model(src, tgt[:, :-1])  # (b, T-1, V)
    want = tgt[:, 1:]  # (b, T-1)
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), want.reshape(-1), ignore_index=pad_id,
                            reduction="sum")  # summed over my real tokens
    return total * world_size / global_tokens


def run(steps: int, cfg: DemoConfig = DemoConfig(), distributed: bool = False) -> dict:
    """Take ``steps`` Adam steps, one process or one of the DDP ranks; returns the run's record."""
    from book.data.dates import CharVocab, split_dates, training_batches
    from book.transformer import Transformer, TransformerConfig

    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    vocab = CharVocab()
    split = split_dates(seed=0, test_fraction=0.1)
    global_batch = 2 * cfg.batch_per_rank  # the same 2·B dates in both runs
    batches = training_batches(split.train, "iso", vocab, batch_size=global_batch, seed=cfg.seed)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in the single run
    model = Transformer(TransformerConfig(len(vocab), len(vocab), d_model=cfg.d_model, num_heads=cfg.num_heads,
                                          d_ff=cfg.d_ff, num_encoder_layers=cfg.layers,
                                          num_decoder_layers=cfg.layers, dropout=0.0, pad_id=vocab.PAD))
    trained = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    share = global_batch // world  # rows of the global batch this process trains on
    losses, start = [], None
    for step in range(steps):
        if step == 1:
            start = time.perf_counter()  # the first step (warm-up, DDP's buckets) is not timed
        src, tgt = next(batches)  # (2B, S), (2B, T): every process draws the whole batch
        global_tokens = (tgt[:, 1:] != vocab.PAD).sum().item()
        rows = slice(rank * share, (rank + 1) * share)
        loss = local_loss(trained, src[rows], tgt[rows], vocab.PAD, global_tokens, world)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP: all-reduces (averages) the gradients across processes here
        opt.step()
        value = loss.detach() / world  # my part of the global mean loss
        if distributed:
            dist.all_reduce(value)  # the sum of the parts: the loss over all 2·B examples
        losses.append(value.item())
    seconds = time.perf_counter() - start if steps > 1 else float("nan")
    return {"mode": "ddp" if distributed else "single", "world_size": world, "threads": torch.get_num_threads(),
            "steps": steps, "global_batch": global_batch, "config": asdict(cfg), "losses": losses,
            "seconds": seconds, "examples_per_second": (steps - 1) * global_batch / seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", required=True, help="JSON file for the loss curve (written by rank 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: leave as is)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not timed)")
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun
    if distributed:
        dist.init_process_group("gloo")
    try:
        record = run(args.steps, distributed=distributed)
    finally:
        if distributed:
            dist.destroy_process_group()
    if record and (not distributed or int(os.environ["RANK"]) == 0):
        with open(args.out, "w") as f:
            json.dump(record, f)
        print(f"{record['mode']}: {record['world_size']} process(es) × {record['threads']} thread(s), "
              f"{record['steps']} steps, batch {record['global_batch']}: final loss {record['losses'][-1]:.4f}, "
              f"{record['examples_per_second']:.0f} examples/s")


if __name__ == "__main__":
    main()
