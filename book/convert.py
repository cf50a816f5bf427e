"""Someone else's weights -> the book's modules: the one home of every name map.

A checkpoint is a dict {parameter name: tensor}. Another library names the same numbers
differently (``self_attn.in_proj_weight`` holds what the book calls ``self_attn.w_q.weight``,
``w_k.weight`` and ``w_v.weight``, stacked). A ``NameMap`` says how, and works both ways:

* ``renames``: (their dotted piece, our dotted piece) pairs, matched on whole name pieces;
* ``fused``: (their leaf, our leaves) — one of their tensors holds several of ours, stacked on dim 0;
* ``transforms``: {our leaf: (to_ours, to_theirs)} for tensors stored in another layout;
* ``dropped``: their names (whole dotted pieces at the end, or a prefix) with no book counterpart,
  skipped on the way in (a pooler the book does not use, a buffer of position ids).

``TORCH`` maps ``torch.nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` /
``nn.TransformerDecoderLayer`` and whole ``nn.Transformer*`` stacks (chapters 05, 07, 08);
``HF_BERT`` maps a Hugging Face BERT checkpoint (MiniLM, chapter 09) onto ``book.pretrained``'s
``BertEncoder``; ``GGUF_LLAMA`` maps a llama.cpp GGUF file of a LLaMA-style model (SmolLM2,
chapter 11) onto ``book.gpt``'s ``GPT``. Later chapters that load other checkpoints add their maps here.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class NameMap:
    """How one family of checkpoints names its parameters, compared with the book's modules."""

    renames: tuple[tuple[str, str], ...] = ()
    fused: tuple[tuple[str, tuple[str, ...]], ...] = ()
    transforms: dict[str, tuple[Callable, Callable]] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    def drops(self, name: str) -> bool:
        """Is this one of their names that the book has no place for?"""
        return any(name == d or name.startswith(d + ".") or name.endswith("." + d) for d in self.dropped)


def _replace_pieces(name: str, pairs) -> str:
    """Replace whole dotted pieces: ("linear1", "ffn.linear1") turns a.linear1.weight into a.ffn.linear1.weight."""
    parts = name.split(".")
    for old, new in pairs:
        old_parts = old.split(".")
        n, i, out = len(old_parts), 0, []
        while i < len(parts):
            if parts[i:i + n] == old_parts:
                out += new.split(".")
                i += n
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return ".".join(parts)


def _leaf(name: str) -> tuple[str, str]:
    """"layers.0.self_attn.in_proj_weight" -> ("layers.0.self_attn", "in_proj_weight")."""
    prefix, _, leaf = name.rpartition(".")
    return prefix, leaf


def _join(prefix: str, leaf: str) -> str:
    return f"{prefix}.{leaf}" if prefix else leaf


def to_book(state: dict, names: NameMap) -> dict:
    """Their state dict -> a state dict with the book's parameter names (tensors are not copied)."""
    out = {}
    for name, tensor in state.items():
        if names.drops(name):
            continue
        prefix, leaf = _leaf(name)
        split = dict(names.fused).get(leaf)
        if split:  # one of their tensors holds several of ours, stacked on dim 0
            prefix = _replace_pieces(prefix, names.renames)
            for ours, chunk in zip(split, tensor.chunk(len(split), dim=0)):
                out[_join(prefix, ours)] = chunk
            continue
        out[_replace_pieces(name, names.renames)] = tensor
    for name in out:
        for leaf, (to_ours, _) in names.transforms.items():
            if name == leaf or name.endswith("." + leaf):
                out[name] = to_ours(out[name])
    return out


def from_book(state: dict, names: NameMap) -> dict:
    """The inverse of ``to_book``: a state dict of the book's modules in the other library's names."""
    state = dict(state)
    for name in state:
        for leaf, (_, to_theirs) in names.transforms.items():
            if name == leaf or name.endswith("." + leaf):
                state[name] = to_theirs(state[name])
    reverse = tuple((new, old) for old, new in reversed(names.renames))
    out, done = {}, set()
    for their_leaf, ours in names.fused:  # several of our tensors -> one of theirs
        for name in state:
            if name == ours[0] or name.endswith("." + ours[0]):
                prefix = name[: -len(ours[0])].rstrip(".")
                group = [_join(prefix, o) for o in ours]
                if all(g in state for g in group):
                    out[_join(_replace_pieces(prefix, reverse), their_leaf)] = torch.cat([state[g] for g in group])
                    done |= set(group)
    for name, tensor in state.items():
        if name not in done:
            out[_replace_pieces(name, reverse)] = tensor
    return out


