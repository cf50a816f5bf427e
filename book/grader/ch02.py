"""Graded exercises of chapter 02 — PyTorch essentials: references, seeded cases, classic mistakes.

Two exercises grade things a reference output can't capture — a module (``Linear``) and a training
loop (``fit``) — with a ``judge``. Their catalogued mistakes are *probes*: objects that compare equal
to the learner's result when it shows the mistake's symptom (see ``core.Probe``), so the grader's usual
mistake matching can name them.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from book import convert
from book.attention import softmax
from book.maths import cross_entropy
from book.grader.core import Case, Exercise, Mistake, Probe

CHAPTER = "02_pytorch_essentials"


def _randn(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


# ----------------------------------------------------------------------------- 1. a Linear layer
def _linear_cases(g):
    return [
        Case("Linear(4, 4)", (4, 4, True)),
        Case("Linear(3, 5)", (3, 5, True)),
        Case("Linear(8, 2, bias=False)", (8, 2, False)),
        Case("Linear(16, 6)", (16, 6, True)),
        Case("Linear(64, 32) (enough weights to see how they are spread)", (64, 32, True)),
    ]


def _torch_linear(n_in, n_out, bias):
    """nn.Linear with seeded weights (the one the learner's layer is compared with)."""
    ref = nn.Linear(n_in, n_out, bias=bias)
    g = torch.Generator().manual_seed(100 * n_in + n_out)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
    return ref


def _test_inputs(n_in):
    g = torch.Generator().manual_seed(7 * n_in)
    return [torch.randn(5, n_in, generator=g), torch.randn(2, 3, n_in, generator=g)]


def _judge_linear(module, n_in, n_out, bias):
    if not isinstance(module, nn.Module):
        return f"Linear(...) gave a {type(module).__name__}; subclass nn.Module and call super().__init__() first"
    params = dict(module.named_parameters())
    if not params:
        return ("your module has no parameters: wrap the tensors in nn.Parameter so that "
                "model.parameters() — and so the optimiser — can see them")
    expected = {"weight": (n_out, n_in), **({"bias": (n_out,)} if bias else {})}
    if set(params) != set(expected):
        return (f"your module's parameters are named {sorted(params)}; expected exactly {sorted(expected)} "
                "(the names nn.Linear uses, so its state_dict can be loaded)")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            return f"`{name}` has shape {tuple(params[name].shape)}; expected {shape} (nn.Linear stores (out, in))"
    bound = 1 / math.sqrt(n_in)
    w = params["weight"].detach()
    if any(p.detach().abs().max() > bound * (1 + 1e-6) for p in params.values()):
        return "some initial values lie outside (−1/√in_features, 1/√in_features): initialise as nn.Linear does"
    if w.numel() > 1 and w.std() < 0.1 * bound:
        return "the initial weights are (nearly) all equal: draw them at random so the units can differ"
    if w.numel() >= 256:  # enough weights to estimate the spread: U(-b, b) has std b/√3, its |w| fill (0, b)
        spread = w.std().item() / (bound / math.sqrt(3))
        if not 0.8 < spread < 1.2 or w.abs().max() < 0.9 * bound:
            return ("the initial weights do not fill (−1/√in_features, 1/√in_features) evenly: draw them "
                    "uniformly over the whole range, as nn.Linear does")
        if abs(w.mean().item()) > 0.1 * bound:
            return "the initial weights are not centred on 0: draw them uniformly in (−1/√in, 1/√in)"
    ref = _torch_linear(n_in, n_out, bias)
    try:
        twin = convert.copied(module, ref.state_dict())
    except Exception as e:
        return f"nn.Linear's state_dict could not be loaded into your module ({type(e).__name__})"
    for x in _test_inputs(n_in):
        got, want = twin(x), ref(x)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            return (f"with nn.Linear's weights copied in, your forward on an input of shape {tuple(x.shape)} "
                    f"returned {tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}; "
                    f"expected shape {tuple(want.shape)}")
        if not torch.allclose(got, want, atol=1e-5, rtol=1e-4):
            return (f"with nn.Linear's weights copied in, your forward gives different values on an input "
                    f"of shape {tuple(x.shape)}")
        if not got.requires_grad:
            return ("your forward's output is cut off from the graph (no grad_fn): use the parameters themselves "
                    "in forward (no .data, .detach() or torch.no_grad())")
        got.sum().backward()
        want.sum().backward()
    for name, p in twin.named_parameters():
        if p.grad is None or not torch.allclose(p.grad, dict(ref.named_parameters())[name].grad, atol=1e-4):
            return (f"the gradient does not reach `{name}` as it should: use the parameters themselves in "
                    "forward (no .data, .detach() or copies)")
    return None


def _forward_matches(module, n_in, n_out, bias, formula):
    """True if the learner's forward, with nn.Linear's weights copied in, computes ``formula(x, W, b)``."""
    ref = _torch_linear(n_in, n_out, bias)
    twin = convert.copied(module, ref.state_dict())
    with torch.no_grad():
        return all(torch.allclose(twin(x), formula(x, ref.weight, ref.bias), atol=1e-5, rtol=1e-4)
                   for x in _test_inputs(n_in))


def _untransposed_probe(n_in, n_out, bias):
    def test(module):
        w = dict(module.named_parameters()).get("weight")
        if w is not None and n_in != n_out and tuple(w.shape) == (n_in, n_out):
            return True
        return n_in == n_out and _forward_matches(
            module, n_in, n_out, bias, lambda x, W, b: x @ W + (0 if b is None else b))

    return Probe(test)


def _plain_tensor_probe(n_in, n_out, bias):
    return Probe(lambda m: not list(m.parameters()) and isinstance(getattr(m, "weight", None), torch.Tensor))


def _zero_init_probe(n_in, n_out, bias):
    return Probe(lambda m: bool((dict(m.named_parameters())["weight"] == 0).all()))


def _randn_init_probe(n_in, n_out, bias):
    def test(m):
        w = dict(m.named_parameters())["weight"].detach()
        return w.std() > 0.5 and w.abs().max() > 1 / math.sqrt(n_in)

    return Probe(test)


def _weights_of(m):
    return dict(m.named_parameters())["weight"].detach()


def _one_over_in_probe(n_in, n_out, bias):
    """Weights drawn in (−1/in, 1/in): √in times too narrow."""
    def test(m):
        w = _weights_of(m)
        return n_in > 1 and w.abs().max() <= (1 + 1e-6) / n_in and w.std() > 0.3 / n_in / math.sqrt(3)

    return Probe(test)


def _rand_init_probe(n_in, n_out, bias):
    """torch.rand: uniform in [0, 1), never negative."""
    return Probe(lambda m: bool((_weights_of(m) >= 0).all()) and _weights_of(m).max() > 1 / math.sqrt(n_in))


def _normal_scaled_probe(n_in, n_out, bias):
    """torch.randn / √in: the right spread for a normal, but values beyond the uniform bound."""
    def test(m):
        w = _weights_of(m)
        b = 1 / math.sqrt(n_in)
        return w.abs().max() > b and 0.6 < w.std().item() / b < 1.6 and (w < 0).any()

    return Probe(test)


def _bias_ignored_probe(n_in, n_out, bias):
    return Probe(lambda m: _forward_matches(m, n_in, n_out, bias, lambda x, W, b: x @ W.T))


def _bias_always_probe(n_in, n_out, bias):
    return Probe(lambda m: "bias" in dict(m.named_parameters()))


LINEAR = Exercise(
    id=f"{CHAPTER}/Linear",
    title="A linear layer as an nn.Module",
    reference=None,  # judged: parameters, initial values, then forward and gradients against nn.Linear
    cases=_linear_cases,
    judge=_judge_linear,
    forbidden=("torch.nn.Linear", "torch.nn.functional.linear", "torch.nn.LazyLinear", "torch.nn.Bilinear"),
    forbidden_why="store the parameters and compute x Wᵀ + b yourself",
    mistakes=[
        Mistake("weights kept as plain tensors instead of nn.Parameter", _plain_tensor_probe,
                "a plain tensor attribute is not a parameter: model.parameters() can't see it, so no optimiser "
                "will ever update it. Wrap it: self.weight = nn.Parameter(...)."),
        Mistake("the weight used as (in_features, out_features): x @ W without the transpose", _untransposed_probe,
                "PyTorch stores W as (out_features, in_features) and computes y = x Wᵀ + b (x @ self.weight.T)."),
        Mistake("weights initialised to zeros", _zero_init_probe,
                "with all weights equal every output unit computes the same thing and gets the same gradient; "
                "draw them uniformly in (−1/√in_features, 1/√in_features)."),
        Mistake("weights drawn with torch.randn (standard deviation 1)", _randn_init_probe,
                "outputs would grow like √in_features; scale them: uniform in (−1/√in_features, 1/√in_features)."),
        Mistake("weights drawn in (−1/in_features, 1/in_features)", _one_over_in_probe,
                "the bound is 1/√in_features, not 1/in_features: with 64 inputs that is 1/8, not 1/64, and "
                "too small a start slows learning down."),
        Mistake("weights drawn with torch.rand (uniform in [0, 1), never negative)", _rand_init_probe,
                "torch.rand covers [0, 1): shift and scale it to (−b, b), e.g. (torch.rand(...) * 2 - 1) * b "
                "with b = 1/√in_features, or use tensor.uniform_(-b, b)."),
        Mistake("weights drawn from a normal distribution (torch.randn / √in_features)", _normal_scaled_probe,
                "nn.Linear draws *uniformly* in (−1/√in_features, 1/√in_features): a normal sample has no "
                "bound. Use tensor.uniform_(-b, b)."),
        Mistake("the bias left out of forward", _bias_ignored_probe,
                "forward returns x @ self.weight.T + self.bias (when the layer has a bias)."),
        Mistake("a bias created even when bias=False", _bias_always_probe,
                "Linear(8, 2, bias=False) has no bias parameter: set self.bias = None (or register_parameter)."),
    ],
)


# ----------------------------------------------------------------------------- 2. a gradient by hand
def linear_backward_reference(x, weight, grad_output):
    """(∂L/∂x, ∂L/∂W, ∂L/∂b) for y = x Wᵀ + b, given ∂L/∂y — computed by autograd."""
    x = x.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    b = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device, requires_grad=True)
    F.linear(x, w, b).backward(grad_output)
    return x.grad, w.grad, b.grad


