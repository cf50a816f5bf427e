"""Graded exercises of chapter 01 — linear algebra & probability: references, seeded cases, classic mistakes."""
from __future__ import annotations

import math

import torch

from book.attention import softmax
from book.maths import cosine_similarity_matrix, kl_divergence, log_softmax
from book.grader.core import Case, Exercise, Mistake

CHAPTER = "01_linear_algebra"


def _randn(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


# ----------------------------------------------------------------------------- 1. cosine similarities between two sets
def cosine_similarities(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """(..., N, d), (..., M, d) -> (..., N, M): entry (i, j) is the cosine of rows x_i and y_j;
    y omitted: x with itself (the chapter's cosine_similarity_matrix). A zero row gives 0."""
    if y is None:
        return cosine_similarity_matrix(x)
    ux = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # (..., N, d) unit rows
    uy = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # (..., M, d)
    return ux @ uy.transpose(-2, -1)  # (..., N, M)


def _cosine_cases(g):
    lengths = torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0, 100.0])[:, None]  # very different row lengths
    zero_x, zero_y = _randn(g, 5, 4), _randn(g, 3, 4)
    zero_x[2] = 0.0
    zero_y[0] = 0.0
    return [
        Case("x (4, 3) against itself (y omitted)", (_randn(g, 4, 3),)),
        Case("x (5, 3) against y (2, 3)", (_randn(g, 5, 3), _randn(g, 2, 3))),
        Case("rows of very different lengths: x (6, 16) against y (4, 16)",
             (_randn(g, 6, 16) * lengths, _randn(g, 4, 16) * lengths[1:5])),
        Case("batches: x (2, 5, 8) against y (2, 3, 8)", (_randn(g, 2, 5, 8), _randn(g, 2, 3, 8))),
        Case("float64, x (3, 7) against y (6, 7)", (_randn(g, 3, 7, dtype=torch.float64), _randn(g, 6, 7, dtype=torch.float64))),
        Case("a single vector x (1, 5) against y (4, 5)", (_randn(g, 1, 5), _randn(g, 4, 5))),
        Case("a row of zeros in x and one in y (their similarities must be 0, not NaN)", (zero_x, zero_y)),
        Case("a batch (2, 5, 8) against itself (y omitted)", (_randn(g, 2, 5, 8),)),
    ]


def _gram(u):
    return u @ u.transpose(-2, -1)


def _unit_rows(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _cos_variant(scale="l2", normalise="both", features=False, distance=False):
    """Wrong recipes, for x and y alike: how rows are scaled, which sides are, which product."""
    def unit(t):
        return {"l2": lambda: t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8),
                "none": lambda: t,
                "cols": lambda: t / t.norm(dim=-2, keepdim=True).clamp_min(1e-8),
                "unclamped": lambda: t / t.norm(dim=-1, keepdim=True),
                "l1": lambda: t / t.abs().sum(-1, keepdim=True).clamp_min(1e-8),
                "squared": lambda: t / (t * t).sum(-1, keepdim=True).clamp_min(1e-8),
                "global": lambda: t / t.norm().clamp_min(1e-8)}[scale]()

    def cos(x, y=None):
        y = x if y is None else y
        ux = unit(x)
        uy = unit(y) if normalise == "both" else y
        out = ux.transpose(-2, -1) @ uy if features else ux @ uy.transpose(-2, -1)
        return 1 - out if distance else out

    return cos


