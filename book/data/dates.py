"""Date translation: a seeded, offline data set for chapter 08 (made with babel, nothing downloaded).

A source sentence is a date written one of many ways ("Tuesday, March 5, 2024", "5 Mar 2024",
"03/05/2024", ...); the target is the same date in ISO form ("2024-03-05") or in Chinese
("2024年3月5日", with the weekday "星期二" appended only when the source names the weekday).
Each numeric format belongs to one locale, so it is never ambiguous: slashes are US
(month/day/year), dots are German (day.month.year).

Train and test are split **by date**: a test date never appears in training, in any format.
"""
from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from babel.dates import format_date


@dataclass(frozen=True)
class DateFormat:
    name: str
    pattern: str  # a CLDR/babel pattern
    locale: str
    has_weekday: bool


FORMATS = (
    DateFormat("US, full", "EEEE, MMMM d, y", "en_US", True),  # Tuesday, March 5, 2024
    DateFormat("US, long", "MMMM d, y", "en_US", False),  # March 5, 2024
    DateFormat("US, medium", "MMM d, y", "en_US", False),  # Mar 5, 2024
    DateFormat("US, short weekday", "EEE, MMM d, y", "en_US", True),  # Tue, Mar 5, 2024
    DateFormat("UK, full", "EEEE, d MMMM y", "en_GB", True),  # Tuesday, 5 March 2024
    DateFormat("UK, long", "d MMMM y", "en_GB", False),  # 5 March 2024
    DateFormat("UK, medium", "d MMM y", "en_GB", False),  # 5 Mar 2024
    DateFormat("UK, short weekday", "EEE d MMM y", "en_GB", True),  # Tue 5 Mar 2024
    DateFormat("US numeric", "MM/dd/y", "en_US", False),  # 03/05/2024
    DateFormat("German numeric", "dd.MM.y", "de_DE", False),  # 05.03.2024
)
TARGETS = ("iso", "zh", "zh_always_weekday", "pt_BR")
FIRST, LAST = dt.date(1950, 1, 1), dt.date(2049, 12, 31)


def render(date: dt.date, fmt: DateFormat) -> str:
    """The source sentence: ``date`` written in ``fmt``."""
    return format_date(date, fmt.pattern, locale=fmt.locale)


def target_text(date: dt.date, target: str, source_has_weekday: bool) -> str:
    """The translation of ``date`` into ``target`` (see TARGETS)."""
    if target == "iso":
        return date.isoformat()
    if target in ("zh", "zh_always_weekday"):
        text = f"{date.year}年{date.month}月{date.day}日"
        if source_has_weekday or target == "zh_always_weekday":
            text += format_date(date, "EEEE", locale="zh_CN")  # 星期二
        return text
    if target == "pt_BR":
        return format_date(date, "long", locale="pt_BR")  # 5 de março de 2024
    raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")


@dataclass
class DateSplit:
    train: list[dt.date]
    test: list[dt.date]


def split_dates(seed: int = 0, test_fraction: float = 0.1, first: dt.date = FIRST, last: dt.date = LAST) -> DateSplit:
    """Every day from ``first`` to ``last``, shuffled with ``seed`` and split into train/test dates."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    random.Random(seed).shuffle(days)
    n_test = int(len(days) * test_fraction)
    return DateSplit(train=days[n_test:], test=days[:n_test])


def examples(dates: Sequence[dt.date], target: str, seed: int = 0) -> list[tuple[str, str]]:
    """One (source, target) pair per date, each in a randomly chosen format (seeded)."""
    rng = random.Random(seed)
    pairs = []
    for date in dates:
        fmt = rng.choice(FORMATS)
        pairs.append((render(date, fmt), target_text(date, target, fmt.has_weekday)))
    return pairs


class CharVocab:
    """Characters of every source format and every target (and of ``extra``), plus <pad>, <bos>, <eos>."""

    PAD, BOS, EOS = 0, 1, 2
    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, extra: str = ""):
        year = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(366)]  # every month and weekday
        chars = set("0123456789") | set(extra)  # extra: characters of task prefixes (chapter 10)
        for d in year:
            for fmt in FORMATS:
                chars |= set(render(d, fmt))
            for target in TARGETS:
                chars |= set(target_text(d, target, True))
        self.itos = list(self.SPECIALS) + sorted(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown}")
        ids = [self.stoi[c] for c in text]
        return ([self.BOS] if bos else []) + ids + ([self.EOS] if eos else [])

    def decode(self, ids) -> str:
        """Characters up to the first <eos>, skipping <pad> and <bos>."""
        out = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            if i == self.EOS:
                break
            if i > self.EOS:
                out.append(self.itos[i])
        return "".join(out)

    def pad_batch(self, seqs: Sequence[list[int]]) -> torch.Tensor:
        """(B, T_max) long tensor, right-padded with <pad>."""
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [self.PAD] * (width - len(s)) for s in seqs], dtype=torch.long)


def encode_pairs(pairs: Sequence[tuple[str, str]], vocab: CharVocab) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources (B, S) without specials; targets (B, T) as <bos> ... <eos>."""
    src = vocab.pad_batch([vocab.encode(s) for s, _ in pairs])
    tgt = vocab.pad_batch([vocab.encode(t, bos=True, eos=True) for _, t in pairs])
    return src, tgt


def training_batches(dates: Sequence[dt.date], target: str, vocab: CharVocab, batch_size: int = 64,
                     seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of fresh (src, tgt) batches: random training dates in random formats."""
    rng = random.Random(seed)
    while True:
        chosen = [rng.choice(dates) for _ in range(batch_size)]
        yield encode_pairs(examples(chosen, target, seed=rng.randrange(2**31)), vocab)


# ----------------------------------------------------------------------------- one model, several tasks (chapter 10)
PREFIXES = {"iso": "to iso: ", "zh": "to zh: "}  # T5's way: the task is written into the input


def text_to_text_examples(dates: Sequence[dt.date], seed: int = 0, max_source_len: int | None = None,
                          min_source_len: int = 0) -> list[tuple[str, str]]:
    """One ("to iso: <date>" or "to zh: <date>", target) pair per date, task and format drawn at random.

    Only formats whose rendering of the date has between ``min_source_len`` and ``max_source_len``
    characters (prefix not counted) are drawn from; a date with no such format is skipped.
    """
    rng = random.Random(seed)
    pairs = []
    for date in dates:
        task = rng.choice(sorted(PREFIXES))
        fits = [f for f in FORMATS if min_source_len <= len(render(date, f)) <= (max_source_len or 10**9)]
        if fits:
            fmt = rng.choice(fits)
            pairs.append((PREFIXES[task] + render(date, fmt), target_text(date, task, fmt.has_weekday)))
    return pairs


def text_to_text_batches(dates: Sequence[dt.date], vocab: CharVocab, batch_size: int = 64, seed: int = 0,
                         max_source_len: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of (src, tgt) batches mixing both tasks (see ``text_to_text_examples``)."""
    rng = random.Random(seed)
    while True:
        pairs = []
        while len(pairs) < batch_size:
            chosen = [rng.choice(dates) for _ in range(batch_size - len(pairs))]
            pairs += text_to_text_examples(chosen, rng.randrange(2**31), max_source_len)
        yield encode_pairs(pairs, vocab)
