"""Chapter 14's exercises: a few facts about the grader's references, and the exercise data for
tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG).

WRONG holds, besides the rules the statements state (forbidden calls, return types), wrong answers
a learner is likely to write that are *not* in the catalogue; each must be rejected with feedback
that names what is wrong.
"""
import heapq
import json
import math

import numpy as np
import pytest
import torch

from book.grader import ch14


# ----------------------------------------------------------------------------- the references themselves
def test_recall_and_mrr_on_a_hand_worked_example():
    rankings = [["a", "a", "b", "c"], ["c", "d"], ["x"]]
    relevant = [{"b"}, {"e"}, set()]  # question 3 has no relevant page: left out
    # question 1: pages a, b, c; b is second -> hit at k = 2, reciprocal rank 1/2
    assert ch14.recall_and_mrr(rankings, relevant, 2) == (0.5, 0.25)
    assert ch14.recall_and_mrr(rankings, relevant, 1) == (0.0, 0.0)


def test_chunks_cover_the_text_share_overlap_and_stop_at_the_end():
    words = [f"w{i}" for i in range(17)]
    chunks = ch14.chunk_words(words, 5, 1)
    assert [c[0] for c in chunks] == ["w0", "w4", "w8", "w12"] and chunks[-1][-1] == "w16"
    assert all(a[-1:] == b[:1] for a, b in zip(chunks, chunks[1:]))
    assert ch14.chunk_words([], 4, 1) == [] and ch14.chunk_words(["x"], 3, 2) == [["x"]]
    for size, overlap in ((3, 3), (3, 4), (3, -1), (0, 0)):
        with pytest.raises(ValueError):
            ch14.chunk_words(words, size, overlap)


def test_rag_prompt_keeps_the_best_passages_within_the_budget():
    passages = [{"title": "B", "text": "bb", "score": 0.2}, {"title": "A", "text": "aaaa", "score": 0.9},
                {"title": "C", "text": "c", "score": 0.1}]
    system, user = ch14.rag_messages("Why?", passages, len("[1] (A) aaaa\n[2] (B) bb"))
    assert system == {"role": "system", "content": ch14.RAG_SYSTEM}
    assert user == {"role": "user", "content": "[1] (A) aaaa\n[2] (B) bb\n\nQuestion: Why?"}
    assert ch14.rag_messages("Why?", passages, 3)[1]["content"] == "Question: Why?"


def test_validator_statuses():
    ok = json.dumps({"text": " 3 March ", "target": "zh"}).encode()
    assert ch14.validate_request(ok, 9) == (200, {"text": " 3 March ", "target": "zh"})
    assert ch14.validate_request(b"\xff", 9)[0] == 400
    assert ch14.validate_request(json.dumps({"text": "x" * 10, "target": "zh"}).encode(), 9)[0] == 413
    assert ch14.validate_request(b'{"text": "x", "target": "zh", "k": 1}', 9) == (422, {"error": "unknown field: k"})


def test_nearest_rank_percentile_is_numpys_inverted_cdf():
    gen = np.random.default_rng(0)
    for n in (1, 7, 10, 20, 33, 200):
        x = gen.lognormal(3.0, 0.4, n).round(3).tolist()
        for p in (1, 10, 25, 50, 90, 95, 99, 100):
            assert ch14.percentile_nearest_rank(x, p) == np.percentile(x, p, method="inverted_cdf")


# ---- exercise data (grader tests)
# 1. recall@k and MRR
def retrieval_by_sets(rankings, relevant, k):
    scored = []
    for ranking, wanted in zip(rankings, relevant):
        if not wanted:
            continue
        seen = []
        for page in ranking:
            if page not in seen:
                seen.append(page)
            if len(seen) == k:
                break
        ranks = [seen.index(page) + 1 for page in wanted if page in seen]
        scored.append((1.0 if ranks else 0.0, 1 / min(ranks) if ranks else 0.0))
    return (sum(r for r, _ in scored) / len(scored), sum(m for _, m in scored) / len(scored))


def retrieval_in_torch(rankings, relevant, k):
    pairs = [(list(dict.fromkeys(r))[:k], w) for r, w in zip(rankings, relevant) if w]
    hit = torch.tensor([[page in w for page in top] + [False] * (k - len(top)) for top, w in pairs])  # (Q, k)
    first = torch.where(hit.any(1), 1.0 / (hit.float().argmax(1) + 1), torch.zeros(len(pairs)))
    return float(hit.any(1).float().mean()), float(first.mean())


def retrieval_as_list(rankings, relevant, k):
    return list(ch14.recall_and_mrr(rankings, relevant, k))


def retrieval_numpy(rankings, relevant, k):
    r, m = ch14.recall_and_mrr(rankings, relevant, k)
    return np.float64(r), np.float32(m)


