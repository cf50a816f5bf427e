"""Reading a GGUF checkpoint, llama.cpp's file format — chapter 11.

A GGUF file is a header of metadata (``llama.block_count = 30``, the tokenizer's vocabulary, the
chat template, ...) followed by a table of tensors, each stored in one of several formats. Most of
SmolLM2's matrices are **Q4_1**: blocks of 32 weights, each block one float16 scale ``d``, one
float16 minimum ``m`` and 32 four-bit integers ``q`` (0 … 15), so that weight = d · q + m. The
token embedding is **Q8_0**: blocks of 32 eight-bit integers with one scale, weight = d · q.
Norm weights are plain float32.

``read_gguf`` uses the ``gguf`` package only to find the bytes; the dequantisation is here, in a
few lines each (and tested equal to ``gguf.quants.dequantize``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

Q4_1_BLOCK_BYTES = 20  # d (float16, 2 bytes) + m (float16, 2) + 32 four-bit values (16 bytes)
Q8_0_BLOCK_BYTES = 34  # d (float16, 2 bytes) + 32 int8 values (32 bytes)
BLOCK = 32  # weights per block, in both formats


@dataclass(frozen=True)
class GGUFTensor:
    """One entry of the tensor table: its name, shape in PyTorch's order, format and raw bytes."""

    name: str
    shape: tuple[int, ...]  # (out, in) for a matrix, as nn.Linear stores it
    kind: str  # "F32", "Q4_1", "Q8_0", ...
    raw: np.ndarray  # what the file holds: uint8 blocks (rows, bytes per row), or float32 values

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes


@dataclass(frozen=True)
class GGUFCheckpoint:
    path: Path
    metadata: dict  # key -> value (numbers, strings, lists)
    tensors: dict[str, GGUFTensor]


def read_gguf(path) -> GGUFCheckpoint:
    """The metadata and the tensor table of a GGUF file (the tensors' bytes are memory-mapped)."""
    import gguf  # the reading package, imported only when a file is read

    reader = gguf.GGUFReader(str(path))
    metadata = {key: field.contents() for key, field in reader.fields.items()
                if not key.startswith("GGUF.")}  # GGUF.*: the reader's own bookkeeping
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists the fastest axis first
        tensors[t.name] = GGUFTensor(t.name, shape, t.tensor_type.name, t.data)
    return GGUFCheckpoint(Path(path), metadata, tensors)


def _blocks(raw: np.ndarray, block_bytes: int) -> np.ndarray:
    """(..., n · block_bytes) uint8 -> (..., n, block_bytes): one row per block."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if raw.shape[-1] % block_bytes:
        raise ValueError(f"the last axis ({raw.shape[-1]} bytes) is not a whole number of "
                         f"{block_bytes}-byte blocks")
    return raw.reshape(*raw.shape[:-1], raw.shape[-1] // block_bytes, block_bytes)


def dequantize_q4_1(raw: np.ndarray) -> torch.Tensor:
    """Q4_1 blocks -> float32 weights: (..., n · 20) uint8 -> (..., n · 32).

    Per block: bytes 0-1 the scale d, bytes 2-3 the minimum m (both float16), bytes 4-19 the
    32 four-bit values — byte j holds value j in its low four bits and value j + 16 in its high four.
    """
    blocks = _blocks(raw, Q4_1_BLOCK_BYTES)  # (..., n, 20)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)  # (..., n, 1)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)  # (..., n, 1)
    qs = blocks[..., 4:]  # (..., n, 16)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)  # (..., n, 32): 0 … 15
    w = d * q + m  # (..., n, 32)
    return torch.from_numpy(w.reshape(*w.shape[:-2], -1))  # (..., n · 32)


def dequantize_q8_0(raw: np.ndarray) -> torch.Tensor:
    """Q8_0 blocks -> float32 weights: (..., n · 34) uint8 -> (..., n · 32); weight = d · q."""
    blocks = _blocks(raw, Q8_0_BLOCK_BYTES)  # (..., n, 34)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)  # (..., n, 1)
    q = blocks[..., 2:].view(np.int8).astype(np.float32)  # (..., n, 32): -128 … 127
    w = d * q  # (..., n, 32)
    return torch.from_numpy(w.reshape(*w.shape[:-2], -1))  # (..., n · 32)


DEQUANTIZE = {"Q4_1": dequantize_q4_1, "Q8_0": dequantize_q8_0}


def dequantize(tensor: GGUFTensor) -> torch.Tensor:
    """Any supported entry of the table -> a float32 tensor of ``tensor.shape``."""
    if tensor.kind == "F32":
        values = torch.from_numpy(np.array(tensor.raw, dtype=np.float32))
    elif tensor.kind == "F16":
        values = torch.from_numpy(np.array(tensor.raw, dtype=np.float16).astype(np.float32))
    elif tensor.kind in DEQUANTIZE:
        values = DEQUANTIZE[tensor.kind](tensor.raw)
    else:
        raise ValueError(f"{tensor.name}: the book does not dequantise {tensor.kind}")
    return values.reshape(tensor.shape)


def bits_per_weight(tensor: GGUFTensor) -> float:
    """How many bits the file spends on each weight of this tensor, scales and minimums included."""
    return 8 * tensor.nbytes / int(np.prod(tensor.shape))


def quantize_q4_1(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The other way, as llama.cpp's Q4_1 rounds: (..., n · 32) -> d, m (..., n, 1) and q (..., n, 32).

    Per block of 32 weights m is the smallest, d = (largest - smallest) / 15, and q = round((w - m) / d)
    in 0 … 15; d and m are rounded to float16, as the file stores them.
    """
    if w.size(-1) % BLOCK:
        raise ValueError(f"the last dimension ({w.size(-1)}) must be a multiple of {BLOCK}")
    blocks = w.float().reshape(*w.shape[:-1], -1, BLOCK)  # (..., n, 32)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)  # (..., n, 1)
    d, m = ((hi - lo) / 15).half().float(), lo.half().float()
    q = ((blocks - m) / torch.where(d > 0, d, 1.0)).round().clamp(0, 15)  # (..., n, 32)
    return d, m, q


def fake_quantize_q4_1(w: torch.Tensor) -> torch.Tensor:
    """w rounded to what Q4_1 can store: quantise, then dequantise (same shape and dtype as w)."""
    d, m, q = quantize_q4_1(w)
    return (d * q + m).reshape(w.shape).to(w.dtype)
