"""Graded exercises of chapter 09 — pretrained models: BPE, pooling, name maps, loading, counting.

The chapter prints ``book/bpe.py``, ``BertEmbeddings``, ``BertEncoder``, ``HF_BERT`` and
``load_bert`` in full, so none of them is an exercise: these make the learner derive one BPE
training step with its exact tie rule, turn hidden states into sentence embeddings by masked mean
pooling (the chapter uses ``mean_pool`` but does not print it), extend the name maps to another
checkpoint family (GPT-2: fused, Conv1D-layout weights), debug a broken loader of one BERT layer,
and predict MiniLM's parameter count from its shapes.

Nothing here needs the MiniLM package or a network: every case is a small, seeded, BERT- or
GPT-2-shaped state dict.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from book import bpe, convert
from book.grader import core
from book.grader.core import Case, Exercise, Mistake, Probe, bug_combinations
from book.layers import ACTIVATIONS, EncoderLayer, LayerOptions, causal_mask
from book.pretrained import BertConfig, BertEncoder

CHAPTER = "09_huggingface"


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _same(a, b) -> bool:
    """Deep equality of (nested) dicts, lists, tuples and tensors."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return (isinstance(a, Mapping) and isinstance(b, Mapping) and list(a) == list(b)
                and all(_same(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _changed_argument(names) -> str | None:
    """The name of an argument that the learner's function changed in place, or None.

    ``core.run_check`` hands the learner a deep copy of a case's arguments and compares the tensors
    among them afterwards, but not the dicts and lists this chapter passes (a BPE state, a
    checkpoint). A judge runs inside that check: it finds the copy the learner received in the
    check's frame and compares it with the case's originals.
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not core._run_check.__code__:
        frame = frame.f_back
    if frame is None:
        return None
    case, inputs = frame.f_locals.get("case"), frame.f_locals.get("inputs")
    if case is None or inputs is None:
        return None
    for name, before, after in zip(names, case.args, inputs):
        if not _same(before, after):
            return name
    return None


def _close(a, b, atol=1e-5, rtol=1e-4) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.detach().double().cpu(), b.detach().double().cpu(), atol=atol, rtol=rtol))


def _listing(names, n=4) -> str:
    names = sorted(names)
    shown = ", ".join(f"`{k}`" for k in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


# ============================================================================= 1. one BPE training step
def bpe_merge_step(splits, counts, vocab):
    """One step of BPE training: (the pair merged, every word's new symbols), as book.bpe does it."""
    pair = bpe.best_pair(bpe.pair_counts(splits, counts), vocab)
    return pair, {word: bpe.merge_pair(symbols, pair) for word, symbols in splits.items()}


def _bpe_state(words, merges=()):
    """(splits, counts, vocab) of a corpus {word: count} after ``merges``, as train_bpe holds them."""
    counts = dict(words)
    vocab = {c: i for i, c in enumerate(sorted({c for w in counts for c in w}))}
    splits = {w: list(w) for w in counts}
    for pair in merges:
        vocab.setdefault(pair[0] + pair[1], len(vocab))
        splits = {w: bpe.merge_pair(s, pair) for w, s in splits.items()}
    return splits, counts, vocab


_HAMLET = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
           "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
           "and by opposing end them. To die, to sleep, no more; and by a sleep to say we end the "
           "heart-ache and the thousand natural shocks that flesh is heir to.")


def _bpe_cases(g):
    _MUTATION["seen"] = False
    counts = bpe.word_counts([_HAMLET])
    learned = bpe.train_bpe([_HAMLET], vocab_size=len({c for c in _HAMLET}) + 12).merges
    return [
        Case("Hamlet's soliloquy after 12 merges (words with a leading space, ties between pairs)",
             _bpe_state(counts, learned)),
        Case("a tie between pairs with the same left symbol", _bpe_state({"cab": 2, "ce": 2, "fe": 2}, [("a", "b")])),
        Case("a tie between pairs where the newer token 'ab' (a larger id) comes first alphabetically",
             _bpe_state({"dd": 2, "abc": 2, "bc": 2, "cab": 1}, [("a", "b")])),
        Case("a tie where the left symbols' ids and the right symbols' ids disagree",
             _bpe_state({"ae": 2, "cb": 2, "de": 2})),
        Case("a word that occurs 9 times against 5 words that occur once",
             _bpe_state({"low": 9, "ox": 1, "fox": 1, "box": 1, "pox": 1, "sox": 1})),
        Case("a pair that occurs twice inside one word ('abab')", _bpe_state({"abab": 2, "cd": 3})),
        Case("pairs that occur twice inside words that occur once", _bpe_state({"abab": 1, "cd": 1, "ecd": 1})),
        Case("overlapping occurrences: the pair ('a', 'a') in 'aaa' and 'aaaaa'",
             _bpe_state({"aaa": 3, "aaaaa": 2, "ab": 1, " a": 1})),
        Case("symbols that end and begin with the pair's letters (a space inside a symbol, too)",
             _bpe_state({" bc": 2, "abc": 2, " b": 1, "bcb": 1, "c b": 3}, [("a", "b"), (" ", "b")])),
        Case("pairs that would only appear across two neighbouring words",
             _bpe_state({"xa": 2, "by": 2, "xa ": 1, "yq": 3, "qa": 1, "az": 3}, [("x", "a")])),
    ]


_MUTATION = {"seen": False}  # set by the judge when the learner changed an argument in place


def _pairs_weighted(splits, counts):
    pairs = {}
    for word, symbols in splits.items():
        for p in zip(symbols, symbols[1:]):
            pairs[p] = pairs.get(p, 0) + counts[word]
    return pairs


def _merge(symbols, pair, mode="ok"):
    """Every occurrence of pair merged, scanning left to right (or a classic wrong way)."""
    joined = pair[1] + pair[0] if mode == "right_left_glued" else pair[0] + pair[1]
    if mode == "from_characters":  # the word's earlier merges lost: start again from its characters
        symbols = list("".join(symbols))
    if mode == "string":  # " ".join, str.replace, split: matches across symbol boundaries
        return " ".join(symbols).replace(f"{pair[0]} {pair[1]}", joined).split(" ")
    if mode == "right_to_left":
        out, i = [], len(symbols) - 1
        while i >= 0:
            if i > 0 and (symbols[i - 1], symbols[i]) == pair:
                out.insert(0, joined)
                i -= 2
            else:
                out.insert(0, symbols[i])
                i -= 1
        return out
    out, i, done = [], 0, False
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair and not (mode == "first" and done):
            out.append(tuple(pair) if mode == "tuple" else joined)
            i += 1 if mode == "step_one" else 2
            done = True
        else:
            out.append(symbols[i])
            i += 1
    return out


def _bpe_variant(count="weighted", tie="ids", merge="ok", only_changed=False):
    def merge_step(splits, counts, vocab):
        pairs = {}
        if count in ("flat", "flat_repeated"):  # the words glued into one long sequence
            seq = [s for w, syms in splits.items() for s in syms * (counts[w] if count == "flat_repeated" else 1)]
            for p in zip(seq, seq[1:]):
                pairs[p] = pairs.get(p, 0) + 1
        else:
            for word, symbols in splits.items():
                found = list(zip(symbols, symbols[1:]))
                if count in ("once_per_word", "words_containing"):
                    found = list(dict.fromkeys(found))
                for p in found:
                    pairs[p] = pairs.get(p, 0) + (1 if count in ("unweighted", "words_containing") else counts[word])
        top = max(pairs.values())
        tied = [p for p, c in pairs.items() if c == top]
        pick = {
            "ids": lambda: min(tied, key=lambda p: (vocab[p[0]], vocab[p[1]])),
            "alphabetical": lambda: min(tied),
            "largest_ids": lambda: max(tied, key=lambda p: (vocab[p[0]], vocab[p[1]])),
            "first": lambda: tied[0],
            "last": lambda: tied[-1],
            "left_only": lambda: min(tied, key=lambda p: vocab[p[0]]),
            "right_first": lambda: min(tied, key=lambda p: (vocab[p[1]], vocab[p[0]])),
        }[tie]
        pair = pick()
        new = {w: _merge(s, pair, merge) for w, s in splits.items()}
        if only_changed:
            new = {w: s for w, s in new.items() if s != splits[w]}
        return pair, new

    return merge_step


def _mutated_probe(splits, counts, vocab):
    """Matches a learner's (right) result only after the judge has seen it change an argument."""
    if not _MUTATION["seen"]:
        raise LookupError("no argument was changed in place")
    return bpe_merge_step(splits, counts, vocab)


def _bpe_diagnose(pair, splits, counts, vocab):
    """A sentence about the learner's pair: not adjacent anywhere, not the most frequent, a lost tie."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
        return "return the pair as a tuple of two strings (left, right)"
    pair = tuple(pair)
    pairs = _pairs_weighted(splits, counts)
    if pair not in pairs:
        return (f"your pair {pair!r} is not two adjacent symbols of any one word: count pairs inside each "
                "word's own list, never across two words")
    top = max(pairs.values())
    if pairs[pair] < top:
        unweighted = {}
        for symbols in splits.values():
            for p in zip(symbols, symbols[1:]):
                unweighted[p] = unweighted.get(p, 0) + 1
        if unweighted.get(pair) == max(unweighted.values()):
            return (f"your pair {pair!r} is the most frequent only if every word counts once: a word that "
                    "occurs n times (counts[word]) adds n to each of its pairs")
        return (f"your pair {pair!r} is not among the most frequent pairs (each occurrence inside a word counts "
                "counts[word] times, a pair that occurs twice in a word counts twice)")
    return (f"your pair {pair!r} is one of the most frequent, but it loses the tie: among equally frequent pairs "
            "the one whose left symbol has the smallest id in vocab wins, then the smallest id on the right")


def _bpe_explain(got, want, splits, counts, vocab):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return "Return a tuple (pair, new_splits)"
    pair, new = got
    want_pair, want_new = want
    if not (isinstance(pair, (tuple, list)) and tuple(pair) == want_pair):
        said = _bpe_diagnose(pair, splits, counts, vocab)
        return said[0].upper() + said[1:]
    if not isinstance(new, Mapping):
        return f"Your pair is right; new_splits is {core._describe(new)}: return a dict {{word: list of symbols}}"
    missing, extra = set(want_new) - set(new), set(new) - set(want_new)
    if missing:
        return (f"Your pair is right; new_splits lacks {len(missing)} of the words (e.g. {sorted(missing)[0]!r}): "
                "return every word of splits, changed or not")
    if extra:
        return f"Your pair is right; new_splits has words that are not in splits, e.g. {sorted(extra)[0]!r}"
    wrong = [w for w in want_new if new[w] != want_new[w]]
    if any(not isinstance(new[w], list) or not all(isinstance(s, str) for s in new[w]) for w in wrong):
        return ("Your pair is right; give each word a list of strings — the merged symbol is one string, "
                "left + right")
    return (f"Your pair is right, but the merge is not: {len(wrong)} word(s) come out wrong, e.g. {wrong[0]!r}. "
            "Scan each word's symbols left to right; where the pair starts, emit left + right and jump past both")


def _bpe_judge(got, splits, counts, vocab):
    changed = _changed_argument(("splits", "counts", "vocab"))
    _MUTATION["seen"] = changed is not None
    if changed:
        return (f"your function changed its argument `{changed}` in place; the caller still needs it as it was: "
                "build a new dict of new lists (and leave vocab alone — the caller adds the new token)")
    pair = got[0]
    want = bpe_merge_step(splits, counts, vocab)[0]
    if isinstance(pair, list) and tuple(pair) == want:
        return "return the pair as a tuple, not a list (a tuple can be a dict key, as in BPE.ranks)"
    if tuple(pair) != want:
        return _bpe_diagnose(pair, splits, counts, vocab)
    return None


BPE_STEP = Exercise(
    id=f"{CHAPTER}/bpe_merge_step",
    title="One step of BPE training, ties included",
    reference=bpe_merge_step,
    cases=_bpe_cases,
    output_names=("pair", "new_splits"),
    judge=_bpe_judge,
    explain=_bpe_explain,
    forbidden=("book.bpe.pair_counts", "book.bpe.best_pair", "book.bpe.merge_pair", "book.bpe.train_bpe",
               "book.bpe.hf_bpe"),
    forbidden_why="count, choose and merge yourself (compare with book.bpe outside your function)",
    mistakes=[
        Mistake("ties broken alphabetically", _bpe_variant(tie="alphabetical"),
                "ties go by token ids, not by spelling: a merged token such as 'ab' gets a *larger* id than every "
                "character. Among equally frequent pairs take the one with the smallest (vocab[left], vocab[right])."),
        Mistake("ties broken by the largest ids", _bpe_variant(tie="largest_ids"),
                "among equally frequent pairs the *older* tokens win: the smallest (vocab[left], vocab[right])."),
        Mistake("ties broken by the order the pairs were found (max(pairs, key=pairs.get))", _bpe_variant(tie="first"),
                "max() and Counter.most_common return the first of equal counts, which depends on the order of the "
                "words. The rule is explicit: the smallest (vocab[left], vocab[right]) among the tied pairs."),
        Mistake("ties broken by the last pair found", _bpe_variant(tie="last"),
                "the winner of a tie must not depend on the order of the words: take the smallest "
                "(vocab[left], vocab[right]) among the equally frequent pairs."),
        Mistake("ties broken by the left symbol's id only", _bpe_variant(tie="left_only"),
                "when two tied pairs share their left symbol, the right symbol's id decides: compare "
                "(vocab[left], vocab[right]) as a tuple."),
        Mistake("ties broken by the right symbol's id first", _bpe_variant(tie="right_first"),
                "the left symbol's id decides first, the right one only between pairs with the same left symbol."),
        Mistake("every word counted once (counts ignored)", _bpe_variant(count="unweighted"),
                "splits holds each distinct word once; counts[word] says how often it occurs in the corpus: a pair "
                "inside that word occurs counts[word] times."),
        Mistake("a pair counted once per word, even where it occurs twice", _bpe_variant(count="once_per_word"),
                "count every adjacent position: in ['a', 'a', 'a'] the pair ('a', 'a') occurs twice."),
        Mistake("pairs counted by the number of words that contain them", _bpe_variant(count="words_containing"),
                "a pair's frequency is how often it occurs in the corpus: every position in a word, times "
                "counts[word]."),
        Mistake("pairs counted across word boundaries (all symbols in one list)", _bpe_variant(count="flat"),
                "BPE never merges across words: count the pairs inside each word's own list of symbols."),
        Mistake("pairs counted across word boundaries (each word repeated counts[word] times, then glued)",
                _bpe_variant(count="flat_repeated"),
                "repeating a word glues its last symbol to its first: count inside each word and multiply by "
                "counts[word] instead."),
        Mistake("the scan moving on by one symbol after a merge (overlapping merges)", _bpe_variant(merge="step_one"),
                "after merging symbols i and i + 1 continue at i + 2: both are used up. ['a', 'a', 'a'] with "
                "('a', 'a') gives ['aa', 'a']."),
        Mistake("the merge scanning from right to left", _bpe_variant(merge="right_to_left"),
                "scan left to right: ['a', 'a', 'a'] with ('a', 'a') gives ['aa', 'a'], not ['a', 'aa']."),
        Mistake("the merge done with str.replace on the symbols joined by spaces", _bpe_variant(merge="string"),
                "joining symbols with spaces and replacing 'l r' also matches across symbols ('ab c' contains "
                "'b c') and breaks symbols that contain a space. Compare whole symbols pairwise instead."),
        Mistake("only the first occurrence in each word merged", _bpe_variant(merge="first"),
                "merge every occurrence of the pair in a word, left to right, not just the first."),
        Mistake("the merged symbol glued the wrong way round (right + left)",
                _bpe_variant(merge="right_left_glued"),
                "the new symbol reads as the text does: left + right."),
        Mistake("the words started again from their characters (earlier merges lost)",
                _bpe_variant(merge="from_characters"),
                "splits holds each word's *current* symbols, the result of every earlier merge: merge the pair "
                "inside those lists, not inside list(word)."),
        Mistake("the merged symbol kept as a tuple instead of one string", _bpe_variant(merge="tuple"),
                "the new symbol is the two strings glued together, left + right: 'a' and 'b' give 'ab'."),
        Mistake("only the words that changed returned", _bpe_variant(only_changed=True),
                "return the new symbols of every word in splits, also of those the merge does not touch."),
        Mistake("an argument changed in place", _mutated_probe,
                "the caller keeps using splits (and counts, vocab) after your step: build new lists in a new dict "
                "instead of assigning into splits or editing its lists, and do not add to vocab."),
    ],
)


# ============================================================================= 2. masked mean pooling
def masked_mean_pool(hidden, attention_mask, normalize=True):
    """(B, T, d), (B, T) 1/True at real tokens -> (B, d): the mean over real tokens, unit length if normalize."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, d)
    return F.normalize(pooled, p=2, dim=-1) if normalize else pooled


def _pool_mask(lengths, T, left=False, dtype=torch.long):
    pos = torch.arange(T)[None, :]
    n = torch.tensor(lengths)[:, None]
    real = pos >= T - n if left else pos < n
    return real.to(dtype)


def _pool_hidden(g, B, T, d, mask, dtype=torch.float32):
    """Hidden states with an offset (so the mean is not ~0), padding positions given other values."""
    h = _randn(g, B, T, d) + _randn(g, 1, 1, d)
    pad = (mask == 0)[..., None]
    return torch.where(pad, 3.0 + 2 * _randn(g, B, T, d), h).to(dtype)


def _pool_cases(g):
    def case(name, B, T, d, lengths, *extra, left=False, mask_dtype=torch.long, dtype=torch.float32):
        mask = _pool_mask(lengths, T, left, mask_dtype)
        return Case(name, (_pool_hidden(g, B, T, d, mask, dtype), mask, *extra))

    return [
        case("one sentence, T = d_model = 6, 2 padding tokens (a long mask)", 1, 6, 6, [4]),
        case("B=3, T=7, d_model=16, lengths 7, 4 and 1 (a long mask, as the tokenizer returns it)", 3, 7, 16,
             [7, 4, 1]),
        case("a bool mask, B=2, T=5, d_model=8, lengths 5 and 2", 2, 5, 8, [5, 2], mask_dtype=torch.bool),
        case("padding on the left (lengths 3 and 5 of T=5), d_model=8", 2, 5, 8, [3, 5], left=True),
        case("normalize=False: the plain mean, B=3, T=6, d_model=12, lengths 6, 2, 5", 3, 6, 12, [6, 2, 5], False),
        case("normalize=False, float64 hidden states, B=2, T=9, d_model=4, lengths 9 and 3", 2, 9, 4, [9, 3], False,
             dtype=torch.float64),
    ]


def _finish(pooled, normalize, how="l2"):
    if not normalize:
        return pooled
    if how == "dim0":
        return F.normalize(pooled, dim=0)
    if how == "squared":
        return pooled / (pooled ** 2).sum(-1, keepdim=True)
    if how == "l1":
        return pooled / pooled.abs().sum(-1, keepdim=True)
    return F.normalize(pooled, dim=-1)


def _pool_variant(pool="mean", norm="flag", how="l2"):
    def pool_fn(hidden, attention_mask, normalize=True):
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        B, T, _ = hidden.shape
        x = F.normalize(hidden, dim=-1) if norm in ("tokens", "tokens_and_mean") else hidden
        if pool == "plain":
            pooled = x.mean(1)
        elif pool == "by_T":
            pooled = (x * m).sum(1) / T
        elif pool == "sum":
            pooled = (x * m).sum(1)
        elif pool == "cls":
            pooled = x[:, 0]
        elif pool == "features":  # the (B, T) mask multiplied against the last two axes, (T, d)
            pooled = (x * attention_mask).sum(1) / attention_mask.sum(1, keepdim=True)
        elif pool == "indices":  # the mask used as an index, sentence by sentence
            pooled = torch.stack([x[b][attention_mask[b]].mean(0) for b in range(B)])
        elif pool == "first_n":  # the first n tokens, as if padding always sat on the right
            pooled = torch.stack([x[b, : int(attention_mask[b].sum())].mean(0) for b in range(B)])
        elif pool == "inverted":
            pooled = (x * (1 - m)).sum(1) / (1 - m).sum(1)
        elif pool == "max":
            pooled = x.masked_fill(m == 0, float("-inf")).amax(1)
        else:
            pooled = (x * m).sum(1) / m.sum(1)
        if norm in ("tokens", "never"):
            return pooled
        if norm == "always":
            return F.normalize(pooled, dim=-1)
        return _finish(pooled, normalize, how)

    return pool_fn


def _pool_explain(got, want, hidden, attention_mask, normalize=True):
    if not isinstance(got, torch.Tensor):
        return None
    B, T, d = hidden.shape
    if got.shape == (B, 1, d):
        return "Drop the token axis: sum over dim 1 without keepdim (or squeeze it) to get (B, d_model)"
    if got.shape == (B, T, d):
        return "Pool over the tokens (dim 1): one vector per sentence, (B, d_model)"
    if got.shape == (T, d):
        return "That is an average over the batch (dim 0); pool over each sentence's tokens (dim 1) instead"
    if got.shape != want.shape:
        return None
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    lengths = g.norm(dim=-1)
    if normalize and not torch.allclose(lengths, torch.ones_like(lengths), atol=1e-4):
        if torch.allclose(F.normalize(g, dim=-1), w, atol=1e-4):
            return ("The direction is right but the vectors are not of length 1: with normalize=True divide each "
                    "by its L2 norm (F.normalize(x, dim=-1))")
        return "With normalize=True every sentence vector must have length 1 (L2 norm over d_model)"
    if not normalize and torch.allclose(lengths, torch.ones_like(lengths), atol=1e-4):
        return "With normalize=False return the mean itself, not scaled to length 1"
    if torch.allclose(F.normalize(g, dim=-1), F.normalize(w, dim=-1), atol=1e-4):
        return ("The direction is right but not the size: the mean divides the sum over the real tokens by their "
                "number (attention_mask.sum(1)), per sentence")
    return ("The vectors point the wrong way: average exactly the tokens where attention_mask is 1 — padding may "
            "sit anywhere (on the left too) and holds numbers that must not count")


POOL = Exercise(
    id=f"{CHAPTER}/masked_mean_pool",
    title="Sentence embeddings: the mean over the real tokens",
    reference=masked_mean_pool,
    cases=_pool_cases,
    explain=_pool_explain,
    forbidden=("book.pretrained.mean_pool",),
    forbidden_why="write the pooling yourself",
    mistakes=[
        Mistake("the mask multiplied against the features ((B, T) broadcast over (T, d_model))",
                _pool_variant(pool="features"),
                "a (B, T) mask lines up with the *last* two axes of (B, T, d_model) — tokens against features. "
                "Give it a feature axis first: attention_mask[..., None] (B, T, 1)."),
        Mistake("padding counted (a plain mean over all T positions)", _pool_variant(pool="plain"),
                "padding positions hold numbers too: multiply by the mask (B, T, 1) before summing, and divide "
                "by the number of real tokens."),
        Mistake("the masked sum divided by T instead of the number of real tokens", _pool_variant(pool="by_T"),
                "each sentence has its own length: divide by attention_mask.sum(1), not by the padded length T."),
        Mistake("the masked sum without dividing by the number of real tokens", _pool_variant(pool="sum"),
                "a mean divides the sum by how many tokens went into it: attention_mask.sum(1) per sentence."),
        Mistake("the result not normalised", _pool_variant(norm="never"),
                "with normalize=True scale each sentence vector to length 1: divide by its L2 norm over d_model."),
        Mistake("normalised even with normalize=False", _pool_variant(norm="always"),
                "normalize=False asks for the plain masked mean."),
        Mistake("each token normalised instead of the mean", _pool_variant(norm="tokens"),
                "sentence-transformers normalises once, after pooling: mean first, then divide the mean by its norm."),
        Mistake("the tokens normalised before pooling (and the mean again)", _pool_variant(norm="tokens_and_mean"),
                "normalise once, after pooling: mean over the real tokens first, then scale that mean to length 1."),
        Mistake("only the [CLS] token (position 0) used", _pool_variant(pool="cls"),
                "MiniLM's sentence vector is the mean over all real tokens, not the first token's state."),
        Mistake("the integer mask used as an index (hidden[b][attention_mask[b]])", _pool_variant(pool="indices"),
                "a long tensor used as an index picks rows 1 and 0 — it is not a selection. Make it bool first "
                "(attention_mask.bool()), or multiply by the mask as floats."),
        Mistake("the first attention_mask.sum() tokens averaged (padding assumed on the right)",
                _pool_variant(pool="first_n"),
                "padding may sit on the left: use the mask itself, position by position, not a length."),
        Mistake("the mean over the padding (the mask read the wrong way round)", _pool_variant(pool="inverted"),
                "attention_mask is 1 at real tokens and 0 at padding: average where it is 1."),
        Mistake("the maximum over the real tokens instead of the mean", _pool_variant(pool="max"),
                "mean pooling: sum the real tokens' vectors and divide by their number."),
        Mistake("normalised over the batch (dim 0) instead of each vector", _pool_variant(how="dim0"),
                "each sentence vector gets length 1 on its own: the norm runs over d_model, dim=-1."),
        Mistake("divided by the squared length", _pool_variant(how="squared"),
                "the L2 norm is the square root of the sum of squares: x / x.norm(dim=-1, keepdim=True)."),
        Mistake("divided by the sum of absolute values (L1) instead of the L2 norm", _pool_variant(how="l1"),
                "sentence-transformers scales to unit *Euclidean* length: divide by the square root of the sum of "
                "squares."),
    ],
)


# ============================================================================= 3. GPT-2's names -> the book's
def _gpt2_state(g, d, n_layer, buffers=False, vocab=24, n_ctx=8):
    """A small GPT-2-style checkpoint in Hugging Face's names (Conv1D weights: (in, out))."""
    state = {"wte.weight": _randn(g, vocab, d), "wpe.weight": _randn(g, n_ctx, d, scale=0.1)}
    for i in range(n_layer):
        p = f"h.{i}."
        state[p + "ln_1.weight"] = 1 + _randn(g, d, scale=0.2)
        state[p + "ln_1.bias"] = _randn(g, d, scale=0.2)
        if buffers:  # older transformers saved the causal mask with the weights
            state[p + "attn.bias"] = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))[None, None]
        state[p + "attn.c_attn.weight"] = _randn(g, d, 3 * d, scale=d ** -0.5)
        state[p + "attn.c_attn.bias"] = _randn(g, 3 * d, scale=0.3)
        state[p + "attn.c_proj.weight"] = _randn(g, d, d, scale=d ** -0.5)
        state[p + "attn.c_proj.bias"] = _randn(g, d, scale=0.3)
        state[p + "ln_2.weight"] = 1 + _randn(g, d, scale=0.2)
        state[p + "ln_2.bias"] = _randn(g, d, scale=0.2)
        state[p + "mlp.c_fc.weight"] = _randn(g, d, 4 * d, scale=d ** -0.5)
        state[p + "mlp.c_fc.bias"] = _randn(g, 4 * d, scale=0.3)
        state[p + "mlp.c_proj.weight"] = _randn(g, 4 * d, d, scale=(4 * d) ** -0.5)
        state[p + "mlp.c_proj.bias"] = _randn(g, d, scale=0.3)
    state["ln_f.weight"], state["ln_f.bias"] = 1 + _randn(g, d, scale=0.2), _randn(g, d, scale=0.2)
    return state


