"""Chapter 07: book/layers.py equals torch.nn's Transformer layers, and the chapter's exercises grade
as they should (references pass, every catalogued mistake is named, valid alternatives pass)."""
import ast
import inspect
import math

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import layers as L
from book import viz
from book.attention import causal_mask
from book.convert import TORCH, copy_from_torch, to_book
from book.grader import ch07, check
from book.multihead import multi_head_attention

from conftest import ROOT

ALL = ch07.EXERCISES
REFERENCES = {
    "layer_norm": L.layer_norm, "position_wise_ffn": L.position_wise_ffn,
    "encoder_layer": ch07.torch_encoder_layer, "decoder_self_mask": L.decoder_self_mask,
    "decoder_layer": ch07.torch_decoder_layer, "predict_decoder_params": ch07.predict_decoder_params,
}


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
    (proj(emb(ids)).sum()).backward()
    assert emb.weight.grad is not None
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


def _chapter_classes():
    """Sources of the classes the chapter shows in `# book/layers.py` cells."""
    nb = nbformat.read(ROOT / "chapters" / "07_encoder_decoder.ipynb", as_version=4)
    found = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("# book/layers.py"):
            lines = cell.source.splitlines()
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.ClassDef):
                    found[node.name] = "\n".join(lines[node.lineno - 1: node.end_lineno])
                if isinstance(node, ast.Assign):
                    found[node.targets[0].id] = "\n".join(lines[node.lineno - 1: node.end_lineno])
    return found


def test_chapter_classes_are_identical_to_book_layers():
    shown = _chapter_classes()
    assert {"TokenEmbedding", "LayerNorm", "FeedForward", "EncoderLayer", "DecoderLayer"} <= set(shown)
    module_source = inspect.getsource(L)
    for name, source in shown.items():
        if name.startswith("_"):
            assert source in module_source, f"{name} differs from book/layers.py"
        else:
            assert inspect.getsource(getattr(L, name)).strip() == source.strip(), f"{name} differs from book/layers.py"


def test_every_public_function_of_layers_is_taught():
    from test_single_source import shown_functions

    taught = {name for _, module, name, _ in shown_functions() if module == "book.layers"}
    public = {n for n, f in vars(L).items() if inspect.isfunction(f) and f.__module__ == L.__name__
              and not n.startswith("_")}
    assert public <= taught, f"not shown in chapter 07: {public - taught}"


# ----------------------------------------------------------------------------- the figure builder
def test_token_map_explorer_switches_labels_with_the_variant():
    fig = viz.token_map_explorer({"a": (torch.rand(2, 3), ["x", "y"], ["p", "q", "r"]),
                                  "b": (torch.rand(3, 2), ["u", "v", "w"], ["s", "t"])}, label="sentence")
    steps = fig.layout.updatemenus[0].buttons
    assert len(steps) == 2
    assert list(steps[1].args[1]["yaxis.ticktext"]) == ["u", "v", "w"]
    assert list(steps[1].args[1]["xaxis.ticktext"]) == ["s", "t"]
    assert np.array(steps[1].args[0]["z"][0]).shape == (3, 2)
    masks = viz.token_map_explorer({"m": (causal_mask(3), list("abc"), list("abc"))}, masks=True)
    tr = masks.data[0]
    assert tr.showscale is False and tr.customdata[0][2][2] == "blocked" and tr.customdata[2][0][2] == "may attend"
    with pytest.raises(ValueError, match="labels"):
        viz.token_map_explorer({"a": (torch.rand(2, 2), ["x"], ["p", "q"])})
    with pytest.raises(ValueError):
        viz.token_map_explorer({}, control="slider")
    fig = viz.token_map_explorer({"a": (torch.rand(2, 2), ["x", "y"], ["p", "q"]),
                                  "b": (torch.rand(2, 2), ["x", "y"], ["p", "q"])}, control="slider")
    assert len(fig.layout.sliders[0].steps) == 2


