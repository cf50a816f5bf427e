"""Numbers quoted in prose come from the build: every {glue:...}`name` a chapter's text refers to is
glued by a code cell of the same notebook, and (after the site build) present in its executed output."""
import re

import nbformat
import pytest

from conftest import ROOT

REFERENCE = re.compile(r"\{glue(?::\w+)?\}`([A-Za-z_][\w]*)")
GLUED = re.compile(r"""\bglue\(\s*(f?)["']([^"']+)["']""")
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def _refs_and_glues(path):
    nb = nbformat.read(path, as_version=4)
    refs = {m for c in nb.cells if c.cell_type == "markdown" for m in REFERENCE.findall(c.source)}
    literal, patterns = set(), []
    for c in nb.cells:
        if c.cell_type == "code":
            for is_f, name in GLUED.findall(c.source):
                if is_f and "{" in name:  # glue(f"{m}_previous10", ...): a family of names
                    patterns.append(re.compile("^" + re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(name)) + "$"))
                else:
                    literal.add(name)
    return refs, literal, patterns


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_glued_reference_is_glued_in_the_same_notebook(path):
    refs, literal, patterns = _refs_and_glues(path)
    missing = sorted(r for r in refs if r not in literal and not any(p.match(r) for p in patterns))
    assert not missing, f"{path.name} quotes {missing} but no code cell glues them"


def test_the_book_quotes_measured_numbers_through_glue():
    counts = {p.stem: len(_refs_and_glues(p)[0]) for p in CHAPTERS}
    assert sum(counts.values()) >= 20, counts
    print("glued references per chapter:", counts)


def test_glued_values_are_in_the_executed_notebooks(site):
    assert site["returncode"] == 0, site["log"][-3000:]
    executed = site["html"].parent / "jupyter_execute" / "chapters"
    for path in CHAPTERS:
        refs, _, _ = _refs_and_glues(path)
        if not refs:
            continue
        nb = nbformat.read(executed / path.name, as_version=4)
        names = {o.get("metadata", {}).get("scrapbook", {}).get("name")
                 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])}
        missing = sorted(refs - names)
        assert not missing, f"{path.name}: glued names missing from the executed output: {missing}"