def _gpt2_cases(g):
    return [
        Case("2 blocks, d_model=8, block 0", (_gpt2_state(g, 8, 2), 0)),
        Case("3 blocks, d_model=12, block 2 (the last)", (_gpt2_state(g, 12, 3), 2)),
        Case("12 blocks, d_model=8, block 1 (its neighbours in the names: h.10, h.11)", (_gpt2_state(g, 8, 12), 1)),
        Case("an older checkpoint that also saved causal-mask buffers (h.{i}.attn.bias), d_model=16, block 1",
             (_gpt2_state(g, 16, 2, buffers=True), 1)),
        Case("4 blocks, d_model=6, block 3", (_gpt2_state(g, 6, 4), 3)),
    ]


def _gpt2_variant(transpose="all", split_dim=1, order="qkv", bias="split", norms="ok", block="i",
                  ffn="ok", biases=True):
    def to_book(state, i):
        p = f"h.{0 if block == 'zero' else i}."
        t_attn = (lambda w: w.T) if transpose == "all" else (lambda w: w)
        t_mlp = (lambda w: w) if transpose == "none" else (lambda w: w.T)
        w_qkv = state[p + "attn.c_attn.weight"]
        if split_dim == 0:
            parts = [w.T for w in w_qkv.chunk(3, dim=0)]
        else:
            parts = [t_attn(w) for w in w_qkv.chunk(3, dim=1)]
        b_parts = state[p + "attn.c_attn.bias"].chunk(3) if bias == "split" else [state[p + "attn.c_attn.bias"]] * 3
        idx = {"qkv": (0, 1, 2), "kqv": (1, 0, 2), "qvk": (0, 2, 1)}[order]
        out = {}
        for name, j in zip(("w_q", "w_k", "w_v"), idx):
            out[f"self_attn.{name}.weight"] = parts[j]
            out[f"self_attn.{name}.bias"] = b_parts[j]
        out["self_attn.w_o.weight"] = t_attn(state[p + "attn.c_proj.weight"])
        out["self_attn.w_o.bias"] = state[p + "attn.c_proj.bias"]
        if ffn == "by_shape":  # linear1 is (4d, d): mlp.c_proj already has that shape, c_fc has linear2's
            out["ffn.linear1.weight"], out["ffn.linear2.weight"] = (state[p + "mlp.c_proj.weight"],
                                                                    state[p + "mlp.c_fc.weight"])
        else:
            out["ffn.linear1.weight"] = t_mlp(state[p + "mlp.c_fc.weight"])
            out["ffn.linear2.weight"] = t_mlp(state[p + "mlp.c_proj.weight"])
        out["ffn.linear1.bias"] = state[p + "mlp.c_fc.bias"]
        out["ffn.linear2.bias"] = state[p + "mlp.c_proj.bias"]
        n1, n2 = ("ln_2", "ln_1") if norms == "swapped" else ("ln_1", "ln_2")
        for ours, theirs in (("norm1", n1), ("norm2", n2)):
            out[f"{ours}.weight"], out[f"{ours}.bias"] = state[p + f"{theirs}.weight"], state[p + f"{theirs}.bias"]
        if not biases:
            out = {k: v for k, v in out.items() if not k.endswith(".bias")}
        return out

    return to_book