# ----------------------------------------------------------------------------- the grader
def test_every_exercise_has_a_reference_here_and_a_catalogue():
    assert sorted(REFERENCES) == sorted(e.name for e in ALL)
    for ex in ALL:
        assert len(ex.mistakes) >= 3, ex.id


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.name)
def test_reference_passes(ex):
    r = check(ex.id, REFERENCES[ex.name])
    assert r.passed, r.feedback


def test_book_layer_functions_equal_the_torch_references():
    """The book's own layers pass the exercises that PyTorch's layers define."""
    assert check("07_encoder_decoder/encoder_layer", _module_encoder_layer).passed
    assert check("07_encoder_decoder/decoder_layer", _module_decoder_layer).passed


@pytest.mark.parametrize("ex,mistake", [(e, m) for e in ALL for m in e.mistakes],
                         ids=lambda x: getattr(x, "name", None))
def test_catalogued_mistake_is_rejected_and_named(ex, mistake):
    r = check(ex.id, mistake.fn)
    assert not r.passed
    assert r.mistake == mistake.name, r.feedback
    assert mistake.name in r.feedback and "Hint:" in r.feedback


# ----------------------------------------------------------------------------- alternatives that must pass
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


ALTERNATIVES = [
    ("layer_norm", _ln_var_mean),
    ("layer_norm", lambda x, gamma, beta, eps=1e-5: F.layer_norm(x, x.shape[-1:], gamma, beta, eps)),
    ("layer_norm", lambda x, g, b, eps=1e-5: g * (x - x.mean(-1, keepdim=True))
     / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) + b),
    ("position_wise_ffn", lambda x, w1, b1, w2, b2: F.linear(F.relu(F.linear(x, w1, b1)), w2, b2)),
    ("position_wise_ffn", lambda x, w1, b1, w2, b2: torch.einsum(
        "...f,df->...d", torch.clamp(torch.einsum("...d,fd->...f", x, w1) + b1, min=0), w2) + b2),
    ("encoder_layer", _module_encoder_layer),
    ("encoder_layer", _explicit_encoder),
    ("decoder_self_mask", lambda r: r[:, None, None, :] & torch.ones(r.shape[1], r.shape[1], dtype=torch.bool).tril()),
    ("decoder_self_mask", lambda r: (torch.arange(r.shape[1])[None, :] <= torch.arange(r.shape[1])[:, None])
     .logical_and(r.unsqueeze(1)).unsqueeze(1)),
    ("decoder_layer", _module_decoder_layer),
    ("decoder_layer", _explicit_decoder),
    ("predict_decoder_params", lambda: 4_204_032),
    ("predict_decoder_params", lambda: torch.tensor(4204032.0)),
]


@pytest.mark.parametrize("name,fn", ALTERNATIVES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALTERNATIVES)])
def test_valid_alternatives_pass(name, fn):
    r = check(f"07_encoder_decoder/{name}", fn)
    assert r.passed, r.feedback


def test_expected_values_are_never_shown():
    r = check("07_encoder_decoder/predict_decoder_params", lambda: 123)
    assert not r.passed and "4204032" not in r.feedback and "4,204,032" not in r.feedback


def test_nan_from_eps_missing_gets_the_hint():
    r = check("07_encoder_decoder/layer_norm",
              lambda x, g, b, eps=1e-5: g * (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True) + b)
    assert not r.passed and "NaN" in r.feedback and "inside" in r.feedback


def test_checks_are_fast():
    import time

    for ex in ALL:
        t0 = time.perf_counter()
        check(ex.id, REFERENCES[ex.name])
        assert time.perf_counter() - t0 < 2.0, ex.id


def test_predicted_count_matches_a_real_torch_layer():
    n = sum(p.numel() for p in nn.TransformerDecoderLayer(512, 8, 2048, batch_first=True).parameters())
    assert n == ch07.predict_decoder_params() == 4_204_032
    assert math.isclose(n, 4 * 512 * 512 * 2 + 2 * 512 * 2048, rel_tol=0.01)
