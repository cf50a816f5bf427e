"""The grading harness: run a learner's function on seeded inputs, compare with a reference.

Never raises, never hangs: every failure of the learner's code becomes feedback in a ``Result``.
Expected values are never shown — only what kind of thing is wrong (type, shape, dtype, NaN,
a mutated input, or a named classic mistake with a hint).
"""
from __future__ import annotations

import signal
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from html import escape
from typing import Any, Callable, Sequence

import numpy as np
import torch


# ----------------------------------------------------------------------------- specifications
@dataclass
class Case:
    """One set of inputs: ``fn(*args)``. ``name`` describes it to the learner (no values)."""

    name: str
    args: tuple


@dataclass
class Mistake:
    """A known wrong variant. If the learner's output matches ``fn``'s, feedback names it."""

    name: str
    fn: Callable
    hint: str


@dataclass
class Exercise:
    id: str  # "04_self_attention/softmax"
    title: str
    reference: Callable
    cases: Callable[[torch.Generator], list[Case]]  # seeded input generator
    mistakes: Sequence[Mistake] = ()
    output_names: Sequence[str] | None = None  # e.g. ("output", "weights") for a tuple result
    atol: float = 1e-5
    rtol: float = 1e-4
    time_limit: float = 2.0  # seconds per call of the learner's function
    nan_hint: str = "look for exp() of a large number, a division by zero, or log(0)"
    kind: str = "function"  # "function" or "prediction" (a function that returns your predicted answer)
    # Optional extra judgement after the comparison with the reference (or instead of it, when
    # reference is None): judge(learner_output, *case.args) -> None if fine, else a feedback message.
    judge: Callable | None = None

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1]

    @property
    def chapter(self) -> str:
        return self.id.split("/", 1)[0]


# ----------------------------------------------------------------------------- result
@dataclass
class Result:
    exercise: str
    passed: bool
    feedback: str
    checks: int = 0
    seconds: float = 0.0
    mistake: str | None = field(default=None, repr=False)  # name of the recognised mistake, if any

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"[{mark}] {self.exercise}: {self.feedback}"

    def _repr_html_(self) -> str:
        colour, mark = ("#1a7f37", "✔ passed") if self.passed else ("#cf222e", "✘ not yet")
        return (
            f'<div class="grader-result" style="border-left:4px solid {colour};padding:6px 10px;'
            f'margin:4px 0;background:rgba(127,127,127,0.08)"><b style="color:{colour}">{mark}</b> '
            f"<code>{escape(self.exercise)}</code><br>{escape(self.feedback)}</div>"
        )


# ----------------------------------------------------------------------------- running code safely
class _Timeout(BaseException):
    """BaseException so that a learner's ``except Exception`` cannot swallow it."""


def call_with_timeout(fn: Callable, args: tuple, seconds: float):
    """Call ``fn(*args)``; raise ``_Timeout`` after ``seconds``."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise _Timeout()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    box: dict[str, Any] = {}

    def target():
        try:
            box["out"] = fn(*args)
        except BaseException as e:  # handed back to the caller's thread
            box["err"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise _Timeout()
    if "err" in box:
        raise box["err"]
    return box["out"]


def clone(obj):
    """Deep copy of tensors inside tuples/lists/dicts (other objects are shared)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: clone(v) for k, v in obj.items()}
    return obj


def _where_in_learner_code(exc: BaseException, fn: Callable) -> str:
    """' (line 3 of your function: `x = ...`)' for the deepest frame in the learner's file."""
    filename = getattr(getattr(fn, "__code__", None), "co_filename", None)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == filename]
    if not frames:
        return ""
    f = frames[-1]
    first = getattr(fn.__code__, "co_firstlineno", f.lineno)
    code = f" `{f.line.strip()}`" if f.line else ""
    return f" (line {f.lineno - first + 1} of your function:{code})"


# ----------------------------------------------------------------------------- comparing outputs
def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a torch.Tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of length {len(x)}"
    return f"a {type(x).__name__}"


def _is_int_tuple(x) -> bool:
    return isinstance(x, (tuple, list, torch.Size)) and all(isinstance(i, int) for i in x)


def compare(got, want, atol: float, rtol: float, label: str = "your result", equal_nan: bool = False):
    """None if ``got`` matches ``want``; else (kind, message). kinds: type, shape, dtype, nan, values."""
    if isinstance(want, torch.Tensor):
        if isinstance(got, np.ndarray):
            return "type", f"{label} is a numpy array; return a torch.Tensor (stay with torch operations)"
        if not isinstance(got, torch.Tensor):
            return "type", f"{label} is {_describe(got)}; expected a torch.Tensor"
        if tuple(got.shape) != tuple(want.shape):
            return "shape", f"{label} has shape {tuple(got.shape)}; expected shape {tuple(want.shape)}"
        if want.dtype == torch.bool and got.dtype != torch.bool:
            return "dtype", f"{label} has dtype {got.dtype}; masks must be bool (True/False), e.g. use a comparison"
        if want.dtype != torch.bool and got.dtype == torch.bool:
            return "dtype", f"{label} has dtype bool; expected numbers ({want.dtype})"
        g, w = got.detach().cpu(), want.detach().cpu()
        if want.dtype == torch.bool:
            return None if torch.equal(g, w) else ("values", f"{label} is True/False in the wrong places")
        g, w = g.double(), w.double()
        if not equal_nan and (~torch.isfinite(g) & torch.isfinite(w)).any():
            return "nan", f"{label} contains NaN or inf where a finite number is expected"
        if not torch.allclose(g, w, atol=atol, rtol=rtol, equal_nan=equal_nan):
            finite = torch.isfinite(g) & torch.isfinite(w)
            err = (g - w)[finite].abs().max().item() if finite.any() else float("nan")
            return "values", f"{label} has the right shape but wrong values (largest difference {err:.3g})"
        return None
    if _is_int_tuple(want):
        if not _is_int_tuple(got):
            return "type", f"{label} is {_describe(got)}; expected a tuple of integers"
        return None if tuple(got) == tuple(want) else ("values", f"{label} is not the right shape tuple")
    if isinstance(want, (tuple, list)):
        if isinstance(got, torch.Tensor):
            return "type", f"{label} is a single tensor; expected a tuple of {len(want)} values"
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return "type", f"{label} is {_describe(got)}; expected a tuple of {len(want)} values"
        return None
    if isinstance(want, (int, float)):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, np.generic):
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return "type", f"{label} is {_describe(got)}; expected a number"
        if abs(got - want) > atol + rtol * abs(want):
            return "values", f"{label} is not right yet"
        return None
    return None if got == want else ("values", f"{label} is not right")


