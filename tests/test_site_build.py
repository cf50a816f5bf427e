"""The website: built with the README's command, every notebook executed, fully offline."""
import re
import shutil
import subprocess
import sys
import textwrap

import nbformat
import pytest

from conftest import ROOT

PAGES = ["chapters/intro", "chapters/setup", "chapters/notation", "chapters/glossary",
         "chapters/04_self_attention", "exercises/04_self_attention", "solutions/04_self_attention"]
EXTERNAL = re.compile(r"""<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)


def test_build_succeeds(site):
    assert site["returncode"] == 0, site["log"][-5000:]
    print(f"site built in {site['seconds']:.1f} s")


@pytest.mark.parametrize("page", PAGES)
def test_page_exists_and_loads_nothing_from_outside(site, page):
    html = (site["html"] / f"{page}.html").read_text(encoding="utf-8")
    assert not EXTERNAL.findall(html), EXTERNAL.findall(html)[:3]
    assert "unpkg.com" not in html and "cdn.jsdelivr" not in html and "cdnjs" not in html


def test_plotly_and_mathjax_are_served_locally_once(site):
    static = site["html"] / "_static" / "vendor"
    assert (static / "plotly.min.js").stat().st_size > 1_000_000
    assert (static / "mathjax" / "tex-chtml.js").exists()
    assert (static / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    page = (site["html"] / "chapters" / "04_self_attention.html").read_text(encoding="utf-8")
    assert page.count("_static/vendor/plotly.min.js") == 1
    assert "_static/vendor/mathjax/tex-chtml.js" in page
    assert len(page) < 2_000_000, "plotly.js must not be inlined into pages"
    glossary = (site["html"] / "chapters" / "glossary.html").read_text(encoding="utf-8")
    assert "plotly.min.js" not in glossary, "pages without figures should not load plotly.js"


def test_chapter_figures_are_executed_and_interactive(site):
    page = (site["html"] / "chapters" / "04_self_attention.html").read_text(encoding="utf-8")
    assert page.count("Plotly.newPlot") >= 5
    assert page.count('"sliders"') >= 2  # temperature slider, query slider
    assert '"updatemenus"' in page  # the mask menu
    assert "largest difference from PyTorch" in page  # a cell's printed output made it to the page


def test_solutions_executed_and_all_pass(site):
    from book.grader import exercises

    page = (site["html"] / "solutions" / "04_self_attention.html").read_text(encoding="utf-8")
    assert page.count("all public checks passed") == len(exercises("04_self_attention"))
    assert "not yet" not in page


def test_exercises_shown_with_stubs_not_executed(site):
    page = (site["html"] / "exercises" / "04_self_attention.html").read_text(encoding="utf-8")
    assert "NotImplementedError" in page
    assert "all public checks passed" not in page and "not implemented yet" not in page


def _tiny_book(tmp_path, files: dict, toc_files: list):
    book_dir = tmp_path / "tinybook"
    book_dir.mkdir()
    shutil.copy(ROOT / "_config.yml", book_dir / "_config.yml")
    (book_dir / "_toc.yml").write_text("format: jb-book\nroot: index\nchapters:\n"
                                       + "".join(f"  - file: {f}\n" for f in toc_files))
    (book_dir / "index.md").write_text("# Tiny\n\nA test book.\n")
    for name, content in files.items():
        if name.endswith(".ipynb"):
            nbformat.write(content, book_dir / name)
        else:
            (book_dir / name).write_text(textwrap.dedent(content))
    return subprocess.run([sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
                           str(book_dir), "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=600)


def test_a_cell_error_fails_the_build(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Broken"),
                                         nbformat.v4.new_code_cell("1 / 0")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    proc = _tiny_book(tmp_path, {"broken.ipynb": nb}, ["broken"])
    assert proc.returncode != 0
    assert "ZeroDivisionError" in proc.stdout + proc.stderr


def test_a_sphinx_warning_fails_the_build(tmp_path):
    proc = _tiny_book(tmp_path, {"page.md": "# Page\n\nSee {doc}`no_such_page`.\n"}, ["page"])
    assert proc.returncode != 0
