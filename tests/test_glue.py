"""Numbers quoted in prose come from the build: every {glue:...}`name` a chapter's text refers to is
glued by a code cell of the same notebook, and (after the site build) its value is on the page."""
import re

import nbformat
import pytest

from conftest import ROOT

REFERENCE = re.compile(r"\{glue(?::\w+)?\}`([A-Za-z_][\w]*)")
GLUED = re.compile(r"""\bglue\(\s*(f?)["']([^"']+)["']""")
CHAPTERS = sorted([*(ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"), *(ROOT / "chapters").glob("a[0-9]_*.ipynb")])  # chapters, appendices


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


def test_glued_values_are_pasted_into_the_built_pages(site):
    """Every glue reference in a chapter became a value on its page (myst-nb pastes it as
    <span class="pasted-text">), and no reference was left unresolved."""
    assert site["returncode"] == 0, site["log"][-3000:]
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        n_refs = sum(len(REFERENCE.findall(c.source)) for c in nb.cells if c.cell_type == "markdown")
        html = (site["html"] / "chapters" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert "{glue" not in html, f"{path.name}: an unresolved glue role on the page"
        assert html.count('class="pasted-text"') >= n_refs, f"{path.name}: {n_refs} glue references, fewer values"
