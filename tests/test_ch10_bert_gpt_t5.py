"""Chapter 10's library (written ahead of the chapter): the decoder-only GPT and ``decoding.generate``."""
import pytest
import torch

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
