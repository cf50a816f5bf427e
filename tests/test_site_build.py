"""The website: built with the README's command, every notebook executed, fully offline."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

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


def test_a_rebuild_without_changes_executes_nothing(site):
    """The README's command again: every execution comes from the cache, every page is rewritten."""
    assert site["returncode"] == 0, site["log"][-5000:]
    env = {k: v for k, v in os.environ.items() if k not in ("BOOK_SITE_BUILD", "BOOK_GRADER_REPORT")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "book.authoring.build"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=600)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "Executing notebook" not in log, [line for line in log.splitlines() if "Executing notebook" in line]
    assert (site["html"] / "chapters" / "04_self_attention.html").is_file()
    print(f"no-change rebuild in {seconds:.1f} s")


def _jb_build(book_dir):
    proc = subprocess.run([sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
                           str(book_dir), "-W", "-n", "--keep-going"], capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def test_dropped_executions_are_re_executed_and_only_they(tmp_path):
    """Per-notebook invalidation in a real (tiny) build: a changed code stamp re-runs that notebook only."""
    from book.authoring import exec_cache

    cells = ["import book\nbook.setup(verbose=False)", "from book.attention import softmax\nprint('ran')"]
    nbs = {}
    for name in ("one", "two"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {name.title()}")]
                                      + [nbformat.v4.new_code_cell(c + f"  # {name}") for c in cells])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbs[f"{name}.ipynb"] = nb
    proc = _tiny_book(tmp_path, nbs, ["one", "two"])
    book_dir = tmp_path / "tinybook"
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert log.count("Executing notebook") == 2

    rc, log = _jb_build(book_dir)  # nothing changed
    assert rc == 0 and "Executing notebook" not in log, log[-3000:]

    stamps_file = book_dir / "_build" / exec_cache.STAMP_FILE
    stamps = json.loads(stamps_file.read_text())
    assert set(stamps) == {"one.ipynb", "two.ipynb"}
    stamps["two.ipynb"] = "as if book/attention.py had changed since two.ipynb ran"
    stamps_file.write_text(json.dumps(stamps))
    rc, log = _jb_build(book_dir)
    assert rc == 0, log[-3000:]
    executed = [line for line in log.splitlines() if "Executing notebook" in line]
    assert len(executed) == 1 and "two.ipynb" in executed[0], executed