gpt2_block_to_book = _gpt2_variant()  # the reference answer (tests/test_ch09_pretrained.py names it)


def _gpt2_forward(state, i, x, num_heads):
    """GPT-2's block computed straight from its own names and layout (x @ W + b): the ground truth."""
    p = f"h.{i}."

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], state[p + name + ".weight"], state[p + name + ".bias"], 1e-5)

    def conv1d(t, name):  # Hugging Face's Conv1D: weight (in, out)
        return t @ state[p + name + ".weight"] + state[p + name + ".bias"]

    B, T, d = x.shape
    q, k, v = conv1d(ln(x, "ln_1"), "attn.c_attn").split(d, dim=-1)

    def heads(t):
        return t.view(B, T, num_heads, d // num_heads).transpose(1, 2)

    a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    x = x + conv1d(a.transpose(1, 2).reshape(B, T, d), "attn.c_proj")
    return x + conv1d(F.gelu(conv1d(ln(x, "ln_2"), "mlp.c_fc"), approximate="tanh"), "mlp.c_proj")


def _which_tensor(t, expected, key):
    """How the learner's tensor ``t`` for ``key`` relates to the right tensors: a short phrase."""
    want = expected[key]
    if t.dim() == 2 and t.shape == want.shape[::-1] == want.shape and _close(t.T, want):
        return f"`{key}` is transposed"
    for other, w in expected.items():
        if other != key and _close(t, w):
            return f"`{key}` holds the numbers meant for `{other}`"
        if other != key and t.dim() == 2 and t.shape == w.shape[::-1] and _close(t.T, w):
            return f"`{key}` holds the numbers meant for `{other}`, transposed"
    return f"`{key}` holds the wrong numbers"


def _state_problems(got, expected, prefix=None):
    """A sentence naming missing/unexpected keys, non-tensors or wrong shapes; None if all fit."""
    if not isinstance(got, Mapping):
        return f"your result is {core._describe(got)}; return a dict {{the book's parameter name: tensor}}"
    not_tensors = [k for k, v in got.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return f"every value must be a tensor; {_listing(not_tensors)} is not"
    missing, unexpected = set(expected) - set(got), set(got) - set(expected)
    if missing or unexpected:
        said = []
        if prefix and any(str(k).startswith(prefix) for k in unexpected):
            said.append(f"your names still start with `{prefix}`: the layer's own names have no block prefix")
        if any(str(k).endswith("attn.bias") for k in unexpected):
            said.append("`attn.bias` in a GPT-2 checkpoint is the causal mask saved as a buffer, not a weight: "
                        "skip it (the book builds masks itself)")
        if missing:
            said.append(f"missing {_listing(missing)}")
        if unexpected:
            said.append(f"unexpected {_listing(unexpected)}")
        return "the names do not fit the book's EncoderLayer: " + "; ".join(said)
    wrong = [k for k in expected if tuple(got[k].shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        msg = (f"{len(wrong)} tensor(s) have the wrong shape, e.g. `{k}` is {tuple(got[k].shape)} where the layer "
               f"needs {tuple(expected[k].shape)}")
        if got[k].dim() == 2 and tuple(got[k].shape) == tuple(expected[k].shape)[::-1]:
            msg += " — transposed: GPT-2's Conv1D stores (in, out), nn.Linear (out, in)"
        return msg
    return None


def _gpt2_layer(d, d_ff):
    return EncoderLayer(d, 2, d_ff, norm_first=True, options=LayerOptions(activation="gelu_tanh")).eval()


def _gpt2_judge(got, state, i):
    expected = gpt2_block_to_book(state, i)
    problem = _state_problems(got, expected, prefix=f"h.{i}.")
    if problem:
        return problem
    if _changed_argument(("state", "i")):
        return ("your function changed the checkpoint it was given (a tensor edited in place, or names added "
                "or removed): read from it, and build a new dict")
    d, d_ff = expected["norm1.weight"].numel(), expected["ffn.linear1.bias"].numel()
    layer = _gpt2_layer(d, d_ff)
    try:
        layer.load_state_dict({k: v.detach().float() for k, v in got.items()})
    except Exception as e:
        return f"your dict could not be loaded into EncoderLayer ({type(e).__name__})"
    x = torch.randn(2, 5, d, generator=torch.Generator().manual_seed(d + i))
    with torch.no_grad():
        ours, theirs = layer(x, causal_mask(5)), _gpt2_forward(state, i, x, 2)
    if _close(ours, theirs):
        return None
    wrong = [_which_tensor(got[k].detach(), expected, k) for k in expected if not _close(got[k], expected[k])]
    more = "; ".join(wrong[:3]) + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
    return (f"loaded into a pre-LN EncoderLayer, your tensors do not compute GPT-2's block: {more}"
            if wrong else "loaded into a pre-LN EncoderLayer, your tensors do not compute GPT-2's block")


def _state_probe(plain):
    """A catalogued mistake for a dict result: equal to a learner's dict with the same keys and tensors."""
    def probe(*args):
        want = plain(*args)
        return Probe(lambda got: isinstance(got, Mapping) and set(got) == set(want)
                      and all(_close(got[k], want[k], atol=1e-6, rtol=0) for k in want))

    probe.plain = plain
    return probe


GPT2_MAP = Exercise(
    id=f"{CHAPTER}/gpt2_block_to_book",
    title="Another checkpoint family: GPT-2's names and layout",
    reference=None,  # judged: names, shapes, then the block's output against GPT-2's own computation
    cases=_gpt2_cases,
    judge=_gpt2_judge,
    mistakes=[
        Mistake("the Conv1D weights copied without a transpose", _state_probe(_gpt2_variant(transpose="none")),
                "GPT-2's Conv1D computes x @ W + b with W stored (in, out); nn.Linear stores (out, in) and computes "
                "x @ W.T + b. Every weight matrix needs .T — the square ones too, where no shape error warns you."),
        Mistake("only the non-square (MLP) weights transposed", _state_probe(_gpt2_variant(transpose="mlp")),
                "the attention's matrices are square, so loading them untransposed raises no error — but they are "
                "in Conv1D's (in, out) layout too: transpose q, k, v and c_proj as well."),
        Mistake("the fused c_attn weight split on the wrong dim", _state_probe(_gpt2_variant(split_dim=0)),
                "c_attn.weight is (d_model, 3·d_model): the outputs [q | k | v] are its *columns*. Split on dim 1 "
                "(or transpose first, then split on dim 0)."),
        Mistake("query and key columns swapped", _state_probe(_gpt2_variant(order="kqv")),
                "c_attn's outputs come in the order query, key, value: the first d_model columns are W_Q."),
        Mistake("key and value columns swapped", _state_probe(_gpt2_variant(order="qvk")),
                "c_attn's outputs come in the order query, key, value: the last d_model columns are W_V."),
        Mistake("the fused bias not split (all 3·d_model entries given to q, k and v)",
                _state_probe(_gpt2_variant(bias="whole")),
                "c_attn.bias (3·d_model,) is fused like the weight: split it into three (d_model,) pieces, in the "
                "same order."),
        Mistake("ln_1 and ln_2 swapped", _state_probe(_gpt2_variant(norms="swapped")),
                "in a pre-LN block ln_1 normalises the attention's input (the book's norm1) and ln_2 the MLP's "
                "input (norm2)."),
        Mistake("block 0 loaded whatever the block index", _state_probe(_gpt2_variant(block="zero")),
                "block i's tensors are the ones named h.{i}.…: build the prefix from the index you are given."),
        Mistake("the MLP's matrices matched by shape (mlp.c_proj into linear1, c_fc into linear2)",
                _state_probe(_gpt2_variant(transpose="none", ffn="by_shape")),
                "matching tensors by shape is a trap: c_fc widens d_model -> 4·d_model (linear1), c_proj narrows "
                "back (linear2). Transpose each from (in, out) to (out, in) instead."),
        Mistake("the biases left out", _state_probe(_gpt2_variant(biases=False)),
                "every c_attn, c_proj and c_fc has a bias, and each LayerNorm a shift (.bias): map them all."),
    ],
)


# ============================================================================= 4. find and fix: one BERT layer
_BERT_NAMES = {  # the book's module -> Hugging Face's, inside one layer
    "self_attn.w_q": "attention.self.query",
    "self_attn.w_k": "attention.self.key",
    "self_attn.w_v": "attention.self.value",
    "self_attn.w_o": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "ffn.linear1": "intermediate.dense",
    "ffn.linear2": "output.dense",
    "norm2": "output.LayerNorm",
}

BERT_BUGS = {  # the three bugs of the notebook's buggy_load_bert_layer
    "kv": ("key and value swapped", "the book's w_k takes attention.self.key and w_v takes attention.self.value."),
    "w_o": ("the attention's output weight transposed",
            "Hugging Face's BERT uses nn.Linear, which already stores (out, in), like the book: no transpose "
            "anywhere — a square matrix raises no shape error when it is wrong."),
    "eps": ("the LayerNorms' eps left at 1e-5",
            "BERT's LayerNorms use cfg.norm_eps (1e-12 for MiniLM): pass LayerOptions(..., norm_eps=cfg.norm_eps). "
            "Look at layer.norm1.eps."),
}


def _bert_variant(bugs=(), qk=False, pre_ln=False, norms_swapped=False, layer0=False, all_transposed=False,
                  eps=None, no_options=False):
    """The notebook's loader with the given bugs left in (all three: the function as given), or other slips."""
    def load_layer(state, layer_index, cfg):
        hf = f"encoder.layer.{0 if layer0 else layer_index}."
        norm_eps = eps if eps is not None else 1e-5 if "eps" in bugs else cfg.norm_eps
        options = LayerOptions() if no_options else LayerOptions(activation=cfg.activation, norm_eps=norm_eps)
        device = state[hf + "attention.self.query.weight"].device
        layer = EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, norm_first=pre_ln, options=options).to(device)
        names = dict(_BERT_NAMES)
        if "kv" in bugs:
            names["self_attn.w_k"], names["self_attn.w_v"] = names["self_attn.w_v"], names["self_attn.w_k"]
        if qk:
            names["self_attn.w_q"], names["self_attn.w_k"] = names["self_attn.w_k"], names["self_attn.w_q"]
        if norms_swapped:
            names["norm1"], names["norm2"] = names["norm2"], names["norm1"]
        ours = {}
        for mine, theirs in names.items():
            for leaf in ("weight", "bias"):
                ours[f"{mine}.{leaf}"] = state[hf + f"{theirs}.{leaf}"]
        transposed = ("self_attn.w_q", "self_attn.w_k", "self_attn.w_v", "self_attn.w_o") if all_transposed else (
            ("self_attn.w_o",) if "w_o" in bugs else ())
        for mine in transposed:
            ours[f"{mine}.weight"] = ours[f"{mine}.weight"].T
        layer.load_state_dict(ours)
        return layer.eval()

    return load_layer


load_bert_layer = _bert_variant()  # the reference answer (tests/test_ch09_pretrained.py names it)


def _bert_state(g, cfg, attention_scale=1.0):
    """A random BERT checkpoint of shape ``cfg`` in Hugging Face's names (pooler and position ids included)."""
    ours = {}
    for name, t in BertEncoder(cfg).state_dict().items():
        if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            ours[name] = 1 + _randn(g, *t.shape, scale=0.2)
        elif name.endswith(".bias"):
            ours[name] = _randn(g, *t.shape, scale=0.2)
        else:
            ours[name] = _randn(g, *t.shape, scale=t.shape[-1] ** -0.5)
        if ".self_attn." in name:
            ours[name] = ours[name] * attention_scale
    state = convert.from_book(ours, convert.HF_BERT)
    d = cfg.d_model
    state["pooler.dense.weight"], state["pooler.dense.bias"] = _randn(g, d, d, scale=d ** -0.5), _randn(g, d)
    state["embeddings.position_ids"] = torch.arange(cfg.max_len)[None]
    return state


def _bert_cfg(d, h, d_ff, layers, eps=1e-12):
    return BertConfig(vocab_size=40, max_len=16, d_model=d, num_heads=h, d_ff=d_ff, num_layers=layers, norm_eps=eps)


def _bert_cases(g):
    c1, c2, c3, c4, c5 = (_bert_cfg(8, 2, 32, 2), _bert_cfg(12, 3, 48, 3), _bert_cfg(16, 4, 64, 2),
                          _bert_cfg(8, 2, 16, 3, eps=1e-6), _bert_cfg(8, 4, 32, 2))
    return [
        Case("2 layers, d_model=8, 2 heads, layer 1", (_bert_state(g, c1), 1, c1)),
        Case("3 layers, d_model=12, 3 heads, layer 2", (_bert_state(g, c2), 2, c2)),
        Case("2 layers, d_model=16, 4 heads, layer 0", (_bert_state(g, c3), 0, c3)),
        Case("a config with norm_eps=1e-6, 3 layers, d_model=8, layer 1", (_bert_state(g, c4), 1, c4)),
        Case("small attention weights and biases (the first LayerNorm sees activations of about 1e-3), layer 1",
             (_bert_state(g, c5, attention_scale=1e-3), 1, c5)),
    ]


def _bert_inputs(d, seed):
    """(x of normal size, x of size 1e-3, bool padding mask (B, T)): what the layers are run on."""
    x = torch.randn(2, 6, d, generator=torch.Generator().manual_seed(seed))
    return x, x * 1e-3, torch.arange(6)[None, :] < torch.tensor([[6], [4]])


def _bert_forward(state, i, cfg, x, is_real):
    """BERT's layer computed straight from Hugging Face's names (post-LN, exact GELU): the ground truth."""
    p = f"encoder.layer.{i}."

    def lin(t, name):
        return F.linear(t, state[p + name + ".weight"], state[p + name + ".bias"])

    def ln(t, name):
        return F.layer_norm(t, t.shape[-1:], state[p + name + ".weight"], state[p + name + ".bias"], cfg.norm_eps)

    B, T, d = x.shape

    def heads(t):
        return t.view(B, T, cfg.num_heads, d // cfg.num_heads).transpose(1, 2)

    q, k, v = (heads(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=is_real[:, None, None, :])
    x = ln(x + lin(a.transpose(1, 2).reshape(B, T, d), "attention.output.dense"), "attention.output.LayerNorm")
    return ln(x + lin(ACTIVATIONS[cfg.activation](lin(x, "intermediate.dense")), "output.dense"), "output.LayerNorm")


def _run_layer(layer, x, is_real):
    with torch.no_grad():
        return layer(x, is_real[:, None, None, :])


def _eps_of(layer):
    return tuple(getattr(getattr(layer, n, None), "eps", None) for n in ("norm1", "norm2"))


def _bert_judge(got, state, i, cfg):
    if not isinstance(got, nn.Module):
        return f"your result is {core._describe(got)}; return the layer itself (an EncoderLayer, an nn.Module)"
    if _changed_argument(("state", "layer_index", "cfg")):
        return "your function changed the checkpoint it was given: read from it, don't edit it"
    x, tiny, is_real = _bert_inputs(cfg.d_model, cfg.d_model + i)
    try:
        outs = [_run_layer(got, t, is_real) for t in (x, tiny)]
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        return f"your layer raised {type(e).__name__} when run on (2, 6, {cfg.d_model}) inputs with a padding mask: {msg}"
    wants = [_bert_forward(state, i, cfg, t, is_real) for t in (x, tiny)]
    eps = _eps_of(got)
    said = []
    if any(e is not None and e != cfg.norm_eps for e in eps):
        said.append(f"norm1.eps and norm2.eps are {eps[0]:g} and {eps[1]:g}, but this checkpoint's LayerNorms "
                    f"use cfg.norm_eps = {cfg.norm_eps:g}")
    if all(_close(o, w) for o, w in zip(outs, wants)) and not said:
        return None
    if getattr(got, "norm_first", False):
        said.append("the layer is pre-LN (norm_first=True); BERT is post-LN")
    heads = getattr(getattr(got, "self_attn", None), "num_heads", cfg.num_heads)
    if heads != cfg.num_heads:
        said.append(f"its attention has {heads} heads; the config says cfg.num_heads = {cfg.num_heads}")
    if got.training and any(isinstance(m, nn.Dropout) and m.p > 0 for m in got.modules()):
        said.append("the layer is in training mode with dropout: return it in eval mode (layer.eval())")
    ffn = getattr(got, "ffn", None)
    if ffn is not None and getattr(ffn, "activation", ACTIVATIONS[cfg.activation]) is not ACTIVATIONS[cfg.activation]:
        said.append(f"the FFN's activation is not cfg.activation ({cfg.activation!r})")
    prefix = f"layers.{i}."
    expected = {k[len(prefix):]: v for k, v in convert.to_book(state, convert.HF_BERT).items() if k.startswith(prefix)}
    mine = got.state_dict()
    if set(mine) == set(expected):
        said += [_which_tensor(mine[k], expected, k) for k in expected if not _close(mine[k], expected[k])][:3]
    if not said:
        said.append("its outputs differ from BERT's layer on the same inputs")
    return "run on the same inputs, your layer does not compute BERT's: " + "; ".join(said)


def _layer_probe(plain):
    """A catalogued mistake for a module result: equal to a learner's layer that behaves the same way."""
    def probe(state, i, cfg):
        want = plain(state, i, cfg)
        x, tiny, is_real = _bert_inputs(cfg.d_model, 12345)

        def same(got):
            return (isinstance(got, nn.Module) and _eps_of(got) == _eps_of(want)
                    and all(_close(_run_layer(got, t, is_real), _run_layer(want, t, is_real)) for t in (x, tiny)))

        return Probe(same)

    probe.plain = plain
    return probe


def _bert_mistakes():
    out = bug_combinations(BERT_BUGS, lambda combo: _layer_probe(_bert_variant(combo)),
                           ("it runs without an error, but compare it with the chapter's HF_BERT map and with "
                            "load_bert's layer: look at which tensors go where, at the layouts, at the LayerNorms."))
    out += [
        Mistake("query and key swapped", _layer_probe(_bert_variant(qk=True)),
                "w_q takes attention.self.query, w_k attention.self.key, w_v attention.self.value."),
        Mistake("the layer built pre-LN (norm_first=True)", _layer_probe(_bert_variant(pre_ln=True)),
                "BERT normalises after each residual sum (post-LN): norm_first=False."),
        Mistake("the two LayerNorms swapped", _layer_probe(_bert_variant(norms_swapped=True)),
                "attention.output.LayerNorm follows the attention (norm1); output.LayerNorm follows the FFN (norm2)."),
        Mistake("layer 0 loaded whatever the index", _layer_probe(_bert_variant(layer0=True)),
                "layer i's tensors are named encoder.layer.{i}.…: build the prefix from layer_index."),
        Mistake("every attention matrix transposed", _layer_probe(_bert_variant(all_transposed=True)),
                "BERT's attention uses nn.Linear, stored (out, in) like the book's: copy the matrices as they are."),
        Mistake("eps hard-coded as 1e-12 instead of cfg.norm_eps", _layer_probe(_bert_variant(eps=1e-12)),
                "1e-12 is MiniLM's value; another checkpoint may differ: use cfg.norm_eps."),
        Mistake("LayerOptions left out (ReLU and eps 1e-5, the 2017 defaults)", _layer_probe(_bert_variant(no_options=True)),
                "BERT uses GELU and its own eps: LayerOptions(activation=cfg.activation, norm_eps=cfg.norm_eps)."),
    ]
    return out


BERT_LAYER = Exercise(
    id=f"{CHAPTER}/load_bert_layer",
    title="Find and fix the bugs: loading one BERT layer",
    reference=None,  # judged: the layer's output against BERT's own computation, then which tensor is wrong
    cases=_bert_cases,
    judge=_bert_judge,
    forbidden=("book.convert.to_book", "book.convert.load", "book.convert.HF_BERT", "book.pretrained.load_bert",
               "book.pretrained.minilm"),
    forbidden_why="fix the given loader itself rather than call the chapter's finished one",
    mistakes=_bert_mistakes(),
)


# ============================================================================= 5. predict MiniLM's size
def _count(slip=None, cfg=BertConfig()):
    """The three counts, computed right or with one classic slip."""
    d, f = cfg.d_model, cfg.d_ff
    bias = slip != "no_bias"
    norm = d if slip == "ln_gamma_only" else 2 * d  # a LayerNorm: a weight and a bias of d_model each
    emb_norm = 0 if slip in ("no_ln", "no_emb_ln") else norm
    layer_norms = 0 if slip in ("no_ln", "no_layer_ln") else (1 if slip == "one_ln" else 2) * norm
    rows = (cfg.vocab_size + (0 if slip == "no_positions" else cfg.max_len)
            + (0 if slip == "no_types" else cfg.type_vocab_size))
    embeddings = rows * d + emb_norm if slip != "token_table_only" else cfg.vocab_size * d
    attention = (3 if slip == "no_w_o" else 4) * (d * d + (d if bias else 0))
    ffn = 2 * d * f + (f + d if bias and slip != "no_ffn_bias" else 0)
    per_layer = attention + ffn + layer_norms
    layers = {"twelve_layers": 12, "one_layer": 1}.get(slip, cfg.num_layers)
    total = ((0 if slip == "no_embeddings" else embeddings) + layers * per_layer
             + (d * d + d if slip == "pooler" else 0))
    return {"embeddings": embeddings, "per_layer": per_layer, "total_encoder": total}


def predict_minilm_parameters():
    """BertConfig()'s parameters: the embeddings, one encoder layer, the whole BertEncoder."""
    return _count()


_PREDICT_KEYS = ("embeddings", "per_layer", "total_encoder")


def _predict_judge(got):
    not_int = [k for k in _PREDICT_KEYS if not isinstance(got.get(k), int) or isinstance(got.get(k), bool)]
    if not_int:
        return (f"every value must be a Python int; {_listing(not_int)} "
                f"{'is' if len(not_int) == 1 else 'are'} {core._describe(got[not_int[0]])}")
    return None


def _predict_explain(got, want):
    if not isinstance(got, Mapping):
        return (f"Your result is {core._describe(got)}; return a dict with the keys "
                f"{', '.join(repr(k) for k in _PREDICT_KEYS)}")
    if set(got) != set(_PREDICT_KEYS):
        return f"Use exactly the keys {', '.join(repr(k) for k in _PREDICT_KEYS)} (yours: {sorted(map(str, got))})"
    not_int = [k for k in _PREDICT_KEYS if not isinstance(got[k], int) or isinstance(got[k], bool)]
    if not_int:
        return (f"Every value must be a Python int, the exact count (not millions, not a float): "
                f"{_listing(not_int)} {'is' if len(not_int) == 1 else 'are'} {core._describe(got[not_int[0]])}")
    right = [k for k in _PREDICT_KEYS if got[k] == want[k]]
    said = [f"`{k}` is too {'small (something is missing)' if got[k] < want[k] else 'large'}"
            for k in _PREDICT_KEYS if got[k] != want[k]]
    msg = "; ".join(said)
    if right:
        msg += f"; {_listing(right)} {'is' if len(right) == 1 else 'are'} right"
    if got["total_encoder"] != got["embeddings"] + 6 * got["per_layer"]:
        msg += ". Also, your total_encoder is not embeddings + 6 × per_layer (BertEncoder has nothing else)"
    return msg[0].upper() + msg[1:]


def _slip(name):
    return lambda: _count(name)


PREDICT = Exercise(
    id=f"{CHAPTER}/predict_minilm_parameters",
    title="Predict MiniLM's size from its shapes",
    reference=predict_minilm_parameters,
    cases=lambda g: [Case("your prediction", ())],
    kind="prediction",
    atol=0.0,
    rtol=0.0,
    judge=_predict_judge,
    explain=_predict_explain,
    mistakes=[
        Mistake("the biases of the linear maps forgotten", _slip("no_bias"),
                "every nn.Linear has a bias with one entry per output feature: d_model for W_Q, W_K, W_V, W_O and "
                "linear2, d_ff for linear1."),
        Mistake("the FFN's biases forgotten", _slip("no_ffn_bias"),
                "linear1 has d_ff biases and linear2 d_model."),
        Mistake("the LayerNorms forgotten", _slip("no_ln"),
                "each LayerNorm learns a scale and a shift, d_model each: one in the embeddings, two per layer."),
        Mistake("4 × d_model missing from each layer (its two LayerNorms, or the attention's four biases)",
                _slip("no_layer_ln"),
                "two pieces of a layer hold 4 × 384 numbers each, and both count: its two LayerNorms (after the "
                "attention, after the FFN; a weight and a bias each) and the biases of W_Q, W_K, W_V and W_O."),
        Mistake("a LayerNorm counted with one vector (d_model) instead of two", _slip("ln_gamma_only"),
                "a LayerNorm has a weight (γ) and a bias (β), d_model numbers each."),
        Mistake("one LayerNorm per layer instead of two", _slip("one_ln"),
                "post-LN BERT normalises after the attention and again after the FFN: norm1 and norm2."),
        Mistake("2 × d_model missing from the embeddings (the token-type table or the embeddings' LayerNorm)",
                _slip("no_types"),
                "two pieces of BertEmbeddings hold 2 × 384 numbers each, and both count: the token-type table "
                "(type_vocab_size × d_model) and the LayerNorm at its end (a weight and a bias)."),
        Mistake("the position table forgotten", _slip("no_positions"),
                "positions are learned in BERT: a table of max_len × d_model = 512 × 384."),
        Mistake("the attention's output projection W_O forgotten", _slip("no_w_o"),
                "attention has four d_model × d_model maps (W_Q, W_K, W_V and W_O), each with a bias."),
        Mistake("12 layers (BERT-base) instead of MiniLM's 6", _slip("twelve_layers"),
                "BertConfig().num_layers is 6."),
        Mistake("the total with one layer instead of six", _slip("one_layer"),
                "BertEncoder stacks cfg.num_layers = 6 layers, each with its own parameters."),
        Mistake("only the token table counted in the embeddings", _slip("token_table_only"),
                "BertEmbeddings holds three tables — tokens, positions (512), token types (2) — and a LayerNorm."),
        Mistake("the total without the embeddings", _slip("no_embeddings"),
                "BertEncoder holds its embeddings too — most of its parameters sit in the token table."),
        Mistake("the pooler counted in the total", _slip("pooler"),
                "Hugging Face's checkpoint has a pooler (a d_model × d_model layer on [CLS]), but the book's "
                "BertEncoder drops it (HF_BERT.dropped): don't count it."),
    ],
)

EXERCISES = [BPE_STEP, POOL, GPT2_MAP, BERT_LAYER, PREDICT]
