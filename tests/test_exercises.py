"""Every graded exercise of the book, under one set of rules.

For each exercise in the grader's registry (``book.grader.exercises()``):

* its reference passes (the exercise's own, and the chapter's adapter of the book's code if any);
* its catalogue has at least ``MIN_MISTAKES[kind]`` mistakes, with distinct names and a hint each;
* every catalogued mistake is rejected and named: ``r.mistake == m.name``, the name and
  "Hint: <its hint>" in the feedback;
* valid alternative solutions pass, and extra wrong variants (not in the catalogue) are rejected
  with feedback that says what is wrong;
* every result says which exercise it graded ("graded as <id>", in its text and its HTML);
* the rules a statement states are enforced: a call the exercise forbids (``Exercise.forbidden``)
  is refused by name, a result of the wrong Python type (``Exercise.returns``) by its type;
* no feedback ever contains a traceback.

The chapters contribute data only, as module-level constants of their test file (``DATA`` below):

* ``REFERENCES = {short name: fn}`` — a correct answer where the exercise has none (judged
  exercises) or where the book's code needs an adapter to the exercise's signature (references are
  trusted: the exercise's forbidden calls bind answers, not them);
* ``BUGGY = {mistake name: fn}`` — an implementation of each mistake whose catalogue entry is a
  probe rather than code (required for every mistake of a judged exercise);
* ``ALTERNATIVES = {short name: [fn, ...]}`` — other correct answers;
* ``WRONG = [(short name, fn, substring the feedback must contain), ...]``.
"""
import dataclasses
import importlib
import types

import pytest
import torch

from book.grader import check, exercises, get_exercise
from book.grader.core import run_check

# chapter number (appendix id, e.g. "a1") -> the test module that holds its data
DATA = {
    "01": "test_ch01_linear_algebra", "02": "test_ch02_pytorch_essentials", "03": "test_ch03_sequence_models",
    "04": "test_ch04_self_attention", "05": "test_ch05_multi_head_attention", "06": "test_ch06_positional_encoding",
    "07": "test_ch07_encoder_decoder", "08": "test_ch08_transformer_from_scratch",
    "09": "test_ch09_pretrained", "10": "test_ch10_bert_gpt_t5", "12": "test_ch12_vision_transformer",
    "11": "test_ch11_small_llm",
    "13": "test_ch13_exercises", "14": "test_ch14_exercises",  # exercise data apart from the model tests
    "a1": "test_a1_keras",  # appendix A
}
# the smallest catalogue an exercise may have, by kind
MIN_MISTAKES = {"function": 3, "prediction": 3}

EXERCISES = [get_exercise(i) for i in exercises()]
BY_NAME = {}  # chapter number -> short name -> exercise
for _ex in EXERCISES:
    BY_NAME.setdefault(_ex.chapter[:2], {})[_ex.name] = _ex


def _get(ex, name):
    """One of the chapter's data dicts (REFERENCES, BUGGY, ALTERNATIVES); empty if it has none."""
    return getattr(importlib.import_module(DATA[ex.chapter[:2]]), name, {})


def _references(ex):
    found = [ex.reference] if ex.reference is not None else []
    extra = _get(ex, "REFERENCES").get(ex.name)
    return found + ([extra] if extra is not None else [])


def _no_traceback(r):
    assert "Traceback" not in r.feedback and 'File "' not in r.feedback, r.feedback


# ----------------------------------------------------------------------------- the data itself
def test_every_chapter_has_data_and_the_data_names_real_exercises():
    assert {ex.chapter[:2] for ex in EXERCISES} == set(DATA)
    for number, module_name in DATA.items():
        module = importlib.import_module(module_name)
        names = set(BY_NAME.get(number, {}))
        mistakes = {m.name for ex in BY_NAME.get(number, {}).values() for m in ex.mistakes}
        used = set(getattr(module, "REFERENCES", {})) | set(getattr(module, "ALTERNATIVES", {}))
        used |= {name for name, _, _ in getattr(module, "WRONG", [])}
        assert used <= names, f"{module_name} has data for exercises that do not exist: {used - names}"
        buggy = set(getattr(module, "BUGGY", {}))
        assert buggy <= mistakes, f"{module_name}.BUGGY names mistakes that are not catalogued: {buggy - mistakes}"


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda e: e.id)
def test_catalogue(ex):
    assert ex.kind in MIN_MISTAKES, f"{ex.id}: unknown kind {ex.kind!r}"
    assert len(ex.mistakes) >= MIN_MISTAKES[ex.kind], (
        f"{ex.id} catalogues {len(ex.mistakes)} mistakes; a {ex.kind} exercise needs {MIN_MISTAKES[ex.kind]}")
    names = [m.name for m in ex.mistakes]
    assert len(set(names)) == len(names), f"{ex.id}: two mistakes share a name"
    assert all(m.hint.strip() for m in ex.mistakes), f"{ex.id}: a mistake without a hint"


