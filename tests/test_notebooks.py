"""Notebooks: committed without outputs, exercises generated from solutions, stubs fail, solutions pass."""
import re
import subprocess
import sys

import nbformat
import pytest

from book.authoring import notebooks
from book.grader import exercises

from conftest import ROOT


def tracked_notebooks():
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    files = out.stdout.split() if out.returncode == 0 else []
    return [ROOT / f for f in files] or notebooks.all_notebooks()


def test_there_are_notebooks_in_each_folder():
    names = {p.parent.name for p in notebooks.all_notebooks()}
    assert {"chapters", "exercises", "solutions"} <= names


@pytest.mark.parametrize("path", tracked_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert not notebooks.has_outputs(nb), f"{path.name} has outputs: run python -m book.authoring.notebooks strip"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_exercises_are_in_sync_with_solutions():
    assert notebooks.stale_exercises() == [], "run: python -m book.authoring.notebooks generate"


def test_every_solution_has_an_exercise_and_graded_ids():
    for sol, ex in notebooks.pairs():
        assert ex.exists()
        assert exercises(sol.stem), f"no graded exercises registered for {sol.stem}"


def test_stub_generation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    ### HINT: use x twice\n    return x + x\n    ### END SOLUTION\n\ncheck(f)"
    out = notebooks.stub_source(src)
    assert "return x + x" not in out and "# Hint: use x twice" in out
    assert '    raise NotImplementedError("your code here")' in out and out.endswith("check(f)")
    with pytest.raises(ValueError):
        notebooks.stub_source("### BEGIN SOLUTION\nx = 1")


def test_no_solution_code_leaks_into_exercises():
    """No line of an answer reaches the exercise notebook — unless the notebook gives that line to
    everyone anyway (a debug exercise prints the broken function, whose correct lines the fix keeps)."""
    for sol, ex in notebooks.pairs():
        text = ex.read_text()
        assert "BEGIN SOLUTION" not in text and "solutions-only" not in text
        shown = {line for c in nbformat.read(ex, as_version=4).cells for line in c.source.splitlines()}
        cells = [c.source for c in nbformat.read(sol, as_version=4).cells if c.cell_type == "code"]
        given = {line for src in cells for line in re.sub(r"### BEGIN SOLUTION.*?### END SOLUTION", "", src,
                                                             flags=re.S).splitlines()}
        for src in cells:
            for body in re.findall(r"### BEGIN SOLUTION(.*?)### END SOLUTION", src, flags=re.S):
                for line in body.splitlines():
                    if line.strip() and not line.strip().startswith("###") and line not in given:
                        assert line not in shown, f"solution line leaked into {ex.name}: {line!r}"


def _grade(path):
    return subprocess.run([sys.executable, "-m", "book.grader", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("sol,ex", list(notebooks.pairs()), ids=lambda p: p.name)
def test_solutions_pass_and_stubs_fail_from_the_terminal(sol, ex):
    good = _grade(sol)
    assert good.returncode == 0, good.stdout + good.stderr
    ids = exercises(sol.stem)
    assert f"{len(ids)}/{len(ids)} exercises passed" in good.stdout
    bad = _grade(ex)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"0/{len(ids)} exercises passed" in bad.stdout
    for line in bad.stdout.splitlines():
        if line.startswith(sol.stem + "/"):
            assert "FAIL" in line and "not implemented yet" in line, line


def test_grader_cli_lists_and_handles_bad_paths():
    out = subprocess.run([sys.executable, "-m", "book.grader", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "04_self_attention/prefix_lm_mask" in out.stdout
    out = subprocess.run([sys.executable, "-m", "book.grader", "nope.ipynb"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and "no such file" in out.stdout
