"""Graded exercises of chapter 01 — linear algebra & probability: references, seeded cases, classic mistakes.

The chapter prints ``cosine_similarity_matrix``, ``logsumexp``, ``log_softmax``, ``cross_entropy``
and ``kl_divergence`` line for line, so none of them is an exercise. Besides predicting shapes and
finding a top eigenvector, the learner debugs a cosine-similarity attention map, derives the
Jacobian of the softmax with a temperature, and extends the log-sum-exp trick to a numerically
stable binary cross-entropy on logits.
"""
from __future__ import annotations


import torch

from book.grader.core import Case, Exercise, Mistake, bug_combinations
from book.maths import logsumexp

CHAPTER = "01_linear_algebra"


def _randn(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


# ----------------------------------------------------------------------------- 1. predict broadcast shapes
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


# ----------------------------------------------------------------------------- 2. top eigenvector
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


# ----------------------------------------------------------------------------- 3. debug: cosine attention
def cosine_attention(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., N, d), (..., M, d), τ > 0 -> (..., N, M): row i is softmax_j(cos(q_i, k_j) / τ), a
    distribution over the keys. A zero row has cosine 0 with everything (no NaN)."""
    q = queries / queries.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # (..., N, d) unit rows
    k = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # (..., M, d) unit rows
    return torch.softmax(q @ k.transpose(-2, -1) / temperature, dim=-1)  # (..., N, M)


def _cos_attention_variant(key_axis=-1, query_axis=-1, temp="divide", softmax_axis=-1, guard=True,
                           normalise="qk", distance=False, output="softmax"):
    """The recipe above with one or more things changed (the notebook's buggy function is
    key_axis=-2, temp="multiply", softmax_axis=-2)."""
    def attention(queries, keys, temperature):
        def unit(t, axis):
            n = t.norm(dim=axis, keepdim=True)
            return t / (n.clamp_min(1e-8) if guard else n)

        q = unit(queries, query_axis) if "q" in normalise else queries
        k = unit(keys, key_axis) if "k" in normalise else keys
        cos = q @ k.transpose(-2, -1)  # (..., N, M)
        if distance:
            cos = 1 - cos
        scores = {"divide": lambda: cos / temperature, "multiply": lambda: cos * temperature,
                  "ignore": lambda: cos, "square": lambda: cos / temperature**2}[temp]()
        if output == "scores":
            return scores
        if output == "after":  # the temperature applied to the probabilities instead
            return torch.softmax(cos, dim=softmax_axis) / temperature
        if output == "log":
            return torch.log_softmax(scores, dim=softmax_axis)
        if output == "whole":  # one softmax over the whole (N, M) table
            return torch.softmax(scores.flatten(-2), dim=-1).reshape(scores.shape)
        return torch.softmax(scores, dim=softmax_axis)

    return attention


COS_BUGS = {  # the three bugs of the notebook's buggy_cosine_attention
    "keys": (dict(key_axis=-2), "the keys normalised over the wrong axis (columns, dim=-2)",
             "every key is a row: divide it by its own length, the norm over the last axis (dim=-1), as for "
             "the queries."),
    "temperature": (dict(temp="multiply"), "the scores multiplied by the temperature instead of divided",
                    "softmax(s / τ): a small τ must sharpen the weights, so divide the cosines by τ."),
    "softmax": (dict(softmax_axis=-2), "the softmax over the queries (dim=-2) instead of over the keys",
                "each query's row must be a distribution over the keys: softmax over the last axis (dim=-1), "
                "so that every row sums to 1."),
}


def _cos_bug_mistakes():
    def variant(combo):
        return _cos_attention_variant(**{k: v for b in combo for k, v in COS_BUGS[b][0].items()})

    return bug_combinations({b: COS_BUGS[b][1:] for b in COS_BUGS}, variant,
                            ("it runs and every shape is right, but compare it with the chapter's attention map "
                             "(queries = keys): look at which axis each norm and the softmax run over, and at "
                             "what the temperature does."))


def _cos_attention_cases(g):
    lengths = torch.tensor([0.1, 1.0, 3.0, 10.0, 30.0, 100.0])[:, None]  # very different row lengths
    zero_q, zero_k = _randn(g, 4, 6), _randn(g, 5, 6)
    zero_q[1] = 0.0
    zero_k[3] = 0.0
    same = _randn(g, 5, 8)
    return [
        Case("queries (4, 3) against keys (6, 3), temperature 0.5", (_randn(g, 4, 3), _randn(g, 6, 3), 0.5)),
        Case("a batch: queries (2, 3, 8) against keys (2, 5, 8), temperature 0.2",
             (_randn(g, 2, 3, 8), _randn(g, 2, 5, 8), 0.2)),
        Case("queries equal to the keys (5, 8), temperature 1 (the chapter's attention map)",
             (same, same.clone(), 1.0)),
        Case("rows of very different lengths: queries (4, 16), keys (6, 16), temperature 0.3",
             (_randn(g, 4, 16) * lengths[1:5], _randn(g, 6, 16) * lengths, 0.3)),
        Case("a row of zeros in the queries and one in the keys, temperature 0.5 (no NaN)",
             (zero_q, zero_k, 0.5)),
        Case("float64, queries (3, 7) against keys (5, 7), temperature 2",
             (_randn(g, 3, 7, dtype=torch.float64), _randn(g, 5, 7, dtype=torch.float64), 2.0)),
        Case("one query (1, 5) against 7 keys, temperature 0.1", (_randn(g, 1, 5), _randn(g, 7, 5), 0.1)),
        Case("a batch: queries (3, 4, 6) against keys (3, 2, 6), temperature 1.5",
             (_randn(g, 3, 4, 6), _randn(g, 3, 2, 6), 1.5)),
    ]


def _explain_cos_attention(got, want, queries, keys, temperature):
    """Say whether the rows are distributions at all; then where to look."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    sums = got.detach().double().sum(dim=-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        return ("The rows of your weights do not sum to 1: each query's row must be a softmax over the keys "
                "(the last axis)")
    return ("Each of your rows is a distribution, but not softmax(cos / τ): check that every query and every key "
            "is divided by its own length (dim=-1) and that the cosines are divided by τ")


