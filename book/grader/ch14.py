"""Graded exercises of chapter 14 — end-to-end projects: retrieval, chunks, prompts, an HTTP API.

The chapter builds question answering over the book's own pages (MiniLM retrieval, then SmolLM2)
and serves chapter 08's date translator behind an HTTP API, with the code of ``book/rag.py`` and
``book/serve.py`` on the page. These exercises are variants of those pieces, stated here with
rules of their own, so that the learner derives or extends rather than retypes:

1. **derives** recall@k and the mean reciprocal rank for rankings of chunks, where a page can come
   back several times and a question may have several relevant pages (``recall_and_mrr``);
2. **derives** a chunker with overlap over a list of words (``chunk_words``): the last chunk kept,
   no chunk that adds nothing, a ``ValueError`` for an overlap that never moves on;
3. **extends** the prompt builder to a character budget (``rag_messages``): passages best first,
   numbered from 1, the lowest-scored ones dropped whole, the question last;
4. **derives** the validation of a request body (``validate_request``): raw bytes in, an HTTP
   status and a payload out, each refusal naming its field;
5. **derives** a latency percentile by the nearest-rank rule (``percentile_nearest_rank``), the
   number a service's p95 is quoted with.

Every case is small, seeded and made here: no model, no embedding, no network, no server.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping

from book.grader import core
from book.grader.core import Case, Exercise, Mistake, Probe

CHAPTER = "14_projects"

PAGES = ["01_linear_algebra", "04_self_attention", "05_multi_head_attention", "06_positional_encoding",
         "07_encoder_decoder", "08_transformer_from_scratch", "09_huggingface", "10_bert_gpt_t5",
         "11_small_llm", "12_vision_transformer", "glossary", "notation", "setup", "a1_keras", "intro"]


def _randint(g, high, size=()):
    import torch

    return torch.randint(0, high, size, generator=g).tolist()


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ============================================================================= 1. recall@k and MRR
def recall_and_mrr(rankings, relevant, k):
    """(recall@k, MRR@k) over the questions that have at least one relevant page.

    rankings[q]: the page of each retrieved chunk, best first (a page may repeat); the top k pages
    are its first k *different* pages. relevant[q]: the set of pages that answer question q.
    """
    found, reciprocal, asked = 0, 0.0, 0
    for ranking, wanted in zip(rankings, relevant):
        if not wanted:
            continue  # nothing in the book answers it: left out of both averages
        asked += 1
        top = list(dict.fromkeys(ranking))[:k]  # the first k different pages, in order
        rank = next((i for i, page in enumerate(top, start=1) if page in wanted), None)
        if rank is not None:
            found += 1
            reciprocal += 1 / rank
    return found / asked, reciprocal / asked


def _retrieval_variant(kind):
    def wrong(rankings, relevant, k):
        found, reciprocal, asked = 0.0, 0.0, 0
        for ranking, wanted in zip(rankings, relevant):
            if not wanted and kind != "empty_counted":
                continue
            asked += 1
            distinct = ranking if kind == "no_dedupe" else list(dict.fromkeys(ranking))
            cut = k + 1 if kind == "k_plus_one" else k - 1 if kind == "k_minus_one" else k
            top = distinct[:cut]
            ranks = [i for i, page in enumerate(distinct if kind == "mrr_uncut" else top, start=1) if page in wanted]
            hits = [page for page in dict.fromkeys(top) if page in wanted]
            if kind == "count_hits":
                found += len(hits)
            elif kind == "precision":
                found += len(hits) / k
            elif kind == "fraction_relevant":
                found += len(hits) / len(wanted)
            else:
                found += 1 if hits else 0
            if kind == "rank_in_chunks" and hits:
                reciprocal += 1 / (min(ranking.index(page) for page in hits) + 1)
            elif ranks:
                reciprocal += 1 / ranks[0]
        recall = found / asked
        if kind == "mrr_over_found":
            n_found = sum(1 for r, w in zip(rankings, relevant) if w and set(list(dict.fromkeys(r))[:k]) & w)
            return recall, reciprocal / n_found if n_found else 0.0
        mrr = reciprocal / asked
        return (mrr, recall) if kind == "swapped" else (recall, mrr)

    return wrong


def _retrieval_cases(g):
    def q(ranking, wanted):
        return list(ranking), set(wanted)

    def case(name, questions, k):
        return Case(name, ([r for r, _ in questions], [w for _, w in questions], k))

    p = PAGES
    one_each = [q([p[1], p[2], p[4], p[5], p[0], p[7]], {p[2]}), q([p[3], p[1], p[9], p[8], p[6], p[0]], {p[3]}),
                q([p[8], p[7], p[9], p[6], p[2], p[1]], {p[6]}), q([p[0], p[10], p[11], p[12], p[3], p[5]], {p[5]}),
                q([p[9], p[8], p[1], p[2], p[3], p[4]], {p[13]})]
    several = [q([p[1], p[2], p[5], p[4]], {p[2], p[5]}), q([p[6], p[8], p[7], p[10]], {p[7], p[8], p[9]}),
               q([p[10], p[11], p[0], p[1]], {p[0], p[11]}), q([p[3], p[4], p[5], p[6]], {p[5], p[6], p[3]}),
               q([p[12], p[13], p[14], p[0]], {p[0], p[1]}), q([p[9], p[1], p[8], p[2]], {p[2]})]
    repeats = [q([p[5], p[5], p[5], p[7], p[6], p[7]], {p[7]}), q([p[1], p[1], p[2], p[2], p[3], p[4]], {p[3]}),
               q([p[8], p[9], p[8], p[9], p[10], p[8]], {p[8], p[10]}), q([p[4], p[4], p[4], p[4], p[0], p[2]], {p[0]}),
               q([p[11], p[12], p[11], p[13], p[12], p[14]], {p[13], p[11]})]
    unanswerable = [q([p[1], p[2], p[3]], {p[2]}), q([p[4], p[5], p[6]], set()), q([p[7], p[8], p[9]], {p[7]}),
                    q([p[10], p[11], p[12]], {p[12]}), q([p[13], p[14], p[0]], set()), q([p[3], p[3], p[4]], {p[4]})]
    short = [q([p[2], p[3]], {p[3]}), q([p[4]], {p[4], p[5]}), q([p[6], p[6]], {p[7]}), q([p[8], p[9], p[8]], {p[9]})]
    rand = []
    for _ in range(30):
        ranking = [p[i] for i in _randint(g, 12, (10,))]  # 10 chunks from 12 pages: repeats happen
        wanted = {p[i] for i in _randint(g, 12, (_randint(g, 4),))}  # 0 to 3 relevant pages
        rand.append(q(ranking, wanted))
    rand[0] = q(rand[0][0], {rand[0][0][0]})  # at least one question with a relevant page
    return [
        case("5 questions with one relevant page each, rankings of 6 different pages, k = 3", one_each, 3),
        case("6 questions with one to three relevant pages each, k = 2", several, 2),
        case("rankings of chunks: several chunks of one page come back (pages repeat), k = 3", repeats, 3),
        case("6 questions, two of them with no relevant page at all (nothing in the book answers them), k = 1",
             unanswerable, 1),
        case("rankings shorter than k (only one to three chunks came back), k = 5", short, 5),
        case("30 random questions: 10 chunks each from 12 pages, 0 to 3 relevant pages, k = 4", rand, 4),
    ]


def _retrieval_judge(got, rankings, relevant, k):
    names = ("recall@k", "MRR@k")
    for name, value in zip(names, got):
        if not isinstance(value, float) or type(value).__module__ == "numpy":
            return (f"`{name}` is {core._describe(value)}; return two Python floats, (recall, mrr) "
                    "(use float(...) on a tensor or NumPy number)")
    return None


def _retrieval_explain(got, want, rankings, relevant, k):
    if not isinstance(got, (tuple, list)) or len(got) != 2 or not all(_is_number(v) for v in got):
        return "Return a tuple of two numbers: (recall@k, mrr)"
    wrong = [abs(g - w) > 1e-6 for g, w in zip(got, want)]
    said = []
    for name, g, w, bad in zip(("recall@k", "MRR@k"), got, want, wrong):
        said.append(f"`{name}` is {('too low' if g < w else 'too high') if bad else 'right'}")
    msg = "; ".join(said)
    if all(abs(g - w) < 0.006 for g, w in zip(got, want)):
        return "Your numbers are close but not exact: return them unrounded (no round(), no formatting)"
    if any(not 0 <= v <= 1 for v in got):
        msg += " (both are averages of numbers between 0 and 1, so both lie between 0 and 1)"
    elif wrong[0]:
        msg += (". recall@k: each question counts 1 if at least one of its relevant pages is among its first k "
                "different pages, else 0")
    else:
        msg += (". MRR@k: each question adds 1 / the rank of its first relevant page among its first k different "
                "pages (0 if there is none)")
    return msg[0].upper() + msg[1:] + "; both average over the questions that have a relevant page"


RETRIEVAL = Exercise(
    id=f"{CHAPTER}/recall_and_mrr",
    title="recall@k and MRR for rankings of chunks",
    reference=recall_and_mrr,
    cases=_retrieval_cases,
    output_names=("recall@k", "MRR@k"),
    atol=1e-6,  # float32 arithmetic is fine
    rtol=1e-6,
    judge=_retrieval_judge,
    explain=_retrieval_explain,
    returns=tuple,
    mistakes=[
        Mistake("the top k + 1 pages counted", _retrieval_variant("k_plus_one"),
                "the top k pages are top[:k] — positions 0 … k − 1 in Python, ranks 1 … k."),
        Mistake("the top k − 1 pages counted", _retrieval_variant("k_minus_one"),
                "the top k pages are the first k, rank k included: top[:k]."),
        Mistake("the first k chunks taken instead of the first k different pages", _retrieval_variant("no_dedupe"),
                "a page retrieved through three of its chunks is one page, not three: drop the repeats (keeping "
                "the first occurrence, e.g. list(dict.fromkeys(ranking))) before you cut at k — and rank the "
                "pages, not the chunks."),
        Mistake("the rank counted in chunks, not in different pages", _retrieval_variant("rank_in_chunks"),
                "the reciprocal rank uses the page's place among the different pages: with the ranking "
                "[A, A, B], page B is second, not third."),
        Mistake("relevant pages counted instead of questions", _retrieval_variant("count_hits"),
                "recall@k asks, question by question, whether at least one relevant page is in the top k: "
                "each question adds 1 or 0, however many relevant pages it found."),
        Mistake("precision@k (the hits divided by k)", _retrieval_variant("precision"),
                "that is precision@k, the share of the top k that is relevant. recall@k, as stated here, is "
                "the share of questions with at least one relevant page in their top k."),
        Mistake("the share of each question's relevant pages found (the textbook recall)",
                _retrieval_variant("fraction_relevant"),
                "this exercise's recall@k is a hit rate: a question counts 1 when ANY of its relevant pages is in "
                "the top k — one good passage is enough to answer it."),
        Mistake("questions without a relevant page counted as misses", _retrieval_variant("empty_counted"),
                "a question with an empty set of relevant pages cannot be answered from the book: leave it out "
                "of both averages (divide by the number of questions that have a relevant page)."),
        Mistake("the reciprocal rank not cut at k", _retrieval_variant("mrr_uncut"),
                "this is MRR@k: a question whose first relevant page comes after rank k adds 0, as for a "
                "question whose answer was not retrieved at all."),
        Mistake("MRR averaged over the questions answered only", _retrieval_variant("mrr_over_found"),
                "a question with no relevant page in its top k adds 0 to the sum, and still counts in the "
                "average: divide by the same number of questions as recall."),
        Mistake("(mrr, recall) returned in the wrong order", _retrieval_variant("swapped"),
                "return (recall@k, mrr), in that order."),
    ],
)


# ============================================================================= 2. a chunker with overlap
def chunk_words(words, size, overlap):
    """Windows of ``size`` words, neighbours sharing ``overlap`` of them; the last one may be shorter
    and is the first to reach the end of the text. [] for no words; ValueError unless
    size >= 1 and 0 <= overlap < size."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    step = size - overlap
    chunks, start = [], 0
    while start < len(words):
        chunks.append(list(words[start:start + size]))
        if start + size >= len(words):
            break  # this chunk reaches the end: another one would add no word
        start += step
    return chunks


