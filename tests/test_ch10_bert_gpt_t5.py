"""Chapter 10 — BERT, GPT and T5: the models, sampling, the cache, T5's buckets; and the exercise data."""
import math

import pytest
import torch
import torch.nn.functional as F

from book.decoding import generate, next_token, top_k_filter, top_p_filter
from book.gpt import GPT, GPTConfig

INF = float("-inf")


def _model(positions="learned", seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=31, max_len=48, d_model=32, num_heads=4, d_ff=64, positions=positions)).eval()


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_cached_decoding_gives_the_same_logits_and_tokens(positions):
    model = _model(positions)
    prompt = torch.randint(0, 31, (3, 6), generator=torch.Generator().manual_seed(1))
    with_cache = generate(model, prompt, 20, temperature=0, use_cache=True)
    without = generate(model, prompt, 20, temperature=0, use_cache=False)
    assert with_cache.shape == (3, 26) and torch.equal(with_cache, without)
    assert torch.equal(with_cache[:, :6], prompt)
    cache = model.new_cache()
    with torch.no_grad():
        full = model(with_cache[:, :-1])  # (3, 25, V) in one pass
        steps = [model(with_cache[:, :6], cache)] + [model(with_cache[:, t:t + 1], cache) for t in range(6, 25)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_the_model_is_causal():
    model = _model()
    x = torch.randint(0, 31, (1, 10))
    y = x.clone()
    y[0, 7] = (y[0, 7] + 1) % 31  # change a later token
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6) and not torch.allclose(a[:, 7:], b[:, 7:])


def test_too_long_a_context_is_refused_and_bad_configs_too():
    model = _model()
    with pytest.raises(ValueError, match="longer than max_len=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        GPTConfig(vocab_size=5, positions="sinusoidal")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=5, d_model=30, num_heads=4)


def test_output_projection_is_tied_to_the_embedding():
    model = _model()
    assert model.head.weight is model.tokens.weight


def test_top_k_keeps_the_k_largest_and_their_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert torch.equal(top_k_filter(logits, 2), torch.tensor([[INF, 3.0, INF, 3.0, INF]]))
    assert torch.equal(top_k_filter(logits, 3), torch.tensor([[INF, 3.0, 2.0, 3.0, INF]]))
    assert torch.equal(top_k_filter(logits, None), logits) and torch.equal(top_k_filter(logits, 9), logits)
    with pytest.raises(ValueError):
        top_k_filter(logits, 0)


def test_top_p_keeps_the_smallest_set_reaching_p_and_at_least_one_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p)).squeeze(0).tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]
    assert kept(0.6) == [True, True, False, False]
    assert kept(0.9) == [True, True, True, False]
    assert kept(1.0) == [True] * 4
    assert kept(1e-6) == [True, False, False, False]  # the most likely token always stays
    shuffled = logits[:, [2, 0, 3, 1]]  # order in the vocabulary does not matter
    assert torch.isfinite(top_p_filter(shuffled, 0.6)).squeeze(0).tolist() == [False, True, False, True]


def test_sampling_is_reproducible_and_temperature_zero_is_greedy():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    assert next_token(logits, temperature=0).item() == 1
    draws = lambda seed: [next_token(logits, generator=torch.Generator().manual_seed(seed)).item()  # noqa: E731
                          for _ in range(1)]
    assert draws(3) == draws(3)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.stack([next_token(logits, generator=g) for _ in range(3000)]).squeeze(-1),
                            minlength=3).float() / 3000
    assert torch.allclose(counts, logits.softmax(-1)[0], atol=0.03)
    only_top = {next_token(logits, top_k=1, generator=g).item() for _ in range(50)}
    assert only_top == {1}
    with pytest.raises(ValueError):
        next_token(logits, temperature=-1)


# ----------------------------------------------------------------------------- T5's relative position buckets
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 64), (8, 20)])
def test_buckets_equal_transformers_t5(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    from book.t5 import relative_position_bucket

    rel = torch.arange(-400, 401)[None, :].repeat(2, 1)
    ours = relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    theirs = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                                   max_distance=max_distance)
    assert torch.equal(ours, theirs)


