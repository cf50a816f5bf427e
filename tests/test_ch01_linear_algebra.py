"""Chapter 01: book.maths' maths equals PyTorch's; special grader feedback; and the chapter's data
for test_exercises.py (its figure builders are tested in test_viz.py)."""
import nbformat
import torch
import torch.nn.functional as F

from book import maths as FD
from book.attention import softmax
from book.grader import ch01, check

from conftest import ROOT


# ----------------------------------------------------------------------------- book.maths
def test_cosine_similarity_matrix_matches_torch_and_handles_zero_rows():
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    want = F.cosine_similarity(x[..., :, None, :], x[..., None, :, :], dim=-1)  # (2, 6, 6)
    torch.testing.assert_close(FD.cosine_similarity_matrix(x), want)
    x[0, 2] = 0.0
    s = FD.cosine_similarity_matrix(x)
    assert torch.isfinite(s).all() and (s[0, 2] == 0).all()


def test_logsumexp_log_softmax_are_stable_and_match_torch():
    # float64, so that x - logsumexp(x) of scores around 1e4 keeps more digits than the tolerance asks
    # (in float32 its rounding error, ~1e4 · 2^-24, is above it); exp(1e4) overflows in float64 too
    x = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e4
    for dim in (0, 1, -1):
        torch.testing.assert_close(FD.logsumexp(x, dim), torch.logsumexp(x, dim))
        torch.testing.assert_close(FD.logsumexp(x, dim, keepdim=True), torch.logsumexp(x, dim, keepdim=True))
        torch.testing.assert_close(FD.log_softmax(x, dim), torch.log_softmax(x, dim))
    assert torch.isfinite(FD.log_softmax(x)).all() and torch.isfinite(FD.log_softmax(x.float())).all()


def test_cross_entropy_matches_torch_including_batch_axes():
    logits, targets = torch.randn(7, 5) * 30, torch.randint(0, 5, (7,))
    torch.testing.assert_close(FD.cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    logits, targets = torch.randn(2, 3, 4), torch.randint(0, 4, (2, 3))
    torch.testing.assert_close(FD.cross_entropy(logits, targets), F.cross_entropy(logits.reshape(6, 4), targets.reshape(6)))


def test_kl_divergence_matches_torch_and_handles_zeros():
    p, q = torch.softmax(torch.randn(4, 6), -1), torch.softmax(torch.randn(4, 6), -1)
    torch.testing.assert_close(FD.kl_divergence(p, q), F.kl_div(q.log(), p, reduction="none").sum(-1))
    p[:, 0] = 0.0
    assert torch.isfinite(FD.kl_divergence(p, q)).all()
    torch.testing.assert_close(FD.kl_divergence(q, q), torch.zeros(4))


def test_gradients_of_the_foundations_pass_gradcheck():
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FD.log_softmax, (z,))
    assert torch.autograd.gradcheck(FD.cosine_similarity_matrix, (z,))
    t = torch.tensor([0, 4, 2])
    assert torch.autograd.gradcheck(lambda a: FD.cross_entropy(a, t), (z,))


# ----------------------------------------------------------------------------- data for test_exercises.py
# Mistakes whose catalogue entry is an implementation are checked directly; the eigenvector's are
# probes (the sign of an eigenvector is free), so here is one buggy implementation for each.
def _eig_smallest(a):
    return torch.linalg.eigh(a)[1][..., :, 0]


def _eig_row(a):
    return torch.linalg.eigh(a)[1][..., -1, :]


def _power_iteration(a):
    v = torch.ones(a.shape[:-1], dtype=a.dtype)[..., None]  # (..., n, 1)
    for _ in range(500):
        v = a @ v
        v = v / v.norm(dim=-2, keepdim=True)
    return v[..., 0]


BUGGY = {
    "the eigenvector of the smallest eigenvalue": _eig_smallest,
    "a row of the eigenvector matrix instead of a column": _eig_row,
    "the eigenvector of the eigenvalue largest in size (|λ|)": _power_iteration,
}


def eig_negated_argmax(a):
    lam, vec = torch.linalg.eigh(a)
    return -torch.take_along_dim(vec, lam.argmax(-1)[..., None, None], dim=-1)[..., 0]


def eig_shifted_power_iteration(a):
    shift = a.abs().sum((-2, -1), keepdim=True)  # makes every eigenvalue positive, order unchanged
    b = a + shift * torch.eye(a.shape[-1], dtype=a.dtype)
    v = torch.ones(a.shape[:-1], dtype=a.dtype)[..., None]
    for _ in range(3000):
        v = b @ v
        v = v / v.norm(dim=-2, keepdim=True)
    return v[..., 0]