COSINE = Exercise(
    id=f"{CHAPTER}/cosine_similarity_matrix",
    title="All cosine similarities between two sets of vectors",
    reference=cosine_similarities,
    cases=_cosine_cases,
    nan_hint="a zero vector has length 0: clamp the lengths (e.g. .clamp_min(1e-8)) before dividing",
    forbidden=("torch.cosine_similarity", "torch.nn.CosineSimilarity"),
    forbidden_why="build it from norms and one matrix product (compare with F.cosine_similarity outside your "
                  "function)",
    mistakes=[
        Mistake("dot products without normalisation (X Yᵀ)", _cos_variant(scale="none"),
                "a dot product grows with the lengths of the vectors; divide every row by its length first."),
        Mistake("only one side normalised", _cos_variant(normalise="x"),
                "both vectors of each pair must have length 1: normalise the rows of x *and* of y, then multiply."),
        Mistake("normalising the columns instead of the rows", _cos_variant(scale="cols"),
                "each vector is a row: take the norm over the last axis (dim=-1, keepdim=True)."),
        Mistake("the (d, d) similarities of the features (Xᵀ Y) instead of the rows", _cos_variant(features=True),
                "the result has one row per vector of x and one column per vector of y: (N, d) @ (d, M) gives (N, M)."),
        Mistake("dividing by a length of zero (a zero row gives NaN)", _cos_variant(scale="unclamped"),
                "a zero vector has length 0; clamp the lengths with .clamp_min(1e-8) so its similarities are 0."),
        Mistake("rows divided by the sum of |x| (the L1 norm) instead of their length", _cos_variant(scale="l1"),
                "the cosine needs unit vectors in the usual (Euclidean) sense: divide by sqrt(Σ x²), x.norm(dim=-1)."),
        Mistake("rows divided by their squared length (the square root forgotten)", _cos_variant(scale="squared"),
                "the length is the square root of Σ x²; dividing by Σ x² leaves rows of length 1/|x|."),
        Mistake("one norm for the whole tensor instead of one per row", _cos_variant(scale="global"),
                "every row needs its own length: x.norm(dim=-1, keepdim=True)."),
        Mistake("the cosine distance 1 − cos instead of the similarity", _cos_variant(distance=True),
                "return the similarity itself: 1 for a vector with itself, -1 for opposite vectors."),
    ],
)


# ----------------------------------------------------------------------------- 2. log-softmax
def _log_softmax_cases(g):
    big = torch.stack([_randn(g, 6, scale=1e4), _randn(g, 6, scale=1e4) - 3e4])  # rows far apart
    masked = _randn(g, 3, 5)
    masked[:, 1] = float("-inf")  # a masked score: its log-probability is -inf
    return [
        Case("a vector of 4 scores", (_randn(g, 4),)),
        Case("a (3, 5) matrix, dim=-1", (_randn(g, 3, 5), -1)),
        Case("a (2, 3, 4) tensor, dim=1", (_randn(g, 2, 3, 4), 1)),
        Case("a (5, 2) matrix, dim=0", (_randn(g, 5, 2), 0)),
        Case("large-magnitude scores (|x| ~ 1e4)", (big, -1)),
        Case("float64 scores of magnitude ~1e4, dim=0", (_randn(g, 7, 3, scale=1e4, dtype=torch.float64), 0)),
        Case("scores with -inf entries (masked positions)", (masked, -1)),
    ]


def _naive_log_softmax(x, dim=-1):
    e = torch.exp(x)
    return torch.log(e / e.sum(dim=dim, keepdim=True))


def _lse_without_shift(x, dim=-1):
    return x - torch.log(torch.exp(x).sum(dim=dim, keepdim=True))


def _max_not_added_back(x, dim=-1):
    m = x.amax(dim=dim, keepdim=True)
    return x - torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))


LOG_SOFTMAX = Exercise(
    id=f"{CHAPTER}/log_softmax",
    title="A numerically stable log-softmax",
    reference=log_softmax,
    cases=_log_softmax_cases,
    atol=1e-4,
    rtol=1e-5,
    nan_hint="exp() of a score of 1e4 overflows and exp(-1e4) underflows to 0; "
             "compute x - logsumexp(x) with the maximum subtracted inside the exp",
    forbidden=("torch.logsumexp", "torch.log_softmax", "torch.nn.LogSoftmax"),
    forbidden_why="that is what you are writing: compute the log-sum-exp yourself, with the max-shift",
    mistakes=[
        Mistake("the naive log(exp(x) / Σ exp(x))", _naive_log_softmax,
                "exp(1e4) is inf. Use log softmax(x) = x - logsumexp(x), and compute logsumexp with a max-shift."),
        Mistake("the log of a (stable) softmax", lambda x, dim=-1: torch.log(softmax(x, dim)),
                "the softmax of a score far below the maximum underflows to exactly 0, and log(0) = -inf; "
                "never take the log of a probability you can compute in log space: x - logsumexp(x)."),
        Mistake("log-sum-exp without the max-shift (x - log Σ exp(x))", _lse_without_shift,
                "Σ exp(x) overflows for large scores; use logsumexp(x) = m + log Σ exp(x - m), m the maximum along dim."),
        Mistake("log-sum-exp with the maximum subtracted but not added back", _max_not_added_back,
                "log Σ exp(x) = m + log Σ exp(x - m): the m that went into the exp must come back outside the log."),
        Mistake("the log-softmax over the last axis whatever `dim` says", lambda x, dim=-1: log_softmax(x, -1),
                "use the `dim` argument for the maximum and for the sum (keepdim=True)."),
        Mistake("the softmax instead of its log", lambda x, dim=-1: softmax(x, dim),
                "the result is log-probabilities: all <= 0, and exp() of a row sums to 1."),
        Mistake("the sign flipped (logsumexp(x) − x)", lambda x, dim=-1: -log_softmax(x, dim),
                "log-probabilities are <= 0: x - logsumexp(x), not the other way round."),
        Mistake("a mean instead of a sum inside the log", lambda x, dim=-1: log_softmax(x, dim) + math.log(x.shape[dim]),
                "the normaliser is log Σ exp(x), a sum over the slice: .sum(dim, keepdim=True), not .mean."),
        Mistake("the maximum subtracted twice", lambda x, dim=-1: log_softmax(x, dim) - x.amax(dim=dim, keepdim=True),
                "x - m - log Σ exp(x - m) is already the answer: the m inside the log-sum-exp and the one outside "
                "cancel once, not twice."),
    ],
)