COSINE_ATTENTION = Exercise(
    id=f"{CHAPTER}/cosine_attention",
    title="Find and fix the bugs: an attention map from cosine similarities",
    reference=cosine_attention,
    cases=_cos_attention_cases,
    explain=_explain_cos_attention,
    nan_hint="a zero row has length 0: clamp the lengths (.clamp_min(1e-8)) before dividing, as the given "
             "code does",
    mistakes=_cos_bug_mistakes() + [
        Mistake("the zero-length guard removed (a zero row gives NaN)", _cos_attention_variant(guard=False),
                "a zero vector has length 0 and 0 / 0 is NaN: keep the .clamp_min(1e-8) on the lengths."),
        Mistake("the softmax over dim=1, which is the query axis once there is a batch axis",
                _cos_attention_variant(softmax_axis=1),
                "with a batch axis in front the keys are axis 2, not 1: count from the end, dim=-1."),
        Mistake("the keys normalised over dim=1, the wrong axis once there is a batch axis",
                _cos_attention_variant(key_axis=1),
                "with a batch axis in front, dim=1 runs down the keys: take the norm over dim=-1."),
        Mistake("the softmax over dim=0 (the batch axis when there is one)", _cos_attention_variant(softmax_axis=0),
                "softmax over the keys, the last axis: dim=-1 works with and without a batch axis."),
        Mistake("the keys normalised over dim=0", _cos_attention_variant(key_axis=0),
                "each key (a row) needs its own length: norm over dim=-1, keepdim=True."),
        Mistake("the keys not normalised at all", _cos_attention_variant(normalise="q"),
                "a cosine needs both vectors of length 1: divide the keys by their lengths too."),
        Mistake("the queries not normalised", _cos_attention_variant(normalise="k"),
                "a cosine needs both vectors of length 1: divide every query by its length too, or a long "
                "query gets sharper weights than a short one."),
        Mistake("no normalisation at all (raw dot products)", _cos_attention_variant(normalise=""),
                "a dot product grows with the lengths: divide every query and every key by its length first."),
        Mistake("the temperature ignored", _cos_attention_variant(temp="ignore"),
                "divide the cosines by the temperature before the softmax."),
        Mistake("the scores divided by τ²", _cos_attention_variant(temp="square"),
                "divide by τ once: softmax(cos / τ)."),
        Mistake("the temperature applied after the softmax (softmax(cos) / τ)",
                _cos_attention_variant(output="after"),
                "the temperature scales the scores *before* the softmax; afterwards every row must still sum to 1."),
        Mistake("the softmax left out (the scaled cosines returned)", _cos_attention_variant(output="scores"),
                "the result is attention weights: a softmax over the keys turns each row into a distribution."),
        Mistake("one softmax over the whole (N, M) table", _cos_attention_variant(output="whole"),
                "each query has its own distribution: the softmax runs over the last axis only."),
        Mistake("the cosine distance 1 − cos instead of the similarity", _cos_attention_variant(distance=True),
                "more similar keys must get more weight: use the cosine itself, not 1 − cos."),
        Mistake("the log of the weights (log_softmax instead of softmax)", _cos_attention_variant(output="log"),
                "attention weights are probabilities, between 0 and 1: a softmax, not its log."),
    ],
)


