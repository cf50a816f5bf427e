"""Chapter 08's translator as ONNX files, run by onnxruntime — the deployment side of chapter 14.

A ``book.transformer.Transformer`` becomes two graphs with dynamic batch and lengths:

* ``encoder.onnx``: source ids ``src`` (B, S) -> encoder output ``states`` (B, S, d_model);
* ``decoder.onnx``: decoder input ``ys`` (B, T), ``states`` and ``src`` (for its padding mask) ->
  next-token logits (B, V) of the last position. It reads the whole prefix again at every step:
  no key/value cache, so the graph has no state to carry (a date has at most 25 target tokens).

Greedy decoding is a short numpy loop around the decoder graph (``OnnxTranslator``); the folder also
holds the vocabulary, so running it needs onnxruntime and numpy, not PyTorch. ``export_onnx`` uses
``torch.onnx.export(..., dynamo=True)``: torch 2.13's default exporter, which traces the model with
``torch.export`` and writes the graph with ``onnxscript`` (installed, nothing is downloaded).
``chapter08_onnx(target)`` exports chapter 08's cached translator once and keeps the files next to
the ``book.artifacts`` cache, under a name keyed by the weights and this module's code.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from book.layers import key_padding_mask
from book.transformer import Transformer

MAX_OUTPUT = 24  # greedy steps at most: chapter 08's exact_match decodes up to 24 tokens


class EncoderGraph(nn.Module):
    """What encoder.onnx computes: source ids (B, S) -> encoder states (B, S, d_model)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, src):
        states, _ = self.model.encode(src)  # (B, S, d_model)
        return states