def _chunk_variant(kind):
    def wrong(words, size, overlap):
        n = len(words)
        step = {"stride_size": size, "stride_overlap": overlap, "overlap_minus_one": size - overlap + 1,
                "overlap_plus_one": size - overlap - 1}.get(kind, size - overlap)
        if size < 1 or not 0 <= overlap < size or step <= 0:
            raise ValueError("no valid step")  # the catalogue itself never loops
        if kind == "drop_last":
            return [list(words[s:s + size]) for s in range(0, n - size + 1, step)]
        if kind == "tail_contained":
            return [list(words[s:s + size]) for s in range(0, n, step)]
        if n == 0:
            return [[]] if kind == "empty_chunk" else []
        chunks, start = [], 0
        while True:
            chunks.append(list(words[start:start + size]))
            if start + size >= n:
                break
            start += step
        if kind == "right_aligned" and len(chunks) > 1:
            chunks[-1] = list(words[n - size:])
        return chunks

    return wrong


_CHUNK_KINDS = {
    "stride_size": ("neighbouring chunks that share no word (a step of size)",
                    "the next chunk starts size − overlap words after this one, so that the last `overlap` "
                    "words of a chunk are the first words of the next."),
    "stride_overlap": ("a step of overlap words instead of size − overlap",
                       "if neighbours share `overlap` words, the next chunk starts size − overlap words later: "
                       "the step is what is NOT shared."),
    "overlap_minus_one": ("neighbours sharing overlap − 1 words",
                          "check with a small example (size 4, overlap 2: chunks 0-3, 2-5, 4-7): a chunk "
                          "starts size − overlap words after the previous one."),
    "overlap_plus_one": ("neighbours sharing overlap + 1 words",
                         "check with a small example (size 4, overlap 2: chunks 0-3, 2-5, 4-7): a chunk starts "
                         "size − overlap words after the previous one."),
    "drop_last": ("the last, shorter chunk lost",
                  "when fewer than size words are left, they still form a chunk: every word of the text must be "
                  "in some chunk (a page shorter than size words is one chunk)."),
    "tail_contained": ("extra chunks at the end that hold no new word",
                       "range(0, len(words), step) goes on after a chunk has reached the end of the text; those "
                       "last chunks lie inside the previous one. Stop after the first chunk that reaches the end."),
    "empty_chunk": ("an empty chunk for an empty text",
                    "no words, no chunks: return [] (an empty chunk would be embedded and retrieved as noise)."),
    "right_aligned": ("the last chunk moved back to hold size words",
                      "here every chunk starts at a multiple of size − overlap, so the last one may be shorter "
                      "than size; moving it back changes its overlap with its neighbour."),
}


