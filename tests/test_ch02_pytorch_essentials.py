"""Chapter 02: the chapter's data for test_exercises.py (a Linear module equal to nn.Linear with
copied weights, gradients equal to autograd's, a loop that reaches the stated loss; one buggy
implementation per catalogued mistake of the judged exercises) and the judges' special feedback."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from book import training
from book.grader import ch02, check


# ----------------------------------------------------------------------------- reference answers
class Linear(nn.Module):
    """A correct answer to exercise 1."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def forward(self, x):
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


REFERENCES = {"Linear": Linear, "fit": ch02.fit_reference}  # judged: the exercises have none


def test_the_reference_linear_equals_nn_linear_with_copied_weights():
    for bias in (True, False):
        mine, theirs = Linear(6, 4, bias), nn.Linear(6, 4, bias=bias)
        mine.load_state_dict(theirs.state_dict())
        x = torch.randn(3, 5, 6)
        torch.testing.assert_close(mine(x), theirs(x))


# ----------------------------------------------------------------------------- buggy answers, one per mistake
class PlainTensors(Linear):
    def __init__(self, i, o, bias=True):
        nn.Module.__init__(self)
        self.weight = torch.empty(o, i).uniform_(-i**-0.5, i**-0.5)
        self.bias = torch.empty(o).uniform_(-i**-0.5, i**-0.5) if bias else None


class Untransposed(Linear):
    def __init__(self, i, o, bias=True):
        nn.Module.__init__(self)
        self.weight = nn.Parameter(torch.empty(i, o).uniform_(-i**-0.5, i**-0.5))
        self.bias = nn.Parameter(torch.empty(o).uniform_(-i**-0.5, i**-0.5)) if bias else None

    def forward(self, x):
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class ZeroInit(Linear):
    def __init__(self, i, o, bias=True):
        super().__init__(i, o, bias)
        nn.init.zeros_(self.weight)


class RandnInit(Linear):
    def __init__(self, i, o, bias=True):
        super().__init__(i, o, bias)
        with torch.no_grad():
            self.weight.normal_()


class BiasIgnored(Linear):
    def forward(self, x):
        return x @ self.weight.T


class AlwaysBias(Linear):
    def __init__(self, i, o, bias=True):
        super().__init__(i, o, True)


class OneOverInInit(Linear):
    def __init__(self, i, o, bias=True):
        super().__init__(i, o, bias)
        with torch.no_grad():
            self.weight.uniform_(-1 / i, 1 / i)


class RandInit(Linear):
    def __init__(self, i, o, bias=True):
        super().__init__(i, o, bias)
        self.weight = nn.Parameter(torch.rand(o, i))


class NormalInit(Linear):
    def __init__(self, i, o, bias=True):
        super().__init__(i, o, bias)
        self.weight = nn.Parameter(torch.randn(o, i) / math.sqrt(i))


def _loop(zero_grad=True, step=True, squeeze=True, optimizer="adam", lr=1e-2, steps=400):
    def fit(model, x, y):
        opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
        for _ in range(steps):
            pred = model(x).squeeze(-1) if squeeze else model(x)
            loss = ((pred - y) ** 2).mean()
            if zero_grad:
                opt.zero_grad()
            loss.backward()
            if step:
                opt.step()
        return loss.item()

    return fit


BUGGY = {
    "weights kept as plain tensors instead of nn.Parameter": PlainTensors,
    "the weight used as (in_features, out_features): x @ W without the transpose": Untransposed,
    "weights initialised to zeros": ZeroInit,
    "weights drawn with torch.randn (standard deviation 1)": RandnInit,
    "the bias left out of forward": BiasIgnored,
    "a bias created even when bias=False": AlwaysBias,
    "weights drawn in (−1/in_features, 1/in_features)": OneOverInInit,
    "weights drawn with torch.rand (uniform in [0, 1), never negative)": RandInit,
    "weights drawn from a normal distribution (torch.randn / √in_features)": NormalInit,
    "optimizer.step() missing (the parameters never changed)": _loop(step=False),
    "(N, 1) predictions compared with (N,) targets: the loss broadcast to (N, N)": _loop(squeeze=False),
    "optimizer.zero_grad() missing (gradients pile up from step to step)": _loop(zero_grad=False),
    "a learning rate so large that training diverged": _loop(optimizer="sgd", lr=5.0, steps=100),
}


