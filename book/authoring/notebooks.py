"""Notebook housekeeping: exercises are generated from solutions; nothing is committed with outputs.

``solutions/NN_*.ipynb`` is the single source. In its code cells, the lines between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` are the answer; ``### HINT: ...`` lines inside
that block become ``# Hint: ...`` comments in the stub, which raises ``NotImplementedError``.
Cells tagged ``solutions-only`` are dropped, and a first-level heading ending in
``(solutions)`` loses that suffix.

    python -m book.authoring.notebooks generate   # write exercises/ from solutions/
    python -m book.authoring.notebooks check      # exit 1 if exercises/ is stale or a notebook has outputs
    python -m book.authoring.notebooks strip      # remove outputs and execution counts from every notebook
"""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]  # the repository (book/authoring/ -> ../..)
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
NOTEBOOK_DIRS = ("chapters", "exercises", "solutions")


def stub_source(source: str) -> str:
    """Replace every BEGIN/END SOLUTION block of a code cell with a hint and a NotImplementedError."""
    out, inside, indent = [], False, ""
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            continue
        if stripped.startswith(END):
            if not inside:
                raise ValueError(f"{END} without {BEGIN}")
            out.append(f'{indent}raise NotImplementedError("your code here")')
            inside = False
            continue
        if inside:
            if stripped.startswith(HINT):
                out.append(f"{indent}# Hint: {stripped[len(HINT):].strip()}")
            continue
        out.append(line)
    if inside:
        raise ValueError(f"{BEGIN} without {END}")
    return "\n".join(out)


def exercise_notebook(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = copy.deepcopy(solution)
    cells = []
    for cell in nb.cells:
        if "solutions-only" in cell.get("metadata", {}).get("tags", []):
            continue
        if cell.cell_type == "code":
            cell.source = stub_source(cell.source)
        elif cell.cell_type == "markdown":
            cell.source = re.sub(r"^(# .*?)[ \t]*\(solutions\)[ \t]*$", r"\1", cell.source, flags=re.M)
        cells.append(cell)
    nb.cells = cells
    return strip(nb)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.get("metadata", {}).pop("execution", None)
    return nb


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    return any(c.cell_type == "code" and (c.outputs or c.execution_count is not None) for c in nb.cells)


def pairs(root: Path = ROOT):
    """(solution path, exercise path) for every solution notebook (chapters NN_*, appendices aN_*)."""
    found = [*(root / "solutions").glob("[0-9][0-9]_*.ipynb"), *(root / "solutions").glob("a[0-9]_*.ipynb")]
    for sol in sorted(found):
        yield sol, root / "exercises" / sol.name


def expected_exercise_text(sol: Path) -> str:
    return nbformat.writes(exercise_notebook(nbformat.read(sol, as_version=4))) + "\n"


def generate(root: Path = ROOT) -> list[Path]:
    written = []
    for sol, ex in pairs(root):
        text = expected_exercise_text(sol)
        if not ex.exists() or ex.read_text(encoding="utf-8") != text:
            ex.write_text(text, encoding="utf-8")
            written.append(ex)
    return written


def stale_exercises(root: Path = ROOT) -> list[Path]:
    return [ex for sol, ex in pairs(root) if not ex.exists() or ex.read_text(encoding="utf-8") != expected_exercise_text(sol)]


def all_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(p for d in NOTEBOOK_DIRS for p in (root / d).glob("*.ipynb"))


def main(argv=None) -> int:
    cmd = (argv or sys.argv[1:] or ["check"])[0]
    if cmd == "generate":
        for p in generate():
            print(f"wrote {p.relative_to(ROOT)}")
        return 0
    if cmd == "strip":
        for p in all_notebooks():
            nb = nbformat.read(p, as_version=4)
            if has_outputs(nb):
                nbformat.write(strip(nb), p)
                print(f"stripped {p.relative_to(ROOT)}")
        return 0
    if cmd == "check":
        tool = "python -m book.authoring.notebooks"
        bad = [f"{p.relative_to(ROOT)} is out of sync with solutions/ (run: {tool} generate)"
               for p in stale_exercises()]
        bad += [f"{p.relative_to(ROOT)} has outputs (run: {tool} strip)"
                for p in all_notebooks() if has_outputs(nbformat.read(p, as_version=4))]
        print("\n".join(bad) or "notebooks OK")
        return 1 if bad else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