def retrieval_set_dedupe(rankings, relevant, k):  # set() loses the ranking's order
    found = mrr = asked = 0
    for ranking, wanted in zip(rankings, relevant):
        if wanted:
            asked += 1
            top = sorted(set(ranking))[:k]
            ranks = [i for i, page in enumerate(top, 1) if page in wanted]
            found += bool(ranks)
            mrr += 1 / ranks[0] if ranks else 0
    return found / asked, mrr / asked


def retrieval_dedupe_after_cut(rankings, relevant, k):  # the first k chunks, then the repeats dropped
    found = mrr = asked = 0
    for ranking, wanted in zip(rankings, relevant):
        if wanted:
            asked += 1
            top = list(dict.fromkeys(ranking[:k]))
            ranks = [i for i, page in enumerate(top, 1) if page in wanted]
            found += bool(ranks)
            mrr += 1 / ranks[0] if ranks else 0
    return found / asked, mrr / asked


def retrieval_rounded(rankings, relevant, k):
    r, m = ch14.recall_and_mrr(rankings, relevant, k)
    return round(r, 2), round(m, 2)


def retrieval_mrr_of_the_best_rank_in_chunks_plus_one(rankings, relevant, k):
    r, _ = ch14.recall_and_mrr(rankings, relevant, k)
    total, asked = 0.0, 0
    for ranking, wanted in zip(rankings, relevant):
        if wanted:
            asked += 1
            top = list(dict.fromkeys(ranking))[:k]
            ranks = [i for i, page in enumerate(top) if page in wanted]  # 0-based
            total += 1 / (ranks[0] + 2) if ranks else 0.0  # "+1" applied twice
    return r, total / asked


# 2. the chunker
def chunks_by_range(words, size, overlap):
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError("bad sizes")
    step = size - overlap
    return [words[s:s + size] for s in range(0, max(len(words) - overlap, 1), step)] if words else []


def chunks_by_count(words, size, overlap):
    if not (size >= 1 and 0 <= overlap < size):
        raise ValueError(f"size={size}, overlap={overlap}")
    if not words:
        return []
    step = size - overlap
    count = 1 + max(0, math.ceil((len(words) - size) / step))
    return [list(words[i * step:i * step + size]) for i in range(count)]


def chunks_range_minus_overlap(words, size, overlap):  # loses a text shorter than the overlap
    if not 0 <= overlap < size:
        raise ValueError("overlap")
    return [words[s:s + size] for s in range(0, len(words) - overlap, size - overlap)]


def chunks_as_strings(words, size, overlap):
    return [" ".join(c) for c in ch14.chunk_words(words, size, overlap)]


def chunks_as_tuples(words, size, overlap):
    return [tuple(c) for c in ch14.chunk_words(words, size, overlap)]


def chunks_no_check(words, size, overlap):  # loops for ever when size - overlap <= 0
    chunks, start = [], 0
    while start < len(words):
        chunks.append(words[start:start + size])
        if start + size >= len(words):
            break
        start += size - overlap
    return chunks


def chunks_assert(words, size, overlap):
    assert 0 <= overlap < size and size >= 1
    return chunks_no_check(words, size, overlap)


def chunks_skip_first_word(words, size, overlap):
    return ch14.chunk_words(words[1:], size, overlap) if len(words) > 1 else ch14.chunk_words(words, size, overlap)


def chunks_generator(words, size, overlap):
    return (c for c in ch14.chunk_words(words, size, overlap))


def chunks_refuse_zero_overlap(words, size, overlap):
    if not 0 < overlap < size:
        raise ValueError("overlap must be between 0 and size")
    return ch14.chunk_words(words, size, overlap)


# 3. the RAG prompt
def rag_running_total(question, passages, budget):
    ranked = sorted(passages, key=lambda p: -p["score"])
    lines, total = [], 0
    for p in ranked:
        line = f"[{len(lines) + 1}] ({p['title']}) {p['text']}"
        extra = len(line) + (1 if lines else 0)  # a newline before every line but the first
        if total + extra > budget:
            break
        lines.append(line)
        total += extra
    parts = ["\n".join(lines)] if lines else []
    user = "\n\n".join(parts + [f"Question: {question}"])
    return [dict(role="system", content=ch14.RAG_SYSTEM), dict(role="user", content=user)]


def rag_with_the_template(question, passages, budget):
    messages = rag_running_total(question, passages, budget)
    from book.pretrained import smollm2  # noqa: F401  (never reached: the grader reads the code first)
    messages[0]["content"] = smollm2().tokenizer.apply_chat_template(messages, tokenize=False)
    return messages


