"""The website build's execution cache is invalidated per notebook (book.authoring.exec_cache).

Part 1 checks the dependency computation on the real notebooks; part 2 runs the invalidation on a
small fake ``book`` package and a real jupyter-cache database, without building the site.
"""
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml

from book.authoring import exec_cache
from book.authoring.exec_cache import PackageIndex

from conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _real_notebooks():
    return exec_cache.executed_notebooks(ROOT, CONFIG["exclude_patterns"], CONFIG["execute"]["exclude_patterns"])


@pytest.fixture(scope="module")
def deps():
    index = PackageIndex()
    return {nb.relative_to(ROOT).as_posix(): exec_cache.notebook_modules(nb, index) for nb in _real_notebooks()}


# --- 1. the real notebooks --------------------------------------------------------------------------

def test_the_executed_notebooks_are_the_chapters_and_solutions(deps):
    folders = {name.split("/")[0] for name in deps}
    assert folders == {"chapters", "solutions"}, "exercises/ is shown with stubs, never executed"
    assert "chapters/04_self_attention.ipynb" in deps


def test_chapter_04_runs_attention_but_not_layers_or_the_grader(deps):
    ch04 = deps["chapters/04_self_attention.ipynb"]
    assert "book.attention" in ch04
    assert "book.layers" not in ch04 and "book.grader" not in ch04


def test_every_notebook_runs_book_runtime_and_viz_through_setup(deps):
    for name, modules in deps.items():
        assert {"book", "book.runtime", "book.viz"} <= modules, name


def test_the_grader_is_run_by_solutions_only(deps):
    for name, modules in deps.items():
        graded = any(m == "book.grader" or m.startswith("book.grader.") for m in modules)
        assert graded == name.startswith("solutions/"), name


def test_no_notebook_runs_the_authoring_tools(deps):
    index = PackageIndex()
    authoring = index.root / "authoring"
    for name, modules in deps.items():
        assert not any(m == "book.authoring" or m.startswith("book.authoring.") for m in modules), name
        files = {f for m in modules for f in index.files(m)}
        assert not any(authoring in f.parents for f in files), name


def test_chapter_fingerprints_ignore_grader_and_authoring_files(deps):
    index = PackageIndex()
    for name, modules in deps.items():
        if name.startswith("chapters/"):
            files = {f.relative_to(index.root).parts[0] for m in modules for f in index.files(m)}
            assert "grader" not in files and "authoring" not in files, name


def test_a_chapter_that_imports_layers_directly_or_transitively(deps):
    ch08 = deps["chapters/08_transformer_from_scratch.ipynb"]
    assert {"book.transformer", "book.layers", "book.multihead", "book.attention"} <= ch08


# --- 2. the logic on a fake package and a fake cache -------------------------------------------------