def _backward_cases(g):
    def case(name, batch, n_in, n_out, dtype=torch.float32):
        return Case(name, (_randn(g, *batch, n_in, dtype=dtype), _randn(g, n_out, n_in, dtype=dtype),
                           _randn(g, *batch, n_out, dtype=dtype)))

    return [
        case("x (5, 4), W (4, 4)", (5,), 4, 4),
        case("x (6, 3), W (2, 3)", (6,), 3, 2),
        case("x with two batch axes (2, 5, 3), W (4, 3)", (2, 5), 3, 4),
        case("float64, x (7, 6), W (5, 6)", (7,), 6, 5, torch.float64),
        case("a single example, x (1, 7), W (3, 7)", (1,), 7, 3),
    ]


def _backward_variant(transpose_w_grad=False, transpose_x_grad=False, bias="sum", first_axis_only=False,
                      weight_mean=False):
    def backward(x, weight, grad_output):
        g2 = grad_output.reshape(-1, grad_output.shape[-1])  # (N, out)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        grad_x = grad_output @ (weight.T if transpose_x_grad else weight)
        grad_w = x2.T @ g2 if transpose_w_grad else g2.T @ x2
        if weight_mean:
            grad_w = grad_w / len(x2)
        grad_b = {"sum": g2.sum(0), "mean": g2.mean(0), "none": grad_output}[bias]
        if first_axis_only:
            grad_w, grad_b = grad_output.transpose(-2, -1) @ x, grad_output.sum(0)
        return grad_x, grad_w, grad_b

    return backward