def _chunk_probe(kind):
    variant = _chunk_variant(kind)

    def fn(words, size, overlap):
        wrong = variant(words, size, overlap)
        return Probe(lambda got: _as_chunks(got) == wrong)

    return fn


def _as_chunks(got):
    """got as a list of lists of str, or None if it is not one."""
    if not isinstance(got, list):
        return None
    for chunk in got:
        if not isinstance(chunk, list) or not all(isinstance(w, str) for w in chunk):
            return None
    return got


_WORDS = ("Attention lets every token look at every other token of the sentence and decide how much of "
          "each one to mix into its own representation. The weights come from a softmax over the scores, "
          "so they are positive and sum to one. Retrieval cuts a page into chunks, embeds every chunk once, "
          "and at question time compares the question's embedding with all of them; the best chunks go "
          "into the prompt, and the model answers from them. Chunks that overlap keep a sentence that falls "
          "on a boundary whole in at least one of them.").split()


def _chunk_cases(g):
    numbered = [f"w{i}" for i in range(40)]
    review = list("这家餐厅的菜很好吃服务也很热情下次还会再来")  # a Chinese review, one character per "word"
    return [
        Case("a paragraph of 23 words, size 8, overlap 3", (_WORDS[:23], 8, 3)),
        Case("20 words, size 5, overlap 0 (chunks side by side)", (numbered[:20], 5, 0)),
        Case("17 words, size 5, overlap 1: the fourth chunk ends exactly at the last word", (numbered[:17], 5, 1)),
        Case("a text shorter than one chunk: 4 words, size 10, overlap 2", (numbered[:4], 10, 2)),
        Case("exactly one chunk's worth: 6 words, size 6, overlap 2", (numbered[6:12], 6, 2)),
        Case("an empty text (no words), size 4, overlap 1", ([], 4, 1)),
        Case("a Chinese review split into its 21 characters, size 6, overlap 2", (review, 6, 2)),
        Case(f"a page of {len(_WORDS)} words, size 16, overlap 4", (list(_WORDS), 16, 4)),
        Case("31 words, size 7, overlap 6 (a step of one word)", (numbered[:31], 7, 6)),
        Case("a single word, size 3, overlap 0", (["hello"], 3, 0)),
        Case("a text of 2 words, fewer than the overlap: size 5, overlap 3", (numbered[:2], 5, 3)),
    ]


def _locate(chunk, words, after):
    """The first start s > after with words[s:s + len(chunk)] == chunk, or None."""
    for s in range(after + 1, len(words) - len(chunk) + 1):
        if words[s:s + len(chunk)] == chunk:
            return s
    return None


def _raises_value_error(fn, args) -> str | None:
    """None if fn(*args) raises ValueError; else what it did instead."""
    try:
        core.call_with_timeout(fn, args, 0.5)
    except ValueError:
        return None
    except core._Timeout:
        return "it ran without end (a step of size − overlap ≤ 0 never moves on)"
    except Exception as e:
        return f"it raised {type(e).__name__}, not ValueError"
    return "it returned chunks"