# ----------------------------------------------------------------------------- 3. predict broadcast shapes
def predict_broadcast_shapes():
    """The shapes of the four expressions of the exercise."""
    a, b = torch.zeros(3, 1), torch.zeros(4)
    x, w, v = torch.zeros(2, 5, 8), torch.zeros(8, 3), torch.zeros(5)
    return (tuple((a + b).shape), tuple((x @ w).shape), tuple(x.sum(dim=1).shape),
            tuple((v[:, None] - v[None, :]).shape))


BROADCAST = Exercise(
    id=f"{CHAPTER}/predict_broadcast_shapes",
    title="Predict the shapes (broadcasting)",
    reference=predict_broadcast_shapes,
    cases=lambda g: [Case("your prediction", ())],
    kind="prediction",
    output_names=("a + b", "x @ w", "x.sum(dim=1)", "v[:, None] - v[None, :]"),
    mistakes=[
        Mistake("the summed axis kept in x.sum(dim=1)", lambda: ((3, 4), (2, 5, 3), (2, 1, 8), (5, 5)),
                "a reduction removes its axis unless you pass keepdim=True."),
        Mistake("v[:, None] - v[None, :] read as an element-wise difference",
                lambda: ((3, 4), (2, 5, 3), (2, 8), (5,)),
                "a (5, 1) column minus a (1, 5) row broadcasts to every pair: a table of differences."),
        Mistake("x @ w keeping x's last dimension", lambda: ((3, 4), (2, 5, 8), (2, 8), (5, 5)),
                "(…, n, k) @ (k, m) gives (…, n, m): the shared dimension k disappears."),
        Mistake("(3, 1) + (4,) read as (3, 1)", lambda: ((3, 1), (2, 5, 3), (2, 8), (5, 5)),
                "shapes are aligned from the right; every size-1 axis stretches to match: (3, 1) with (1, 4)."),
        Mistake("(3, 1) + (4,) read as (4, 3)", lambda: ((4, 3), (2, 5, 3), (2, 8), (5, 5)),
                "(4,) is aligned with the *last* axis: (3, 1) and (1, 4). The rows come from a, the columns from b."),
        Mistake("x.sum(dim=1) summing the last axis", lambda: ((3, 4), (2, 5, 3), (2, 5), (5, 5)),
                "axes count from 0: dim=1 is the middle axis of (2, 5, 8), the one of size 5."),
        Mistake("x @ w dropping the batch axis", lambda: ((3, 4), (5, 3), (2, 8), (5, 5)),
                "the leading axes of x are batch axes and stay: only the shared dimension 8 disappears."),
    ],
)


