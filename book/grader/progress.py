"""Which exercises you have passed, kept in a small JSON file on your machine.

The file is ``~/.transformer-book/progress.json``; set ``BOOK_PROGRESS_FILE`` to use another one,
or ``BOOK_PROGRESS_FILE=off`` to keep nothing. The website build keeps nothing.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

from book.runtime import is_site_build


def progress_file() -> Path | None:
    value = os.environ.get("BOOK_PROGRESS_FILE")
    if value == "off" or (value is None and is_site_build()):
        return None
    return Path(value) if value else Path.home() / ".transformer-book" / "progress.json"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


_SESSION: dict = {}  # used when no file is kept (the website build, BOOK_PROGRESS_FILE=off)


def record(result) -> None:
    """Store the latest outcome of an exercise; 'passed' stays True once earned."""
    path = progress_file()
    data = _load(path) if path else _SESSION
    entry = data.get(result.exercise, {})
    entry.update(last=("pass" if result.passed else "fail"), when=time.strftime("%Y-%m-%d %H:%M"),
                 passed=bool(entry.get("passed")) or result.passed)
    data[result.exercise] = entry
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass  # progress is a convenience: never let it break a check


@dataclass
class Progress:
    rows: list  # (exercise id, passed, last outcome, when)

    @property
    def passed(self) -> int:
        return sum(1 for r in self.rows if r[1])

    def __str__(self) -> str:
        lines = [f"{'exercise':<48} status"]
        for ex, ok, last, when in self.rows:
            status = "passed" if ok else ("tried" if last else "not tried")
            lines.append(f"{ex:<48} {status}{'  (' + when + ')' if when else ''}")
        lines.append(f"{self.passed}/{len(self.rows)} exercises passed")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><td><code>{escape(ex)}</code></td><td>{'✔ passed' if ok else ('✘ tried' if last else '· not tried')}"
            f"</td><td>{escape(when or '')}</td></tr>" for ex, ok, last, when in self.rows)
        return (f"<table><thead><tr><th>exercise</th><th>status</th><th>last checked</th></tr></thead>"
                f"<tbody>{body}</tbody></table><p>{self.passed}/{len(self.rows)} exercises passed</p>")


def progress(chapter: str | None = None) -> Progress:
    """A table of every exercise (or one chapter's) with what you have passed."""
    from book.grader import exercises

    path = progress_file()
    data = _load(path) if path else _SESSION
    rows = []
    for ex in exercises(chapter):
        e = data.get(ex, {})
        rows.append((ex, bool(e.get("passed")), e.get("last"), e.get("when")))
    return Progress(rows)