# ----------------------------------------------------------------------------- right answers pass
@pytest.mark.parametrize("ex", EXERCISES, ids=lambda e: e.id)
def test_reference_passes(ex):
    refs = _references(ex)
    assert refs, f"{ex.id} has no reference: give one in {DATA[ex.chapter[:2]]}.REFERENCES"
    for fn in refs:
        trusted = fn is ex.reference or not ex.forbidden
        r = check(ex.id, fn) if trusted else run_check(dataclasses.replace(ex, forbidden=()), fn)
        _no_traceback(r)
        assert r.passed, r.feedback
        assert "all public checks passed" in r.feedback
        assert f"graded as {ex.id}" in str(r) and f"graded as <code>{ex.id}</code>" in r._repr_html_()


# ----------------------------------------------------------------------------- stated rules are enforced
FORBIDDING = [(ex, spec) for ex in EXERCISES for spec in ex.forbidden]


@pytest.mark.parametrize("ex,spec", FORBIDDING, ids=[f"{ex.id}-{spec}" for ex, spec in FORBIDDING])
def test_a_forbidden_call_is_refused_by_name(ex, spec):
    """The exercise's own reference, with one mention of the forbidden name added, is refused."""
    ref = ex.reference or _get(ex, "REFERENCES")[ex.name]
    head = spec.split(".")[0]
    namespace = {"_ref": ref, "torch": torch, "F": torch.nn.functional, "nn": torch.nn, "Tensor": torch.Tensor}
    if head == "book":
        importlib.import_module(spec.rsplit(".", 1)[0])
        namespace["book"] = importlib.import_module("book")
    code = f"def {ex.name}(*args):\n    if args is None:\n        {spec}(*args)\n    return _ref(*args)\n"
    exec(compile(code, f"<answer to {ex.id}>", "exec"), namespace)  # noqa: S102 — no readable source: bytecode
    r = check(ex.id, namespace[ex.name])
    _no_traceback(r)
    assert not r.passed and "does not allow" in r.feedback and spec.rsplit(".", 1)[-1] in r.feedback, r.feedback


RETURNING = [ex for ex in EXERCISES if ex.returns is not None]


@pytest.mark.parametrize("ex", RETURNING, ids=lambda e: e.id)
def test_a_result_of_the_wrong_python_type_is_refused(ex):
    def as_tensor(*args):
        return torch.tensor(ex.reference(*args))

    r = check(ex.id, as_tensor)
    assert not r.passed and "the exercise asks for" in r.feedback and "torch.Tensor" in r.feedback, r.feedback


def test_check_f_says_which_exercise_it_graded_when_names_disagree():
    ex = next(e for e in EXERCISES if e.reference is not None and e.kind == "function")
    other = next(e for e in EXERCISES if e is not ex and e.kind == "function")
    graded = types.FunctionType(ex.reference.__code__, ex.reference.__globals__, ex.name,
                                ex.reference.__defaults__, ex.reference.__closure__)
    scope = {other.name: graded}
    r = eval("check(f)", {"check": check}, {**scope, "f": graded})  # noqa: S307 — a caller that aliases
    assert r.exercise == ex.id and f"graded as {ex.id}" in str(r)
    assert f"`{other.name}`" in r.feedback, r.feedback


ALTERNATIVES = [(ex, fn) for ex in EXERCISES for fn in _get(ex, "ALTERNATIVES").get(ex.name, [])]


@pytest.mark.parametrize("ex,fn", ALTERNATIVES,
                         ids=[f"{ex.id}-{i}" for i, (ex, _) in enumerate(ALTERNATIVES)])
def test_valid_alternative_passes(ex, fn):
    r = check(ex.id, fn)
    _no_traceback(r)
    assert r.passed, r.feedback


# ----------------------------------------------------------------------------- wrong answers are rejected
MISTAKES = [(ex, m) for ex in EXERCISES for m in ex.mistakes]


@pytest.mark.parametrize("ex,mistake", MISTAKES, ids=[f"{ex.id}-{m.name}" for ex, m in MISTAKES])
def test_catalogued_mistake_is_rejected_and_named(ex, mistake):
    buggy = _get(ex, "BUGGY")
    if ex.judge is not None:
        assert mistake.name in buggy, (
            f"{ex.id} is judged, so its mistakes are probes: give code for this one in {DATA[ex.chapter[:2]]}.BUGGY")
    r = check(ex.id, buggy.get(mistake.name, mistake.fn))
    _no_traceback(r)
    assert not r.passed
    assert r.mistake == mistake.name, r.feedback
    assert mistake.name in r.feedback and f"Hint: {mistake.hint}" in r.feedback


WRONG = [(BY_NAME[number][name], fn, expected) for number, module in DATA.items()
         for name, fn, expected in getattr(importlib.import_module(module), "WRONG", [])
         if name in BY_NAME.get(number, {})]  # unknown names fail the data test above


@pytest.mark.parametrize("ex,fn,expected", WRONG,
                         ids=[f"{ex.id}-{i}" for i, (ex, _, _) in enumerate(WRONG)])
def test_wrong_variant_is_rejected_with_a_reason(ex, fn, expected):
    r = check(ex.id, fn)
    _no_traceback(r)
    assert not r.passed
    assert expected in r.feedback, r.feedback
