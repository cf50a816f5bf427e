"""The extension points later chapters load real checkpoints into, each against its PyTorch (or
Hugging Face formula) counterpart: activations, norms, score bias, rotary layouts, grouped-query
attention, projection biases, the key/value cache, and fully masked rows (0, never NaN)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import convert
from book.attention import causal_mask, scaled_dot_product_attention
from book.decoding import greedy_decode
from book.layers import (DecoderLayer, EncoderLayer, FeedForward, GatedFeedForward, LayerNorm, LayerOptions,
                         RMSNorm, key_padding_mask, make_norm)
from book.multihead import KVCache, MultiHeadAttention
from book.positional import RotaryEmbedding, alibi_bias, apply_rope
from book.transformer import Transformer, TransformerConfig


def _randomise(module, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


# ----------------------------------------------------------------------------- feed-forward activations
@pytest.mark.parametrize("activation,fn", [("relu", F.relu), ("gelu", F.gelu),
                                           ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"))])
def test_feed_forward_activations(activation, fn):
    torch.manual_seed(0)
    ffn = FeedForward(8, 32, activation=activation)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ffn(x), ffn.linear2(fn(ffn.linear1(x))))
    if activation == "gelu":  # the exact GELU, not the tanh approximation
        assert not torch.allclose(ffn(x), ffn.linear2(F.gelu(ffn.linear1(x), approximate="tanh")), atol=1e-7)


def test_swiglu_is_the_llama_mlp():
    torch.manual_seed(0)
    ffn = GatedFeedForward(8, 24, bias=False)
    x = torch.randn(3, 8)
    down, gate, up = ffn.linear2, ffn.gate, ffn.linear1  # Hugging Face: down(act(gate(x)) * up(x))
    torch.testing.assert_close(ffn(x), down(F.silu(gate(x)) * up(x)))
    assert sum(p.numel() for p in ffn.parameters()) == 3 * 8 * 24
    assert isinstance(EncoderLayer(8, 2, 24, options=LayerOptions(activation="swiglu")).ffn, GatedFeedForward)


# ----------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 0.1])
def test_layer_norm_eps_and_rms_norm_equal_torch(eps):
    torch.manual_seed(0)
    x = torch.randn(4, 6, 16) * 3 + 1
    ln, ref_ln = make_norm(16, LayerOptions(norm="layer", norm_eps=eps)), nn.LayerNorm(16, eps=eps)
    rms, ref_rms = make_norm(16, LayerOptions(norm="rms", norm_eps=eps)), nn.RMSNorm(16, eps=eps)
    assert isinstance(ln, LayerNorm) and isinstance(rms, RMSNorm)
    with torch.no_grad():
        for ours, theirs in ((ln, ref_ln), (rms, ref_rms)):
            theirs.weight.copy_(torch.rand(16) + 0.5)
            ours.weight.copy_(theirs.weight)
        ref_ln.bias.copy_(torch.randn(16))
        ln.bias.copy_(ref_ln.bias)
    torch.testing.assert_close(ln(x), ref_ln(x))
    torch.testing.assert_close(rms(x), ref_rms(x))


@pytest.mark.parametrize("norm_first", [False, True])
def test_layers_use_the_configured_norm_everywhere(norm_first):
    opts = LayerOptions(norm="rms", norm_eps=1e-6)
    dec = DecoderLayer(16, 4, 32, norm_first=norm_first, options=opts)
    assert all(isinstance(getattr(dec, f"norm{i}"), RMSNorm) and getattr(dec, f"norm{i}").eps == 1e-6 for i in (1, 2, 3))
    model = Transformer(TransformerConfig(10, 10, d_model=16, num_heads=4, d_ff=32, norm_first=norm_first, layer=opts))
    assert isinstance(model.encoder.norm, RMSNorm) and isinstance(model.decoder.norm, RMSNorm)


def test_bad_options_give_clear_errors():
    with pytest.raises(ValueError, match="activation"):
        LayerOptions(activation="tanh")
    with pytest.raises(ValueError, match="norm"):
        LayerOptions(norm="batch")
    with pytest.raises(ValueError, match="n_kv_heads"):
        MultiHeadAttention(16, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="positions"):
        TransformerConfig(10, 10, positions="alibi")
    with pytest.raises(ValueError, match="layout"):
        RotaryEmbedding(layout="sideways")


# ----------------------------------------------------------------------------- attention hooks
def _mha_and_torch(d=16, h=4, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(d, h, bias=bias, batch_first=True)
    return convert.copy_from_torch(MultiHeadAttention(d, h, bias=bias), ref), ref


@pytest.mark.parametrize("bias", [True, False])
def test_projection_biases_are_optional_and_equal_torch(bias):
    ours, ref = _mha_and_torch(bias=bias)
    assert (ours.w_q.bias is None) == (not bias) and (ours.w_o.bias is None) == (not bias)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, x)[0], ref(x, x, x)[0], atol=1e-6, rtol=1e-5)


def test_score_bias_equals_a_float_mask_in_torchs_kernel():
    """An additive bias (ALiBi here; T5's learned bias is the same hook) is what F.sdpa calls a float mask."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    bias = alibi_bias(4, 6)  # (h, T, T)
    ours, _ = scaled_dot_product_attention(q, k, v, causal_mask(6), bias)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal_mask(6), float("-inf")))
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    mha = MultiHeadAttention(32, 4)
    x = torch.randn(2, 6, 32)
    with torch.no_grad():
        plain, w_plain = mha(x, x)
        biased, w_biased = mha(x, x, score_bias=alibi_bias(4, 6))
    assert not torch.allclose(plain, biased)
    diag = torch.arange(6)  # ALiBi moves weight towards the diagonal
    assert (w_biased[..., diag, diag].mean() > w_plain[..., diag, diag].mean()).item()