def _chunk_judge(got, words, size, overlap):
    chunks = _as_chunks(got)
    if chunks is None:
        if isinstance(got, (list, tuple)) and any(isinstance(c, str) for c in got):
            return "return each chunk as a list of words (list[str]), not as one string"
        if isinstance(got, list) and all(isinstance(c, (list, tuple)) for c in got):
            return "return each chunk as a list of words (a list, not a tuple, each word a str)"
        return f"your result is {core._describe(got)}; return a list of chunks, each a list of words"
    want = chunk_words(words, size, overlap)
    if chunks != want:
        return _chunk_diagnosis(chunks, list(words), size, overlap)
    fn = core.graded_function()
    if fn is not None and words:
        for bad_size, bad_overlap, why in ((size, size, "overlap = size"), (size, size + 2, "overlap > size"),
                                           (size, -1, "a negative overlap"), (0, 0, "size = 0")):
            did = _raises_value_error(fn, (list(words), bad_size, bad_overlap))
            if did:
                return (f"your chunks are right, but with {why} (size={bad_size}, overlap={bad_overlap}) {did}: "
                        "raise ValueError unless size >= 1 and 0 <= overlap < size")
    return None


def _chunk_diagnosis(chunks, words, size, overlap):
    n = len(words)
    if n == 0:
        return "an empty text has no chunks: return []"
    if not chunks:
        return "you returned no chunks for a text that has words"
    for i, c in enumerate(chunks):
        if not c:
            return f"chunk {i} is empty: no chunk may be empty"
        if len(c) > size:
            return f"chunk {i} holds {len(c)} words, more than size = {size}"
    starts, prev = [], -1
    for i, c in enumerate(chunks):
        s = _locate(c, words, prev)
        if s is None:
            return f"chunk {i} is not a run of consecutive words of the text, in order, after chunk {i - 1}"
        starts.append(s)
        prev = s
    if starts[0] != 0:
        return "the first chunk must start with the first word of the text"
    for i in range(len(chunks) - 1):
        if len(chunks[i]) != size:
            return f"chunk {i} holds {len(chunks[i])} words: every chunk but the last holds exactly size = {size}"
        if starts[i] + len(chunks[i]) >= n:
            return (f"chunk {i + 1} adds no new word: chunk {i} already reaches the end of the text. Stop after the "
                    "first chunk that reaches the end")
        shared = starts[i] + size - starts[i + 1]
        if shared != overlap:
            gap = " (a gap: some words are in no chunk)" if shared < 0 else ""
            return (f"chunks {i} and {i + 1} share {max(shared, 0)} words{gap}; neighbours must share exactly "
                    f"overlap = {overlap}")
    end = starts[-1] + len(chunks[-1])
    if end < n:
        if len(chunks[-1]) < size:
            return "the last chunk stops before the end of the text: it holds every word that is left"
        return f"the last {n - end} words of the text are in no chunk: go on until a chunk reaches the end"
    return "your chunks are not the ones the rules give: compare them with the rules one by one"


CHUNKS = Exercise(
    id=f"{CHAPTER}/chunk_words",
    title="A chunker with overlap",
    reference=None,  # judged: chunks are nested lists, compared in full by the judge
    cases=_chunk_cases,
    judge=_chunk_judge,
    time_limit=1.0,
    mistakes=[Mistake(name, _chunk_probe(kind), hint) for kind, (name, hint) in _CHUNK_KINDS.items()],
)


# ============================================================================= 3. a RAG prompt within a budget
RAG_SYSTEM = ("Answer the question using only the numbered passages. Cite the passages you use by their "
              "number, like [2]. If the passages do not contain the answer, say that you do not know.")


def rag_messages(question, passages, budget):
    """[system, user] chat messages: the passages best first as '[i] (title) text' lines, as many of the
    best as fit in ``budget`` characters (the lines joined by newlines), then a blank line and the
    question."""
    ranked = sorted(passages, key=lambda p: p["score"], reverse=True)  # stable: ties keep their order
    lines = []
    for passage in ranked:
        line = f"[{len(lines) + 1}] ({passage['title']}) {passage['text']}"
        if len("\n".join(lines + [line])) > budget:
            break  # this one and every lower-scored one are dropped, whole
        lines.append(line)
    question_line = f"Question: {question}"
    user = "\n".join(lines) + "\n\n" + question_line if lines else question_line
    return [{"role": "system", "content": RAG_SYSTEM}, {"role": "user", "content": user}]


def _rag_variant(kind):
    def cost(lines, ranked):
        """What the slip counts against the budget for these lines."""
        if kind == "no_newlines":
            return sum(len(line) for line in lines)
        if kind == "texts_only":
            return sum(len(p["text"]) for p in ranked[:len(lines)])
        return len("\n".join(lines))

    def wrong(question, passages, budget):
        if kind == "unsorted":
            ranked = list(passages)
        else:
            ranked = sorted(passages, key=lambda p: p["score"], reverse=kind != "ascending")
        first = 0 if kind == "from_zero" else 1
        lines, kept = [], []
        for passage in ranked:
            line = f"[{len(lines) + first}] ({passage['title']}) {passage['text']}"
            if kind == "crossing_kept":  # added first, checked after
                lines.append(line)
                if len("\n".join(lines)) >= budget:
                    break
                continue
            used = cost(lines + [line], kept + [passage])
            if (used >= budget) if kind == "strict" else (used > budget):
                if kind == "skip_fill":
                    continue
                break
            lines.append(line)
            kept.append(passage)
        block = "\n".join(lines)
        if kind == "truncated":
            block = "\n".join(f"[{i}] ({p['title']}) {p['text']}" for i, p in enumerate(ranked, 1))[:budget]
        q = f"Question: {question}"
        if kind == "question_first":
            user = q + "\n\n" + block if block else q
        else:
            user = block + ("\n" if kind == "one_newline" else "\n\n") + q if block else q
        if kind == "one_message":
            return [{"role": "user", "content": RAG_SYSTEM + "\n\n" + user}]
        return [{"role": "system", "content": RAG_SYSTEM}, {"role": "user", "content": user}]

    return wrong


