"""Chapter 04: the exercises' references against independent computations (PyTorch's fused kernel,
autograd, loops), and the chapter's data for test_exercises.py (the chapter's copy of
book/attention.py is checked by test_single_source)."""
import math

import pytest
import torch
import torch.nn.functional as F

from book import attention as A
from book.grader import check, ch04
from book.grader.core import clone


# ----------------------------------------------------------------------------- data for test_exercises.py
# 1. find and fix the bugs: PyTorch's kernel (a reference, not allowed in an answer), fixed copies
def cross_via_torch_kernel(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
    q, k, v = x_q @ w_q, x_kv @ w_k, x_kv @ w_v
    keys = (torch.arange(k.shape[-2], device=k.device) < kv_lengths[:, None])[:, None, :]  # (B, 1, T_k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)  # 0 for a row with no allowed key
    weights = torch.softmax((q @ k.mT / math.sqrt(q.shape[-1])).masked_fill(~keys, float("-inf")), -1)
    return out, weights.nan_to_num(0.0)


def cross_three_lines_fixed(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
    """The notebook's buggy function with its three bugs fixed, nothing else changed."""
    q, k, v = x_q @ w_q, x_kv @ w_k, x_kv @ w_v
    d_k = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    positions = torch.arange(x_kv.size(1), device=x_kv.device)
    is_real = positions[None, :] < kv_lengths[:, None]
    scores = scores.masked_fill(~is_real[:, None, :], -1e9)
    weights = torch.softmax(scores, dim=-1).masked_fill(~is_real[:, None, :], 0.0)
    return weights @ v, weights


def cross_einsum_where(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
    q = torch.einsum("bqd,de->bqe", x_q, w_q)
    k = torch.einsum("bkd,de->bke", x_kv, w_k)
    v = torch.einsum("bkd,de->bke", x_kv, w_v)
    keys = torch.arange(x_kv.shape[1], device=x_kv.device).unsqueeze(0) < kv_lengths.unsqueeze(1)
    scores = torch.einsum("bqe,bke->bqk", q, k) / q.shape[-1] ** 0.5
    scores = torch.where(keys.unsqueeze(1), scores, float("-inf"))
    weights = scores.softmax(-1).nan_to_num(0.0)  # an empty row: 0/0 -> 0
    return torch.einsum("bqk,bke->bqe", weights, v), weights


def cross_renormalised(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
    """Softmax over every key, then the padding zeroed and each row renormalised (empty rows stay 0)."""
    q, k, v = x_q @ w_q, x_kv @ w_k, x_kv @ w_v
    keys = (torch.arange(k.shape[1], device=k.device)[None, :] < kv_lengths[:, None])[:, None, :]
    w = F.softmax(q @ k.mT / math.sqrt(q.shape[-1]), dim=-1) * keys
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-30)
    return w @ v, w


# 2. a prefix-LM mask: loops, and a lower triangle with the prefix block filled in
def prefix_loops(token_ids, prefix_lengths, pad_id):
    B, T = token_ids.shape
    out = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        P = int(prefix_lengths[b])
        for t in range(T):
            for j in range(T):
                out[b, t, j] = bool(token_ids[b, j] != pad_id) and (j <= t or j < P)
    return out


def prefix_tril_and_block(token_ids, prefix_lengths, pad_id):
    B, T = token_ids.shape
    ones = torch.ones(T, T, dtype=torch.bool, device=token_ids.device)
    masks = []
    for b in range(B):
        m = ones.tril().clone()
        P = int(prefix_lengths[b])
        m[:P, :P] = True  # the prefix block: both directions
        masks.append(m & (token_ids[b] != pad_id))
    return torch.stack(masks)


# 3. keys in blocks: the book's attention over the concatenated keys (a reference, not allowed in an
# answer), the log domain, and per-block softmaxes merged by their log-sum-exps
def stream_by_concatenating(q, kv_blocks):
    ks, vs = zip(*list(kv_blocks))
    return A.scaled_dot_product_attention(q, torch.cat(ks, -2), torch.cat(vs, -2))[0]


def stream_log_domain(q, kv_blocks):
    lse, acc = None, None  # running log Σ exp(s), and the output normalised so far
    for k, v in kv_blocks:
        s = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
        block_lse = torch.logsumexp(s, dim=-1, keepdim=True)
        block_out = torch.exp(s - block_lse) @ v  # this block's own softmax, normalised
        if lse is None:
            lse, acc = block_lse, block_out
        else:
            new = torch.logaddexp(lse, block_lse)
            acc = torch.exp(lse - new) * acc + torch.exp(block_lse - new) * block_out
            lse = new
    return acc


def stream_from_minus_inf(q, kv_blocks):
    """The running totals start at m = -inf, l = 0, acc = 0 (made on q's device and dtype)."""
    m = torch.full((*q.shape[:-1], 1), float("-inf"), dtype=q.dtype, device=q.device)
    l, acc = torch.zeros_like(m), None
    for k, v in kv_blocks:
        s = (q / math.sqrt(q.size(-1))) @ k.mT
        m_new = torch.maximum(m, s.max(dim=-1, keepdim=True).values)
        p, alpha = (s - m_new).exp(), (m - m_new).exp()
        l = l * alpha + p.sum(-1, keepdim=True)
        acc = p @ v if acc is None else acc * alpha + p @ v
        m = m_new
    return acc / l


# 4. the backward pass: autograd (a reference, not allowed in an answer), einsum, the explicit Jacobian
def backward_by_autograd(q, k, v, grad_out):
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out, _ = A.scaled_dot_product_attention(q, k, v)
        return torch.autograd.grad(out, (q, k, v), grad_out)


def backward_einsum(q, k, v, grad_out):
    c = q.shape[-1] ** -0.5
    w = torch.softmax(torch.einsum("...id,...jd->...ij", q, k) * c, -1)
    g = torch.einsum("...id,...jd->...ij", grad_out, v)
    ds = w * g - w * torch.einsum("...ij,...ij->...i", w, g)[..., None]
    return (torch.einsum("...ij,...jd->...id", ds, k) * c, torch.einsum("...ij,...id->...jd", ds, q) * c,
            torch.einsum("...ij,...id->...jd", w, grad_out))


def backward_explicit_jacobian(q, k, v, grad_out):
    """Each row's (T_k, T_k) Jacobian diag(w) - w wᵀ, applied to ∂L/∂W."""
    scale = 1 / math.sqrt(q.size(-1))
    w = A.softmax(q @ k.mT * scale)  # (..., T_q, T_k)
    jac = torch.diag_embed(w) - w[..., :, None] * w[..., None, :]  # (..., T_q, T_k, T_k), symmetric
    ds = (jac @ (grad_out @ v.mT)[..., None]).squeeze(-1)
    return ds @ k * scale, ds.mT @ q * scale, w.mT @ grad_out


REFERENCES = {
    "padded_cross_attention": cross_via_torch_kernel,
    "streaming_attention": stream_by_concatenating,
    "attention_backward": backward_by_autograd,
    "prefix_lm_mask": prefix_loops,
}

ALTERNATIVES = {
    "padded_cross_attention": [cross_three_lines_fixed, cross_einsum_where, cross_renormalised],
    "prefix_lm_mask": [prefix_tril_and_block,
                       lambda ids, P, pad: ((torch.arange(ids.shape[1])[None, :, None]
                                             >= torch.arange(ids.shape[1])[None, None, :])
                                            | (torch.arange(ids.shape[1]) < P[:, None, None]))
                       & (ids != pad)[:, None, :]],
    "streaming_attention": [stream_log_domain, stream_from_minus_inf],
    "attention_backward": [backward_einsum, backward_explicit_jacobian],
    "predict_weight": [lambda: 0.88, lambda: torch.tensor(0.8808)],
    "predict_shapes": [lambda: (torch.Size([2, 3, 5, 32]), [2, 3, 5, 7])],
}


def _stub(q, kv_blocks):
    raise NotImplementedError("your code here")


def _backward_in_place(q, k, v, grad_out):
    grad_out *= 1.0 / math.sqrt(q.shape[-1])  # modifies the caller's tensor
    return ch04.attention_backward(q, k, v, grad_out * math.sqrt(q.shape[-1]))


def _stream_two_passes(q, kv_blocks):
    top = None
    for k, _ in kv_blocks:  # a first pass for the maximum …
        s = (q @ k.mT).amax(-1, keepdim=True)
        top = s if top is None else torch.maximum(top, s)
    return sum(torch.exp(q @ k.mT - top) @ v for k, v in kv_blocks)  # … and a second one: not a stream


def _stream_by_index(q, kv_blocks):
    k, v = kv_blocks[0]
    return torch.softmax(q @ k.mT / math.sqrt(q.shape[-1]), dim=-1) @ v


def _stream_cat(q, kv_blocks):
    ks, vs = zip(*kv_blocks)
    return A.scaled_dot_product_attention(q, torch.cat(ks, dim=-2), torch.cat(vs, dim=-2))[0]


def _stream_torch_kernel(q, kv_blocks):
    blocks = list(kv_blocks)
    k = torch.concat([b[0] for b in blocks], dim=-2)
    return F.scaled_dot_product_attention(q, k, torch.concat([b[1] for b in blocks], dim=-2))


def _backward_autograd_inside(q, k, v, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, _ = A.scaled_dot_product_attention(q, k, v)
    out.backward(grad_out)
    return q.grad, k.grad, v.grad


def _cross_with_the_chapters(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
    mask = A.padding_mask(kv_lengths, x_kv.shape[1])[:, None, :]
    return A.scaled_dot_product_attention(x_q @ w_q, x_kv @ w_k, x_kv @ w_v, mask)


WRONG = [  # broken submissions that no catalogued mistake describes: what the feedback must say
    ("streaming_attention", _stub, "not implemented yet"),
    ("streaming_attention", lambda q, b: ch04.streaming_attention(q, b).numpy(), "numpy"),
    ("streaming_attention", lambda q, b: ch04.streaming_attention(q, b).sum(-1), "shape"),
    ("streaming_attention", lambda q, b: ch04.streaming_attention(q, b) * float("nan"), "NaN"),
    ("padded_cross_attention", lambda *a: ch04.padded_cross_attention(*a)[0],
     "is a single tensor; expected a tuple of 2 values"),
    ("prefix_lm_mask", lambda ids, P, pad: ch04.prefix_lm_mask(ids, P, pad).float(), "bool"),
    ("prefix_lm_mask", lambda ids, P, pad: ch04.prefix_lm_mask(ids, P, pad)[:, None], "shape"),
    ("prefix_lm_mask", lambda ids, P, pad: None, "expected a torch.Tensor"),
    ("attention_backward", _backward_in_place, "modified its input"),
    ("attention_backward", lambda q, k, v, g: ch04.attention_backward(q, k, v, g)[:2],
     "expected a tuple of 3 values"),
    # the stream can be read once, in order: a second pass or indexing is refused with a reason
    ("streaming_attention", _stream_two_passes, "can be read only once"),
    ("streaming_attention", _stream_by_index, "instead of indexing"),
    # the rules the statements state are enforced, by name, however they are reached
    ("streaming_attention", _stream_cat, "`torch.cat`"),
    ("streaming_attention", _stream_torch_kernel, "`torch.concat`"),
    ("streaming_attention", stream_by_concatenating, "does not allow"),
    ("attention_backward", _backward_autograd_inside, "`out.backward`"),
    ("attention_backward", backward_by_autograd, "`torch.autograd.grad`"),
    ("attention_backward", torch.autograd.grad, "that is `torch.autograd.grad` itself"),
    ("padded_cross_attention", _cross_with_the_chapters, "`A.scaled_dot_product_attention`"),
    ("padded_cross_attention", cross_via_torch_kernel, "`F.scaled_dot_product_attention`"),
    ("padded_cross_attention", print, "can't read the code"),
    # an empty sequence's row gets a reason of its own when no catalogued mistake matches
    ("padded_cross_attention", lambda *a: (lambda o, w: (o, w + (w.sum(-1, keepdim=True) == 0) / w.shape[-1]))(
        *ch04.padded_cross_attention(*a)), "Only the sequence with no real token"),
]


# ----------------------------------------------------------------------------- the references themselves
def _same(a, b):
    for x, y in zip(a, b) if isinstance(a, tuple) else [(a, b)]:
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_equals_an_independent_computation(name):
    ex = next(e for e in ch04.EXERCISES if e.name == name)
    for case in ex.cases(torch.Generator().manual_seed(3)):
        _same(ex.reference(*clone(case.args)), REFERENCES[name](*clone(case.args)))


def test_streaming_equals_attention_whatever_the_blocks():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8) * 8, torch.randn(2, 11, 8) * 8, torch.randn(2, 11, 3)
    want = A.scaled_dot_product_attention(q, k, v)[0]
    for sizes in ([11], [1] * 11, [4, 4, 3], [2, 9]):
        blocks = list(zip(k.split(sizes, dim=1), v.split(sizes, dim=1)))
        torch.testing.assert_close(ch04.streaming_attention(q, blocks), want, atol=1e-5, rtol=1e-4)


def test_a_block_stream_reads_once_and_copies_fresh():
    stream = ch04.BlockStream([(torch.zeros(1, 2), torch.zeros(1, 3))], template=True)
    assert len(list(stream)) == len(list(stream)) == 1  # the case's own copy is not a stream
    copy = type(stream)(iter(stream))
    assert len(list(copy)) == 1
    with pytest.raises(RuntimeError, match="only once"):
        list(copy)
    with pytest.raises(TypeError, match="indexing"):
        copy[0]


def test_prefix_lm_mask_is_causal_without_a_prefix_and_full_with_the_whole_sequence():
    ids = torch.tensor([[4, 5, 6, 7, 0, 0]])
    is_real = ids != 0
    torch.testing.assert_close(ch04.prefix_lm_mask(ids, torch.tensor([0]), 0), A.causal_mask(6)[None] & is_real)
    torch.testing.assert_close(ch04.prefix_lm_mask(ids, torch.tensor([4]), 0)[0, :4, :4], torch.ones(4, 4).bool())


def test_the_notebooks_buggy_function_is_the_catalogued_one():
    """All three bugs of the catalogue together are the function the notebook prints."""
    r = check("padded_cross_attention", ch04._cross_variant(tuple(ch04.BUGS)))
    assert r.mistake == "the function returned as given (all three bugs still in it)", r.feedback