NO_AUTOGRAD = ("Tensor.backward", "torch.autograd.grad", "torch.autograd.backward", "torch.autograd.functional.jacobian",
               "torch.autograd.functional.vjp", "torch.func.grad", "torch.func.vjp", "torch.func.jacrev",
               "Tensor.requires_grad_")
NO_AUTOGRAD_WHY = "derive the gradient on paper and compute it with tensor operations (autograd is what the grader compares with)"


LINEAR_BACKWARD = Exercise(
    id=f"{CHAPTER}/linear_backward",
    title="The gradients of a linear layer, by hand",
    reference=linear_backward_reference,
    cases=_backward_cases,
    output_names=("grad_x", "grad_weight", "grad_bias"),
    forbidden=NO_AUTOGRAD,
    forbidden_why=NO_AUTOGRAD_WHY,
    mistakes=[
        Mistake("grad_weight transposed (xᵀ · grad_output)", _backward_variant(transpose_w_grad=True),
                "∂L/∂W has W's shape (out, in): grad_outputᵀ @ x."),
        Mistake("grad_x through the transposed weight (grad_output @ Wᵀ)", _backward_variant(transpose_x_grad=True),
                "y = x Wᵀ, so ∂L/∂x = grad_output @ W: (…, out) @ (out, in) gives (…, in)."),
        Mistake("grad_bias not summed over the batch", _backward_variant(bias="none"),
                "the same b is added to every example, so its gradient adds up over all of them: sum over the "
                "batch axes."),
        Mistake("grad_bias averaged over the batch instead of summed", _backward_variant(bias="mean"),
                "the loss's own averaging is already in grad_output; here you only add up: .sum, not .mean."),
        Mistake("only the first axis treated as the batch", _backward_variant(first_axis_only=True),
                "with x of shape (B, T, in) every (b, t) is an example: flatten the leading axes "
                "(reshape(-1, in)) before summing."),
        Mistake("grad_weight averaged over the examples instead of summed", _backward_variant(weight_mean=True),
                "every example adds its own gᵀx to ∂L/∂W; any averaging is already inside grad_output."),
    ],
)


