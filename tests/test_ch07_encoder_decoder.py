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
def _autograd_layer_norm_backward(x, gamma, grad_out, eps=1e-5):
    """PyTorch's autograd through F.layer_norm (a reference; an answer may not use autograd)."""
    x = x.detach().clone().requires_grad_(True)
    gamma = gamma.detach().clone().requires_grad_(True)
    beta = torch.zeros_like(gamma, requires_grad=True)
    y = F.layer_norm(x, x.shape[-1:], gamma, beta, eps)
    return torch.autograd.grad(y, (x, gamma, beta), grad_out)


def _modules_gated_sublayer(x, norm_weight, w_gate, w1, w2, eps=1e-6):
    """x + GatedFeedForward(RMSNorm(x)) with the chapter's modules (a reference; not allowed in an answer)."""
    norm, ffn = L.RMSNorm(x.shape[-1], eps=eps), L.GatedFeedForward(x.shape[-1], w1.shape[0], bias=False)
    with torch.no_grad():
        norm.weight.copy_(norm_weight)
        ffn.gate.weight.copy_(w_gate)
        ffn.linear1.weight.copy_(w1)
        ffn.linear2.weight.copy_(w2)
        return x + ffn(norm(x))


def _packed_loops(doc_ids):
    """The rule written out token by token: a reference for the vectorised one."""
    B, T = doc_ids.shape
    mask = torch.zeros(B, 1, T, T, dtype=torch.bool)
    positions = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        for i in range(T):
            start = i
            while start > 0 and doc_ids[b, start - 1] == doc_ids[b, i]:
                start -= 1
            mask[b, 0, i, start:i + 1] = True
            positions[b, i] = i - start
    return mask, positions


REFERENCES = {"encoder_layer": _module_encoder_layer, "decoder_layer": _module_decoder_layer,
              "layer_norm_backward": _autograd_layer_norm_backward,
              "gated_ffn_sublayer": _modules_gated_sublayer,
              "packed_causal_mask": _packed_loops}




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


# 1. LayerNorm's backward pass: the explicit Jacobian per token, and the σ³ form of the textbooks
def _lnb_jacobian(x, gamma, grad_out, eps=1e-5):
    d = x.shape[-1]
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
    inv = (var + eps).rsqrt()
    x_hat = (x - mean) * inv
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    # ∂x̂_i/∂x_j = (δ_ij − 1/d − x̂_i x̂_j / d) / s, one (d, d) matrix per token
    jac = (eye - 1.0 / d - x_hat.unsqueeze(-1) * x_hat.unsqueeze(-2) / d) * inv.unsqueeze(-1)
    grad_x = torch.einsum("...i,...ij->...j", grad_out * gamma, jac)
    flat = grad_out.reshape(-1, d)
    return grad_x, (flat * x_hat.reshape(-1, d)).sum(0), flat.sum(0)


def _lnb_sigma_cubed(x, gamma, grad_out, eps=1e-5):
    d = x.shape[-1]
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    g = grad_out * gamma
    d_var = (g * (x - mu)).sum(-1, keepdim=True) * -0.5 * (var + eps) ** -1.5
    d_mu = -g.sum(-1, keepdim=True) / torch.sqrt(var + eps)  # the d_var · ∂σ²/∂μ part is 0
    grad_x = g / torch.sqrt(var + eps) + d_var * 2 * (x - mu) / d + d_mu / d
    x_hat = (x - mu) / torch.sqrt(var + eps)
    lead = tuple(range(x.dim() - 1))
    sums = (lambda t: t.sum(dim=lead)) if lead else (lambda t: t)
    return grad_x, sums(grad_out * x_hat), sums(grad_out)


# 2. the fixed sublayer, written differently from the solution
def _gated_fixed(x, norm_weight, w_gate, w1, w2, eps=1e-6):
    h = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * norm_weight
    z = torch.einsum("...d,fd->...f", h, w_gate)
    hidden = z * torch.sigmoid(z) * torch.einsum("...d,fd->...f", h, w1)
    return x + torch.einsum("...f,df->...d", hidden, w2)


def _gated_given_fixed(x, norm_weight, w_gate, w1, w2, eps=1e-6):
    """The notebook's buggy function with its three lines fixed."""
    rms = (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    h = x / rms * norm_weight
    hidden = F.silu(F.linear(h, w_gate)) * F.linear(h, w1)
    return x + F.linear(hidden, w2)


# 4. the packed mask: a block-diagonal tril, positions from each document's first index
def _packed_starts(doc_ids):
    B, T = doc_ids.shape
    steps = torch.arange(T, device=doc_ids.device)
    new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
    new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start = torch.where(new_doc, steps, torch.zeros_like(steps)).cummax(dim=-1).values  # (B, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril() & (
        doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2))
    return mask.unsqueeze(1), steps - start


# packed_causal_mask has a judge (positions must be integers), but its catalogue is real code, not probes
BUGGY = {m.name: m.fn for m in ch07.PACKED_MASK.mistakes}

ALTERNATIVES = {
    "layer_norm_backward": [_lnb_jacobian, _lnb_sigma_cubed],
    "gated_ffn_sublayer": [_gated_fixed, _gated_given_fixed],
    "encoder_layer": [_explicit_encoder],
    "packed_causal_mask": [_packed_starts],
    "decoder_layer": [_explicit_decoder],
    "predict_decoder_params": [lambda: 4_204_032, lambda: torch.tensor(4204032.0)],
}