# 3. find and fix the bugs: the notebook's buggy function with its three lines fixed, and two other routes
def cos_attention_fixed(queries, keys, temperature):
    q = queries / queries.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    k = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    scores = q @ k.mT / temperature
    return torch.softmax(scores, dim=-1)


def cos_attention_via_chapter(queries, keys, temperature):
    """The chapter's cosine_similarity_matrix on both sets at once, then the query-key block."""
    n = queries.shape[-2]
    cos = FD.cosine_similarity_matrix(torch.cat([queries, keys], dim=-2))[..., :n, n:]
    return softmax(cos / temperature, dim=-1)


def cos_attention_torch(queries, keys, temperature):
    cos = F.cosine_similarity(queries[..., :, None, :], keys[..., None, :, :], dim=-1, eps=1e-8)
    e = torch.exp((cos - cos.amax(-1, keepdim=True)) / temperature)
    return e / e.sum(-1, keepdim=True)


# 4. the softmax Jacobian: autograd (what the statement forbids in an answer), and two formulas
def jacobian_by_autograd(scores, temperature=1.0):
    rows = scores.reshape(-1, scores.shape[-1])
    jacs = [torch.autograd.functional.jacobian(lambda s: torch.softmax(s / temperature, dim=-1), r) for r in rows]
    return torch.stack(jacs).reshape(*scores.shape, scores.shape[-1])


def jacobian_einsum(scores, temperature=1.0):
    p = softmax(scores / temperature, dim=-1)
    return (torch.diag_embed(p) - torch.einsum("...i,...j->...ij", p, p)) / temperature


def jacobian_where(scores, temperature=1.0):
    p = torch.softmax(scores / temperature, dim=-1)
    n = p.shape[-1]
    same = torch.eye(n, dtype=torch.bool, device=p.device)
    outer = p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.where(same, p.unsqueeze(-1) - outer, -outer) / temperature


# 5. binary cross-entropy on logits: PyTorch's (forbidden in an answer), and two stable formulas
def bce_torch(logits, targets):
    return F.binary_cross_entropy_with_logits(logits, targets)


def bce_log1p(logits, targets):
    return (logits.clamp(min=0) - logits * targets + torch.log1p(torch.exp(-logits.abs()))).mean()


def bce_two_terms(logits, targets):
    zeros = torch.zeros_like(logits)
    neg_log_p = torch.logsumexp(torch.stack([zeros, -logits]), dim=0)  # −log σ(z)
    neg_log_not_p = torch.logsumexp(torch.stack([zeros, logits]), dim=0)  # −log(1 − σ(z))
    return (targets * neg_log_p + (1 - targets) * neg_log_not_p).sum() / logits.numel()


REFERENCES = {
    "top_eigenvector": ch01.top_eigenvector_reference,  # judged: the exercise has none
    "softmax_jacobian": jacobian_by_autograd,
    "bce_with_logits": bce_torch,
}

ALTERNATIVES = {
    "predict_broadcast_shapes": [lambda: [torch.Size([3, 4]), [2, 5, 3], (2, 8), (5, 5)],
                                 lambda: ((3, 4), (2, 5, 3), (2, 8), (5, 5))],
    "top_eigenvector": [eig_negated_argmax, eig_shifted_power_iteration],
    "cosine_attention": [cos_attention_fixed, cos_attention_via_chapter, cos_attention_torch],
    "softmax_jacobian": [jacobian_einsum, jacobian_where],
    "bce_with_logits": [bce_log1p, bce_two_terms],
}


def _jacobian_backward(scores, temperature=1.0):
    s = scores.detach().clone().requires_grad_()
    p = torch.softmax(s / temperature, dim=-1)
    rows = []
    for i in range(p.shape[-1]):
        (g,) = torch.autograd.grad(p[..., i].sum(), s, retain_graph=True)
        rows.append(g)
    return torch.stack(rows, dim=-2)


def _jacobian_jacrev(scores, temperature=1.0):
    return torch.func.vmap(torch.func.jacrev(lambda s: torch.softmax(s / temperature, -1)))(
        scores.reshape(-1, scores.shape[-1])).reshape(*scores.shape, scores.shape[-1])


def _jacobian_with_backward(scores, temperature=1.0):
    s = scores.detach().clone().requires_grad_()
    torch.softmax(s / temperature, dim=-1)[..., 0].sum().backward()
    return jacobian_einsum(scores, temperature)