def _rag_cases(g):
    def p(title, text, score):
        return {"title": title, "text": text, "score": score}

    attention = [
        p("Self-attention", "Each query is compared with every key; a softmax turns the scores into weights.", 0.62),
        p("Multi-head attention", "h heads attend in parallel, each in a space of d_model / h dimensions.", 0.81),
        p("Glossary", "softmax: exponentiate, then divide by the sum, so the weights are positive and sum to 1.", 0.44),
        p("Positional encoding", "Attention alone ignores order; positions are added to the embeddings.", 0.29),
    ]
    lengths = [len(f"[{i}] ({x['title']}) {x['text']}") for i, x in enumerate(sorted(
        attention, key=lambda x: -x["score"]), start=1)]
    two_exactly = lengths[0] + 1 + lengths[1]  # the first two best passages and one newline, to the character
    three_short = sum(lengths[:3]) + 2 - 1  # one character short of the best three with their two newlines
    vit = [
        p("Vision Transformer", "An image is cut into 16 patches of 7 × 7 pixels; each becomes a token.", 0.70),
        p("Patch embedding", "A linear map of the flattened patch, the same as a Conv2d with stride p.", 0.55),
        p("DeiT", "A distillation token learns from a CNN teacher.", 0.12),
        p("Attention rollout", "The heads' mean plus the identity, renormalised, multiplied over layers.", 0.48),
        p("MNIST", "5,000 digits of 28 × 28 pixels, split 4,000 / 1,000.", 0.31),
    ]
    ties = [p("Setup", "Create a virtual environment, then install requirements.txt.", 0.5),
            p("Quick start", "python -m book.authoring.build builds the site offline.", 0.5),
            p("Testing", "pytest runs the grader's tests and a full build.", 0.5)]
    zh = [p("第十二章", "图像被切成图像块，每个图像块成为一个词元。", 0.66),
          p("第九章", "MiniLM 把一句话编码成一个向量。", 0.58)]
    rand = []
    for i in range(8):
        words = " ".join(f"word{j}" for j in _randint(g, 50, (3 + _randint(g, 10),)))
        rand.append(p(f"Page {i}", words, round(0.1 + 0.8 * _randint(g, 1000) / 1000, 3)))
    return [
        Case("4 passages about attention in no particular order, a generous budget of 1000 characters",
             ("How are the attention weights computed?", attention, 1000)),
        Case("the same 4 passages, a budget of 170 characters: only the best ones fit",
             ("How are the attention weights computed?", attention, 170)),
        Case("the same 4 passages, a budget that the best two fill to the exact character",
             ("What does a softmax do?", attention, two_exactly)),
        Case("the same 4 passages, a budget one character short of the best three",
             ("Why are positions added?", attention, three_short)),
        Case("5 passages about the ViT, a budget of 240 characters: a short low-scored passage would still fit "
             "after a longer one is dropped", ("How does a ViT read an image?", vit, 240)),
        Case("the same 4 passages, a budget 5 characters over what the best two need",
             ("What is a head?", attention, two_exactly + 5)),
        Case("a budget smaller than the best passage: no passage fits",
             ("What is a patch?", vit, 40)),
        Case("3 passages with equal scores (ties keep the order given), budget 400",
             ("How do I build the book?", ties, 400)),
        Case("2 Chinese passages, a question in Chinese, budget 200",
             ("图像怎样变成词元？", zh, 200)),
        Case("8 random passages, budget 300", ("What do the pages say?", rand, 300)),
    ]


_PASSAGE_LINE = r"\[(\d+)\] \((.*?)\) (.*)"


def _rag_explain(got, want, question, passages, budget):
    import re

    if (not isinstance(got, (list, tuple)) or len(got) != 2
            or not all(isinstance(m, Mapping) and set(m) == {"role", "content"} for m in got)):
        return ("Return a list of two messages, each a dict with exactly the keys 'role' and 'content': "
                "the system message, then the user message")
    if [m["role"] for m in got] != ["system", "user"]:
        return "The roles must be 'system' (first), then 'user'"
    if got[0]["content"] != RAG_SYSTEM:
        return "The system message's content must be the given SYSTEM_PROMPT, exactly"
    user = got[1]["content"]
    if not isinstance(user, str):
        return "The user message's content must be one str"
    q = f"Question: {question}"
    if user.startswith(q) and user != q:
        return "The question comes last, after the passages (the model reads the evidence, then the question)"
    if not user.endswith(q):
        return "The user message must end with 'Question: ' and the question, exactly as given"
    block = user[:-len(q)]
    if block and not block.endswith("\n\n"):
        return "Put one blank line between the last passage and the question: the passages, '\\n\\n', the question"
    block = block[:-2] if block else ""
    lines = block.split("\n") if block else []
    if "" in lines:
        return ("Write one passage per line, the lines joined by single newlines ('\\n'), with no blank line "
                "between them")
    texts = {(x["title"], x["text"]): x["score"] for x in passages}
    scores = []
    for i, line in enumerate(lines, start=1):
        m = re.fullmatch(_PASSAGE_LINE, line)
        if not m:
            return f"Line {i} of the passages is not '[number] (title) text'"
        if int(m.group(1)) != i:
            return "Number the passages 1, 2, 3 … in the order they appear: the first line is [1]"
        if (m.group(2), m.group(3)) not in texts:
            return (f"Passage [{i}] is not a whole passage as given (its title in parentheses, then its whole "
                    "text): a passage that does not fit is dropped, never cut")
        scores.append(texts[(m.group(2), m.group(3))])
    if any(a < b for a, b in zip(scores, scores[1:])):
        return "The passages must come best first: sorted by score, the highest first"
    if len(block) > budget:
        return f"Your passages take {len(block)} characters (newlines included), over the budget of {budget}"
    ranked = sorted(passages, key=lambda x: x["score"], reverse=True)
    best = [(x["title"], x["text"]) for x in ranked[:len(lines)]]
    used = [re.fullmatch(_PASSAGE_LINE, line).group(2, 3) for line in lines]
    if used != best:
        return ("Keep the best passages and drop the lowest-scored ones: once a passage does not fit, no "
                "passage below it is used, even a shorter one")
    want_block = want[1]["content"][:-len(q)]
    if len(lines) < (want_block.count("\n") - 1 if want_block else 0):
        return ("One more passage fits: count the budget over the passage lines and the newlines between "
                "them, and keep a passage whose block is at most the budget")
    return None