def compare_outputs(got, want, ex: Exercise, equal_nan: bool = False):
    """Compare a whole result, element by element for tuple results named by ``ex.output_names``."""
    problem = compare(got, want, ex.atol, ex.rtol, equal_nan=equal_nan)
    if problem or not isinstance(want, (tuple, list)) or _is_int_tuple(want):
        return problem
    names = ex.output_names or [f"element {i}" for i in range(len(want))]
    for name, g, w in zip(names, got, want):
        problem = compare(g, w, ex.atol, ex.rtol, label=f"`{name}`", equal_nan=equal_nan)
        if problem:
            return problem
    return None


def _same_inputs(before: tuple, after: tuple) -> str | None:
    for i, (b, a) in enumerate(zip(before, after)):
        if isinstance(b, torch.Tensor) and not torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)):
            return f"argument {i + 1}"
    return None


def _seed_for(case: Case) -> None:
    """Same global RNG state for the learner's code and each catalogued mistake on one case, so
    code that draws random numbers (e.g. weight initialisation) can be compared."""
    torch.manual_seed(zlib.crc32(case.name.encode()))


def _named_mistake(ex: Exercise, runs: list):
    """The first catalogued mistake whose output matches the learner's on every case that ran."""
    for m in ex.mistakes:
        matched = 0
        for case, got in runs:
            try:
                _seed_for(case)
                wrong = m.fn(*clone(case.args))
            except Exception:
                break
            if compare_outputs(got, wrong, ex, equal_nan=True) is not None:
                break
            matched += 1
        if runs and matched == len(runs):
            return m
    return None


def _other_runs(fn, ex: Exercise, cases: list) -> list:
    """The learner's outputs on the remaining cases (those that run cleanly), for mistake matching."""
    runs = []
    for case in cases:
        try:
            _seed_for(case)
            runs.append((case, call_with_timeout(fn, clone(case.args), ex.time_limit)))
        except KeyboardInterrupt:
            raise
        except BaseException:
            continue
    return runs


# ----------------------------------------------------------------------------- the check itself
def run_check(ex: Exercise, fn, seed: int = 0) -> Result:
    """Grade ``fn``; the caller's random-number state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        return _run_check(ex, fn, seed)


def _run_check(ex: Exercise, fn, seed: int = 0) -> Result:
    start = time.perf_counter()

    def fail(msg: str, mistake: str | None = None, n: int = 0) -> Result:
        return Result(ex.id, False, msg, n, time.perf_counter() - start, mistake)

    if not callable(fn):
        return fail(f"check() needs your function itself (e.g. `{ex.name}`), not {_describe(fn)}")
    gen = torch.Generator().manual_seed(seed)
    try:
        cases = ex.cases(gen)
    except Exception as e:  # a bug in the exercise itself, never the learner's fault
        return fail(f"internal error while preparing the checks ({type(e).__name__}: {e}); please report it")
    for n, case in enumerate(cases, start=1):
        inputs = clone(case.args)
        try:
            _seed_for(case)
            got = call_with_timeout(fn, inputs, ex.time_limit)
        except NotImplementedError:
            return fail("not implemented yet: replace the `raise NotImplementedError` with your code", n=n - 1)
        except _Timeout:
            return fail(f"your function took longer than {ex.time_limit:g} s on {case.name} "
                        "(an infinite loop, or a Python loop over every element?)", n=n - 1)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            return fail(f"your function raised {type(e).__name__}: {msg}{_where_in_learner_code(e, fn)} "
                        f"on {case.name}", n=n - 1)
        changed = _same_inputs(case.args, inputs)
        if changed:
            return fail(f"your function modified its input ({changed}) in place on {case.name}; "
                        "compute a new tensor instead (x = x - m, not x -= m or x.sub_(m))", n=n - 1)
        if ex.reference is not None:
            want = ex.reference(*clone(case.args))
            problem = compare_outputs(got, want, ex)
        else:
            problem = None
        if problem is None and ex.judge is not None:
            try:
                verdict = ex.judge(got, *clone(case.args))
            except Exception as e:
                verdict = f"your result could not be used ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            if verdict:
                problem = ("judge", verdict)
        if problem:
            mistake = _named_mistake(ex, [(case, got)] + _other_runs(fn, ex, cases[n:]))
            if mistake:
                return fail(f"looks like {mistake.name} (on {case.name}). Hint: {mistake.hint}", mistake.name, n - 1)
            kind, msg = problem
            extra = f". Hint: {ex.nan_hint}" if kind == "nan" else ""
            return fail(f"{msg} on {case.name}{extra}", n=n - 1)
    noun = "check" if len(cases) == 1 else "checks"
    return Result(ex.id, True, f"all public checks passed ({len(cases)} {noun}).", len(cases),
                  time.perf_counter() - start)