class DecoderGraph(nn.Module):
    """What decoder.onnx computes: prefix ys (B, T), states (B, S, d_model), src (B, S) -> logits (B, V)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, ys, states, src):
        src_mask = key_padding_mask(src != self.model.cfg.pad_id)  # (B, 1, 1, S)
        return self.model.decode(ys, (states, src_mask))[:, -1]  # (B, V): the last position only


def export_onnx(model: Transformer, folder, vocab, progress: bool = True) -> dict[str, Path]:
    """Write encoder.onnx, decoder.onnx and vocab.json for ``model`` into ``folder``; return their paths."""
    from torch.export import Dim

    from book.training import progress_bar

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = _on_cpu(model)
    n = model.cfg.max_len
    B, S, T = Dim("batch", min=1, max=1024), Dim("src_len", min=1, max=n), Dim("tgt_len", min=1, max=n)
    src = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])  # example inputs: (2, 4), one row padded
    ys = torch.tensor([[vocab.BOS, 9, 10], [vocab.BOS, 9, 11]])  # (2, 3)
    states = EncoderGraph(model)(src)
    jobs = {"encoder": (EncoderGraph(model).eval(), (src,), ["src"], ["states"], ({0: B, 1: S},)),
            "decoder": (DecoderGraph(model).eval(), (ys, states, src), ["ys", "states", "src"], ["logits"],
                        ({0: B, 1: T}, {0: B, 1: S}, {0: B, 1: S}))}
    paths = {}
    for name in progress_bar(jobs, desc="exporting to ONNX", disable=not progress):
        graph, args, inputs, outputs, shapes = jobs[name]
        paths[name] = folder / f"{name}.onnx"
        with torch.no_grad(), _quiet():
            torch.onnx.export(graph, args, paths[name], dynamo=True, input_names=inputs, output_names=outputs,
                              dynamic_shapes=shapes, external_data=False, verbose=False)
    paths["vocab"] = folder / "vocab.json"
    meta = {"itos": vocab.itos, "pad": vocab.PAD, "bos": vocab.BOS, "eos": vocab.EOS, "max_len": n}
    paths["vocab"].write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")  # written last
    return paths


def _on_cpu(model: Transformer) -> Transformer:
    """The model in eval mode on the CPU (a copy if it lives elsewhere: the caller's stays put)."""
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    return model.eval()


@contextmanager
def _quiet():
    """Silence the exporter's chatter (its progress lines, warnings about torchvision and attributes)."""
    import logging
    import warnings

    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


class OnnxTranslator:
    """Greedy decoding with the exported graphs: ``OnnxTranslator(folder).translate(texts) -> list[str]``."""

    def __init__(self, folder, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder)
        meta = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        self.itos, self.max_len = meta["itos"], meta["max_len"]
        self.pad, self.bos, self.eos = meta["pad"], meta["bos"], meta["eos"]
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.encoder, self.decoder = (ort.InferenceSession(folder / f"{name}.onnx", options,
                                                           providers=["CPUExecutionProvider"])
                                      for name in ("encoder", "decoder"))

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts -> source ids (B, S_max), right-padded; ValueError for unknown characters or a bad length."""
        rows = []
        for text in texts:
            unknown = sorted(set(text) - set(self.stoi))
            if unknown:
                raise ValueError(f"cannot translate {text[:40]!r}: characters not in the vocabulary: "
                                 f"{unknown}")
            if not 0 < len(text) <= self.max_len:
                raise ValueError(f"cannot translate {text[:40]!r}: length {len(text)} is not in "
                                 f"1..{self.max_len}")
            rows.append([self.stoi[c] for c in text])
        width = max(len(r) for r in rows)
        return np.array([r + [self.pad] * (width - len(r)) for r in rows], dtype=np.int64)  # (B, S)

    def decode_ids(self, src: np.ndarray, max_len: int = MAX_OUTPUT) -> np.ndarray:
        """Greedy decoding, as book.decoding.greedy_decode: src (B, S) -> (B, L) ids starting with <bos>."""
        states = self.encoder.run(None, {"src": src})[0]  # (B, S, d_model)
        ys = np.full((len(src), 1), self.bos, dtype=np.int64)  # (B, 1)
        done = np.zeros(len(src), dtype=bool)  # (B,)
        for _ in range(max_len):
            logits = self.decoder.run(None, {"ys": ys, "states": states, "src": src})[0]  # (B, V)
            token = np.where(done, self.eos, logits.argmax(-1))  # (B,)
            ys = np.concatenate([ys, token[:, None]], axis=1)  # (B, t + 1)
            done |= token == self.eos
            if done.all():
                break
        return ys

    def decode(self, ids) -> str:
        """Token ids -> characters up to the first <eos>, skipping <pad> and <bos> (as CharVocab.decode)."""
        chars = []
        for i in ids:
            if i == self.eos:
                break
            if i > self.eos:
                chars.append(self.itos[i])
        return "".join(chars)

    def translate(self, texts: list[str]) -> list[str]:
        """Texts -> their translations."""
        return [self.decode(row[1:]) for row in self.decode_ids(self.encode(texts))]


def compare_with_torch(model: Transformer, translator: OnnxTranslator, vocab, texts: list[str]) -> dict:
    """Do the exported graphs compute what the PyTorch model computes on ``texts``?

    Returns ``max_abs_diff`` (the largest difference in the encoder states and in the next-token
    logits of every prefix of PyTorch's greedy outputs), ``same_strings`` (the share of texts whose
    greedy translations are identical) and the two lists of translations.
    """
    from book.decoding import greedy_decode

    model = _on_cpu(model)
    src_np = translator.encode(texts)
    src = torch.from_numpy(src_np)
    with torch.no_grad():
        ys = greedy_decode(model, src, MAX_OUTPUT, vocab.BOS, vocab.EOS)  # (B, L), PyTorch with its cache
        memory = model.encode(src)
        states = translator.encoder.run(None, {"src": src_np})[0]
        diff = float(np.abs(states - memory[0].numpy()).max())
        for t in range(1, ys.size(1)):  # every prefix: the logits of its next token
            want = model.decode(ys[:, :t], memory)[:, -1].numpy()
            got = translator.decoder.run(None, {"ys": ys[:, :t].numpy(), "states": states, "src": src_np})[0]
            diff = max(diff, float(np.abs(got - want).max()))
    torch_out = [vocab.decode(row[1:]) for row in ys]
    onnx_out = translator.translate(texts)
    same = sum(a == b for a, b in zip(torch_out, onnx_out)) / len(texts)
    return {"max_abs_diff": diff, "same_strings": same, "torch": torch_out, "onnx": onnx_out}


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's weights (names, shapes and values) and of this module's code."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}{tuple(t.shape)}{t.dtype}".encode() + t.numpy().tobytes())
    return h.hexdigest()


def chapter08_onnx(target: str = "iso", progress: bool = True) -> Path:
    """The folder holding chapter 08's ``target`` translator as ONNX; exported on first use, then reused."""
    from book import artifacts, translator

    model, vocab, _ = translator.chapter08(target, "cpu")
    folder = artifacts.cache_dir() / f"onnx-ch08-{target}-{weights_fingerprint(model)[:20]}"
    if (folder / "vocab.json").is_file():  # written last: the export is complete
        return folder
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_onnx(model, tmp, vocab, progress=progress)
    try:
        os.replace(tmp, folder)  # atomic: a reader never sees half an export
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