RAG = Exercise(
    id=f"{CHAPTER}/rag_messages",
    title="A RAG prompt within a character budget",
    reference=rag_messages,
    cases=_rag_cases,
    output_names=("the system message", "the user message"),
    explain=_rag_explain,
    forbidden=("apply_chat_template",),
    forbidden_why="return the messages themselves; the chat template is applied later, by the model's tokenizer",
    mistakes=[
        Mistake("the question put before the passages", _rag_variant("question_first"),
                "the passages come first, then a blank line, then 'Question: …' — the question is the last "
                "thing the model reads before it answers."),
        Mistake("the passages left in the order given", _rag_variant("unsorted"),
                "sort the passages by score, highest first, before numbering them: [1] is the best."),
        Mistake("the passages sorted worst first", _rag_variant("ascending"),
                "sort by score in descending order (reverse=True): the best passage is [1]."),
        Mistake("the passages numbered from 0", _rag_variant("from_zero"),
                "the model cites passages by number, and people count from 1: the first is [1]."),
        Mistake("the passage that crosses the budget kept", _rag_variant("crossing_kept"),
                "check whether the block WITH the next passage still fits before you add it: the block must "
                "stay within the budget."),
        Mistake("the passages cut at the budget, mid-passage", _rag_variant("truncated"),
                "drop passages whole: a passage cut in the middle may lose the sentence that answers, and "
                "its citation would point to half a text."),
        Mistake("the newlines between passages not counted", _rag_variant("no_newlines"),
                "the budget counts the block as the model sees it: the passage lines AND the newline between "
                "each two of them, len('\\n'.join(lines))."),
        Mistake("only the passages' texts counted in the budget", _rag_variant("texts_only"),
                "the numbers and titles are part of the prompt too: count the whole block, "
                "len('\\n'.join(lines))."),
        Mistake("a lower-scored passage used after a better one was dropped", _rag_variant("skip_fill"),
                "drop the lowest-scored passages: once one does not fit, stop — the passages kept are always "
                "the best ones."),
        Mistake("a block of exactly the budget refused", _rag_variant("strict"),
                "'within the budget' includes the budget itself: keep a passage when the block is at most "
                "budget characters (<=)."),
        Mistake("one user message with the instructions in it, no system message", _rag_variant("one_message"),
                "return two messages: the instructions as the system message, the passages and the question as "
                "the user message."),
        Mistake("no blank line between the passages and the question", _rag_variant("one_newline"),
                "join the passages and the question with '\\n\\n': a blank line sets the question apart."),
    ],
)


# ============================================================================= 4. validating a request body
TARGETS = ("iso", "zh")


def _validate(body, max_chars, slip=None):
    """(status, payload, what the error message must name); ``slip`` makes one catalogued mistake."""
    if slip == "bytes_to_json":
        try:
            request = json.loads(body)  # guesses the encoding: UTF-16 and UTF-32 pass too
        except UnicodeDecodeError:
            return 400, {"error": "the body is not valid UTF-8"}, "UTF-8"
        except json.JSONDecodeError as e:
            return 400, {"error": f"the body is not valid JSON ({e.msg})"}, "JSON"
        return _validate_fields(request, max_chars, slip)
    try:
        text = body.decode("utf-8", errors="replace" if slip == "decode_replace" else "strict")
    except UnicodeDecodeError:
        return (500 if slip == "decode_500" else 400), {"error": "the body is not valid UTF-8"}, "UTF-8"
    try:
        request = json.loads(text)
    except json.JSONDecodeError as e:
        return 400, {"error": f"the body is not valid JSON ({e.msg})"}, "JSON"
    return _validate_fields(request, max_chars, slip)


def _validate_fields(request, max_chars, slip=None):
    if not isinstance(request, dict):
        return (400 if slip == "not_object_400" else 422), {"error": "the body must be a JSON object"}, "object"
    missing = [field for field in ("text", "target") if field not in request]
    if missing:  # naming any one of them will do
        return (400 if slip == "missing_400" else 422), {"error": f"missing field: {missing[0]}"}, missing
    extra = sorted(set(request) - {"text", "target"})
    if extra and slip != "extra_ok":
        return 422, {"error": f"unknown field: {extra[0]}"}, extra
    text, target = request["text"], request["target"]
    if slip == "str_coerced":
        text = str(text)
    if not isinstance(text, str):
        return 422, {"error": "text must be a string"}, "text"
    if not (text if slip == "whitespace_ok" else text.strip()):
        return 422, {"error": "text is empty"}, "text"
    length = len(text.encode("utf-8")) if slip == "bytes_len" else len(text)
    if (length >= max_chars) if slip == "off_by_one" else (length > max_chars):
        too_long = {"error": f"text is longer than {max_chars} characters"}
        return (422 if slip == "too_long_422" else 413), too_long, "text"
    if slip == "case_insensitive" and isinstance(target, str):
        target = target.lower()
    if not isinstance(target, str) or target not in TARGETS:
        return 422, {"error": "target must be 'iso' or 'zh'"}, "target"
    return 200, {"text": text.strip() if slip == "stripped" else text, "target": target}, None


def validate_request(body, max_chars):
    """Raw request bytes -> (status, payload): (200, {"text", "target"}) or (4xx, {"error": message})."""
    status, payload, _ = _validate(body, max_chars)
    return status, payload


def _validate_variant(kind):
    return lambda body, max_chars: _validate(body, max_chars, slip=kind)[:2]


def _same_outcome(got, wrong) -> bool:
    """The same status as ``wrong``, and for a 200 the same payload (error messages may differ)."""
    if not isinstance(got, (tuple, list)) or len(got) != 2 or got[0] != wrong[0]:
        return False
    return wrong[0] != 200 or got[1] == wrong[1]


def _validate_probe(kind):
    """The slip as a probe: the learner's outcome is the slip's, and on a case where the slip gives the
    right outcome, the learner's answer passes too (so that a slip never takes the blame for an answer
    that fails for another reason, e.g. its error message)."""
    variant = _validate_variant(kind)

    def fn(body, max_chars):
        wrong = variant(body, max_chars)
        right = _validate(body, max_chars)[:2]

        def test(got):
            if not _same_outcome(got, wrong):
                return False
            if not _same_outcome(right, wrong):
                return True  # the slip shows here, and the learner's answer shows it
            # the slip's outcome is right here: the learner's answer must pass, unless the slip fails too
            return (_validate_judge(got, body, max_chars) is None
                    or _validate_judge(wrong, body, max_chars) is not None)

        return Probe(test)

    return fn