# ----------------------------------------------------------------------------- 4. derive the softmax Jacobian
NO_AUTOGRAD = ("torch.autograd", "torch.func", "Tensor.backward", "Tensor.requires_grad_")
NO_AUTOGRAD_WHY = ("derive the derivative on paper and build it from tensor operations (autograd, of "
                   "chapter 02, is what the grader compares with)")


def softmax_jacobian(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(..., n) -> (..., n, n): J[..., i, j] = ∂p_i / ∂s_j for p = softmax(s / τ) over the last
    axis, which is (diag(p) − p pᵀ) / τ."""
    p = torch.softmax(scores / temperature, dim=-1)  # (..., n)
    return (torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)) / temperature  # (..., n, n)


def _jacobian_variant(form="full", temp="divide", p_from="scaled", axis=-1, naive=False):
    def jacobian(scores, temperature=1.0):
        z = {"scaled": scores / temperature, "raw": scores, "times": scores * temperature}[p_from]
        if naive:
            e = torch.exp(z)
            p = e / e.sum(dim=axis, keepdim=True)
        else:
            p = torch.softmax(z, dim=axis)
        n = p.shape[-1]
        eye = torch.eye(n, dtype=p.dtype).expand(*p.shape, n)
        outer = p[..., :, None] * p[..., None, :]  # (..., n, n)
        diag = torch.diag_embed(p)
        j = {"full": lambda: diag - outer, "outer": lambda: -outer, "sign": lambda: outer - diag,
             "diagonal": lambda: torch.diag_embed(p - p * p), "diag": lambda: diag,
             "identity": lambda: eye - outer, "off_sign": lambda: diag - 2 * torch.diag_embed(p * p) + outer,
             "log_softmax": lambda: eye - p[..., None, :], "plus": lambda: diag + outer,
             "exp": lambda: torch.diag_embed(z.exp()) - z.exp()[..., :, None] * z.exp()[..., None, :]}[form]()
        return j / {"divide": temperature, "none": 1.0, "multiply": 1 / temperature, "square": temperature**2}[temp]

    return jacobian


def _explain_jacobian(got, want, scores, temperature=1.0):
    """Which part of the matrix is wrong: the diagonal, the rest, a common factor, the column sums."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.shape[-1] < 2:
        return None
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(g).all():
        return None
    n = w.shape[-1]
    eye = torch.eye(n, dtype=torch.bool)

    def close(a, b):
        return torch.allclose(a, b, atol=1e-5, rtol=1e-4)

    diag_ok, off_ok = close(g[..., eye], w[..., eye]), close(g[..., ~eye], w[..., ~eye])
    if diag_ok and not off_ok:
        return "Your diagonal entries (j = i) are right; the off-diagonal ones (j ≠ i) are not"
    if off_ok and not diag_ok:
        return "Your off-diagonal entries (j ≠ i) are right; the diagonal ones (j = i) are not"
    ratio = (g * w).sum() / (w * w).sum().clamp_min(1e-30)
    if ratio > 1e-6 and close(g, ratio * w):
        return ("Your matrix has the right pattern but is a constant factor off: look at where the temperature "
                "enters (the chain rule through s / τ)")
    columns = g.sum(dim=-2)
    if not close(columns, torch.zeros_like(columns)):
        return ("The columns of your J do not sum to 0, yet Σ_i p_i = 1 whatever the scores, so "
                "Σ_i ∂p_i/∂s_j = 0 for every j")
    return None


def _jacobian_cases(g):
    return [
        Case("a vector of 4 scores (temperature left at its default, 1)", (_randn(g, 4),)),
        Case("a batch of 3 score vectors of length 5, temperature 1", (_randn(g, 3, 5), 1.0)),
        Case("6 scores, temperature 0.5", (_randn(g, 6), 0.5)),
        Case("a (2, 3, 4) batch, temperature 3", (_randn(g, 2, 3, 4), 3.0)),
        Case("float64, a batch (4, 7), temperature 0.8", (_randn(g, 4, 7, dtype=torch.float64), 0.8)),
        Case("large scores (~1e3), a batch (3, 5), temperature 2", (_randn(g, 3, 5, scale=1e3), 2.0)),
        Case("a single option (n = 1), a batch (2, 1), temperature 0.7", (_randn(g, 2, 1), 0.7)),
    ]


JACOBIAN = Exercise(
    id=f"{CHAPTER}/softmax_jacobian",
    title="Derive the Jacobian of the softmax (with a temperature)",
    reference=softmax_jacobian,
    cases=_jacobian_cases,
    explain=_explain_jacobian,
    nan_hint="exp() of a score of 1e3 overflows: compute p with a stable softmax (torch.softmax subtracts the max)",
    forbidden=NO_AUTOGRAD,
    forbidden_why=NO_AUTOGRAD_WHY,
    mistakes=[
        Mistake("−p pᵀ only: the δ_ij term of the diagonal forgotten", _jacobian_variant(form="outer"),
                "differentiate p_i = e^{s_i} / Σ e^{s_k} with the quotient rule: when j = i the numerator depends "
                "on s_j too, which puts an extra p_i on the diagonal."),
        Mistake("the sign flipped (p pᵀ − diag(p))", _jacobian_variant(form="sign"),
                "raising s_i raises p_i, so the diagonal entries are positive: diag(p) − p pᵀ."),
        Mistake("only the diagonal p_i(1 − p_i): the off-diagonal entries left at 0",
                _jacobian_variant(form="diagonal"),
                "raising s_j (j ≠ i) lowers every other p_i through the shared denominator: ∂p_i/∂s_j = −p_i p_j."),
        Mistake("diag(p) only: the denominator's dependence on s_j forgotten", _jacobian_variant(form="diag"),
                "the denominator Σ_k e^{s_k} depends on every s_j: its derivative gives the −p_i p_j term."),
        Mistake("diag(p) + p pᵀ: the outer product added instead of subtracted", _jacobian_variant(form="plus"),
                "a larger s_j enlarges the shared denominator, which makes every p_i smaller: subtract p pᵀ."),
        Mistake("the identity instead of diag(p) (I − p pᵀ)", _jacobian_variant(form="identity"),
                "∂e^{s_i}/∂s_i = e^{s_i}: divided by the sum that is p_i, not 1 — diag(p) − p pᵀ."),
        Mistake("the off-diagonal entries with the wrong sign (+p_i p_j)", _jacobian_variant(form="off_sign"),
                "for j ≠ i only the denominator depends on s_j, and a larger denominator makes p_i smaller: −p_i p_j."),
        Mistake("the Jacobian of the log-softmax (δ_ij − p_j)", _jacobian_variant(form="log_softmax"),
                "δ_ij − p_j is ∂ log p_i / ∂s_j; multiply by p_i to get ∂p_i / ∂s_j."),
        Mistake("the formula with e^s instead of p (the normalisation forgotten)", _jacobian_variant(form="exp"),
                "write the result in terms of the probabilities p = softmax(s / τ), which sum to 1."),
        Mistake("the 1/τ of the chain rule forgotten", _jacobian_variant(temp="none"),
                "p = softmax(u) with u = s / τ: ∂p/∂s = ∂p/∂u · ∂u/∂s, and ∂u/∂s = 1/τ."),
        Mistake("multiplied by τ instead of divided", _jacobian_variant(temp="multiply"),
                "u = s / τ changes by 1/τ when s changes by 1: divide by τ."),
        Mistake("divided by τ²", _jacobian_variant(temp="square"),
                "the chain rule brings in ∂(s / τ)/∂s = 1/τ once."),
        Mistake("the temperature ignored altogether (the Jacobian of softmax(s))",
                _jacobian_variant(p_from="raw", temp="none"),
                "p = softmax(s / τ): divide the scores by τ before the softmax, and the chain rule through s / τ "
                "brings a factor 1/τ."),
        Mistake("p computed from s instead of s / τ", _jacobian_variant(p_from="raw"),
                "the probabilities are softmax(s / τ): divide the scores by τ before the softmax, too."),
        Mistake("p computed from s·τ instead of s / τ", _jacobian_variant(p_from="times"),
                "the temperature divides the scores: softmax(s / τ)."),
        Mistake("the softmax over the first axis instead of the last", _jacobian_variant(axis=0),
                "each vector of scores is a row of the batch: softmax over dim=-1."),
        Mistake("the naive softmax (exp overflows for large scores)", _jacobian_variant(naive=True),
                "exp(1e3) is inf: subtract the maximum before exp(), or use torch.softmax."),
    ],
)


# ----------------------------------------------------------------------------- 5. extend: a stable BCE
def bce_with_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over every element of −[y log σ(z) + (1 − y) log(1 − σ(z))], in log space:
    −log σ(z) = logsumexp(0, −z) and −log(1 − σ(z)) = logsumexp(0, z), so each term is
    logsumexp(0, z) − y·z. Finite for logits of any size."""
    softplus = logsumexp(torch.stack([torch.zeros_like(logits), logits]), dim=0)  # log(1 + e^z)
    return (softplus - targets * logits).mean()  # a 0-dim tensor


def _softplus(z):
    return torch.clamp(z, min=0) + torch.log1p(torch.exp(-z.abs()))  # log(1 + e^z), stable


def _bce_variant(pos="stable", neg="stable", sign=1, swap=False, reduce="mean"):
    """pos: how −log σ(z) is computed, neg: how −log(1 − σ(z)) is."""
    def loss(logits, targets):
        z, y = logits, (1 - targets if swap else targets)
        pos_term = {"stable": lambda: _softplus(-z), "literal": lambda: -torch.log(torch.sigmoid(z)),
                    "unshifted": lambda: torch.log(1 + torch.exp(-z))}[pos]()
        neg_term = {"stable": lambda: _softplus(z), "literal": lambda: -torch.log(1 - torch.sigmoid(z)),
                    "unshifted": lambda: torch.log(1 + torch.exp(z))}[neg]()
        terms = sign * (y * pos_term + (1 - y) * neg_term)
        if reduce == "none":
            return terms
        if reduce == "sum":
            return terms.sum()
        if reduce == "last":
            return terms.mean(dim=-1)
        if reduce == "rows":  # summed over the last axis, averaged over the rest
            return terms.sum(dim=-1).mean()
        return terms.mean()

    return loss


def _bce_formula(form):
    def loss(logits, targets):
        z, y = logits, targets
        terms = {"no_max": lambda: torch.log1p(torch.exp(-z.abs())) - y * z,
                 "abs": lambda: z.abs() - y * z + torch.log1p(torch.exp(-z.abs())),
                 "no_yz": lambda: _softplus(z),
                 "two_z": lambda: _softplus(2 * z) - 2 * y * z,
                 "plus_yz": lambda: _softplus(z) + y * z,
                 "mixed": lambda: _softplus(-z) - y * z,
                 "clamped": lambda: -(y * torch.log(torch.sigmoid(z).clamp(1e-7, 1 - 1e-7))
                                      + (1 - y) * torch.log(1 - torch.sigmoid(z).clamp(1e-7, 1 - 1e-7))),
                 "switch": lambda: torch.where(y > 0.5, _softplus(-z), _softplus(z))}[form]()
        return terms.mean()

    return loss


def _explain_bce(got, want, logits, targets):
    """Name what this case has that the earlier ones had not: a negative loss, soft targets (only the
    third case has them), confident logits."""
    if isinstance(got, torch.Tensor) and got.dim() == 0 and torch.isfinite(got) and got.item() < 0:
        return "Your loss is negative, but −[y log σ(z) + (1 − y) log(1 − σ(z))] is never negative"
    if isinstance(got, torch.Tensor) and got.shape != want.shape:
        return None
    if ((targets > 0) & (targets < 1)).any():
        return ("The targets here are probabilities between 0 and 1, not only 0 or 1: y and 1 − y weigh the two "
                "terms; don't use them as a switch")
    if logits.abs().min() >= 15:
        return ("All these logits are confident (|z| ≥ 15): a clamp or an eps inside the log, or σ(z) rounded to "
                "exactly 0 or 1, changes their loss. Stay in log space: logsumexp(0, z) − y·z")
    return None


def _targets(g, *shape):
    return (torch.rand(*shape, generator=g) < 0.5).float()


def _bce_cases(g):
    confident = _randn(g, 3, 6).sign() * (20 + 40 * torch.rand(3, 6, generator=g))  # |z| in 20 … 60
    huge = _randn(g, 2, 5).sign() * 10 ** (2 + 2 * torch.rand(2, 5, generator=g))  # |z| in 1e2 … 1e4
    return [
        Case("8 logits with targets 0 or 1", (_randn(g, 8, scale=2.0), _targets(g, 8))),
        Case("a (3, 4) batch with targets 0 or 1", (_randn(g, 3, 4, scale=2.0), _targets(g, 3, 4))),
        Case("soft targets (probabilities between 0 and 1), shape (4, 5)",
             (_randn(g, 4, 5, scale=2.0), torch.rand(4, 5, generator=g))),
        Case("confident logits, |z| between 20 and 60 of both signs, targets 0 or 1",
             (confident, _targets(g, 3, 6))),
        Case("hugely negative logits (about −1e3) whose targets are 1",
             (-1e3 * (1 + torch.rand(6, generator=g)), torch.ones(6))),
        Case("huge logits, |z| between 1e2 and 1e4 of both signs, targets 0 or 1", (huge, _targets(g, 2, 5))),
        Case("float64, shape (2, 3, 4), targets 0 or 1",
             (_randn(g, 2, 3, 4, scale=3.0, dtype=torch.float64), _targets(g, 2, 3, 4).double())),
        Case("a single logit", (_randn(g, 1, scale=2.0), _targets(g, 1))),
    ]


NO_FINISHED_BCE = ("torch.nn.functional.binary_cross_entropy_with_logits",
                   "torch.nn.functional.binary_cross_entropy", "torch.nn.functional.logsigmoid",
                   "torch.nn.functional.softplus", "torch.nn.BCEWithLogitsLoss", "torch.nn.BCELoss",
                   "torch.nn.Softplus", "torch.nn.LogSigmoid")

BCE = Exercise(
    id=f"{CHAPTER}/bce_with_logits",
    title="Extend log-sum-exp: a stable binary cross-entropy on logits",
    reference=bce_with_logits,
    cases=_bce_cases,
    explain=_explain_bce,
    nan_hint="for large |z|, σ(z) rounds to exactly 0 or 1 and e^{|z|} overflows; never take the log of σ(z) or "
             "of 1 − σ(z): write each log as minus a log-sum-exp of (0, ±z)",
    forbidden=NO_FINISHED_BCE,
    forbidden_why="build it from the log-sum-exp yourself (compare with F.binary_cross_entropy_with_logits "
                  "outside your function)",
    mistakes=[
        Mistake("no max-shift: σ(z) or e^{±z} evaluated literally, which fails for huge logits",
                _bce_variant(pos="unshifted", neg="unshifted"),
                "e^{1000} overflows and σ(−1000) underflows to 0; log(1 + e^z) = logsumexp(0, z) = "
                "max(0, z) + log(1 + e^{−|z|}) never exponentiates a positive number."),
        Mistake("log σ(z) and log(1 − σ(z)) computed literally (σ(z) rounds to 0 or 1 for large |z|)",
                _bce_variant(pos="literal", neg="literal"),
                "in float32, 1 − σ(z) is exactly 0 from z ≈ 17 on, and σ(z) is 0 below z ≈ −90: compute "
                "−log σ(z) = logsumexp(0, −z) and −log(1 − σ(z)) = logsumexp(0, z) instead."),
        Mistake("log(1 − σ(z)) computed literally (1 − σ(z) rounds to 0 for z ≳ 17)",
                _bce_variant(neg="literal"),
                "1 − σ(z) loses every digit when σ(z) is close to 1; use 1 − σ(z) = σ(−z), and compute "
                "−log σ(−z) = logsumexp(0, z) in log space."),
        Mistake("the sign flipped (the mean log-likelihood instead of its negative)", _bce_variant(sign=-1),
                "the loss is −[y log σ(z) + (1 − y) log(1 − σ(z))], which is never negative."),
        Mistake("y and 1 − y swapped", _bce_variant(swap=True),
                "σ(z) is the probability of the target 1: y weighs log σ(z), and 1 − y weighs log(1 − σ(z))."),
        Mistake("the sum instead of the mean", _bce_variant(reduce="sum"),
                "average over every element: .mean(), as the chapter's cross_entropy does."),
        Mistake("one loss per element (the mean forgotten)", _bce_variant(reduce="none"),
                "return one number, a 0-dim tensor: the mean of the terms over every element."),
        Mistake("a mean over the last axis only", _bce_variant(reduce="last"),
                "every element is an example of its own: average over all of them, .mean() without dim."),
        Mistake("summed over the last axis, averaged over the others", _bce_variant(reduce="rows"),
                "each logit is a separate yes/no question (not one class of a softmax): average over every element."),
        Mistake("max(0, z) forgotten in the stable formula (log(1 + e^{−|z|}) − y·z)", _bce_formula("no_max"),
                "logsumexp(0, z) = m + log(e^{−m} + e^{z − m}) with m = max(0, z), which is "
                "max(0, z) + log(1 + e^{−|z|}): the shift m comes back outside the log."),
        Mistake("|z| instead of max(0, z) in the stable formula", _bce_formula("abs"),
                "the shift is the larger of the two scores 0 and z: max(0, z), i.e. z.clamp(min=0), not |z|."),
        Mistake("the −y·z term forgotten (only log(1 + e^z))", _bce_formula("no_yz"),
                "−y log σ(z) − (1 − y) log(1 − σ(z)) = log(1 + e^z) − y·z: keep the −y·z."),
        Mistake("the two scores (z, −z) instead of (0, z): that is σ(2z)", _bce_formula("two_z"),
                "σ(z) = e^z / (e^0 + e^z) = softmax((0, z))[1]: the other score is 0, not −z."),
        Mistake("+y·z instead of −y·z", _bce_formula("plus_yz"),
                "−log σ(z) = log(1 + e^z) − z: the y·z term is subtracted."),
        Mistake("the two stable forms mixed: logsumexp(0, −z) − y·z", _bce_formula("mixed"),
                "ℓ = logsumexp(0, z) − y·z, or equally logsumexp(0, −z) + (1 − y)·z: the −z inside the log-sum-exp "
                "changes the term outside."),
        Mistake("σ(z) clamped to [1e-7, 1 − 1e-7] before the log (finite, but wrong for confident logits)",
                _bce_formula("clamped"),
                "a clamp caps the loss of a confident mistake at about 16 and changes every |z| above 16: compute "
                "the logs in log space, logsumexp(0, z) − y·z, instead of clamping."),
        Mistake("the targets used as a 0/1 switch (torch.where) instead of as weights", _bce_formula("switch"),
                "soft targets are allowed: weigh −log σ(z) by y and −log(1 − σ(z)) by 1 − y."),
    ],
)

EXERCISES = [BROADCAST, EIGEN, COSINE_ATTENTION, JACOBIAN, BCE]