# ----------------------------------------------------------------------------- 3. the gradient of cross-entropy
def cross_entropy_grad_reference(logits, targets):
    """∂ cross_entropy(logits, targets) / ∂ logits, computed by autograd."""
    z = logits.detach().clone().requires_grad_()
    cross_entropy(z, targets).backward()
    return z.grad


def _ce_grad_cases(g):
    def case(name, shape, scale=1.0, dtype=torch.float32):
        targets = torch.randint(0, shape[-1], shape[:-1], generator=g)
        return Case(name, (_randn(g, *shape, scale=scale, dtype=dtype), targets))

    return [
        case("4 examples, 5 classes", (4, 5)),
        case("a batch of shape (2, 3) over 6 classes", (2, 3, 6)),
        case("large logits (~1e3)", (3, 4), scale=1e3),
        case("a single example, 3 classes", (1, 3)),
        case("float64, 8 examples, 10 classes", (8, 10), dtype=torch.float64),
    ]


def _ce_variant(divide="all", sign=1, onehot=True, naive=False, probs="softmax"):
    def grad(logits, targets):
        e = torch.exp(logits) if naive else None
        p = {"softmax": lambda z: softmax(z, -1), "log_softmax": lambda z: torch.log_softmax(z, -1),
             "sigmoid": torch.sigmoid, "softmax0": lambda z: softmax(z, 0)}[probs](logits)
        p = e / e.sum(-1, keepdim=True) if naive else p
        y = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)
        d = sign * (p - y) if onehot else p
        return d / {"all": targets.numel(), "none": 1, "first": targets.shape[0], "classes": logits.shape[-1]}[divide]

    return grad


