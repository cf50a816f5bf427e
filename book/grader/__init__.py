"""The book's grader: ``check("04_self_attention/softmax", softmax)`` or simply ``check(softmax)``.

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
from pathlib import Path

from book.grader.core import Case, Exercise, Mistake, Result, run_check
from book.grader.progress import progress, progress_file, record

__all__ = ["check", "exercises", "get_exercise", "progress", "progress_file", "Result",
           "Exercise", "Case", "Mistake"]

def _chapter_modules() -> list[str]:
    """One module of exercises per chapter: book/grader/chNN.py, each with a list EXERCISES."""
    return [f"book.grader.{p.stem}" for p in sorted(Path(__file__).parent.glob("ch[0-9][0-9].py"))]


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


def check(exercise, fn=None, *, seed: int = 0) -> Result:
    """Grade ``fn`` against the exercise ``exercise`` (an id, or omitted to use fn's name)."""
    ex, fn, error = _resolve(exercise, fn)
    if error:
        return Result(str(exercise), False, error)
    result = run_check(ex, fn, seed=seed)
    record(result)
    report = os.environ.get(REPORT_ENV)
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"exercise": result.exercise, "passed": result.passed,
                                "feedback": result.feedback, "seconds": result.seconds}) + "\n")
    return result