WRONG = [  # the eigenvector judge explains what is wrong; the rules the statements state are enforced, by name
    ("top_eigenvector", lambda a: 2 * torch.linalg.eigh(a)[1][..., :, -1], "length 1"),
    ("top_eigenvector", lambda a: torch.linalg.eig(a)[1][..., :, 0], "complex"),
    ("top_eigenvector", lambda a: torch.linalg.eigh(a)[1], "shape"),
    ("cosine_attention", lambda q, k, t: cos_attention_fixed(q, k, t).mT, "shape"),
    ("cosine_attention", lambda q, k, t: cos_attention_fixed(q, k, t).sum(-1), "shape"),
    ("softmax_jacobian", jacobian_by_autograd, "`torch.autograd"),
    ("softmax_jacobian", _jacobian_backward, "`torch.autograd"),
    ("softmax_jacobian", _jacobian_jacrev, "`torch.func"),
    ("softmax_jacobian", _jacobian_with_backward, "backward"),
    ("softmax_jacobian", lambda s, t=1.0: torch.diagonal(jacobian_einsum(s, t), dim1=-2, dim2=-1), "shape"),
    ("bce_with_logits", bce_torch, "`F.binary_cross_entropy_with_logits`"),
    ("bce_with_logits", lambda z, y: (F.softplus(z) - y * z).mean(), "`F.softplus`"),
    ("bce_with_logits", lambda z, y: -(y * F.logsigmoid(z) + (1 - y) * F.logsigmoid(-z)).mean(), "`F.logsigmoid`"),
    ("bce_with_logits", lambda z, y: bce_log1p(z, y).item(), "expected a torch.Tensor"),
    ("bce_with_logits", F.binary_cross_entropy_with_logits, "itself"),
    # where no catalogued mistake fits, the feedback still says what is wrong
    ("cosine_attention", lambda q, k, t: 2 * cos_attention_fixed(q, k, t), "do not sum to 1"),
    ("cosine_attention", lambda q, k, t: torch.softmax(q / q.abs().sum(-1, keepdim=True).clamp_min(1e-8)
                                                       @ F.normalize(k, dim=-1).mT / t, dim=-1),
     "Each of your rows is a distribution"),  # the queries divided by their L1 norm
    ("softmax_jacobian", lambda s, t=1.0: jacobian_einsum(s, t) - torch.diag_embed(softmax(s / t, -1) ** 2) / t,
     "Your off-diagonal entries (j ≠ i) are right"),
    ("softmax_jacobian", lambda s, t=1.0: (torch.diag_embed(softmax(s / t, -1))
                                           - softmax(s / t, -1)[..., :, None] ** 2) / t,
     "Your diagonal entries (j = i) are right"),  # p_i² in every entry of row i
    ("softmax_jacobian", lambda s, t=1.0: 0.5 * jacobian_einsum(s, t), "a constant factor off"),
    ("softmax_jacobian", lambda s, t=1.0: torch.diag_embed(softmax(s / t, -1))
     - (softmax(s / t, -1) ** 2).sum(-1)[..., None, None], "do not sum to 0"),  # p·p instead of p pᵀ
    ("bce_with_logits", lambda z, y: (torch.logsumexp(torch.stack([-z, z]), 0) - 2 * y * z).mean(), "never negative"),
    ("bce_with_logits", lambda z, y: -(y * torch.log(torch.sigmoid(z) + 1e-12)
                                       + (1 - y) * torch.log(1 - torch.sigmoid(z) + 1e-12)).mean(), "confident"),
    ("bce_with_logits", lambda z, y: bce_log1p(z, (y > 0.3).to(z.dtype)), "probabilities between 0 and 1"),
]


# ----------------------------------------------------------------------------- special grader feedback
def test_prediction_feedback_never_shows_the_answer():
    r = check("01_linear_algebra/predict_broadcast_shapes", lambda: ((3, 4), (2, 5, 3), (2, 1), (5, 5)))
    assert not r.passed and "x.sum(dim=1)" in r.feedback
    assert "(2, 8)" not in r.feedback


def test_the_notebooks_buggy_function_is_the_catalogued_one():
    """Handing in the notebook's buggy_cosine_attention unchanged is named as such: the grader's
    catalogue and the notebook describe the same three bugs."""
    nb = nbformat.read(ROOT / "solutions" / "01_linear_algebra.ipynb", as_version=4)
    source = next(c.source for c in nb.cells
                  if c.cell_type == "code" and c.source.startswith("def buggy_cosine_attention"))
    namespace = {"torch": torch}
    exec(compile(source, "buggy_cosine_attention", "exec"), namespace)  # noqa: S102
    r = check("01_linear_algebra/cosine_attention", namespace["buggy_cosine_attention"])
    assert r.mistake == "the function returned as given (all three bugs still in it)", r.feedback
