"""Chapter 07: book/layers.py equals torch.nn's Transformer layers; the chapter's data for
test_exercises.py (the book's layers, adapted to the exercises' signature, pass the exercises that
PyTorch's layers define) and the grader's special feedback."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import layers as L
from book.attention import causal_mask
from book.convert import TORCH, copy_from_torch, to_book
from book.grader import ch07, check


# ----------------------------------------------------------------------------- book/layers.py against torch.nn
def _randomise(module, std=0.3):
    """Non-trivial weights everywhere (LayerNorm gammas away from 1, biases away from 0)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def _padded(B, T, lengths):
    return torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]  # (B, T)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_equals_torch(norm_first):
    torch.manual_seed(0)
    B, T, d, h, d_ff = 3, 6, 16, 4, 40
    theirs = _randomise(nn.TransformerEncoderLayer(d, h, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first))
    mine = copy_from_torch(L.EncoderLayer(d, h, d_ff, norm_first=norm_first), theirs)
    x = torch.randn(B, T, d)
    mask = L.key_padding_mask(_padded(B, T, [6, 3, 1]))
    with torch.no_grad():
        torch.testing.assert_close(mine(x, mask), theirs(x, src_mask=L.torch_attn_mask(mask, B, h, T, T)),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert mine.self_attn_weights.shape == (B, h, T, T) and not mine.self_attn_weights.requires_grad


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_torch(norm_first):
    torch.manual_seed(0)
    B, T, S, d, h, d_ff = 2, 5, 7, 16, 2, 24
    theirs = _randomise(nn.TransformerDecoderLayer(d, h, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first))
    mine = copy_from_torch(L.DecoderLayer(d, h, d_ff, norm_first=norm_first), theirs)
    y, memory = torch.randn(B, T, d), torch.randn(B, S, d)
    self_mask, cross_mask = L.decoder_self_mask(_padded(B, T, [5, 2])), L.key_padding_mask(_padded(B, S, [4, 7]))
    with torch.no_grad():
        got = mine(y, memory, self_mask, cross_mask)
        want = theirs(y, memory, tgt_mask=L.torch_attn_mask(self_mask, B, h, T, T),
                      memory_mask=L.torch_attn_mask(cross_mask, B, h, T, S))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert mine.self_attn_weights.shape == (B, h, T, T)
    assert mine.cross_attn_weights.shape == (B, h, T, S)
    assert torch.all(mine.cross_attn_weights[0, :, :, 4:] == 0)  # source padding gets no weight


class _BookTransformer(nn.Module):
    """nn.Transformer's module names, built from book layers: what chapter 08 will do."""

    def __init__(self, d, h, d_ff, n, norm_first):
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.layers = nn.ModuleList(L.EncoderLayer(d, h, d_ff, norm_first=norm_first) for _ in range(n))
        self.decoder.layers = nn.ModuleList(L.DecoderLayer(d, h, d_ff, norm_first=norm_first) for _ in range(n))
        self.encoder.norm, self.decoder.norm = L.LayerNorm(d), L.LayerNorm(d)

    def forward(self, src, tgt, src_mask, self_mask, cross_mask):
        for layer in self.encoder.layers:
            src = layer(src, src_mask)
        memory = self.encoder.norm(src)
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, self_mask, cross_mask)
        return self.decoder.norm(tgt)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("norm_first", [False, True])
def test_whole_nn_transformer_loads_by_state_dict_renaming(norm_first):
    torch.manual_seed(0)
    B, S, T, d, h, d_ff, n = 2, 6, 5, 16, 4, 32, 2
    theirs = nn.Transformer(d, h, n, n, d_ff, dropout=0.0, batch_first=True, norm_first=norm_first)
    _randomise(theirs, 0.2)
    mine = copy_from_torch(_BookTransformer(d, h, d_ff, n, norm_first), theirs)  # strict: every name matches
    src, tgt = torch.randn(B, S, d), torch.randn(B, T, d)
    src_real, tgt_real = _padded(B, S, [6, 4]), _padded(B, T, [5, 3])
    masks = (L.key_padding_mask(src_real), L.decoder_self_mask(tgt_real), L.key_padding_mask(src_real))
    with torch.no_grad():
        got = mine(src, tgt, *masks)
        want = theirs(src, tgt, src_mask=L.torch_attn_mask(masks[0], B, h, S, S),
                      tgt_mask=L.torch_attn_mask(masks[1], B, h, T, T),
                      memory_mask=L.torch_attn_mask(masks[2], B, h, T, S))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_state_dict_renaming():
    sd = to_book(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True).state_dict(), TORCH)
    assert set(sd) == set(L.DecoderLayer(8, 2, 16).state_dict())
    assert sd["cross_attn.w_k.weight"].shape == (8, 8) and sd["ffn.linear1.weight"].shape == (16, 8)