# ----------------------------------------------------------------------------- 4. top eigenvector
def _symmetric(g, eigenvalues, dtype=torch.float32):
    """A random symmetric matrix (or batch) with the given eigenvalues: Q diag(λ) Qᵀ."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)  # (..., n)
    n = lam.shape[-1]
    q, _ = torch.linalg.qr(torch.randn(*lam.shape[:-1], n, n, generator=g, dtype=torch.float64))
    return ((q * lam[..., None, :]) @ q.transpose(-2, -1)).to(dtype)  # (..., n, n)


def _eigen_cases(g):
    batch = torch.tensor([[4.0, 2.0, 1.0, 0.5, 0.1], [1.0, -1.0, 3.0, 0.0, 2.0],
                          [0.2, 0.4, 0.6, 0.8, 1.6], [-2.0, -1.0, 0.5, 1.0, 2.5]])
    return [
        Case("a 2×2 symmetric matrix", (_symmetric(g, [3.0, 1.0]),)),
        Case("a 3×3 matrix whose most negative eigenvalue is the largest in size", (_symmetric(g, [-5.0, 1.0, 2.0]),)),
        Case("a batch of four 5×5 matrices, shape (4, 5, 5)", (_symmetric(g, batch),)),
        Case("a float64 6×6 matrix", (_symmetric(g, [0.5, 1.0, 1.5, 2.0, 4.0, -1.0], torch.float64),)),
        Case("a diagonal matrix", (torch.diag(torch.tensor([3.0, -4.0, 1.0, 2.0])),)),
    ]


def _eigh(a):
    lam, vec = torch.linalg.eigh(a.double())  # ascending eigenvalues, eigenvectors in the columns
    return lam, vec


def _judge_eigenvector(v, a):
    if not isinstance(v, torch.Tensor):
        return f"your result is a {type(v).__name__}; return a torch.Tensor"
    if v.is_complex():
        return "your result is complex: for a symmetric matrix use torch.linalg.eigh, whose results are real"
    if tuple(v.shape) != tuple(a.shape[:-1]):
        return (f"your result has shape {tuple(v.shape)}; expected one vector per matrix, "
                f"shape {tuple(a.shape[:-1])}")
    v = v.detach().double().cpu()
    if not torch.isfinite(v).all():
        return "your result contains NaN or inf"
    if ((v.norm(dim=-1) - 1).abs() > 1e-3).any():
        return "your vectors do not have length 1: divide each by its norm"
    lam, _ = _eigh(a)
    top = lam[..., -1:]  # (..., 1) the largest eigenvalue
    residual = (a.double() @ v[..., None])[..., 0] - top * v  # (..., n) A v - λ_max v
    if (residual.norm(dim=-1) > 1e-3 * lam.abs().amax(-1) + 1e-5).any():
        return "A v is not λ_max · v: that is not an eigenvector of the largest eigenvalue"
    return None


class _EigenProbe:
    """Equal to a learner's output when it is (±) the vector a known wrong recipe gives."""

    def __init__(self, candidates):
        self.candidates = candidates  # (..., n)

    def __eq__(self, v):
        if not isinstance(v, torch.Tensor) or v.is_complex() or v.shape != self.candidates.shape:
            return False
        v = v.detach().double().cpu()
        return bool((v * self.candidates).sum(-1).abs().sub(1).abs().lt(1e-3).all())


def _smallest_probe(a):
    return _EigenProbe(_eigh(a)[1][..., :, 0])


def _row_probe(a):
    return _EigenProbe(_eigh(a)[1][..., -1, :])


def _largest_magnitude_probe(a):
    lam, vec = _eigh(a)
    idx = lam.abs().argmax(-1)  # (...,)
    return _EigenProbe(torch.take_along_dim(vec, idx[..., None, None], dim=-1)[..., 0])


def top_eigenvector_reference(a):
    """A valid answer (the grader accepts either sign): the last column of eigh's eigenvectors."""
    return torch.linalg.eigh(a)[1][..., :, -1]


EIGEN = Exercise(
    id=f"{CHAPTER}/top_eigenvector",
    title="The direction a symmetric matrix stretches most",
    reference=None,  # the sign of an eigenvector is free: the judge checks A v = λ_max v and |v| = 1
    cases=_eigen_cases,
    judge=_judge_eigenvector,
    mistakes=[
        Mistake("the eigenvector of the smallest eigenvalue", _smallest_probe,
                "torch.linalg.eigh returns the eigenvalues in ascending order: the largest is the last one."),
        Mistake("a row of the eigenvector matrix instead of a column", _row_probe,
                "eigh's eigenvectors are the columns: take vectors[..., :, -1], not vectors[..., -1, :]."),
        Mistake("the eigenvector of the eigenvalue largest in size (|λ|)", _largest_magnitude_probe,
                "'largest' means the most positive eigenvalue; plain power iteration finds the largest |λ|, "
                "which can be a negative one."),
    ],
)


