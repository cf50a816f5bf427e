"""The grading harness: run a learner's function on seeded inputs, compare with a reference.

Never raises, never hangs: every failure of the learner's code becomes feedback in a ``Result``.
Expected values are never shown — only what kind of thing is wrong (type, shape, dtype, NaN,
a mutated input, a call the exercise does not allow, or a named classic mistake with a hint).
"""
from __future__ import annotations

import ast
import contextvars
import importlib
import inspect
import signal
import textwrap
import types
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
    id: str  # "04_self_attention/prefix_lm_mask"
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
    # Calls the statement does not allow, checked in the learner's code before anything runs (see
    # ``forbidden_calls``): "torch.softmax" (also covers torch.nn.functional.softmax,
    # torch.special.softmax and the tensor method .softmax), "Tensor.view" (a tensor method),
    # "book.training.train" (that object only), or a bare name such as "split_heads" (any call of
    # that name). ``forbidden_why`` ends the message.
    forbidden: Sequence[str] = ()
    forbidden_why: str = "the point of the exercise is to write it yourself"
    # The exact Python type the statement asks for (e.g. int, float), checked before the values;
    # a tensor, a NumPy number or a bool is then refused with a clear message.
    returns: type | tuple[type, ...] | None = None
    # explain(learner_output, reference_output, *case.args) -> a sentence that says more than the
    # bare shape/values message when no catalogued mistake matches (None: keep the bare message).
    explain: Callable | None = None

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1]

    @property
    def chapter(self) -> str:
        return self.id.split("/", 1)[0]


class Probe:
    """A mistake's output that is a test, not a value: compares equal to a learner's result when
    ``test(result)`` says it shows the mistake's symptom (for results that can't be compared by
    value, such as modules or dicts of tensors)."""

    def __init__(self, test):
        self.test = test

    def __eq__(self, other):
        try:
            return bool(self.test(other))
        except Exception:
            return False

    __hash__ = None