_VALIDATE_KINDS = {
    "extra_ok": ("extra fields accepted",
                 "a field the API does not know is refused (422, naming it): a client that sends "
                 "{'txt': …} or {'lang': …} learns at once that the server ignores it."),
    "bytes_len": ("the length measured in bytes, not in characters",
                  "max_chars counts characters: len(text) of the decoded str. A Chinese character takes three "
                  "bytes in UTF-8, so len(body) or len(text.encode()) refuses texts that are within the limit."),
    "stripped": ("the text returned stripped of its spaces",
                 "use text.strip() to TEST for an empty text, but return the text exactly as it was sent."),
    "decode_500": ("bytes that are not UTF-8 answered with 500",
                   "a 5xx status says the server failed; a body that is not UTF-8 is the client's error: 400."),
    "decode_replace": ("undecodable bytes replaced instead of refused",
                       "decode with errors='strict' (the default) and answer 400 when it fails: errors='replace' "
                       "hides the client's bug and translates a text that nobody sent."),
    "bytes_to_json": ("the bytes given to json.loads directly",
                      "json.loads(bytes) guesses the encoding and also accepts UTF-16 and UTF-32: decode the body "
                      "as UTF-8 yourself first, and answer 400 when that fails."),
    "not_object_400": ("a JSON value that is not an object answered with 400",
                       "a list or a string is valid JSON, so the syntax is fine: it is the content that is wrong, "
                       "422."),
    "missing_400": ("a missing field answered with 400",
                    "the body parsed, so it is the content that is wrong: 422, naming the missing field."),
    "str_coerced": ("a text that is not a string converted with str()",
                    "str(2021) is '2021' and str(None) is 'None': a text that is not a JSON string is refused "
                    "(422), not converted."),
    "whitespace_ok": ("a text of spaces only accepted",
                      "a text is empty when nothing is left after .strip(): refuse '   ' as you refuse ''."),
    "too_long_422": ("a text that is too long answered with 422",
                     "this exercise's rules give 413 (Content Too Large) for a text over max_chars characters."),
    "off_by_one": ("a text of exactly max_chars characters refused",
                   "max_chars is the longest text allowed: refuse len(text) > max_chars, accept len(text) == "
                   "max_chars."),
    "case_insensitive": ("the target matched regardless of case",
                         "the targets are exactly 'iso' and 'zh': 'ISO' is refused (422), as the statement says."),
}


def _validate_cases(g):
    def body(obj):
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")

    long_zh = "二〇二一年三月三日"  # 9 characters, 27 bytes in UTF-8
    return [
        Case("a valid request: {'text': '3 March 2021', 'target': 'iso'}, max_chars 40",
             (body({"text": "3 March 2021", "target": "iso"}), 40)),
        Case("a valid request whose text has spaces around it, target 'zh', max_chars 40",
             (body({"text": "  14 July 1789 ", "target": "zh"}), 40)),
        Case("a valid request in Chinese: 9 characters (27 bytes in UTF-8), max_chars 9",
             (body({"text": long_zh, "target": "iso"}), 9)),
        Case("a text of exactly max_chars = 12 characters", (body({"target": "iso", "text": "12 June 1999"}), 12)),
        Case("a body in Latin-1 (the byte 0xE9 for 'é' is not UTF-8)",
             ('{"text": "3 févr. 2021", "target": "iso"}'.encode("latin-1"), 40)),
        Case("valid JSON encoded in UTF-16 (not UTF-8)",
             ('{"text": "3 March 2021", "target": "iso"}'.encode("utf-16"), 40)),
        Case("a JSON body cut off in the middle", (b'{"text": "3 March', 40)),
        Case("an empty body (no bytes at all)", (b"", 40)),
        Case("a JSON list instead of an object", (body(["3 March 2021", "iso"]), 40)),
        Case("a JSON string instead of an object", (body("3 March 2021"), 40)),
        Case("JSON null", (b"null", 40)),
        Case("the field 'target' missing", (body({"text": "3 March 2021"}), 40)),
        Case("the field 'text' missing", (body({"target": "zh"}), 40)),
        Case("an empty object {}", (b"{}", 40)),
        Case("an extra field 'lang' next to text and target",
             (body({"text": "3 March 2021", "target": "iso", "lang": "en"}), 40)),
        Case("'text' a number (2021)", (body({"text": 2021, "target": "iso"}), 40)),
        Case("'text' null", (body({"text": None, "target": "iso"}), 40)),
        Case("'text' empty", (body({"text": "", "target": "iso"}), 40)),
        Case("'text' only spaces and a newline", (body({"text": "   \n", "target": "zh"}), 40)),
        Case("a text over max_chars AND an unknown target (the text's rules come first)",
             (body({"text": "the fourteenth of July 1789", "target": "de"}), 12)),
        Case("a text of 13 characters with max_chars = 12", (body({"text": "12 June 1999.", "target": "iso"}), 12)),
        Case("target 'ISO' in capitals", (body({"text": "3 March 2021", "target": "ISO"}), 40)),
        Case("an unknown target 'de'", (body({"text": "3 March 2021", "target": "de"}), 40)),
        Case("target a list ['iso']", (body({"text": "3 March 2021", "target": ["iso"]}), 40)),
    ]


def _validate_judge(got, body, max_chars):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"your result is {core._describe(got)}; return a tuple (status, payload)"
    status, payload = got
    if not isinstance(status, int) or isinstance(status, bool):
        return f"the status is {core._describe(status)}; return it as a Python int such as 200 or 422"
    if not isinstance(payload, Mapping):
        return f"the payload is {core._describe(payload)}; return a dict"
    want, want_payload, names = _validate(body, max_chars)
    if want == 200:
        if status != 200:
            return (f"a valid request was refused with {status} ({payload.get('error', 'no error message')!r}): "
                    "check that rule again")
        if dict(payload) != want_payload:
            if set(payload) != {"text", "target"}:
                return "a valid request's payload has exactly the keys 'text' and 'target'"
            return "a valid request's payload holds the text and the target exactly as they were sent"
        return None
    if status == 200:
        return "this request breaks one of the rules, but your function accepted it"
    if status != want:
        kind = "5xx says the server failed; a bad request is the client's error (4xx)" if status >= 500 else (
            "see which rule this request breaks first, and the status the rules give for it")
        return f"your status {status} is not the one the rules give here: {kind}"
    if set(payload) != {"error"} or not isinstance(payload["error"], str):
        return "an error's payload is {'error': message}: one key, a str"
    names = [names] if isinstance(names, str) else names
    if not any(n.lower() in payload["error"].lower() for n in names):
        what = {"UTF-8": "that the body is not UTF-8 (say 'UTF-8')", "JSON": "that the body is not JSON "
                "(say 'JSON')", "object": "that the body must be a JSON object (say 'object')"}
        return f"the status is right, but the error message must name {what.get(names[0], 'the field it is about')}"
    return None


