"""The book's grader: ``check("04_self_attention/prefix_lm_mask", prefix_lm_mask)`` or simply
``check(prefix_lm_mask)``.

``check`` never raises: it returns a ``Result`` (``.passed``, ``.feedback``) that shows as a coloured
box in a notebook. ``exercises()`` lists the ids, ``progress()`` shows what you have passed so far
(kept in a small JSON file, see ``book.grader.progress_file``). From a terminal::

    python -m book.grader exercises/04_self_attention.ipynb     # grade a whole notebook
    python -m book.grader --progress                             # your progress
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from book.grader.core import Case, Exercise, Mistake, Result, run_check
from book.grader.progress import progress, progress_file, record

__all__ = ["check", "exercises", "get_exercise", "progress", "progress_file", "Result",
           "Exercise", "Case", "Mistake"]

def _chapter_modules() -> list[str]:
    """One module of exercises per chapter: book/grader/chNN.py (appendices: aN.py), each with a
    list EXERCISES."""
    here = Path(__file__).parent
    found = sorted(here.glob("ch[0-9][0-9].py")) + sorted(here.glob("a[0-9].py"))
    return [f"book.grader.{p.stem}" for p in found]


REPORT_ENV = "BOOK_GRADER_REPORT"  # set by the command-line grader: each result is appended there


def _registry() -> dict[str, Exercise]:
    found: dict[str, Exercise] = {}
    for name in _chapter_modules():
        for ex in importlib.import_module(name).EXERCISES:
            found[ex.id] = ex
    return found


def exercises(chapter: str | None = None) -> list[str]:
    """All exercise ids, or those of one chapter (e.g. ``"04_self_attention"`` or ``"04"``)."""
    ids = sorted(_registry())
    if chapter:
        ids = [i for i in ids if i.split("/")[0] == chapter or i.startswith(f"{chapter}_")]
    return ids


def get_exercise(exercise_id: str) -> Exercise:
    return _registry()[exercise_id]


def _resolve(exercise, fn):
    """Accept check(id, fn), check(fn) and check(short_name, fn); return (exercise or None, fn, error)."""
    if fn is None and callable(exercise):
        fn, exercise = exercise, getattr(exercise, "__name__", "")
    registry = _registry()
    if not isinstance(exercise, str):
        return None, fn, f"the first argument should be an exercise id such as '{next(iter(registry))}'"
    if exercise in registry:
        return registry[exercise], fn, None
    matches = [e for e in registry.values() if e.name == exercise]
    if len(matches) == 1:
        return matches[0], fn, None
    if len(matches) > 1:
        return None, fn, f"'{exercise}' exists in several chapters: give the full id, one of {[m.id for m in matches]}"
    return None, fn, f"unknown exercise '{exercise}'. Known ids: {', '.join(sorted(registry))}"


def _other_names(fn, ex: Exercise, frame) -> list[str]:
    """Exercise names the caller has bound to ``fn`` besides the one it is graded as, e.g.
    ``multi_head_attention_loop = multi_head_attention`` (check(fn) goes by fn.__name__)."""
    if frame is None:
        return []
    names = {e.name for e in _registry().values()}
    scope = {**frame.f_globals, **frame.f_locals}
    return sorted(n for n, v in scope.items() if v is fn and n != ex.name and n in names)


def check(exercise, fn=None, *, seed: int = 0) -> Result:
    """Grade ``fn`` against the exercise ``exercise`` (an id, or omitted to use fn's name).

    The result always says which exercise it graded ("graded as 05_multi_head_attention/…").
    """
    short_form = fn is None and callable(exercise)
    frame = sys._getframe(1) if short_form else None
    try:
        ex, fn, error = _resolve(exercise, fn)
        others = _other_names(fn, ex, frame) if short_form and not error else []
        if short_form and error:  # fn's __name__ is no exercise: perhaps the name it is bound to is
            aliases = _other_names(fn, Exercise("?/?", "", None, lambda g: []), frame)
            if len(aliases) == 1:
                ex, fn, error = _resolve(aliases[0], fn)
                if not error:
                    result = run_check(ex, fn, seed=seed)
                    result.feedback += (f" (Graded as {ex.id}, the name your notebook gives this function; "
                                        f"its own __name__ is `{getattr(fn, '__name__', '?')}`.)")
                    return _finish(result)
    finally:
        del frame
    if error:
        return Result(str(exercise), False, error)
    result = run_check(ex, fn, seed=seed)
    if short_form:
        if others:
            result.feedback += (f" Note: check(f) picks the exercise by the function's __name__, "
                                f"`{fn.__name__}`, so this graded {ex.id}; your notebook also calls this "
                                f"function {', '.join(f'`{o}`' for o in others)} — to grade that exercise, "
                                f"write it as its own def (or check('{others[0]}', {others[0]})).")
    return _finish(result)


def _finish(result: Result) -> Result:
    record(result)
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": result.exercise, "passed": result.passed,
                                "feedback": result.feedback, "seconds": result.seconds}) + "\n")
    return result