CE_GRAD = Exercise(
    id=f"{CHAPTER}/cross_entropy_grad",
    title="The gradient of cross-entropy",
    reference=cross_entropy_grad_reference,
    cases=_ce_grad_cases,
    nan_hint="exp() of a logit of 1e3 overflows; use a stable softmax (book.attention.softmax or torch.softmax)",
    forbidden=NO_AUTOGRAD,
    forbidden_why=NO_AUTOGRAD_WHY,
    mistakes=[
        Mistake("the gradient of the summed loss (no division by the number of examples)", _ce_variant(divide="none"),
                "the loss is a mean over the examples, so every example's gradient is divided by their number."),
        Mistake("the sign flipped (one-hot − softmax)", _ce_variant(sign=-1),
                "raising the true class's logit lowers the loss, so that entry of the gradient is negative: "
                "softmax − one-hot."),
        Mistake("the softmax without subtracting the one-hot target", _ce_variant(onehot=False),
                "−log p_target also depends on the target's logit directly: subtract 1 at the true class."),
        Mistake("dividing by the first dimension only", _ce_variant(divide="first"),
                "with targets of shape (2, 3) there are 6 examples: divide by targets.numel()."),
        Mistake("the naive softmax (exp overflows)", _ce_variant(naive=True),
                "subtract the row maximum before exp(), or use torch.softmax."),
        Mistake("log_softmax − one-hot instead of softmax − one-hot", _ce_variant(probs="log_softmax"),
                "∂ logsumexp(z) / ∂z_c is softmax(z)_c, a probability — not its log."),
        Mistake("sigmoid − one-hot instead of softmax − one-hot", _ce_variant(probs="sigmoid"),
                "the C classes share one softmax: ∂ logsumexp(z) / ∂z_c = e^{z_c} / Σ_k e^{z_k}."),
        Mistake("divided by the number of classes instead of the number of examples", _ce_variant(divide="classes"),
                "the loss is a mean over the *examples*: divide by targets.numel()."),
        Mistake("the softmax over the examples (dim=0) instead of the classes", _ce_variant(probs="softmax0"),
                "each example has its own distribution over the C classes: softmax over dim=-1."),
    ],
)


# ----------------------------------------------------------------------------- 4. predict dtypes
def predict_dtypes():
    """The dtypes of the five expressions of the exercise."""
    return (torch.tensor([1, 2, 3]).dtype,
            (torch.tensor([1, 2, 3]) / 2).dtype,
            (torch.ones(3, dtype=torch.float16) + torch.ones(3)).dtype,
            (torch.ones(3) * torch.tensor(2.0, dtype=torch.float64)).dtype,
            torch.from_numpy(np.array([0.5])).dtype)


_I, _F32, _F64 = torch.int64, torch.float32, torch.float64
DTYPES = Exercise(
    id=f"{CHAPTER}/predict_dtypes",
    title="Predict the dtypes",
    reference=predict_dtypes,
    cases=lambda g: [Case("your prediction", ())],
    kind="prediction",
    output_names=("torch.tensor([1, 2, 3])", "torch.tensor([1, 2, 3]) / 2", "float16 + float32",
                  "float32 tensor * 0-dim float64 tensor", "torch.from_numpy(np.array([0.5]))"),
    mistakes=[
        Mistake("NumPy's habit: float64 for every float", lambda: (_I, _F64, _F64, _F64, _F64),
                "PyTorch's default float is float32; only NumPy arrays (and what you build from them) are float64."),
        Mistake("true division of integers kept as integers", lambda: (_I, _I, _F32, _F32, _F64),
                "`/` is true division and always gives floats (use `//` for integer division)."),
        Mistake("a 0-dim tensor promoting like a full tensor", lambda: (_I, _F32, _F32, _F64, _F64),
                "a 0-dim tensor (or a Python number) of the same kind does not change a tensor's dtype."),
        Mistake("torch.from_numpy converting to float32", lambda: (_I, _F32, _F32, _F32, _F32),
                "from_numpy shares memory with the array, so it keeps the array's dtype: float64 by default."),
        Mistake("int32 for Python integers", lambda: (torch.int32, _F32, _F32, _F32, _F64),
                "PyTorch's default integer type is int64 (torch.long)."),
        Mistake("true division giving float64 (as Python floats are doubles)", lambda: (_I, _F64, _F32, _F32, _F64),
                "the result of `/` on an integer tensor is the *default float dtype*, float32."),
        Mistake("float16 + float32 staying float16 (the first operand's type)",
                lambda: (_I, _F32, torch.float16, _F32, _F64),
                "two full tensors promote to the wider type, whichever comes first: float32."),
    ],
)


# ----------------------------------------------------------------------------- 5. a training loop
TARGET_MSE = 0.01
_INITIAL = weakref.WeakKeyDictionary()  # model -> (its parameters before training, its MSE before training)


def _mse(model, x, y):
    with torch.no_grad():
        return ((model(x).squeeze(-1) - y) ** 2).mean().item()