def rag_title_colon(question, passages, budget):
    out = rag_running_total(question, passages, budget)
    for p in passages:
        out[1]["content"] = out[1]["content"].replace(f"({p['title']}) ", f"{p['title']}: ")
    return out


def rag_blank_lines(question, passages, budget):
    out = rag_running_total(question, passages, budget)
    block, sep, q = out[1]["content"].rpartition("\n\n")
    out[1]["content"] = block.replace("\n", "\n\n") + sep + q
    return out


def rag_no_prefix(question, passages, budget):
    out = rag_running_total(question, passages, budget)
    out[1]["content"] = out[1]["content"].replace("Question: ", "")
    return out


def rag_budget_on_whole_message(question, passages, budget):
    ranked = sorted(passages, key=lambda p: -p["score"])
    lines = []
    for p in ranked:
        line = f"[{len(lines) + 1}] ({p['title']}) {p['text']}"
        if len("\n".join(lines + [line]) + f"\n\nQuestion: {question}") > budget:
            break
        lines.append(line)
    return rag_running_total(question, [dict(p, score=-i) for i, p in enumerate(ranked[:len(lines)])], budget)


def rag_by_length(question, passages, budget):
    shortest = sorted(passages, key=lambda p: len(p["text"]))
    return rag_running_total(question, [dict(p, score=-i) for i, p in enumerate(shortest)], budget)


def rag_assistant_role(question, passages, budget):
    out = rag_running_total(question, passages, budget)
    out[0]["role"] = "assistant"
    return out


# 4. the request validator
def validate_in_steps(body, max_chars):
    def error(status, message):
        return status, {"error": message}

    try:
        data = json.loads(body.decode())
    except UnicodeDecodeError:
        return error(400, "body must be UTF-8 text")
    except ValueError:
        return error(400, "malformed JSON")
    if type(data) is not dict:
        return error(422, "expected a JSON object")
    for name in ("text", "target"):
        if name not in data:
            return error(422, f"'{name}' is required")
    for name in data:
        if name not in ("text", "target"):
            return error(422, f"'{name}' is not allowed")
    text, target = data["text"], data["target"]
    if not isinstance(text, str) or text.strip() == "":
        return error(422, "'text' must be a non-empty string")
    if len(text) > max_chars:
        return error(413, f"'text' has {len(text)} characters; the limit is {max_chars}")
    if target not in ("iso", "zh"):
        return error(422, "'target' must be one of iso, zh")
    return 200, {"text": text, "target": target}


def validate_status_as_str(body, max_chars):
    status, payload = ch14.validate_request(body, max_chars)
    return str(status), payload


def validate_payload_as_json(body, max_chars):
    status, payload = ch14.validate_request(body, max_chars)
    return status, json.dumps(payload)


def validate_message_key(body, max_chars):
    status, payload = ch14.validate_request(body, max_chars)
    return status, payload if status == 200 else {"message": payload["error"]}


def validate_vague_messages(body, max_chars):
    status, payload = ch14.validate_request(body, max_chars)
    return status, payload if status == 200 else {"error": "bad request"}


def validate_target_first(body, max_chars):
    status, payload = validate_in_steps(body, max_chars)
    try:
        data = json.loads(body.decode("utf-8"))
        if isinstance(data, dict) and set(data) == {"text", "target"} and data["target"] not in ("iso", "zh"):
            return 422, {"error": "unknown target"}
    except ValueError:
        pass
    return status, payload


def validate_everything_400(body, max_chars):
    status, payload = validate_in_steps(body, max_chars)
    return (400 if status != 200 else 200), payload


def validate_no_type_check(body, max_chars):
    try:
        data = json.loads(body.decode("utf-8"))
    except ValueError:
        return 400, {"error": "not UTF-8 or not JSON"}
    if not isinstance(data, dict):
        return 422, {"error": "not an object"}
    if set(data) != {"text", "target"}:
        return 422, {"error": f"the fields must be text and target, not {sorted(data)}"}
    if not data["text"].strip():  # AttributeError on 2021 or None
        return 422, {"error": "empty text"}
    return validate_in_steps(body, max_chars)


def validate_tuple_of_three(body, max_chars):
    return (*ch14.validate_request(body, max_chars), "ok")


# 5. the percentile
def percentile_by_ceil(latencies, p):
    return float(sorted(latencies)[math.ceil(p * len(latencies) / 100) - 1])


def percentile_by_heap(latencies, p):
    rank = (p * len(latencies) + 99) // 100
    return float(heapq.nsmallest(rank, latencies)[-1])


def percentile_with_numpy(latencies, p):
    return float(np.percentile(latencies, p, method="inverted_cdf"))


def percentile_with_torch(latencies, p):
    return torch.tensor(latencies).quantile(p / 100).item()