def _hf_rope(x, positions, base=10000.0):
    """Hugging Face's LLaMA formula: x·cos + rotate_half(x)·sin, frequencies repeated over both halves."""
    d = x.size(-1)
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # (d/2,)
    freqs = positions[:, None].float() * inv_freq  # (T, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, d)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotate_half = torch.cat([-x2, x1], dim=-1)
    return x * emb.cos() + rotate_half * emb.sin()


def _roformer_rope(x, positions, base=10000.0):
    """The RoFormer paper's layout by its rotation matrices: pairs (2i, 2i+1)."""
    d = x.size(-1)
    out = torch.empty_like(x)
    for i in range(d // 2):
        theta = positions.float() * base ** (-2 * i / d)  # (T,)
        c, s = theta.cos(), theta.sin()
        a, b = x[..., 2 * i], x[..., 2 * i + 1]
        out[..., 2 * i], out[..., 2 * i + 1] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("layout,formula", [("half", _hf_rope), ("interleaved", _roformer_rope)])
def test_rotary_layouts_match_their_reference_formulas(layout, formula):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16)  # (B, h, T, d_k)
    pos = torch.arange(7) + 5
    torch.testing.assert_close(apply_rope(x, pos, layout=layout), formula(x, pos), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(RotaryEmbedding(layout=layout)(x, start=5), formula(x, pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rotary_hook_makes_scores_depend_on_the_offset_only(layout):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    rotary = RotaryEmbedding(layout=layout)
    x = torch.randn(1, 1, 16).expand(1, 8, 16)  # the same token at 8 positions
    with torch.no_grad():
        _, w = mha(x, x, rotary=rotary)  # (1, h, 8, 8)
    # weights to the previous token are the same for every query (an offset of 1)
    sub = w[0, :, torch.arange(2, 8), torch.arange(1, 7)] / w[0, :, torch.arange(2, 8), torch.arange(2, 8)]
    torch.testing.assert_close(sub, sub[:, :1].expand_as(sub), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_grouped_query_attention_equals_repeating_keys_and_values(n_kv):
    torch.manual_seed(0)
    d, h = 32, 4
    d_k = d // h
    gqa = _randomise(MultiHeadAttention(d, h, n_kv_heads=n_kv))
    assert gqa.w_k.weight.shape == (n_kv * d_k, d)
    x, mask = torch.randn(2, 6, d), causal_mask(6)
    with torch.no_grad():
        ours, weights = gqa(x, x, mask)
        q = gqa.w_q(x).view(2, 6, h, d_k).transpose(1, 2)
        k = gqa.w_k(x).view(2, 6, n_kv, d_k).transpose(1, 2)
        v = gqa.w_v(x).view(2, 6, n_kv, d_k).transpose(1, 2)
        theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        theirs = gqa.w_o(theirs.transpose(1, 2).reshape(2, 6, d))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert weights.shape == (2, h, 6, 6)


# ----------------------------------------------------------------------------- fully masked rows
def test_a_fully_masked_row_gives_zeros_like_torchs_kernel_and_no_nan_anywhere():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 5, 8, requires_grad=True)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, 1] = False  # query 1 of sequence 0 may attend to nothing
    out, w = scaled_dot_product_attention(q, q, q, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, q, q, attn_mask=mask), atol=1e-6, rtol=1e-5)
    assert (out[0, :, 1] == 0).all() and (w[0, :, 1] == 0).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_a_left_padded_target_and_an_empty_source_stay_finite_through_the_model(norm_first):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(12, 12, d_model=16, num_heads=2, d_ff=32, norm_first=norm_first)).eval()
    src = torch.tensor([[0, 0, 0, 0], [5, 6, 7, 0]])  # an empty source (all padding), a normal one
    tgt = torch.tensor([[0, 0, 1, 4, 5], [1, 4, 5, 6, 0]])  # left-padded target, right-padded target
    with torch.no_grad():
        logits = model(src, tgt)
    assert torch.isfinite(logits).all()
    with torch.no_grad():  # the normal sequence is unaffected by its neighbour
        alone = model(src[1:], tgt[1:])
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the key/value cache
def test_kv_cache_grows_and_returns_everything_so_far():
    cache = KVCache()
    assert cache.length == 0
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    cache.append(k1, v1)
    k, v = cache.append(torch.ones(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))
    assert cache.length == 4 and torch.equal(k[:, :, :3], k1) and (v[:, :, 3] == 0).all()