def _seeded(model, g):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def _fit_cases(g):
    x1 = _randn(g, 64, 3)
    y1 = x1 @ _randn(g, 3) + 0.5  # (64,) a linear function
    x2 = torch.linspace(-2, 2, 128)[:, None]  # (128, 1)
    y2 = torch.sin(2 * x2[:, 0])  # (128,)
    cases = [
        Case("nn.Linear(3, 1) on 64 points of a linear function", (_seeded(nn.Linear(3, 1), g), x1, y1)),
        Case("a 1 → 32 → 1 tanh network on y = sin(2x)",
             (_seeded(nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 1)), g), x2, y2)),
    ]
    for case in cases:
        model, x, y = case.args
        _INITIAL[model] = ([p.detach().clone() for p in model.parameters()], _mse(model, x, y))
    return cases


def _judge_fit(result, model, x, y):
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        return ("fit() returned a torch.Tensor; return the final loss as a Python float: loss.item() "
                "(a tensor would keep the whole graph of the last step alive)")
    if not isinstance(result, (int, float)) or isinstance(result, bool):
        return f"fit() returned a {type(result).__name__}; return the final loss as a number (loss.item())"
    mse = _mse(model, x, y)
    if not math.isfinite(mse):
        return "after your fit() the model's predictions are NaN or inf: training diverged"
    if mse >= TARGET_MSE:
        return (f"after your fit() the model's mean squared error is {mse:.3g}; the goal is below {TARGET_MSE}. "
                "Train for more steps or with a larger learning rate (Adam with lr=1e-2 and a few hundred "
                "full-batch steps is plenty)")
    return None


def _params_unchanged(model):
    before, _ = _INITIAL[model]
    return all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def _no_step_probe(model, x, y):
    return Probe(lambda result: _params_unchanged(model))


def _diverged_probe(model, x, y):
    def test(result):
        mse = _mse(model, x, y)
        return not math.isfinite(mse) or mse > _INITIAL[model][1]

    return Probe(test)


def _broadcast_loss_probe(model, x, y):
    def test(result):
        with torch.no_grad():
            pred = model(x).squeeze(-1)
        return not _params_unchanged(model) and pred.std() < 0.05 * y.std()

    return Probe(test)


def _no_zero_grad_probe(model, x, y):
    def test(result):
        params = list(model.parameters())
        if any(p.grad is None for p in params):
            return False
        loss = ((model(x).squeeze(-1) - y) ** 2).mean()
        fresh = torch.autograd.grad(loss, params)  # the gradient now, leaving p.grad alone
        stored = torch.cat([p.grad.flatten() for p in params]).norm()
        return bool(stored > 10 * torch.cat([f.flatten() for f in fresh]).norm() + 1e-3)

    return Probe(test)


def fit_reference(model, x, y):
    """A loop that reaches the goal: full-batch Adam, lr 1e-2, 500 steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(500):
        loss = ((model(x).squeeze(-1) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


FIT = Exercise(
    id=f"{CHAPTER}/fit",
    title="A training loop that reaches its goal",
    reference=None,  # judged: the model's mean squared error after fit() must be below TARGET_MSE
    cases=_fit_cases,
    judge=_judge_fit,
    time_limit=15.0,  # generous for slow machines; the book's loop needs well under a second
    forbidden=("book.training.train",),
    forbidden_why="write the loop yourself: the optimiser, zero_grad, backward and step",
    mistakes=[
        Mistake("optimizer.step() missing (the parameters never changed)", _no_step_probe,
                "loss.backward() only computes gradients; optimizer.step() is what changes the parameters."),
        Mistake("(N, 1) predictions compared with (N,) targets: the loss broadcast to (N, N)",
                _broadcast_loss_probe,
                "model(x) has shape (N, 1) and y has shape (N,): (pred - y) broadcasts to an (N, N) table and the "
                "best the model can do is predict the mean. Use model(x).squeeze(-1)."),
        Mistake("optimizer.zero_grad() missing (gradients pile up from step to step)", _no_zero_grad_probe,
                "backward() adds into p.grad; call optimizer.zero_grad() every step, before loss.backward()."),
        Mistake("a learning rate so large that training diverged", _diverged_probe,
                "the loss grew instead of shrinking: lower the learning rate (e.g. Adam with lr=1e-2)."),
    ],
)

EXERCISES = [LINEAR, LINEAR_BACKWARD, CE_GRAD, DTYPES, FIT]