# ----------------------------------------------------------------------------- valid alternatives
class KaimingLinear(nn.Module):
    """nn.Linear's own initialisation, register_parameter for the missing bias, F.linear in forward."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
            nn.init.uniform_(self.bias, -in_features**-0.5, in_features**-0.5)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        out = x @ self.weight.mT
        return out if self.bias is None else out + self.bias


class KaimingLinearFLinear(KaimingLinear):
    def forward(self, x):
        return F.linear(x, self.weight, self.bias)  # not allowed by the statement


class EinsumLinear(nn.Module):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        b = in_features**-0.5
        self.weight = nn.Parameter((torch.rand(out_features, in_features) * 2 - 1) * b)
        if bias:
            self.bias = nn.Parameter((torch.rand(out_features) * 2 - 1) * b)
        else:
            self.bias = None

    def forward(self, x):
        y = torch.einsum("...i,oi->...o", x, self.weight)
        return y + self.bias if self.bias is not None else y


def backward_einsum(x, w, g):
    return (torch.einsum("...o,oi->...i", g, w), torch.einsum("...o,...i->oi", g, x),
            g.sum(dim=tuple(range(g.dim() - 1))))


def backward_tensordot(x, w, g):
    lead = tuple(range(g.dim() - 1))
    return g @ w, torch.tensordot(g, x, dims=(lead, lead)), g.sum(dim=lead)


def backward_autograd(x, w, g):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    b = torch.zeros(w.shape[0], dtype=w.dtype, requires_grad=True)
    return torch.autograd.grad(F.linear(x, w, b), (x, w, b), g)


def ce_grad_log_space(z, t):
    p = torch.exp(z - torch.logsumexp(z, -1, keepdim=True))
    return p.scatter_add(-1, t[..., None], -torch.ones_like(t[..., None], dtype=z.dtype)) / t.numel()


def ce_grad_scatter(z, t):
    p = torch.softmax(z, dim=-1)
    return (p - torch.zeros_like(p).scatter(-1, t[..., None], 1.0)) / t.numel()


def ce_grad_autograd(z, t):
    z = z.clone().requires_grad_()
    F.cross_entropy(z.reshape(-1, z.shape[-1]), t.reshape(-1)).backward()
    return z.grad


def dtypes_by_running():
    import numpy as np

    exprs = [torch.tensor([1, 2, 3]), torch.tensor([1, 2, 3]) / 2,
             torch.ones(3, dtype=torch.float16) + torch.ones(3),
             torch.ones(3) * torch.tensor(2.0, dtype=torch.float64), torch.from_numpy(np.array([0.5]))]
    return [e.dtype for e in exprs]


ALTERNATIVES = {
    "Linear": [KaimingLinear, EinsumLinear],
    "linear_backward": [backward_einsum, backward_tensordot],
    "cross_entropy_grad": [ce_grad_log_space, ce_grad_scatter],
    "predict_dtypes": [dtypes_by_running, lambda: (torch.long, torch.float, torch.float, torch.float, torch.double)],
    "fit": [_loop(optimizer="sgd", lr=0.1, steps=1500), _loop(optimizer="adam", lr=3e-2, steps=300)],
}


# ----------------------------------------------------------------------------- wrong answers the judges explain
class DataInForward(Linear):
    def forward(self, x):
        return x @ self.weight.data.T + (0 if self.bias is None else self.bias.data)


class WrongNames(nn.Module):
    def __init__(self, i, o, bias=True):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(o, i))


class NotAModule:
    def __init__(self, *args):
        pass


def _fit_in_place(model, x, y):
    y -= y.mean()
    return ch02.fit_reference(model, x, y)


def _fit_returning_the_tensor(model, x, y):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(400):
        loss = F.mse_loss(model(x).squeeze(-1), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss


WRONG = [
    ("Linear", DataInForward, "graph"),
    ("Linear", WrongNames, "named"),
    ("Linear", NotAModule, "nn.Module"),
    ("Linear", KaimingLinearFLinear, "`F.linear`"),
    ("fit", _fit_in_place, "modified its input"),
    ("fit", lambda m, x, y: [ch02.fit_reference(m, x, y)], "number"),
    ("fit", _fit_returning_the_tensor, "as a Python float"),
    ("fit", lambda m, x, y: training.train(m, (x, y), lambda net, b: F.mse_loss(net(b[0]).squeeze(-1), b[1]), 400,
                                           lr=2e-2).loss[-1], "`training.train`"),
    ("linear_backward", backward_autograd, "does not allow"),
    ("cross_entropy_grad", ce_grad_autograd, "`z.clone().requires_grad_`"),
]


def test_fit_judge_reports_a_loss_that_is_too_high_without_naming_a_mistake():
    r = check("02_pytorch_essentials/fit", _loop(lr=1e-3, steps=200))
    assert not r.passed and r.mistake is None and "below 0.01" in r.feedback


def test_prediction_feedback_names_the_expression_but_not_the_answer():
    r = check("02_pytorch_essentials/predict_dtypes",
              lambda: (torch.int64, torch.float32, torch.float16, torch.float32, torch.float64))
    assert not r.passed and "float16 + float32" in r.feedback and "torch.float" not in r.feedback