FAKE = {
    "__init__.py": "from book.runtime import setup\n",
    "runtime.py": "def setup():\n    from book import viz  # imported inside a function\n    viz.on()\n",
    "viz.py": "def on():\n    pass\n",
    "attention.py": "import math\n",
    "maths.py": "X = 1\n",                          # only imported by name, through importlib
    "layers.py": "from book.attention import *\nimport importlib\nM = importlib.import_module('book.maths')\n",
    "data/__init__.py": "",
    "data/words.py": "from . import vocab\n",       # relative import of a sibling
    "data/vocab.py": "WORDS = ['a']\n",
    "data/vocab.json": "[\"a\"]\n",                  # a data file: counts with its package
    "grader/__init__.py": "import importlib\n",     # dynamic imports: the package counts whole
    "grader/ch01.py": "HINT = 'think'\n",
    "grader/ch02.py": "from ..layers import x\n",
    "authoring/__init__.py": "",
    "authoring/build.py": "import book.layers\n",
}


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A page\n\n`import book.layers`")]
                                  + [nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def fake(tmp_path):
    pkg = tmp_path / "pkg" / "book"
    for rel, text in FAKE.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    src = tmp_path / "site"
    nbs = {
        "ch_attention": _notebook(src / "chapters" / "01.ipynb", "import book\nbook.setup()",
                                  "from book.attention import softmax"),
        "ch_layers": _notebook(src / "chapters" / "02.ipynb", "%matplotlib inline\nimport book.layers as L",
                               "!echo shell escapes are fine"),
        "ch_data": _notebook(src / "chapters" / "03.ipynb", "from book import data\nfrom book.data import words"),
        "solution": _notebook(src / "solutions" / "01.ipynb", "from book.grader import check"),
        "exercise": _notebook(src / "exercises" / "01.ipynb", "from book.grader import check"),
    }
    return {"index": PackageIndex(pkg), "pkg": pkg, "src": src, "nbs": nbs,
            "cache": tmp_path / "_build" / ".jupyter_cache", "stamps": tmp_path / "_build" / exec_cache.STAMP_FILE}


def test_fake_dependency_sets(fake):
    index, nbs = fake["index"], fake["nbs"]
    mods = {k: exec_cache.notebook_modules(p, index) for k, p in nbs.items()}
    assert mods["ch_attention"] == {"book", "book.runtime", "book.viz", "book.attention"}
    assert mods["ch_layers"] == {"book", "book.runtime", "book.viz", "book.layers", "book.attention", "book.maths"}
    assert {"book.data", "book.data.words", "book.data.vocab"} <= mods["ch_data"]
    assert "book.grader" in mods["solution"] and "book.layers" in mods["solution"]  # ch02 via ``..layers``
    assert not any("authoring" in m for ms in mods.values() for m in ms)
    files = {f.name for f in index.files("book.data")}
    assert files == {"__init__.py", "words.py", "vocab.py", "vocab.json"}
    assert [f.name for f in index.files("book")] == ["__init__.py"]  # the top package: __init__ only


def test_missing_modules_and_unparsable_cells(fake, tmp_path):
    index = fake["index"]
    nb = _notebook(tmp_path / "x.ipynb", "from book.not_yet_written import thing")
    before = exec_cache.notebook_fingerprint(nb, index)
    assert "book.not_yet_written" in exec_cache.notebook_modules(nb, index)
    (fake["pkg"] / "not_yet_written.py").write_text("thing = 1\n")
    assert exec_cache.notebook_fingerprint(nb, index) != before  # creating the module is a change
    broken = _notebook(tmp_path / "y.ipynb", "def f(:\n    pass")
    assert "book.*" in exec_cache.notebook_modules(broken, index)  # conservative: the whole package


def test_executed_notebooks_follow_the_config(fake):
    found = exec_cache.executed_notebooks(fake["src"], ["_build"], ["exercises/*"])
    assert [p.relative_to(fake["src"]).as_posix() for p in found] == [
        "chapters/01.ipynb", "chapters/02.ipynb", "chapters/03.ipynb", "solutions/01.ipynb"]


def _fill_cache(fake, notebooks):
    """What myst-nb does after executing a notebook: cache the bundle with the notebook's path as uri."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(fake["cache"]))
    for path in notebooks:
        nb = exec_cache.read_notebook(path)
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            cell.execution_count = i + 1
            cell.outputs = [nbformat.v4.new_output("stream", text=f"ran {path.name}\n")]
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(path.resolve()), data={"execution_seconds": 1.0}),
                                    check_validity=False, overwrite=True)
    return cache


def _build(fake):
    """The extension's two steps: ``config-inited`` (invalidate) and ``env-get-outdated`` (what runs)."""
    notebooks = exec_cache.executed_notebooks(fake["src"], ["_build"], ["exercises/*"])
    changed = exec_cache.invalidate(fake["src"], fake["cache"], fake["stamps"], notebooks, fake["index"])
    to_run = exec_cache.uncached_notebooks(fake["cache"], notebooks)
    _fill_cache(fake, to_run)  # "execute" them
    return changed, sorted(p.relative_to(fake["src"]).as_posix() for p in to_run)


def _edit(path: Path, extra: str = "\n# edited\n"):
    path.write_text(path.read_text() + extra)


def test_invalidation_drops_only_the_notebooks_whose_code_changed(fake):
    everything = ["chapters/01.ipynb", "chapters/02.ipynb", "chapters/03.ipynb", "solutions/01.ipynb"]
    changed, ran = _build(fake)  # cold: no cache, no stamps
    assert ran == everything and changed == everything
    assert _build(fake) == ([], [])  # nothing changed: nothing runs
    assert len(_fill_cache(fake, []).list_cache_records()) == 4

    _edit(fake["pkg"] / "grader" / "ch01.py")  # a grader hint
    assert _build(fake) == (["solutions/01.ipynb"], ["solutions/01.ipynb"])

    _edit(fake["pkg"] / "authoring" / "build.py")  # the build tools
    assert _build(fake) == ([], [])

    _edit(fake["pkg"] / "attention.py")  # model code: its importers, direct and transitive
    expected = ["chapters/01.ipynb", "chapters/02.ipynb", "solutions/01.ipynb"]
    assert _build(fake) == (expected, expected)

    _edit(fake["pkg"] / "layers.py")
    expected = ["chapters/02.ipynb", "solutions/01.ipynb"]
    assert _build(fake) == (expected, expected)

    _edit(fake["pkg"] / "data" / "vocab.json", " ")  # a data file of a package
    assert _build(fake) == (["chapters/03.ipynb"], ["chapters/03.ipynb"])

    _edit(fake["pkg"] / "runtime.py")  # every notebook runs book.setup / book/__init__
    assert _build(fake) == (everything, everything)
    assert len(_fill_cache(fake, []).list_cache_records()) == 4  # replaced, not accumulated


def test_a_notebook_edit_is_caught_by_jupyter_cache_itself(fake):
    _build(fake)
    nb_path = fake["nbs"]["ch_attention"]
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("print('a new cell')"))
    nbformat.write(nb, nb_path)
    assert _build(fake) == ([], ["chapters/01.ipynb"])  # same book code, new code cells: no match
    nb.cells[0].source += "\n\nOnly the prose changed."  # markdown is not part of jupyter-cache's hash
    nbformat.write(nb, nb_path)
    assert _build(fake) == ([], [])