def test_layer_norm_and_ffn_equal_torch():
    g = torch.Generator().manual_seed(0)
    x, gamma, beta = torch.randn(2, 3, 10, generator=g), torch.randn(10, generator=g), torch.randn(10, generator=g)
    torch.testing.assert_close(L.layer_norm(x, gamma, beta), F.layer_norm(x, (10,), gamma, beta))
    torch.testing.assert_close(L.layer_norm(x, gamma, beta, 0.3), F.layer_norm(x, (10,), gamma, beta, 0.3))
    ours, theirs = L.LayerNorm(10), nn.LayerNorm(10)
    ours.load_state_dict(_randomise(theirs).state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    ffn = L.FeedForward(10, 24)
    torch.testing.assert_close(ffn(x), L.position_wise_ffn(x, ffn.linear1.weight, ffn.linear1.bias,
                                                           ffn.linear2.weight, ffn.linear2.bias))
    with pytest.raises(ValueError, match="gamma and beta"):
        L.layer_norm(x, torch.ones(9), torch.zeros(9))


def test_embedding_scale_padding_and_tying():
    emb = L.TokenEmbedding(50, 64, padding_idx=0)
    ids = torch.tensor([[0, 3, 7]])
    out = emb(ids)
    torch.testing.assert_close(out, emb.embedding(ids) * 8.0)
    assert torch.all(out[0, 0] == 0)
    assert 0.8 < emb.weight[1:].norm(dim=-1).mean().item() < 1.2  # rows of length ~1 before the ×√d
    with pytest.raises(TypeError):
        emb(ids.float())
    proj = nn.Linear(64, 50)
    L.tie_weights(proj, emb)
    assert proj.weight is emb.weight
    model = nn.ModuleDict({"emb": emb, "proj": proj})
    assert sum(p.numel() for p in model.parameters()) == 50 * 64 + 50
    alone_emb, alone_proj = L.TokenEmbedding(50, 64, padding_idx=0), nn.Linear(64, 50)  # the same values, untied
    alone_emb.load_state_dict(emb.state_dict())
    alone_proj.load_state_dict(proj.state_dict())
    (proj(emb(ids)).sum()).backward()
    (alone_proj(alone_emb(ids)).sum()).backward()
    assert alone_emb.weight.grad.abs().sum() > 0 and alone_proj.weight.grad.abs().sum() > 0
    torch.testing.assert_close(emb.weight.grad, alone_emb.weight.grad + alone_proj.weight.grad)  # both uses add up
    with pytest.raises(ValueError, match="cannot tie"):
        L.tie_weights(nn.Linear(32, 50), emb)


def test_masks():
    src = torch.tensor([[4, 5, 0], [4, 0, 0]])
    tgt = torch.tensor([[1, 6, 7, 0], [1, 6, 7, 8]])
    enc, dec, cross = L.make_masks(src, tgt, pad_id=0)
    assert enc.shape == (2, 1, 1, 3) and dec.shape == (2, 1, 4, 4) and cross.shape == (2, 1, 1, 3)
    assert enc.dtype == torch.bool and dec.dtype == torch.bool
    assert torch.equal(dec[1, 0], causal_mask(4))
    assert not dec[0, 0, 3, 3] and dec[0, 0, 3, :3].all()  # padding key hidden, padding row not empty
    assert dec.any(-1).all()  # no query is left without a key
    tm = L.torch_attn_mask(enc, 2, 3, 4, 3)
    assert tm.shape == (6, 4, 3) and torch.equal(tm[3], ~enc[1, 0].expand(4, 3))


def test_bad_layer_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="d_ff"):
        L.EncoderLayer(16, 4, 0)
    with pytest.raises(ValueError, match="dropout"):
        L.DecoderLayer(16, 4, 32, dropout=1.5)
    with pytest.raises(ValueError, match="divisible"):
        L.EncoderLayer(16, 3, 32)


# ----------------------------------------------------------------------------- data for test_exercises.py
def _load(layer, p):
    """Put an exercise parameter dict into a book layer."""
    layer.load_state_dict(ch07.book_state(p))
    return layer


def _module_encoder_layer(x, p, num_heads, mask=None, norm_first=False):
    layer = _load(L.EncoderLayer(x.shape[-1], num_heads, p["ffn"]["w1"].shape[0], norm_first=norm_first), p)
    with torch.no_grad():
        return layer(x, mask)


def _module_decoder_layer(x, memory, p, num_heads, self_mask=None, cross_mask=None, norm_first=False):
    layer = _load(L.DecoderLayer(x.shape[-1], num_heads, p["ffn"]["w1"].shape[0], norm_first=norm_first), p)
    with torch.no_grad():
        return layer(x, memory, self_mask, cross_mask)


# the exercises' references are PyTorch's layers; the book's own layers must pass them too
REFERENCES = {"encoder_layer": _module_encoder_layer, "decoder_layer": _module_decoder_layer}