def percentile_rounded_ms(latencies, p):
    return round(percentile_by_ceil(latencies, p))


def percentile_index_ceil(latencies, p):  # the rank used as an index: one too far, IndexError at p = 100
    return float(sorted(latencies)[math.ceil(p * len(latencies) / 100)])


def percentile_fraction(latencies, p):  # p taken as a fraction of one
    return float(sorted(latencies)[math.ceil(p * len(latencies)) - 1])


def percentile_mean_of_tail(latencies, p):
    ordered = sorted(latencies)
    tail = ordered[math.ceil(p * len(ordered) / 100) - 1:]
    return sum(tail) / len(tail)


def percentile_as_tensor(latencies, p):
    return torch.tensor(percentile_by_ceil(latencies, p))


def percentile_of_the_rank_from_the_top(latencies, p):
    ordered = sorted(latencies)
    return float(ordered[len(ordered) - math.ceil((100 - p) * len(ordered) / 100) - 1])


REFERENCES = {"chunk_words": ch14.chunk_words, "validate_request": ch14.validate_request}  # judged exercises
BUGGY = {  # the judged exercises' mistakes as code (their catalogue entries are probes)
    **{m.name: m.fn for m in ch14.RETRIEVAL.mistakes},
    **{name: ch14._chunk_variant(kind) for kind, (name, _) in ch14._CHUNK_KINDS.items()},
    **{name: ch14._validate_variant(kind) for kind, (name, _) in ch14._VALIDATE_KINDS.items()},
}

ALTERNATIVES = {
    "recall_and_mrr": [retrieval_by_sets, retrieval_in_torch],
    "chunk_words": [chunks_by_range, chunks_by_count],
    "rag_messages": [rag_running_total],
    "validate_request": [validate_in_steps],
    "percentile_nearest_rank": [percentile_by_ceil, percentile_by_heap],
}

WRONG = [  # the rules the statements state, and what the feedback must say about other slips
    ("recall_and_mrr", retrieval_as_list, "asks for tuple"),
    ("recall_and_mrr", retrieval_numpy, "two Python floats"),
    ("recall_and_mrr", retrieval_set_dedupe, "first k different pages"),
    ("recall_and_mrr", retrieval_dedupe_after_cut, "MRR@k"),
    ("recall_and_mrr", retrieval_rounded, "unrounded"),
    ("recall_and_mrr", retrieval_mrr_of_the_best_rank_in_chunks_plus_one, "`MRR@k` is too low"),
    ("chunk_words", chunks_range_minus_overlap, "every word of the text must be in some chunk"),
    ("chunk_words", chunks_as_strings, "not as one string"),
    ("chunk_words", chunks_as_tuples, "not a tuple"),
    ("chunk_words", chunks_no_check, "ran without end"),
    ("chunk_words", chunks_assert, "raised AssertionError, not ValueError"),
    ("chunk_words", chunks_skip_first_word, "first chunk must start with the first word"),
    ("chunk_words", chunks_generator, "return a list of chunks"),
    ("chunk_words", chunks_refuse_zero_overlap, "raised ValueError"),
    ("rag_messages", rag_with_the_template, "does not allow"),
    ("rag_messages", rag_title_colon, "is not '[number] (title) text'"),
    ("rag_messages", rag_blank_lines, "no blank line between them"),
    ("rag_messages", rag_no_prefix, "'Question: '"),
    ("rag_messages", rag_budget_on_whole_message, "One more passage fits"),
    ("rag_messages", rag_by_length, "best first"),
    ("rag_messages", rag_assistant_role, "roles"),
    ("validate_request", validate_status_as_str, "Python int"),
    ("validate_request", validate_payload_as_json, "return a dict"),
    ("validate_request", validate_message_key, "{'error': message}"),
    ("validate_request", validate_vague_messages, "must name"),
    ("validate_request", validate_target_first, "which rule this request breaks first"),
    ("validate_request", validate_everything_400, "not the one the rules give"),
    ("validate_request", validate_no_type_check, "raised AttributeError"),
    ("validate_request", validate_tuple_of_three, "(status, payload)"),
    ("percentile_nearest_rank", percentile_with_numpy, "does not allow"),
    ("percentile_nearest_rank", percentile_with_torch, "does not allow"),
    ("percentile_nearest_rank", percentile_rounded_ms, "Python float"),
    ("percentile_nearest_rank", percentile_index_ceil, "smallest of the"),
    ("percentile_nearest_rank", percentile_fraction, "raised IndexError"),
    ("percentile_nearest_rank", percentile_mean_of_tail, "not one of the latencies"),
    ("percentile_nearest_rank", percentile_as_tensor, "torch.Tensor"),
    ("percentile_nearest_rank", percentile_of_the_rank_from_the_top, "the rank rounded down"),
]