def _lnb_uses_backward(x, gamma, grad_out, eps=1e-5):
    x = x.detach().clone().requires_grad_(True)
    gamma = gamma.detach().clone().requires_grad_(True)
    y = L.layer_norm(x, gamma, torch.zeros_like(gamma))
    y.backward(grad_out)
    return x.grad, gamma.grad, grad_out.reshape(-1, x.shape[-1]).sum(0)


def _lnb_gamma_per_token(x, gamma, grad_out, eps=1e-5):
    grad_x, _, grad_beta = ch07.layer_norm_backward(x, gamma, grad_out, eps)
    x_hat = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, correction=0, keepdim=True) + eps)
    return grad_x, grad_out * x_hat, grad_beta  # not summed over the tokens


def _lnb_two_slips(x, gamma, grad_out, eps=1e-5):
    """μ, σ treated as constants AND γ left out: not catalogued as such; the property still speaks."""
    _, grad_gamma, grad_beta = ch07.layer_norm_backward(x, gamma, grad_out, eps)
    return grad_out / torch.sqrt(x.var(-1, correction=0, keepdim=True) + eps), grad_gamma, grad_beta


def _gated_uses_rms_norm(x, norm_weight, w_gate, w1, w2, eps=1e-6):
    h = F.rms_norm(x, x.shape[-1:], norm_weight, eps)
    return x + F.linear(F.silu(F.linear(h, w_gate)) * F.linear(h, w1), w2)


def _gated_in_place(x, norm_weight, w_gate, w1, w2, eps=1e-6):
    out = ch07.gated_ffn_sublayer(x, norm_weight, w_gate, w1, w2, eps)
    x /= torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # normalises the caller's tensor
    return out


def _packed_float_positions(doc_ids):
    mask, positions = ch07.packed_causal_mask(doc_ids)
    return mask, positions.float()


def _packed_not_equal(doc_ids):
    T = doc_ids.shape[-1]
    other = doc_ids[:, :, None] != doc_ids[:, None, :]  # the documents' rule the wrong way round
    mask = other & torch.ones(T, T, dtype=torch.bool).tril()
    return mask[:, None], ch07.packed_causal_mask(doc_ids)[1]


def _packed_long_mask(doc_ids):
    mask, positions = ch07.packed_causal_mask(doc_ids)
    return mask.long(), positions


WRONG = [
    # rules the statements state are enforced, by name
    ("layer_norm_backward", _autograd_layer_norm_backward, "`torch.autograd.grad`"),
    ("layer_norm_backward", _lnb_uses_backward, "`y.backward`"),
    ("gated_ffn_sublayer", _modules_gated_sublayer, "`L.RMSNorm`"),
    ("gated_ffn_sublayer", _gated_uses_rms_norm, "`F.rms_norm`"),
    # shapes, dtypes, mutated inputs, and what the feedback says beyond "wrong values"
    ("layer_norm_backward", _lnb_gamma_per_token, "`grad_gamma` has shape"),
    ("layer_norm_backward", _lnb_two_slips, "does not sum to 0 over each token's features"),
    ("gated_ffn_sublayer", _gated_in_place, "modified its input"),
    ("packed_causal_mask", _packed_float_positions, "`positions` has dtype torch.float32"),
    ("packed_causal_mask", _packed_not_equal, "lets a token attend to a token of another document"),
    ("packed_causal_mask", _packed_long_mask, "masks must be bool"),
    ("packed_causal_mask", L.decoder_self_mask, "expected a tuple of 2 values"),  # the chapter's
]


# ----------------------------------------------------------------------------- special grader feedback
def test_expected_values_are_never_shown():
    r = check("07_encoder_decoder/predict_decoder_params", lambda: 123)
    assert not r.passed and "4204032" not in r.feedback and "4,204,032" not in r.feedback


def test_predicted_count_matches_a_real_torch_layer():
    n = sum(p.numel() for p in nn.TransformerDecoderLayer(512, 8, 2048, batch_first=True).parameters())
    assert n == ch07.predict_decoder_params() == 4_204_032
    assert math.isclose(n, 4 * 512 * 512 * 2 + 2 * 512 * 2048, rel_tol=0.01)


def test_the_notebooks_buggy_sublayer_is_named_with_all_three_bugs():
    import nbformat
    from conftest import ROOT

    nb = nbformat.read(ROOT / "solutions" / "07_encoder_decoder.ipynb", as_version=4)
    source = next(c.source for c in nb.cells if c.source.startswith("def buggy_gated_ffn_sublayer"))
    namespace = {"torch": torch, "F": F}
    exec(compile(source, "<the notebook's buggy function>", "exec"), namespace)  # noqa: S102
    r = check("07_encoder_decoder/gated_ffn_sublayer", namespace["buggy_gated_ffn_sublayer"])
    assert r.mistake == "the function returned as given (all three bugs still in it)", r.feedback


def test_packed_mask_equals_separate_documents():
    """What the exercise claims: attention over a packed row equals attention over each document alone."""
    from book.multihead import MultiHeadAttention

    torch.manual_seed(0)
    doc_ids = torch.tensor([[3, 3, 3, 0, 0, 7, 7, 7, 7]])
    mask, positions = ch07.packed_causal_mask(doc_ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]] and positions.dtype == torch.long
    mha, x = MultiHeadAttention(8, 2), torch.randn(1, 9, 8)
    with torch.no_grad():
        packed = mha(x, x, mask)[0]
        alone = torch.cat([mha(p, p, causal_mask(p.shape[1]))[0] for p in (x[:, :3], x[:, 3:5], x[:, 5:])], 1)
    torch.testing.assert_close(packed, alone)