_COUNT = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def bug_combinations(bugs, variant, as_given_hint: str) -> list:
    """The catalogue of a debug exercise whose notebook prints a broken function with several bugs.

    ``bugs``: {key: (name, hint)}; ``variant(combo)``: the function with exactly the bugs in ``combo``
    (a tuple of keys). Returns one Mistake for the function as given (all bugs), one for every partial
    fix, and one for each bug alone — so a learner who fixed only some of them hears which remain.
    """
    import itertools

    out = []
    for r in range(len(bugs), 0, -1):
        for combo in itertools.combinations(bugs, r):
            if r == len(bugs):
                name = f"the function returned as given (all {_COUNT.get(r, r)} bugs still in it)"
                hint = as_given_hint
            else:
                name = "still buggy: " + " and ".join(bugs[b][0] for b in combo)
                hint = " ".join(bugs[b][1] for b in combo)
            out.append(Mistake(name, variant(combo), hint))
    return out


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
        return f"[{mark}] graded as {self.exercise}: {self.feedback}"

    def _repr_html_(self) -> str:
        colour, mark = ("#1a7f37", "✔ passed") if self.passed else ("#cf222e", "✘ not yet")
        return (
            f'<div class="grader-result" style="border-left:4px solid {colour};padding:6px 10px;'
            f'margin:4px 0;background:rgba(127,127,127,0.08)"><b style="color:{colour}">{mark}</b> '
            f"— graded as <code>{escape(self.exercise)}</code><br>{escape(self.feedback)}</div>"
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
    """Compare a whole result, element by element for tuple results named by ``ex.output_names``.
    A wrong type, shape or dtype in any element is reported before wrong values in another."""
    problem = compare(got, want, ex.atol, ex.rtol, equal_nan=equal_nan)
    if problem or not isinstance(want, (tuple, list)) or _is_int_tuple(want):
        return problem
    names = ex.output_names or [f"element {i}" for i in range(len(want))]
    problems = [compare(g, w, ex.atol, ex.rtol, label=f"`{name}`", equal_nan=equal_nan)
                for name, g, w in zip(names, got, want)]
    problems = [p for p in problems if p]
    structural = [p for p in problems if p[0] in ("type", "shape", "dtype")]
    return (structural or problems or [None])[0]


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


# ----------------------------------------------------------------------------- calls an exercise does not allow
_ALIASES = {"F": "torch.nn.functional", "nn": "torch.nn", "np": "numpy", "Tensor": "torch.Tensor"}
_TORCH_TWINS = ("torch", "torch.nn.functional", "torch.special")  # "torch.softmax" covers all three


def _lookup(dotted: str):
    """The object a dotted name such as "torch.nn.functional.softmax" stands for, or None."""
    parts = dotted.split(".")
    parts = _ALIASES.get(parts[0], parts[0]).split(".") + parts[1:]
    for i in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


@dataclass
class _Rule:
    text: str  # as the message shows it
    objects: list  # forbidden objects (identity), e.g. torch.softmax and F.softmax
    method: str | None = None  # a tensor method name: x.softmax(...) on any tensor
    bare: str | None = None  # any call of this name, whatever it refers to


def _rules(specs: Sequence[str]) -> list[_Rule]:
    rules = []
    for spec in specs:
        if "." not in spec:
            rules.append(_Rule(spec, [], bare=spec))
            continue
        parts = spec.split(".")
        last, objects = parts[-1], []
        full = ".".join(_ALIASES.get(parts[0], parts[0]).split(".") + parts[1:])
        is_method = full.startswith("torch.Tensor.")
        homes = _TORCH_TWINS if full.startswith("torch.") and full.count(".") == 1 else ()
        for home in homes or (full.rsplit(".", 1)[0],):
            obj = _lookup(f"{home}.{last}")
            if obj is not None and all(obj is not o for o in objects):
                objects.append(obj)
        method = last if (is_method or homes) and hasattr(torch.Tensor, last) else None
        rules.append(_Rule(spec, objects, method=method))
    return rules


def _local_names(code) -> set:
    names = set(code.co_varnames) | set(code.co_cellvars)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _local_names(c)
    return names


def _namespace(fn) -> dict:
    """The names fn's code can see besides its locals: globals, builtins, closure variables."""
    ns = dict(vars(__builtins__) if isinstance(__builtins__, types.ModuleType) else __builtins__)
    ns.update(getattr(fn, "__globals__", {}))
    code = fn.__code__
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            ns[name] = cell.cell_contents
        except ValueError:
            pass
    return ns


def _function_node(fn):
    """(the ast node of fn, the first line's number in its file) or (None, None) if unreadable."""
    try:
        lines, start = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None, None
    if fn.__name__ == "<lambda>":
        lambdas = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
        return (lambdas[0], start) if len(lambdas) == 1 else (None, None)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == fn.__name__:
            return node, start
    return None, None


def _resolve_chain(node, ns: dict, local: set):
    """The object an expression like torch.nn.functional.softmax names, or (False, None) if it
    starts from a local variable or a computed value."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id in local or node.id not in ns:
        return False, None
    obj = ns[node.id]
    for name in reversed(names):
        try:
            obj = getattr(obj, name)
        except Exception:
            return False, None
    return True, obj


def _imported(node) -> list[tuple[str, Any]]:
    """(name, object) for the names an import statement binds (nothing if it can't be imported)."""
    out = []
    try:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out.append((alias.asname, importlib.import_module(alias.name)))
                else:
                    head = alias.name.split(".")[0]
                    importlib.import_module(alias.name)
                    out.append((head, importlib.import_module(head)))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = importlib.import_module(node.module)
            for alias in node.names:
                obj = getattr(module, alias.name, None)
                if obj is None:
                    obj = importlib.import_module(f"{node.module}.{alias.name}")
                out.append((alias.asname or alias.name, obj))
    except Exception:
        return out
    return out


def _bytecode_chains(code, top: bool = False):
    """(names, resolvable) for every name and attribute chain the bytecode loads: `torch.nn.functional
    .softmax` gives (torch,), (torch, nn), …; `x.softmax` gives (softmax,) — x is a local."""
    import dis

    out, chain, resolvable = [], None, False
    for ins in dis.get_instructions(code):
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") or (ins.opname == "LOAD_DEREF" and top):
            chain, resolvable = [ins.argval], True
            out.append((tuple(chain), True))
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            if chain is None:
                out.append(((ins.argval,), False))
            else:
                chain.append(ins.argval)
                out.append((tuple(chain), resolvable))
        elif ins.opname in ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE"):
            chain, resolvable = None, False
        elif ins.opname not in ("CACHE", "PRECALL", "EXTENDED_ARG", "NOP"):
            chain = None
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out += _bytecode_chains(c)
    return out


def _uses(fn, depth: int = 0, seen=None) -> list[tuple[str, Any, str | None, str]]:
    """(shown as, object or None, line, via) for every name/attribute fn's code uses and the
    learner's own helpers it calls (functions of the same module, followed a few levels deep)."""
    seen = set() if seen is None else seen
    if id(fn) in seen or depth > 3:
        return []
    seen.add(id(fn))
    ns, local = _namespace(fn), _local_names(fn.__code__)
    node, start = _function_node(fn)
    found = []
    if node is not None:  # imports inside the function bind names the code can resolve too
        for sub in ast.walk(node):
            for name, obj in _imported(sub):
                ns[name] = obj
                local.discard(name)
        src_lines = inspect.getsourcelines(fn)[0]
        for sub in ast.walk(node):
            if not isinstance(sub, (ast.Attribute, ast.Name)) or not isinstance(sub.ctx, ast.Load):
                continue
            ok, obj = _resolve_chain(sub, ns, local)
            line = src_lines[sub.lineno - 1].strip() if 0 < sub.lineno <= len(src_lines) else ""
            where = f"line {sub.lineno} of {fn.__name__ if depth else 'your function'}: `{line}`"
            last = sub.attr if isinstance(sub, ast.Attribute) else sub.id
            found.append((ast.unparse(sub), obj if ok else None, where, last, ok))
    else:  # no readable source (a lambda inside a larger expression, exec'd code): read the bytecode
        for chain, resolvable in _bytecode_chains(fn.__code__, top=True):
            obj, ok = None, resolvable and chain[0] in ns
            if ok:
                obj = ns[chain[0]]
                for name in chain[1:]:
                    try:
                        obj = getattr(obj, name)
                    except Exception:
                        obj, ok = None, False
                        break
            shown = ".".join(chain) if resolvable else "." + ".".join(chain)
            found.append((shown, obj if ok else None, None, chain[-1], ok))
    out = [(shown, obj, where, last) for shown, obj, where, last, ok in found]
    module = getattr(fn, "__module__", None)
    for shown, obj, where, last, ok in found:  # follow the learner's own helper functions
        if ok and isinstance(obj, types.FunctionType) and obj is not fn and obj.__module__ == module:
            out += [(s, o, w or f"in {obj.__name__}", l) for s, o, w, l in _uses(obj, depth + 1, seen)]
    return out


def forbidden_calls(fn, specs: Sequence[str]) -> str | None:
    """A message naming the first forbidden call in ``fn``'s code (or the reason it can't be
    read), or None if it uses none. Checked statically: nothing of ``fn`` runs."""
    rules = _rules(specs)
    if not rules:
        return None
    for rule in rules:
        if any(fn is o for o in rule.objects):
            return f"that is `{rule.text}` itself"
    code = getattr(fn, "__code__", None)
    if code is None:
        if inspect.isclass(fn):
            members = [m for m in vars(fn).values() if isinstance(m, types.FunctionType)]
            for m in members:
                msg = forbidden_calls(m, specs)
                if msg:
                    return msg
            return None
        return (f"the grader can't read the code of {_describe(fn)} (a built-in or a callable object); "
                "write your answer as a `def` in the notebook so it can check which calls it makes")
    for shown, obj, where, last in _uses(fn):
        for rule in rules:
            hit = (rule.bare is not None and last == rule.bare) or any(obj is o for o in rule.objects)
            hit = hit or (rule.method is not None and obj is None and last == rule.method)
            if hit:
                at = f" ({where})" if where else ""
                same = ""
                if obj is not None and shown.rsplit(".", 1)[-1] != rule.text.rsplit(".", 1)[-1]:
                    same = f" (that is {getattr(obj, '__module__', None) or 'torch'}.{getattr(obj, '__name__', last)})"
                return f"your code uses `{shown}`{same}{at}, which this exercise does not allow"
    return None


def _type_name(t) -> str:
    names = {int: "a Python int", float: "a Python float", bool: "a Python bool"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _wrong_type(got, want_type) -> str | None:
    ok = isinstance(got, want_type) and not (isinstance(got, (bool, np.bool_)) and want_type is not bool)
    if isinstance(got, torch.Tensor) or isinstance(got, np.generic) and not isinstance(got, float):
        ok = False
    if ok:
        return None
    fix = " (use int(...) or .item())" if want_type is int else " (use float(...) or .item())" if want_type is float else ""
    return f"your result is {_describe(got)}; the exercise asks for {_type_name(want_type)}{fix}"


# ----------------------------------------------------------------------------- the check itself
_GRADED: contextvars.ContextVar = contextvars.ContextVar("graded_function", default=None)


def graded_function():
    """The learner's function being graded right now, for a judge that must call it again (e.g. on
    another device); None outside run_check."""
    return _GRADED.get()


def run_check(ex: Exercise, fn, seed: int = 0) -> Result:
    """Grade ``fn``; the caller's random-number state is left as it was."""
    token = _GRADED.set(fn)
    try:
        with torch.random.fork_rng(devices=[]):
            return _run_check(ex, fn, seed)
    finally:
        _GRADED.reset(token)


def _run_check(ex: Exercise, fn, seed: int = 0) -> Result:
    start = time.perf_counter()

    def fail(msg: str, mistake: str | None = None, n: int = 0) -> Result:
        return Result(ex.id, False, msg, n, time.perf_counter() - start, mistake)

    if not callable(fn):
        return fail(f"check() needs your function itself (e.g. `{ex.name}`), not {_describe(fn)}")
    if ex.forbidden and fn is not ex.reference:  # the grader's own reference is trusted
        try:
            banned = forbidden_calls(fn, ex.forbidden)
        except Exception:  # a failure of the inspection itself is never the learner's fault
            banned = None
        if banned:
            return fail(f"{banned}: {ex.forbidden_why} (not allowed here: "
                        f"{', '.join(f'`{f}`' for f in ex.forbidden)})")
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
        except NotImplementedError as e:
            if str(e) in ("", "your code here"):  # the stub's own raise (or a bare one)
                return fail("not implemented yet: replace the `raise NotImplementedError` with your code", n=n - 1)
            # PyTorch raises NotImplementedError for operations a dtype does not support
            return fail(f"your function raised NotImplementedError: {str(e).splitlines()[0]}"
                        f"{_where_in_learner_code(e, fn)} on {case.name} (PyTorch does not support this "
                        "operation for these dtypes: check the dtypes you combine)", n=n - 1)
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
        if ex.returns is not None:
            wrong_type = _wrong_type(got, ex.returns)
            if wrong_type:
                return fail(f"{wrong_type} on {case.name}", n=n - 1)
        want = None
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
            if ex.explain is not None and kind in ("shape", "values", "type"):
                try:
                    more = ex.explain(got, want, *clone(case.args))
                except Exception:
                    more = None
                if more:
                    extra += f". {more}"
            return fail(f"{msg} on {case.name}{extra}", n=n - 1)
    noun = "check" if len(cases) == 1 else "checks"
    return Result(ex.id, True, f"all public checks passed ({len(cases)} {noun}).", len(cases),
                  time.perf_counter() - start)
