"""Byte-pair encoding (BPE) from scratch — taught in chapter 09.

Split the text into words and count them; spell every word in single characters; then merge the
most frequent adjacent pair of symbols into a new symbol, again and again, until the vocabulary
is big enough. ``train_bpe`` returns a ``BPE`` (the merges in order, the vocabulary token -> id)
that can ``tokenize``, ``encode`` and ``decode``. ``hf_bpe`` trains Hugging Face's ``tokenizers``
BPE with the same settings: same merges in the same order, same vocabulary, same ids.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

# A word is an optional space followed by letters/digits/underscores, or by punctuation; any other
# run of whitespace (a newline, a double space) is a word of its own. Every character of the text
# lands in exactly one word, so nothing is lost: "".join(pretokenize(text)) == text.
WORD_PATTERN = r" ?\w+| ?[^\w\s]+|\s+"


def pretokenize(text: str) -> list[str]:
    """Split text into words: 'To be, or' -> ['To', ' be', ',', ' or'].

    Same split as Hugging Face's ``pre_tokenizers.Split(Regex(WORD_PATTERN), "isolated")``
    (Python's ``re`` and the library's Oniguruma agree on ``\\w`` and ``\\s`` for ASCII text).
    """
    return re.findall(WORD_PATTERN, text)


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each word occurs in the texts."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(pretokenize(text))
    return counts


def pair_counts(splits: Mapping[str, list[str]],
                counts: Mapping[str, int]) -> Counter[tuple[str, str]]:
    """How often each adjacent pair of symbols occurs; a word that occurs n times counts n times.

    ``splits`` maps each word to its current symbols, e.g. {'lower': ['lo', 'w', 'er']}.
    """
    pairs: Counter[tuple[str, str]] = Counter()
    for word, symbols in splits.items():
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += counts[word]
    return pairs


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """The symbols with every occurrence of ``pair`` merged, scanning left to right.

    Occurrences may overlap: ['a', 'a', 'a'] with ('a', 'a') gives ['aa', 'a'].
    """
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def best_pair(pairs: Mapping[tuple[str, str], int], vocab: Mapping[str, int]) -> tuple[str, str]:
    """The pair to merge next: the most frequent one.

    Ties are broken by token ids: the pair whose left symbol has the smallest id wins, and if the
    left symbols are the same, the one whose right symbol has the smallest id. Ids are given in
    the order tokens enter the vocabulary (characters by Unicode code point, then one per merge),
    so among equally frequent pairs the one whose tokens are *older* wins — not the one that comes
    first alphabetically. This is the rule of Hugging Face's ``BpeTrainer``.
    """
    top = max(pairs.values())
    tied = [pair for pair, count in pairs.items() if count == top]
    return min(tied, key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))


@dataclass
class BPE:
    """A trained BPE: the merges in the order they were learned, and the vocabulary token -> id."""

    merges: list[tuple[str, str]]
    vocab: dict[str, int]

    def __post_init__(self):
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}  # earlier = lower rank
        self.tokens = {i: token for token, i in self.vocab.items()}  # id -> token, for decode

    def tokenize_word(self, word: str) -> list[str]:
        """One word's tokens: start from its characters, then keep applying the learned merge
        with the lowest rank (the earliest learned) among the word's adjacent pairs.

        Characters that are not in the vocabulary are dropped, as Hugging Face's BPE does when it
        has no ``unk_token``.
        """
        symbols = [char for char in word if char in self.vocab]
        while len(symbols) > 1:
            pair = min(zip(symbols, symbols[1:]), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:  # no adjacent pair was ever merged: done
                break
            symbols = merge_pair(symbols, pair)
        return symbols

    def tokenize(self, text: str) -> list[str]:
        """The text's tokens (strings); each distinct word is worked out only once."""
        words = pretokenize(text)
        pieces = {word: self.tokenize_word(word) for word in set(words)}
        return [token for word in words for token in pieces[word]]

    def encode(self, text: str) -> list[int]:
        """The text's token ids."""
        return [self.vocab[token] for token in self.tokenize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text back: the tokens glued together. The words keep their spaces and newlines, so
        ``decode(encode(text)) == text`` whenever every character of ``text`` was seen in
        training; unseen characters are the only thing lost."""
        return "".join(self.tokens[i] for i in ids)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPE:
    """Learn merges from ``texts`` until the vocabulary has ``vocab_size`` tokens.

    The vocabulary starts as the alphabet: every character of the corpus, sorted by Unicode code
    point, with ids 0, 1, 2, ... (the alphabet counts towards ``vocab_size``). Each step merges
    the most frequent adjacent pair — ties going to the pair with the smallest (id of left symbol,
    id of right symbol), see ``best_pair`` — and gives the new token the next free id. Training
    stops early when no pair is left, or when the best pair occurs fewer than ``min_frequency``
    times.
    """
    counts = word_counts(texts)
    vocab = {char: i for i, char in enumerate(sorted({char for word in counts for char in word}))}
    merges: list[tuple[str, str]] = []
    splits = {word: list(word) for word in counts}
    pairs = pair_counts(splits, counts)
    where = defaultdict(set)  # pair -> the words it occurs in, so a merge only revisits those
    for word, symbols in splits.items():
        for pair in zip(symbols, symbols[1:]):
            where[pair].add(word)

    while len(vocab) < vocab_size and pairs:
        pair = best_pair(pairs, vocab)
        if pairs[pair] < min_frequency:
            break
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))  # a token made a second way keeps its id
        for word in where.pop(pair):  # only the words that contain the pair change
            old = splits[word]
            new = splits[word] = merge_pair(old, pair)
            for gone in zip(old, old[1:]):  # take the word's old pairs out ...
                pairs[gone] -= counts[word]
                if pairs[gone] == 0:
                    del pairs[gone]
            for come in zip(new, new[1:]):  # ... and put its new pairs in
                pairs[come] += counts[word]
                where[come].add(word)
    return BPE(merges, vocab)


def hf_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """The same training with Hugging Face ``tokenizers``: a ``Tokenizer`` to compare with.

    Same pre-tokenizer (``WORD_PATTERN``), no special tokens, no ``unk_token`` (unseen characters
    are dropped), and ``decoders.Fuse`` so that decoding glues the tokens together like ours.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def hf_merges(tokenizer) -> list[tuple[str, str]]:
    """A Hugging Face BPE tokenizer's merges, in order, as pairs of strings."""
    return [tuple(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