def test_records_are_found_by_uri_and_by_content(fake):
    """A record whose uri is another path but whose code matches (e.g. a moved checkout) is dropped too."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    _build(fake)
    nb_path = fake["nbs"]["ch_layers"]
    cache = get_cache(str(fake["cache"]))
    pk = cache.match_cache_notebook(exec_cache.read_notebook(nb_path)).pk
    nb = exec_cache.read_notebook(nb_path)
    cache.remove_cache(pk)
    cache.cache_notebook_bundle(CacheBundleIn(nb, "/elsewhere/02.ipynb"), check_validity=False)
    assert exec_cache.uncached_notebooks(fake["cache"], [nb_path]) == []
    removed = exec_cache.remove_cached_executions(fake["cache"], [nb_path])
    assert removed == {nb_path.resolve(): 1}
    assert exec_cache.uncached_notebooks(fake["cache"], [nb_path]) == [nb_path]


def test_lost_stamps_or_a_failed_execution_rerun_the_notebook(fake):
    _build(fake)
    fake["stamps"].unlink()  # unknown provenance: every cached execution is dropped
    changed, ran = _build(fake)
    assert changed == ran and len(ran) == 4
    # an execution that failed leaves no record: the page is re-read (and executed) next time
    exec_cache.remove_cached_executions(fake["cache"], [fake["nbs"]["ch_data"]])
    assert _build(fake) == ([], ["chapters/03.ipynb"])


def test_the_extension_is_configured():
    assert CONFIG["sphinx"]["extra_extensions"] == ["book.authoring.sphinx_ext"]
    assert CONFIG["execute"]["execute_notebooks"] == "cache"
    from book.authoring import sphinx_ext

    assert sphinx_ext.STATIC_DIR == ROOT / "book" / "static" and (sphinx_ext.STATIC_DIR / "book.css").is_file()
    assert "book.authoring.exec_cache" in textwrap.dedent(sphinx_ext.__doc__)


def test_a_module_that_reads_the_books_pages_makes_their_prose_part_of_the_fingerprint(fake, tmp_path):
    """book.rag reads chapters/* at run time (READS_PAGES): a prose edit there re-runs its readers only."""
    index, checkout = fake["index"], fake["pkg"].parent
    (fake["pkg"] / "reader.py").write_text('READS_PAGES = ("chapters/*.ipynb", "chapters/*.md")\n')
    page = _notebook(checkout / "chapters" / "01_page.ipynb", "x = 1")
    (checkout / "chapters" / "notes.md").write_text("# Notes\n\nsome prose\n")
    reader = _notebook(tmp_path / "reader.ipynb", "from book import reader")
    other = _notebook(tmp_path / "other.ipynb", "from book.attention import softmax")
    assert exec_cache.pages_read(fake["pkg"] / "reader.py") == ("chapters/*.ipynb", "chapters/*.md")
    before = {nb: exec_cache.notebook_fingerprint(nb, index) for nb in (reader, other)}

    nb = nbformat.read(page, as_version=4)
    nb.cells[-1].source = "x = 2"  # a code edit: jupyter-cache's business, not the readers'
    nbformat.write(nb, page)
    assert exec_cache.notebook_fingerprint(reader, index) == before[reader]
    nb.cells[0].source += "\n\nA new paragraph."  # a prose edit
    nbformat.write(nb, page)
    assert exec_cache.notebook_fingerprint(reader, index) != before[reader]
    after_nb = exec_cache.notebook_fingerprint(reader, index)
    (checkout / "chapters" / "notes.md").write_text("# Notes\n\nother prose\n")
    assert exec_cache.notebook_fingerprint(reader, index) != after_nb
    assert exec_cache.notebook_fingerprint(other, index) == before[other]  # a notebook that reads no pages
