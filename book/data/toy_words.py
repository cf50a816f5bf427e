"""Toy word vectors: small, generated embeddings — nothing is downloaded, everything is seeded.

``word_vectors`` gives toy word embeddings with a meaning you can read off: each known word is a
mix of a few hand-named features (animal, food, place, ...) plus a little seeded noise, so "cat" is
close to "dog" and far from "bread". Unknown words get a vector built from their character
trigrams, so any sentence a learner types still has an embedding ("cats" stays near "cat").
"""
from __future__ import annotations

import hashlib
import re

import torch

FEATURES = ("animal", "person", "food", "place", "action", "size", "time", "function")

# word -> {feature: strength}; a word with no strong meaning ("the", "on") is a function word.
_LEXICON = {
    "cat": {"animal": 1.0, "size": -0.3}, "dog": {"animal": 1.0, "size": 0.1},
    "bird": {"animal": 0.9, "size": -0.6}, "fish": {"animal": 0.8, "food": 0.4},
    "mouse": {"animal": 0.9, "size": -0.9}, "horse": {"animal": 1.0, "size": 0.8},
    "king": {"person": 1.0, "place": 0.2}, "queen": {"person": 1.0, "place": 0.2},
    "man": {"person": 1.0}, "woman": {"person": 1.0}, "child": {"person": 0.9, "size": -0.5},
    "teacher": {"person": 0.9, "place": 0.2}, "student": {"person": 0.9},
    "bread": {"food": 1.0}, "apple": {"food": 1.0, "size": -0.3}, "cheese": {"food": 1.0},
    "milk": {"food": 0.9}, "rice": {"food": 1.0},
    "mat": {"place": 0.6, "size": -0.2}, "house": {"place": 1.0, "size": 0.5},
    "garden": {"place": 1.0}, "city": {"place": 1.0, "size": 0.9}, "river": {"place": 0.9, "size": 0.6},
    "school": {"place": 0.9, "person": 0.2}, "kitchen": {"place": 0.9, "food": 0.3},
    "sat": {"action": 1.0, "time": 0.3}, "ran": {"action": 1.0, "time": 0.3},
    "ate": {"action": 0.9, "food": 0.5, "time": 0.3}, "eats": {"action": 0.9, "food": 0.5},
    "chased": {"action": 1.0, "animal": 0.2, "time": 0.3}, "sleeps": {"action": 0.8},
    "reads": {"action": 0.8, "person": 0.2}, "sees": {"action": 0.8},
    "big": {"size": 1.0}, "small": {"size": -1.0}, "little": {"size": -0.9}, "huge": {"size": 1.2},
    "today": {"time": 1.0}, "yesterday": {"time": 1.0}, "morning": {"time": 0.9}, "night": {"time": 0.9},
    "the": {"function": 1.0}, "a": {"function": 1.0}, "an": {"function": 1.0},
    "on": {"function": 0.8, "place": 0.3}, "in": {"function": 0.8, "place": 0.3},
    "at": {"function": 0.8, "place": 0.3}, "and": {"function": 1.0}, "of": {"function": 1.0},
    "to": {"function": 0.9}, "it": {"function": 0.6, "animal": 0.3}, "its": {"function": 0.6},
    "was": {"function": 0.6, "time": 0.4}, "is": {"function": 0.6},
}


def tokenize(text: str) -> list[str]:
    """Lower-case words and punctuation marks: "The cat sat." -> ["the", "cat", "sat", "."]."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize() expects a string, got {type(text).__name__}")
    return re.findall(r"[a-z0-9']+|[^\sa-z0-9']", text.lower())


def _hashed_vector(key: str, dim: int) -> torch.Tensor:
    """A fixed pseudo-random unit-ish vector for a string (same string -> same vector, on any machine)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g) / dim**0.5


def word_vector(word: str, dim: int = 16, noise: float = 0.15) -> torch.Tensor:
    """(dim,) embedding of one word, of length about 0.75·√dim (entries of order 1, as in a real model).

    dim must be at least len(FEATURES).
    """
    if dim < len(FEATURES):
        raise ValueError(f"dim must be >= {len(FEATURES)} (one slot per feature), got {dim}")
    return 0.75 * dim**0.5 * _unit_scale_vector(word.lower(), dim, noise)


def _unit_scale_vector(word: str, dim: int, noise: float) -> torch.Tensor:
    """A vector of length about 1 that carries the word's meaning."""
    if word in _LEXICON:
        v = torch.zeros(dim)
        for name, strength in _LEXICON[word].items():
            v[FEATURES.index(name)] = strength
        return v + noise * _hashed_vector("noise:" + word, dim)
    grams = [f"#{word}#"[i : i + 3] for i in range(max(1, len(word)))]  # character trigrams
    v = sum(_hashed_vector("tri:" + g, dim) for g in grams) / len(grams) ** 0.5
    base = word.rstrip("s")  # "cats" borrows meaning from "cat"
    if base != word and base in _LEXICON:
        v = 0.3 * v + _unit_scale_vector(base, dim, noise)
    return v


def word_vectors(words, dim: int = 16) -> torch.Tensor:
    """(len(words), dim) matrix of toy embeddings, one row per word."""
    return torch.stack([word_vector(w, dim) for w in words])


def known_words() -> list[str]:
    """The words whose vectors carry hand-named meaning (others fall back to trigram vectors)."""
    return sorted(_LEXICON)
