"""Chapter 01: book.maths' maths equals PyTorch's; special grader feedback; and the chapter's data
for test_exercises.py (its figure builders are tested in test_viz.py)."""
import torch
import torch.nn.functional as F

from book import maths as FD
from book.grader import ch01, check

REFERENCES = {"top_eigenvector": ch01.top_eigenvector_reference}  # judged: the exercise has none


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


def cos_normalize(x, y=None):
    u = F.normalize(x, dim=-1)
    w = u if y is None else F.normalize(y, dim=-1)
    return u @ w.mT


def cos_broadcast(x, y=None):
    y = x if y is None else y
    return F.cosine_similarity(x[..., :, None, :], y[..., None, :, :], dim=-1)


def lsm_logsumexp(x, dim=-1):
    return x - torch.logsumexp(x, dim=dim, keepdim=True)


def lsm_two_steps(x, dim=-1):
    m = x.max(dim=dim, keepdim=True).values
    return x - (m + torch.log(torch.sum(torch.exp(x - m), dim=dim, keepdim=True)))


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


def kl_xlogy(p, q, dim=-1):
    return torch.sum(torch.xlogy(p, p / q), dim=dim)


def kl_torch(p, q, dim=-1):
    return F.kl_div(q.log(), p, reduction="none").sum(dim)


def cos_einsum_rsqrt(x, y=None):
    def unit(t):
        return t * torch.rsqrt((t * t).sum(-1, keepdim=True).clamp_min(1e-16))

    return torch.einsum("...id,...jd->...ij", unit(x), unit(x if y is None else y))


def lsm_where_masked(x, dim=-1):
    """log-sum-exp by hand, with an all -inf slice kept finite before the shift."""
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return x - m - (x - m).exp().sum(dim=dim, keepdim=True).log()


def kl_where(p, q, dim=-1):
    ratio = torch.where(p > 0, p / q, torch.ones_like(p))
    return (p * ratio.log()).sum(dim)


ALTERNATIVES = {
    "cosine_similarity_matrix": [cos_normalize, cos_einsum_rsqrt],
    "log_softmax": [lsm_two_steps, lsm_where_masked],
    "predict_broadcast_shapes": [lambda: [torch.Size([3, 4]), [2, 5, 3], (2, 8), (5, 5)],
                                 lambda: ((3, 4), (2, 5, 3), (2, 8), (5, 5))],
    "top_eigenvector": [eig_negated_argmax, eig_shifted_power_iteration],
    "kl_divergence": [kl_xlogy, kl_where],
}

WRONG = [  # the eigenvector judge explains what is wrong; a zero row's NaN is recognised however it arises
    ("top_eigenvector", lambda a: 2 * torch.linalg.eigh(a)[1][..., :, -1], "length 1"),
    ("top_eigenvector", lambda a: torch.linalg.eig(a)[1][..., :, 0], "complex"),
    ("top_eigenvector", lambda a: torch.linalg.eigh(a)[1], "shape"),
    ("cosine_similarity_matrix",
     lambda x, y=None: (x / x.norm(dim=-1, keepdim=True)) @ ((x if y is None else y) / (x if y is None else y).norm(
         dim=-1, keepdim=True)).mT,
     "looks like dividing by a length of zero (a zero row gives NaN)"),
    ("cosine_similarity_matrix", FD.cosine_similarity_matrix, "your function raised"),  # the chapter's, for one set only
    # the statements' "don't call ..." are enforced, by name
    ("cosine_similarity_matrix", cos_broadcast, "`F.cosine_similarity`"),
    ("log_softmax", lsm_logsumexp, "`torch.logsumexp`"),
    ("log_softmax", lambda x, dim=-1: torch.log_softmax(x, dim), "`torch.log_softmax`"),
    ("log_softmax", lambda x, dim=-1: x - x.logsumexp(dim, keepdim=True), "`.logsumexp`"),
    ("log_softmax", torch.log_softmax, "that is `torch.log_softmax` itself"),
    ("kl_divergence", kl_torch, "`F.kl_div`"),
]


# ----------------------------------------------------------------------------- special grader feedback
def test_prediction_feedback_never_shows_the_answer():
    r = check("01_linear_algebra/predict_broadcast_shapes", lambda: ((3, 4), (2, 5, 3), (2, 1), (5, 5)))
    assert not r.passed and "x.sum(dim=1)" in r.feedback
    assert "(2, 8)" not in r.feedback