def _fused_mha(q_in, kv_in, a, num_heads, mask):
    """Multi-head attention with einsum heads and PyTorch's fused kernel."""
    B, Tq, d = q_in.shape
    dk = d // num_heads

    def heads(t, w, b):
        return (t @ w.T + b).unflatten(-1, (num_heads, dk)).transpose(1, 2)  # (B, h, T, d_k)

    out = F.scaled_dot_product_attention(heads(q_in, a["w_q"], a["b_q"]), heads(kv_in, a["w_k"], a["b_k"]),
                                         heads(kv_in, a["w_v"], a["b_v"]), attn_mask=mask)
    return torch.einsum("bhtk,ohk->bto", out, a["w_o"].view(d, num_heads, dk)) + a["b_o"]


def _ln_var_mean(x, gamma, beta, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / (var + eps).sqrt() * gamma + beta


def _explicit_encoder(x, p, num_heads, mask=None, norm_first=False):
    def ln(i, h):
        return F.layer_norm(h, h.shape[-1:], p[f"norm{i}"]["gamma"], p[f"norm{i}"]["beta"])

    def ffn(h):
        return F.linear(F.relu(F.linear(h, p["ffn"]["w1"], p["ffn"]["b1"])), p["ffn"]["w2"], p["ffn"]["b2"])

    if norm_first:
        h = ln(1, x)
        x = x + _fused_mha(h, h, p["self_attn"], num_heads, mask)
        return x + ffn(ln(2, x))
    x = ln(1, x + _fused_mha(x, x, p["self_attn"], num_heads, mask))
    return ln(2, x + ffn(x))


def _explicit_decoder(x, memory, p, num_heads, self_mask=None, cross_mask=None, norm_first=False):
    def ln(i, h):
        return _ln_var_mean(h, p[f"norm{i}"]["gamma"], p[f"norm{i}"]["beta"])

    steps = [(1, lambda h: _fused_mha(h, h, p["self_attn"], num_heads, self_mask)),
             (2, lambda h: _fused_mha(h, memory, p["cross_attn"], num_heads, cross_mask)),
             (3, lambda h: L.position_wise_ffn(h, **p["ffn"]))]
    for i, f in steps:
        x = x + f(ln(i, x)) if norm_first else ln(i, x + f(x))
    return x


ALTERNATIVES = {
    "layer_norm": [
        _ln_var_mean,
        lambda x, g, b, eps=1e-5: g * (x - x.mean(-1, keepdim=True))
        / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) + b],
    "position_wise_ffn": [
        lambda x, w1, b1, w2, b2: F.linear(F.relu(F.linear(x, w1, b1)), w2, b2),
        lambda x, w1, b1, w2, b2: torch.einsum(
            "...f,df->...d", torch.clamp(torch.einsum("...d,fd->...f", x, w1) + b1, min=0), w2) + b2],
    "encoder_layer": [_explicit_encoder],
    "decoder_self_mask": [
        lambda r, n_new=None: r[:, None, None, :] & torch.ones(
            n_new or r.shape[1], r.shape[1], dtype=torch.bool).tril(r.shape[1] - (n_new or r.shape[1])),
        lambda r, n_new=None: (torch.arange(r.shape[1])[None, :] <= torch.arange(r.shape[1])[:, None])[
            r.shape[1] - (n_new or r.shape[1]):].logical_and(r.unsqueeze(1)).unsqueeze(1)],
    "decoder_layer": [_explicit_decoder],
    "predict_decoder_params": [lambda: 4_204_032, lambda: torch.tensor(4204032.0)],
}

WRONG = [  # eps left out: a constant row gives NaN, and the feedback says where eps belongs
    ("layer_norm",
     lambda x, g, b, eps=1e-5: g * (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True) + b,
     "Hint: a token with equal features has variance 0: add eps *inside* the square root"),
    # the statement's "which you may not call" is enforced
    ("layer_norm", lambda x, gamma, beta, eps=1e-5: F.layer_norm(x, x.shape[-1:], gamma, beta, eps), "`F.layer_norm`"),
    ("layer_norm", lambda x, gamma, beta, eps=1e-5: nn.LayerNorm(x.shape[-1], eps)(x), "`nn.LayerNorm`"),
    ("decoder_self_mask", L.decoder_self_mask, "takes 1 positional argument but 2 were given"),  # the chapter's
]


# ----------------------------------------------------------------------------- special grader feedback
def test_expected_values_are_never_shown():
    r = check("07_encoder_decoder/predict_decoder_params", lambda: 123)
    assert not r.passed and "4204032" not in r.feedback and "4,204,032" not in r.feedback


def test_predicted_count_matches_a_real_torch_layer():
    n = sum(p.numel() for p in nn.TransformerDecoderLayer(512, 8, 2048, batch_first=True).parameters())
    assert n == ch07.predict_decoder_params() == 4_204_032
    assert math.isclose(n, 4 * 512 * 512 * 2 + 2 * 512 * 2048, rel_tol=0.01)