def test_near_distances_are_exact_and_far_ones_share_buckets():
    from book.t5 import relative_position_bucket

    b = relative_position_bucket(torch.arange(-200, 201), bidirectional=True, num_buckets=32, max_distance=128)
    at = lambda d: b[d + 200].item()  # noqa: E731
    assert len({at(d) for d in range(0, 8)}) == 8 and at(1) != at(-1)  # exact, and the two sides differ
    assert at(128) == at(200) == 31 and at(-128) == at(-200) == 15  # beyond max_distance: the last bucket
    assert at(60) == at(61)  # far away: log-spaced, shared


def test_relative_bias_shape_and_offset_for_decoding():
    from book.t5 import RelativePositionBias

    bias = RelativePositionBias(num_heads=4, bidirectional=False)
    full = bias(6, 6)
    assert full.shape == (4, 6, 6)
    assert torch.equal(bias(1, 6, start=5), full[:, 5:6])  # the last query alone, as with a cache


# ----------------------------------------------------------------------------- BERT's 80/10/10 masking
def test_masking_follows_the_80_10_10_rule_and_skips_special_tokens():
    from book.bert import IGNORE, mask_tokens

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 100), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] and [SEP] positions
    inputs, labels = mask_tokens(ids, mask_id=1, vocab_size=1000, special=special, generator=g)
    target = labels != IGNORE
    assert not target[special].any() and torch.equal(labels[target], ids[target])
    assert torch.equal(inputs[~target], ids[~target])  # only targets change
    share = target[~special].float().mean().item()
    assert abs(share - 0.15) < 0.01
    masked = (inputs[target] == 1).float().mean().item()
    kept = (inputs[target] == ids[target]).float().mean().item()
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1 - 1 / 1000 * 0.1) < 0.02
    again = mask_tokens(ids, 1, 1000, special=special, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mask_tokens(ids, 1, 1000, special=special,
                                             generator=torch.Generator().manual_seed(3))[0])
    with pytest.raises(ValueError):
        mask_tokens(ids, 1, 1000, p=1.5)


# ----------------------------------------------------------------------------- the models the chapter trains
def test_t5_cached_decoding_equals_the_full_pass_and_the_bias_is_shared():
    from book.decoding import greedy_decode
    from book.t5 import T5, T5Config

    torch.manual_seed(0)
    model = T5(T5Config(vocab_size=30, d_model=32, num_heads=4, d_ff=64)).eval()
    src = torch.randint(3, 30, (3, 9))
    src[1, 6:] = 0  # padding
    with_cache = greedy_decode(model, src, 12, bos=1, eos=2, use_cache=True)
    assert torch.equal(with_cache, greedy_decode(model, src, 12, bos=1, eos=2, use_cache=False))
    memory, cache = model.encode(src), model.new_cache()
    with torch.no_grad():
        full = model.decode(with_cache[:, :-1], memory)
        steps = torch.cat([model.decode(with_cache[:, t:t + 1], memory, cache) for t in range(with_cache.size(1) - 1)], 1)
    assert (steps - full).abs().max() <= 1e-5
    names = [n for n, _ in model.named_parameters()]
    assert sum("encoder_bias" in n for n in names) == 1 and sum("decoder_bias" in n for n in names) == 1
    assert not any("bias" in n and "_bias" not in n for n in names)  # no biases in the linear maps


def test_t5_has_no_position_vectors_so_it_runs_longer_than_any_training_input():
    from book.t5 import T5, T5Config

    model = T5(T5Config(vocab_size=30, d_model=32, num_heads=4, d_ff=64)).eval()
    src = torch.randint(3, 30, (1, 300))
    with torch.no_grad():
        assert model(src, torch.ones(1, 5, dtype=torch.long)).shape == (1, 5, 30)


