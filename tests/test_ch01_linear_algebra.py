"""Chapter 01: book.maths' maths equals PyTorch's, the graded exercises accept right answers,
reject and name every catalogued mistake, and the chapter's figure builders work."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from book import maths as FD
from book import viz
from book.grader import ch01, check, exercises

ALL = ch01.EXERCISES
REFERENCES = {
    "cosine_similarity_matrix": FD.cosine_similarity_matrix,
    "log_softmax": FD.log_softmax,
    "predict_broadcast_shapes": ch01.predict_broadcast_shapes,
    "top_eigenvector": ch01.top_eigenvector_reference,
    "kl_divergence": FD.kl_divergence,
}


# ----------------------------------------------------------------------------- book.maths
def test_cosine_similarity_matrix_matches_torch_and_handles_zero_rows():
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    want = F.cosine_similarity(x[..., :, None, :], x[..., None, :, :], dim=-1)  # (2, 6, 6)
    torch.testing.assert_close(FD.cosine_similarity_matrix(x), want)
    x[0, 2] = 0.0
    s = FD.cosine_similarity_matrix(x)
    assert torch.isfinite(s).all() and (s[0, 2] == 0).all()


def test_logsumexp_log_softmax_are_stable_and_match_torch():
    x = torch.randn(3, 4, 5) * 1e4
    for dim in (0, 1, -1):
        torch.testing.assert_close(FD.logsumexp(x, dim), torch.logsumexp(x, dim))
        torch.testing.assert_close(FD.logsumexp(x, dim, keepdim=True), torch.logsumexp(x, dim, keepdim=True))
        torch.testing.assert_close(FD.log_softmax(x, dim), torch.log_softmax(x, dim))
    assert torch.isfinite(FD.log_softmax(x)).all()


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


# ----------------------------------------------------------------------------- the graded exercises
def test_every_exercise_has_a_reference_here_and_a_catalogue():
    assert sorted(REFERENCES) == sorted(e.name for e in ALL)
    assert sorted(exercises("01")) == sorted(e.id for e in ALL)
    for ex in ALL:
        assert len(ex.mistakes) >= 3, ex.id


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.name)
def test_reference_passes_quickly(ex):
    t0 = time.perf_counter()
    r = check(ex.id, REFERENCES[ex.name])
    assert r.passed, r.feedback
    assert time.perf_counter() - t0 < 2.0


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


@pytest.mark.parametrize("ex,mistake", [(e, m) for e in ALL for m in e.mistakes],
                         ids=lambda x: getattr(x, "name", None))
def test_catalogued_mistake_is_rejected_and_named(ex, mistake):
    fn = BUGGY.get(mistake.name, mistake.fn)
    r = check(ex.id, fn)
    assert not r.passed
    assert r.mistake == mistake.name, r.feedback
    assert mistake.name in r.feedback and "Hint:" in r.feedback


def cos_normalize(x):
    u = F.normalize(x, dim=-1)
    return u @ u.mT


def cos_broadcast(x):
    return F.cosine_similarity(x[..., :, None, :], x[..., None, :, :], dim=-1)


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


ALTERNATIVES = [
    ("cosine_similarity_matrix", cos_normalize), ("cosine_similarity_matrix", cos_broadcast),
    ("log_softmax", lsm_logsumexp), ("log_softmax", lsm_two_steps),
    ("log_softmax", lambda x, dim=-1: torch.log_softmax(x, dim)),
    ("predict_broadcast_shapes", lambda: [torch.Size([3, 4]), [2, 5, 3], (2, 8), (5, 5)]),
    ("predict_broadcast_shapes", lambda: ((3, 4), (2, 5, 3), (2, 8), (5, 5))),
    ("top_eigenvector", eig_negated_argmax), ("top_eigenvector", eig_shifted_power_iteration),
    ("kl_divergence", kl_xlogy), ("kl_divergence", kl_torch),
]


@pytest.mark.parametrize("name,fn", ALTERNATIVES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALTERNATIVES)])
def test_valid_alternatives_pass(name, fn):
    r = check(f"01_linear_algebra/{name}", fn)
    assert r.passed, r.feedback


def test_eigenvector_judge_explains_what_is_wrong():
    r = check("01_linear_algebra/top_eigenvector", lambda a: 2 * torch.linalg.eigh(a)[1][..., :, -1])
    assert not r.passed and "length 1" in r.feedback
    r = check("01_linear_algebra/top_eigenvector", lambda a: torch.linalg.eig(a)[1][..., :, 0])
    assert not r.passed and "complex" in r.feedback
    r = check("01_linear_algebra/top_eigenvector", lambda a: torch.linalg.eigh(a)[1])
    assert not r.passed and "shape" in r.feedback


def test_prediction_feedback_never_shows_the_answer():
    r = check("01_linear_algebra/predict_broadcast_shapes", lambda: ((3, 4), (2, 5, 3), (2, 1), (5, 5)))
    assert not r.passed and "x.sum(dim=1)" in r.feedback
    assert "(2, 8)" not in r.feedback


def test_zero_row_nan_is_named():
    r = check("01_linear_algebra/cosine_similarity_matrix",
              lambda x: (x / x.norm(dim=-1, keepdim=True)) @ (x / x.norm(dim=-1, keepdim=True)).mT)
    assert r.mistake == "dividing by a length of zero (a zero row gives NaN)"


# ----------------------------------------------------------------------------- figures
def test_similarity_heatmap_is_diverging_and_labelled():
    words = ["cat", "dog", "the", "cat"]
    fig = viz.similarity_heatmap(torch.eye(4) * 2 - 1, words)
    tr = fig.data[0]
    assert tr.zmin == -1 and tr.zmax == 1 and tr.zmid == 0
    assert list(fig.layout.xaxis.ticktext) == words and list(tr.x) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="labels"):
        viz.similarity_heatmap(torch.eye(3), words)


def test_linear_map_explorer_has_one_step_per_matrix_and_draws_eigenvectors():
    mats = {"a": torch.tensor([[2.0, 0.0], [0.0, 0.5]]), "b": torch.tensor([[1.0, 0.9], [0.9, 1.0]])}
    fig = viz.linear_map_explorer(mats)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 2 and len(fig.data) == 4
    x_arrow, y_arrow = steps[1].args[0]["x"][2], steps[1].args[0]["y"][2]  # λ₁ q₁ of the second matrix
    assert math.isclose(math.hypot(x_arrow[1], y_arrow[1]), 1.9, rel_tol=1e-6)
    assert fig.layout.yaxis.scaleanchor == "x"
    with pytest.raises(ValueError, match="symmetric"):
        viz.linear_map_explorer({"not symmetric": torch.tensor([[1.0, 2.0], [0.0, 1.0]])})


def test_labeled_scatter_groups_points():
    fig = viz.labeled_scatter(torch.randn(4, 2), list("abcd"), ["x", "x", "y", "y"], title="t", x_title="1", y_title="2")
    assert [tr.name for tr in fig.data] == ["x", "y"] and list(fig.data[1].text) == ["c", "d"]
    with pytest.raises(ValueError):
        viz.labeled_scatter(torch.randn(4, 3), list("abcd"), title="t", x_title="1", y_title="2")
