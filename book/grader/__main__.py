"""Grade from a terminal.

    python -m book.grader exercises/04_self_attention.ipynb   # run the notebook, print a table
    python -m book.grader --list                              # every exercise id
    python -m book.grader --progress                          # what you have passed

Exit status: 0 when every exercise of the notebook's chapter passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from book.grader import REPORT_ENV, exercises, progress


def execute(path: Path, timeout: int = 600) -> tuple[list[dict], list[str]]:
    """Run the notebook in a fresh kernel; return the check() results and any cell errors."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "results.jsonl"
        old = os.environ.get(REPORT_ENV)
        os.environ[REPORT_ENV] = str(report)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                    resources={"metadata": {"path": str(path.parent.resolve())}})
            client.execute()
        finally:
            if old is None:
                os.environ.pop(REPORT_ENV, None)
            else:
                os.environ[REPORT_ENV] = old
        results = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    errors = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"cell {i + 1} raised {out.get('ename')}: {out.get('evalue', '')}".strip())
    return results, errors


def grade(path: Path) -> int:
    chapter = path.stem
    ids = exercises(chapter)
    if not ids:
        print(f"{path}: no graded exercises for chapter '{chapter}' (file names look like 04_self_attention.ipynb)")
        return 1
    print(f"Grading {path} — running it in a fresh kernel ...", flush=True)
    t0 = time.perf_counter()
    results, errors = execute(path)
    last = {r["exercise"]: r for r in results}  # the last check of each exercise counts
    width = max(len(i) for i in ids) + 2
    print(f"\n{'exercise':<{width}}result  feedback")
    passed = 0
    for ex in ids:
        r = last.get(ex)
        if r is None:
            status, fb = "FAIL", "never checked: is its check(...) cell still in the notebook?"
        else:
            status, fb = ("pass" if r["passed"] else "FAIL"), r["feedback"]
            passed += r["passed"]
        print(f"{ex:<{width}}{status:<8}{fb}")
    for e in errors:
        print(f"note: {e}")
    print(f"\n{passed}/{len(ids)} exercises passed ({time.perf_counter() - t0:.1f} s)")
    return 0 if passed == len(ids) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m book.grader", description="Grade exercise notebooks.")
    p.add_argument("notebooks", nargs="*", type=Path, help="exercise notebooks to run and grade")
    p.add_argument("--list", action="store_true", help="list every exercise id")
    p.add_argument("--progress", action="store_true", help="show which exercises you have passed")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(exercises()))
        return 0
    if args.progress:
        print(progress())
        return 0
    if not args.notebooks:
        p.print_help()
        return 2
    status = 0
    for nb in args.notebooks:
        if not nb.exists():
            print(f"{nb}: no such file")
            status = 1
            continue
        status |= grade(nb)
    return status


if __name__ == "__main__":
    sys.exit(main())