def test_masked_lm_shapes_rope_option_and_tied_head():
    from book.bert import BertForMaskedLM, masked_lm_loss
    from book.pretrained import BertConfig

    for positions in ("learned", "rope"):
        m = BertForMaskedLM(BertConfig(vocab_size=40, max_len=32, d_model=32, num_heads=4, d_ff=64, num_layers=1,
                                       positions=positions))
        ids = torch.randint(0, 40, (2, 10))
        logits = m(ids, torch.ones(2, 10), torch.zeros(2, 10, dtype=torch.long))
        assert logits.shape == (2, 10, 40)
        assert m.head.decoder.weight is m.bert.embeddings.tokens.weight
        assert (m.bert.embeddings.positions is None) == (positions == "rope")
        labels = torch.full((2, 10), -100)
        labels[0, 3] = 7
        assert torch.isclose(masked_lm_loss(logits, labels), F.cross_entropy(logits[0, 3:4], torch.tensor([7])))
    with pytest.raises(ValueError, match="positions"):
        BertConfig(positions="sinusoidal")


def test_date_tasks_are_written_into_the_input_and_the_length_filter_holds():
    from book.data import dates

    split = dates.split_dates()
    short = dates.text_to_text_examples(split.test[:200], seed=0, max_source_len=20)
    long = dates.text_to_text_examples(split.test[:200], seed=0, min_source_len=21)
    for pairs, ok in ((short, lambda n: n <= 20), (long, lambda n: n >= 21)):
        for source, target in pairs:
            task = next(t for t, prefix in dates.PREFIXES.items() if source.startswith(prefix))
            assert ok(len(source) - len(dates.PREFIXES[task]))
            assert ("-" in target) == (task == "iso") and ("年" in target) == (task == "zh")
    vocab = dates.CharVocab(extra=":")
    src, tgt = next(dates.text_to_text_batches(split.train, vocab, batch_size=16, max_source_len=20))
    assert src.shape[0] == tgt.shape[0] == 16 and len(vocab) == len(dates.CharVocab()) + 1


def test_char_tokenizer_round_trips_and_maps_unknown_characters_to_unk():
    from book.data.shakespeare import CharTokenizer

    tok = CharTokenizer("to be or not", specials=("[MASK]",))
    assert tok.decode(tok.encode("not to be")) == "not to be"
    assert tok.encode("z")[0] == 0 and tok.itos[:2] == ["<unk>", "[MASK]"]


# ----------------------------------------------------------------------------- exercise data (tests/test_exercises.py)
from book.bert import IGNORE  # noqa: E402
from book.bert import mask_tokens as book_mask_tokens  # noqa: E402


def mask_tokens_answer(ids, mask_id, vocab_size, p=0.15, special=None, generator=None):
    """A correct answer with its own order of draws."""
    chosen = torch.rand(ids.shape, generator=generator) < p
    if special is not None:
        chosen = chosen & ~special
    r = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[chosen & (r < 0.8)] = mask_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    inputs[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=generator)
    return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE))


def _mask_bug(bug):
    def fn(ids, mask_id, vocab_size, p=0.15, special=None, generator=None):
        share = 1 - p if bug == "one_minus_p" else p
        chosen = torch.rand(ids.shape, generator=generator) < share
        if special is not None and bug != "special":
            chosen = chosen & ~special
        r = torch.rand(ids.shape, generator=generator)
        m, rnd = {"all_mask": (1.0, 1.0), "no_unchanged": (0.9, 1.0), "no_random": (0.9, 0.9)}.get(bug, (0.8, 0.9))
        inputs = ids.clone()
        inputs[chosen & (r < m)] = mask_id
        swap = (r >= m) & (r < rnd) & (chosen if bug != "random_everywhere" else torch.ones_like(chosen))
        inputs[swap] = torch.randint(vocab_size, (int(swap.sum()),), generator=generator)
        if bug == "labels_everywhere":
            return inputs, ids.clone()
        if bug == "labels_zero":
            return inputs, torch.where(chosen, ids, torch.zeros_like(ids))
        if bug == "labels_corrupted":
            return inputs, torch.where(chosen, inputs, torch.full_like(ids, IGNORE))
        return inputs, torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    return fn