# ----------------------------------------------------------------------------- 5. KL divergence
def _dist(g, *shape, dim=-1, dtype=torch.float32):
    return torch.softmax(_randn(g, *shape, scale=1.5, dtype=torch.float64), dim=dim).to(dtype)


def _kl_cases(g):
    p_zero = _dist(g, 3, 6)
    p_zero[:, :2] = 0.0  # outcomes p never produces
    p_zero = p_zero / p_zero.sum(-1, keepdim=True)
    same = _dist(g, 2, 5)
    return [
        Case("two distributions over 5 outcomes", (_dist(g, 5), _dist(g, 5))),
        Case("a batch of 4 pairs over 6 outcomes", (_dist(g, 4, 6), _dist(g, 4, 6))),
        Case("distributions along dim=0 of a (5, 3) tensor", (_dist(g, 5, 3, dim=0), _dist(g, 5, 3, dim=0), 0)),
        Case("p with zero probabilities", (p_zero, _dist(g, 3, 6))),
        Case("p equal to q", (same, same.clone())),
        Case("float64 distributions of shape (2, 3, 4)",
             (_dist(g, 2, 3, 4, dtype=torch.float64), _dist(g, 2, 3, 4, dtype=torch.float64))),
    ]


def _kl_div_default_reduction(p, q, dim=-1):
    """What F.kl_div(q.log(), p) gives with its default reduction='mean': the mean of every term."""
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).mean()


def _naive_kl(p, q, dim=-1):
    return (p * torch.log(p / q)).sum(dim)


KL = Exercise(
    id=f"{CHAPTER}/kl_divergence",
    title="KL divergence",
    reference=kl_divergence,
    cases=_kl_cases,
    nan_hint="0 · log 0 must count as 0: torch.xlogy(p, p) does that, or use torch.where(p > 0, …, 0)",
    forbidden=("torch.nn.functional.kl_div", "torch.nn.KLDivLoss"),
    forbidden_why="write Σ p log(p / q) yourself (compare with F.kl_div outside your function)",
    mistakes=[
        Mistake("KL(q ‖ p): the two distributions swapped", lambda p, q, dim=-1: kl_divergence(q, p, dim),
                "KL is not symmetric: Σ p log(p / q) weighs by p. (Careful: F.kl_div(input, target) wants "
                "input = log q and target = p.)"),
        Mistake("0 · log 0 computed as NaN", _naive_kl,
                "where p = 0 the term p log(p / q) is 0 by convention; torch.xlogy(p, p) - torch.xlogy(p, q) "
                "handles it."),
        Mistake("the cross-entropy −Σ p log q instead of KL", lambda p, q, dim=-1: -torch.xlogy(p, q).sum(dim),
                "KL(p ‖ q) = cross-entropy − entropy = −Σ p log q + Σ p log p."),
        Mistake("averaging over the outcomes instead of summing",
                lambda p, q, dim=-1: (torch.xlogy(p, p) - torch.xlogy(p, q)).mean(dim),
                "KL is a sum over the outcomes, weighted by p: .sum(dim), not .mean(dim)."),
        Mistake("a mean over every element (one number for the whole batch, like F.kl_div's default)",
                _kl_div_default_reduction,
                "return one KL per distribution: sum the terms p log(p/q) over `dim` only."),
        Mistake("the sum over the last axis whatever `dim` says", lambda p, q, dim=-1: kl_divergence(p, q, -1),
                "sum over the `dim` argument."),
        Mistake("log(q / p) instead of log(p / q): the sign flipped", lambda p, q, dim=-1: -kl_divergence(p, q, dim),
                "KL is never negative: Σ p log(p / q), with p on top inside the log."),
        Mistake("log base 2 (bits) instead of the natural log",
                lambda p, q, dim=-1: kl_divergence(p, q, dim) / math.log(2),
                "use the natural logarithm (torch.log): the book measures information in nats."),
        Mistake("the log ratio not weighted by p (Σ log(p / q))",
                lambda p, q, dim=-1: (torch.log(p) - torch.log(q)).sum(dim),
                "each outcome's log(p / q) is weighted by how often p produces it: Σ p · log(p / q)."),
    ],
)

EXERCISES = [COSINE, LOG_SOFTMAX, BROADCAST, EIGEN, KL]