VALIDATE = Exercise(
    id=f"{CHAPTER}/validate_request",
    title="Validate a request to the translation API",
    reference=None,  # judged: the error messages are the learner's own words
    cases=_validate_cases,
    judge=_validate_judge,
    mistakes=[Mistake(name, _validate_probe(kind), hint) for kind, (name, hint) in _VALIDATE_KINDS.items()],
)


# ============================================================================= 5. p95 by the nearest rank
def percentile_nearest_rank(latencies, p):
    """The smallest latency with at least p % of the latencies at or below it (p an int, 1 … 100)."""
    ordered = sorted(latencies)
    rank = -(-p * len(ordered) // 100)  # ceil(p · n / 100), in integers: no rounding error
    return float(ordered[rank - 1])


def _percentile_variant(kind):
    def wrong(latencies, p):
        n = len(latencies)
        ordered = list(latencies) if kind == "unsorted" else sorted(latencies, reverse=kind == "descending")
        exact = p * n / 100
        if kind == "floor":
            i = max(math.floor(exact) - 1, 0)
        elif kind == "no_minus_one":
            i = min(int(exact), n - 1)
        elif kind == "round":
            i = max(round(exact) - 1, 0)
        elif kind == "numpy_nearest":
            i = round(p / 100 * (n - 1))
        elif kind == "linear":
            pos = p / 100 * (n - 1)
            lo = math.floor(pos)
            hi = min(lo + 1, n - 1)
            return float(ordered[lo] + (pos - lo) * (ordered[hi] - ordered[lo]))
        else:
            i = -(-p * n // 100) - 1
        return float(ordered[i])

    return wrong


def _percentile_cases(g):
    import torch

    def times(n, tail=False):
        base = torch.exp(torch.randn(n, generator=g) * 0.3 + math.log(20.0))  # about 20 ms, log-normal
        if tail:
            slow = torch.rand(n, generator=g) < 0.05
            base = torch.where(slow, base * 8, base)  # 5 % of the requests 8 × slower
        return [round(t, 3) for t in base.tolist()]

    return [
        Case("20 latencies (ms) in the order they were measured, p = 95", (times(20), 95)),
        Case("7 latencies, p = 50 (the median of an odd count)", (times(7), 50)),
        Case("10 latencies, p = 50 (an even count: nearest rank never averages)", (times(10), 50)),
        Case("200 latencies with a slow tail (5 % of requests 8 × slower), p = 99", (times(200, tail=True), 99)),
        Case("13 latencies, p = 10", (times(13), 10)),
        Case("15 latencies, p = 90", (times(15), 90)),
        Case("8 latencies, p = 25 (the first quartile)", (times(8), 25)),
        Case("a single latency, p = 90", (times(1), 90)),
        Case("40 latencies, p = 95", (times(40, tail=True), 95)),
        Case("12 latencies, p = 100 (the slowest)", (times(12), 100)),
    ]


def _percentile_explain(got, want, latencies, p):
    if not _is_number(got):
        return None
    ordered = sorted(latencies)
    n = len(ordered)
    if got not in ordered:
        return ("Your answer is not one of the latencies: the nearest-rank percentile is always a measured "
                "value, never an average of two")
    r = ordered.index(got) + 1
    return (f"Your answer is the {_ordinal(r)} smallest of the {n} latencies: the rank is ⌈p · n / 100⌉, the "
            "smallest rank with at least p % of the values at or below it")


def _ordinal(r: int) -> str:
    suffix = "th" if 10 <= r % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(r % 10, "th")
    return f"{r}{suffix}"


PERCENTILE = Exercise(
    id=f"{CHAPTER}/percentile_nearest_rank",
    title="A latency percentile by the nearest rank",
    reference=percentile_nearest_rank,
    cases=_percentile_cases,
    atol=0.0,
    rtol=0.0,
    returns=float,
    explain=_percentile_explain,
    forbidden=("percentile", "quantile", "nanpercentile", "nanquantile", "quantiles"),
    forbidden_why="work out the rank yourself (the libraries interpolate by default, which this rule does not)",
    mistakes=[
        Mistake("the latencies not sorted", _percentile_variant("unsorted"),
                "a percentile is read from the latencies in increasing order: sort them first."),
        Mistake("the latencies sorted slowest first", _percentile_variant("descending"),
                "sort in increasing order, so that rank r is the r-th smallest latency."),
        Mistake("the rank rounded down", _percentile_variant("floor"),
                "the rank is the smallest r with r ≥ p · n / 100: round UP (⌈p · n / 100⌉), else fewer than p % of "
                "the latencies are at or below your value."),
        Mistake("the rank used as a 0-based index", _percentile_variant("no_minus_one"),
                "rank r (counted from 1) is ordered[r - 1] in Python: with 20 latencies, the 95th percentile is "
                "the 19th smallest, ordered[18]."),
        Mistake("the rank rounded to the nearest integer", _percentile_variant("round"),
                "the nearest-rank rule rounds p · n / 100 UP, never down: ⌈p · n / 100⌉."),
        Mistake("NumPy's 'nearest' method, round(p / 100 · (n − 1))", _percentile_variant("numpy_nearest"),
                "that is another definition (positions 0 … n − 1). The nearest-rank rule asks for the smallest "
                "rank r with r ≥ p · n / 100."),
        Mistake("interpolated between two latencies", _percentile_variant("linear"),
                "that is NumPy's default ('linear'). The nearest-rank percentile is one of the measured latencies: "
                "no interpolation."),
    ],
)

EXERCISES = [RETRIEVAL, CHUNKS, RAG, VALIDATE, PERCENTILE]