CONFIGS = {
    "paper": dict(),
    "llama-like": dict(positions="rope", norm_first=True,
                       layer=LayerOptions(activation="swiglu", norm="rms", norm_eps=1e-6, bias=False, n_kv_heads=2)),
    "gpt2-like": dict(positions="learned", norm_first=True, layer=LayerOptions(activation="gelu_tanh")),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoding_with_the_cache_gives_the_same_tokens_and_logits(name):
    torch.manual_seed(0)
    model = _randomise(Transformer(TransformerConfig(20, 20, d_model=32, num_heads=4, d_ff=64, **CONFIGS[name])), std=0.2)
    model.eval()
    src = torch.randint(3, 20, (5, 9))
    src[1, 6:] = 0
    with_cache = greedy_decode(model, src, 15, 1, 2, use_cache=True)
    without = greedy_decode(model, src, 15, 1, 2, use_cache=False)
    assert torch.equal(with_cache, without)
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(with_cache, memory)  # (B, L, V)
        cache = model.new_cache()
        steps = torch.cat([model.decode(with_cache[:, t:t + 1], memory, cache) for t in range(with_cache.size(1))], 1)
    assert (full - steps).abs().max().item() <= 1e-5
    assert cache[0].length == with_cache.size(1)


def test_a_decoder_only_stack_with_cache_equals_recomputing():
    """GPT/LLaMA blocks are EncoderLayers under a causal mask; prefill a prompt, then one token at a time."""
    torch.manual_seed(0)
    rotary = RotaryEmbedding(layout="half")
    opts = LayerOptions(activation="swiglu", norm="rms", bias=False, n_kv_heads=1)
    blocks = [_randomise(EncoderLayer(32, 4, 64, norm_first=True, options=opts, rotary=rotary), seed=i).eval()
              for i in range(2)]
    x = torch.randn(2, 7, 32)

    def run(x, mask, caches=None):
        for i, block in enumerate(blocks):
            x = block(x, mask, cache=caches[i] if caches else None)
        return x

    with torch.no_grad():
        full = run(x, causal_mask(7))
        caches = [KVCache(), KVCache()]
        prompt = run(x[:, :4], causal_mask(4), caches)  # prefill 4 tokens at once
        rest = [run(x[:, t:t + 1], None, caches) for t in range(4, 7)]
    torch.testing.assert_close(torch.cat([prompt, *rest], dim=1), full, atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_keeps_the_options(tmp_path):
    from book.transformer import load_checkpoint, save_checkpoint

    cfg = TransformerConfig(10, 10, d_model=16, num_heads=4, d_ff=32, **CONFIGS["llama-like"])
    model = Transformer(cfg)
    save_checkpoint(model, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.cfg == cfg and isinstance(back.cfg.layer, LayerOptions)
    src, tgt = torch.randint(1, 10, (2, 5)), torch.randint(1, 10, (2, 4))
    torch.testing.assert_close(back.eval()(src, tgt), model.eval()(src, tgt))