REFERENCES = {"mask_tokens": mask_tokens_answer}
BUGGY = {
    "non-targets labelled 0 instead of IGNORE (-100)": _mask_bug("labels_zero"),
    "labels at every position (the loss would count tokens the model can see)": _mask_bug("labels_everywhere"),
    "the labels hold the corrupted inputs instead of the original tokens": _mask_bug("labels_corrupted"),
    "special tokens chosen as targets": _mask_bug("special"),
    "every target replaced by [MASK] (no random, no unchanged tokens)": _mask_bug("all_mask"),
    "90 % [MASK] and 10 % random, none left unchanged": _mask_bug("no_unchanged"),
    "90 % [MASK] and 10 % unchanged, no random tokens": _mask_bug("no_random"),
    "the 10 % random tokens drawn over all positions, not only the targets": _mask_bug("random_everywhere"),
    "the share of targets taken as 1 - p": _mask_bug("one_minus_p"),
}


def filter_logits_sorted_mask(logits, top_k=None, top_p=None):
    out = logits.clone()
    if top_k is not None and top_k < out.size(-1):
        kth = out.sort(dim=-1, descending=True).values[..., top_k - 1:top_k]
        out[out < kth] = float("-inf")
    if top_p is not None and top_p < 1:
        probs = out.softmax(-1)
        order = probs.argsort(dim=-1, descending=True)
        p_sorted = probs.gather(-1, order)
        keep_sorted = (p_sorted.cumsum(-1) - p_sorted) < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        out = out.masked_fill(~keep, float("-inf"))
    return out


def attend_with_cache_loop(q, k_new, v_new, cache_k, cache_v):
    """New tokens one at a time, each appended before it attends."""
    k, v, outs = cache_k, cache_v, []
    for i in range(q.size(-2)):
        k = torch.cat([k, k_new[..., i:i + 1, :]], dim=-2)
        v = torch.cat([v, v_new[..., i:i + 1, :]], dim=-2)
        w = (q[..., i:i + 1, :] @ k.transpose(-2, -1) / q.size(-1) ** 0.5).softmax(-1)
        outs.append(w @ v)
    return torch.cat(outs, dim=-2), k, v


def buckets_written_out(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    n = relative_position
    offset = torch.zeros_like(n)
    if bidirectional:
        num_buckets = num_buckets // 2
        offset = torch.where(n > 0, num_buckets, 0)
        n = n.abs()
    else:
        n = torch.where(n < 0, -n, 0)
    exact = num_buckets // 2
    large = exact + (torch.log(n.clamp(min=1).double() / exact) / math.log(max_distance / exact)
                     * (num_buckets - exact)).floor().long()
    return offset + torch.where(n < exact, n, torch.minimum(large, torch.tensor(num_buckets - 1)))


ALTERNATIVES = {
    "filter_logits": [filter_logits_sorted_mask],
    "attend_with_cache": [attend_with_cache_loop],
    "relative_position_bucket": [buckets_written_out],
    "mask_tokens": [mask_tokens_answer],
    "predict_cache_bytes": [lambda: 2 * 24 * 4 * 64 * 2048 * 8 * 2],
}

WRONG = [
    ("mask_tokens", lambda ids, mask_id, vocab_size, p=0.15, special=None, generator=None:
     book_mask_tokens(ids, mask_id, vocab_size, p=p, special=special, generator=generator), "not allowed"),
    ("mask_tokens", lambda ids, mask_id, vocab_size, p=0.15, special=None, generator=None: ids, "pair"),
    ("mask_tokens", lambda ids, mask_id, vocab_size, p=0.15, special=None, generator=None:
     (ids.float(), torch.full_like(ids, IGNORE)), "dtype"),
    ("filter_logits", lambda logits, top_k=None, top_p=None: logits, "wrong values"),
    ("filter_logits", lambda logits, top_k=None, top_p=None: top_k_filter(logits, top_k), "not allowed"),
    ("attend_with_cache", lambda q, k, v, ck, cv: (q, ck, cv), "shape"),
    ("relative_position_bucket", lambda rel, bidirectional=True, num_buckets=32, max_distance=128:
     rel.clamp(0, num_buckets - 1), "wrong values"),
    ("predict_cache_bytes", lambda: 2 * 24 * 4 * 64 * 2048 * 8 * 2.0, "int"),
    ("predict_cache_bytes", lambda: 12345, "not right"),
]