def load(module: nn.Module, state: dict, names: NameMap, strict: bool = True) -> nn.Module:
    """Load another library's state dict into a book module; returns the module.

    A missing or unexpected name (with strict=True) or a tensor of the wrong shape raises ValueError.
    """
    ours = to_book(state, names)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(ours)), sorted(set(ours) - expected)
    if strict and (missing or unexpected):
        raise ValueError(f"the checkpoint does not fit {type(module).__name__}: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    try:
        module.load_state_dict(ours, strict=strict)
    except RuntimeError as e:  # a shape mismatch
        raise ValueError(f"the checkpoint does not fit {type(module).__name__}: {str(e).splitlines()[-1].strip()}") from None
    return module


def copied(module: nn.Module, state: dict, names: NameMap | None = None) -> nn.Module:
    """A deep copy of ``module`` holding the weights of ``state`` (the original stays untouched)."""
    twin = copy.deepcopy(module)
    twin.load_state_dict(to_book(state, names) if names else state)
    return twin


# ----------------------------------------------------------------------------- torch.nn
TORCH = NameMap(
    renames=(("multihead_attn", "cross_attn"), ("out_proj", "w_o"), ("linear1", "ffn.linear1"),
             ("linear2", "ffn.linear2")),
    fused=(("in_proj_weight", ("w_q.weight", "w_k.weight", "w_v.weight")),
           ("in_proj_bias", ("w_q.bias", "w_k.bias", "w_v.bias"))),
)


def copy_from_torch(mine: nn.Module, theirs: nn.Module, strict: bool = True) -> nn.Module:
    """Load the weights of a torch.nn attention or Transformer module into the book's equivalent.

    Works for nn.MultiheadAttention -> MultiHeadAttention, nn.TransformerEncoderLayer -> EncoderLayer,
    nn.TransformerDecoderLayer -> DecoderLayer, and stacks of them. Returns ``mine``.
    """
    ours = dict(mine.named_modules())
    for name, m in theirs.named_modules():  # same-shaped weights can still be cut into other heads
        if isinstance(m, nn.MultiheadAttention):
            if not m._qkv_same_embed_dim:
                raise ValueError("nn.MultiheadAttention with kdim/vdim != embed_dim has no book equivalent")
            twin = ours.get(_replace_pieces(name, TORCH.renames))
            if twin is not None and getattr(twin, "num_heads", m.num_heads) != m.num_heads:
                raise ValueError(f"{name or 'the attention'} has {m.num_heads} heads in PyTorch's module, "
                                 f"{twin.num_heads} in the book's")
    return load(mine, theirs.state_dict(), TORCH, strict=strict)


def copy_to_torch(theirs: nn.Module, mine_state: dict) -> nn.Module:
    """The other way: put a state dict in the book's names into a torch.nn module; returns it."""
    theirs.load_state_dict(from_book(mine_state, TORCH))
    return theirs


# ----------------------------------------------------------------------------- Hugging Face BERT (MiniLM)
HF_BERT = NameMap(  # applied in order: "attention.output.dense" before "output.dense"
    renames=(("embeddings.word_embeddings", "embeddings.tokens"),
             ("embeddings.position_embeddings", "embeddings.positions"),
             ("embeddings.token_type_embeddings", "embeddings.token_types"),
             ("embeddings.LayerNorm", "embeddings.norm"),
             ("encoder.layer", "layers"),
             ("attention.self.query", "self_attn.w_q"), ("attention.self.key", "self_attn.w_k"),
             ("attention.self.value", "self_attn.w_v"), ("attention.output.dense", "self_attn.w_o"),
             ("attention.output.LayerNorm", "norm1"),
             ("intermediate.dense", "ffn.linear1"), ("output.dense", "ffn.linear2"),
             ("output.LayerNorm", "norm2")),
    dropped=("pooler", "embeddings.position_ids"),  # a [CLS] classifier layer we don't use; a buffer
)


# ----------------------------------------------------------------------------- GGUF, LLaMA architecture (SmolLM2)
GGUF_LLAMA = NameMap(  # llama.cpp's names (blk.0.attn_q.weight) -> book.gpt.GPT's (layers.0.self_attn.w_q.weight)
    renames=(("token_embd", "tokens"), ("blk", "layers"),
             ("attn_norm", "norm1"), ("attn_q", "self_attn.w_q"), ("attn_k", "self_attn.w_k"),
             ("attn_v", "self_attn.w_v"), ("attn_output", "self_attn.w_o"),
             ("ffn_norm", "norm2"), ("ffn_gate", "ffn.gate"), ("ffn_up", "ffn.linear1"),
             ("ffn_down", "ffn.linear2"), ("output_norm", "norm"), ("output", "head")),
)
