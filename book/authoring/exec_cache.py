"""Per-notebook invalidation of jupyter-book's execution cache (``_build/.jupyter_cache``).

jupyter-cache matches a notebook to a cached execution by a hash of its code cells only, so a
change to the ``book`` code a notebook runs would go unnoticed. This module fingerprints, for each
executed notebook, exactly the ``book`` source it executes, and drops only the cached executions
whose fingerprint changed:

1. **What a notebook runs.** Its code cells are parsed with :mod:`ast` for ``import book…`` and
   ``from book… import …`` (``from book import viz`` means the ``book.viz`` module or package).
   Then the imports of those modules inside the ``book`` package are followed, transitively, also
   by ``ast`` — every import in a module counts, including those inside functions (so
   ``book.setup()``'s ``from book import viz`` puts ``book.viz`` in every notebook's set). Importing
   ``book.x.y`` also runs ``book/__init__.py`` and ``book/x/__init__.py``. A sub-package counts with
   all of its files (its ``__init__`` may import them dynamically, as ``book.grader`` does); the
   top-level ``book`` package counts with its ``__init__.py`` only. Nothing is hard-coded: modules
   are found on disk, so renames and new modules need no change here.
2. **Fingerprint.** sha256 of those files (path and bytes), plus the names of imported ``book``
   modules that do not exist (so that creating one changes the fingerprint). A module that reads
   the book's own pages at run time says so with a module-level ``READS_PAGES = ("chapters/*.md",
   ...)`` (globs from the checkout's root): the text of those pages joins the fingerprint (for a
   notebook, its Markdown cells only), so editing a page's prose re-runs the notebooks that read it.
3. **Stamps.** ``_build/.book_notebook_stamps.json`` maps each executed notebook (path relative to
   the book) to its fingerprint. When a fingerprint changed (or is new), that notebook's cache
   records are removed with jupyter-cache's API: every record of
   ``get_cache(path).list_cache_records()`` whose ``uri`` is the notebook, and the one
   ``match_cache_notebook`` finds for its current code cells (the lookup myst-nb's ``cache`` mode
   uses), each with ``remove_cache(pk)``.
4. **Re-reading.** Sphinx only re-reads a page whose source file changed, so
   :func:`uncached_notebooks` tells the extension (``env-get-outdated``) which executed notebooks
   have no matching cache record; those pages are re-read, and myst-nb executes them. This also
   covers a notebook whose execution failed in an earlier build.

A change to a notebook's own code cells is caught by jupyter-cache itself (new hash, no match).
``book.authoring`` is imported by no notebook, so build tools never invalidate an execution.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path, PurePosixPath
from typing import Iterable

import nbformat

PACKAGE = "book"
SCHEME = "book-exec-cache/1"  # part of every fingerprint: bump to invalidate all stamps
STAMP_FILE = ".book_notebook_stamps.json"


def package_dir() -> Path:
    """The directory of the ``book`` package the notebook kernels import."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the {PACKAGE!r} package is not importable")
    return Path(spec.origin).resolve().parent


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """nbformat v4, as myst-nb reads it (without nbformat's warning about missing cell ids)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nbformat.read(str(path), as_version=4)


# --------------------------------------------------------------------------------------------------
# Which book modules a piece of source imports
# --------------------------------------------------------------------------------------------------

def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_in_source(source: str, module: str | None = None,
                      is_package: bool = False) -> tuple[set[str], set[str]]:
    """``(modules, candidates)`` imported by ``source``: names inside the ``book`` package.

    ``modules`` are certainly modules (``import book.x``, the ``book.x`` of ``from book.x import y``,
    and their parent packages); ``candidates`` are ``book.x.y`` for ``from book.x import y``, which
    is a module only if such a file exists (otherwise ``y`` is an attribute of ``book.x``).
    ``module`` is the dotted name of the file being parsed (for relative imports).
    Raises SyntaxError if the source does not parse.
    """
    modules: set[str] = set()
    candidates: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _in_package(alias.name):
                    modules.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                if module is None:
                    continue
                base_parts = module.split(".") if is_package else module.split(".")[:-1]
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not _in_package(base):
                continue
            modules.update(_with_parents(base))
            for alias in node.names:
                if alias.name != "*":
                    candidates.add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            # importlib.import_module("book.x") / __import__("book.x") with a literal name
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            name = node.args[0].value
            if func in ("import_module", "__import__") and isinstance(name, str) and _in_package(name):
                modules.update(_with_parents(name))
    return modules, candidates


def _cell_python(source: str) -> str:
    """A code cell as plain Python (IPython magics and shell escapes transformed or dropped)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # no IPython, or a cell it cannot transform
        return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def notebook_imports(path: Path) -> tuple[set[str], set[str]]:
    """``(modules, candidates)`` imported directly by a notebook's code cells (see :func:`imports_in_source`).

    A cell that does not parse makes the notebook depend on the whole package (``{"book.*"}``).
    """
    modules: set[str] = set()
    candidates: set[str] = set()
    nb = read_notebook(path)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            m, c = imports_in_source(_cell_python(cell.source))
        except SyntaxError:
            modules.add(PACKAGE + ".*")
            continue
        modules |= m
        candidates |= c
    return modules, candidates


# --------------------------------------------------------------------------------------------------
# Modules on disk, transitive closure, fingerprint
# --------------------------------------------------------------------------------------------------

class PackageIndex:
    """Finds the files of ``book`` modules on disk (``book.x`` → ``x.py`` or ``x/__init__.py``)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root).resolve() if root else package_dir()
        self._imports: dict[Path, tuple[set[str], set[str]]] = {}

    def imports_of(self, file: Path) -> tuple[set[str], set[str]]:
        """:func:`imports_in_source` of one ``.py`` file of the package (parsed once per index)."""
        if file not in self._imports:
            mod, is_pkg = self.module_name(file)
            try:
                self._imports[file] = imports_in_source(file.read_text(encoding="utf-8"), mod, is_pkg)
            except (SyntaxError, UnicodeDecodeError):  # the notebook importing it fails anyway
                self._imports[file] = (set(), set())
        return self._imports[file]

    def _path(self, name: str) -> Path | None:
        """``.../x.py`` for a module, ``.../x/`` for a package, None if there is no such module."""
        if name == PACKAGE:
            return self.root
        rel = Path(*name.split(".")[1:])
        if (self.root / rel / "__init__.py").is_file():
            return self.root / rel
        if (self.root / rel).with_suffix(".py").is_file():
            return (self.root / rel).with_suffix(".py")
        return None

    def exists(self, name: str) -> bool:
        return name == PACKAGE + ".*" or self._path(name) is not None

    def is_package(self, name: str) -> bool:
        path = self._path(name)
        return path is not None and path.is_dir()

    def files(self, name: str) -> list[Path]:
        """The files a module counts with: its ``.py``; a sub-package's every file; ``book``'s ``__init__.py``.

        ``book.*`` (the whole package, used when a notebook cell does not parse) is every file.
        """
        if name == PACKAGE + ".*":
            return self._tree(self.root)
        path = self._path(name)
        if path is None:
            return []
        if name == PACKAGE:
            return [self.root / "__init__.py"]
        return self._tree(path) if path.is_dir() else [path]

    @staticmethod
    def _tree(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                      and p.suffix not in (".pyc", ".pyo"))

    def module_name(self, file: Path) -> tuple[str, bool]:
        """``(dotted name, is a package __init__)`` of a ``.py`` file inside the package."""
        rel = file.resolve().relative_to(self.root).with_suffix("")
        parts = [PACKAGE, *rel.parts]
        if parts[-1] == "__init__":
            return ".".join(parts[:-1]), True
        return ".".join(parts), False


def module_closure(direct: Iterable[str], candidates: Iterable[str] = (),
                   index: PackageIndex | None = None) -> set[str]:
    """Every ``book`` module run when ``direct`` (and the ``candidates`` that are modules) are imported."""
    index = index or PackageIndex()
    todo = list(direct) + [c for c in candidates if index.exists(c)]
    seen: set[str] = set()
    parsed: set[Path] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for file in index.files(name):
            if file.suffix != ".py" or file in parsed:
                continue
            parsed.add(file)
            m, c = index.imports_of(file)
            todo += [x for x in m if x not in seen]
            todo += [x for x in c if x not in seen and index.exists(x)]
    return seen


def notebook_modules(path: Path, index: PackageIndex | None = None) -> set[str]:
    """The ``book`` modules a notebook executes (directly or transitively)."""
    index = index or PackageIndex()
    direct, candidates = notebook_imports(path)
    return module_closure(direct, candidates, index)


def fingerprint(modules: Iterable[str], index: PackageIndex | None = None) -> str:
    """sha256 over the files of ``modules`` (relative path and bytes) and the names of missing ones."""
    index = index or PackageIndex()
    modules = set(modules)
    files = sorted({f for m in modules for f in index.files(m)})
    h = hashlib.sha256(SCHEME.encode())
    for f in files:
        h.update(b"\0file\0" + f.relative_to(index.root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    for m in sorted(m for m in modules if not index.exists(m)):
        h.update(b"\0missing\0" + m.encode())
    checkout = index.root.parent
    for page in sorted({p for f in files if f.suffix == ".py" for g in pages_read(f) for p in checkout.glob(g)}):
        h.update(b"\0page\0" + page.relative_to(checkout).as_posix().encode() + b"\0")
        h.update(_page_text(page).encode())
    return h.hexdigest()


def pages_read(file: Path) -> tuple[str, ...]:
    """The globs of a module's ``READS_PAGES = (...)`` (module level, string literals), else ()."""
    try:
        tree = ast.parse(file.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return ()
    for node in tree.body:
        if (isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["READS_PAGES"]
                and isinstance(node.value, (ast.Tuple, ast.List))):
            return tuple(e.value for e in node.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return ()


def _page_text(path: Path) -> str:
    """A page's prose: a notebook's Markdown cells (its code is jupyter-cache's business), else the file."""
    if path.suffix == ".ipynb":
        try:
            return "\n\n".join(c.source for c in read_notebook(path).cells if c.cell_type == "markdown")
        except Exception:  # an unreadable notebook: its bytes
            return path.read_bytes().decode("utf-8", "replace")
    return path.read_text(encoding="utf-8", errors="replace")


def notebook_fingerprint(path: Path, index: PackageIndex | None = None) -> str:
    index = index or PackageIndex()
    return fingerprint(notebook_modules(path, index), index)


# --------------------------------------------------------------------------------------------------
# Executed notebooks, stamps, and the jupyter-cache database
# --------------------------------------------------------------------------------------------------

def executed_notebooks(srcdir: Path, exclude_patterns: Iterable[str] = (),
                       execution_excludepatterns: Iterable[str] = ()) -> list[Path]:
    """The ``.ipynb`` files under ``srcdir`` that the build executes (not excluded by the config).

    ``exclude_patterns`` are Sphinx's (relative to ``srcdir``); ``execution_excludepatterns`` are
    myst-nb's (matched from the right of the path, as myst-nb does).
    """
    from sphinx.util.matching import Matcher

    srcdir = Path(srcdir).resolve()
    excluded = Matcher(list(exclude_patterns))
    out = []
    for folder, dirs, files in os.walk(srcdir):
        rel_dir = Path(folder).relative_to(srcdir)
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_build"))
                         and not excluded((rel_dir / d).as_posix()))
        for name in files:
            rel = (rel_dir / name).as_posix()
            if not name.endswith(".ipynb") or excluded(rel):
                continue
            path = srcdir / rel
            if not any(PurePosixPath(path.as_posix()).match(p) for p in execution_excludepatterns):
                out.append(path)
    return sorted(out)


def current_stamps(notebooks: Iterable[Path], srcdir: Path, index: PackageIndex | None = None) -> dict[str, str]:
    """{notebook path relative to ``srcdir``: fingerprint of the book code it executes}."""
    index = index or PackageIndex()
    srcdir = Path(srcdir).resolve()
    return {Path(nb).resolve().relative_to(srcdir).as_posix(): notebook_fingerprint(nb, index) for nb in notebooks}


def read_stamps(stamp_file: Path) -> dict[str, str]:
    try:
        data = json.loads(Path(stamp_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _has_db(cache_path: Path) -> bool:
    from jupyter_cache.cache.db import DB_NAME

    return (Path(cache_path) / DB_NAME).is_file()


def remove_cached_executions(cache_path: Path, notebooks: Iterable[Path]) -> dict[Path, int]:
    """Remove every jupyter-cache record of these notebooks; return {notebook: records removed}.

    A record belongs to a notebook if its ``uri`` is the notebook's path (myst-nb stores the
    absolute path), or if it is the record myst-nb would match to the notebook's current code cells.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.cache.db import NbCacheRecord

    notebooks = [Path(nb).resolve() for nb in notebooks]
    if not notebooks or not _has_db(cache_path):
        return {nb: 0 for nb in notebooks}
    cache = get_cache(str(cache_path))
    records = cache.list_cache_records()
    removed: dict[Path, int] = {}
    for nb in notebooks:
        pks = {r.pk for r in records if r.uri and Path(r.uri).resolve() == nb}
        try:
            pks.add(cache.match_cache_notebook(read_notebook(nb)).pk)
        except (KeyError, OSError, ValueError):
            pass
        for pk in sorted(pks):
            try:
                cache.remove_cache(pk)
            except KeyError:  # record without its notebook file: drop the record itself
                NbCacheRecord.remove_records([pk], cache.db)
        removed[nb] = len(pks)
    return removed


def invalidate(srcdir: Path, cache_path: Path, stamp_file: Path, notebooks: Iterable[Path],
               index: PackageIndex | None = None) -> list[str]:
    """Drop the cached executions of notebooks whose book code changed; update the stamps.

    Returns the notebooks (relative to ``srcdir``) whose fingerprint changed or was unknown.
    The stamps are written after the records are removed, so an interrupted build errs on the
    side of re-executing.
    """
    srcdir = Path(srcdir).resolve()
    current = current_stamps(notebooks, srcdir, index)
    old = read_stamps(stamp_file)
    changed = sorted(nb for nb, h in current.items() if old.get(nb) != h)
    remove_cached_executions(cache_path, [srcdir / nb for nb in changed])
    stamp_file = Path(stamp_file)
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(stamp_file)
    return changed


def uncached_notebooks(cache_path: Path, notebooks: Iterable[Path]) -> list[Path]:
    """The notebooks for which myst-nb's ``cache`` mode finds no cached execution (they will run)."""
    notebooks = list(notebooks)
    if not _has_db(cache_path):
        return notebooks
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    out = []
    for nb in notebooks:
        try:
            cache.match_cache_notebook(read_notebook(nb))
        except KeyError:
            out.append(nb)
        except (OSError, ValueError):
            continue  # unreadable: Sphinx reports it when it reads the page
    return out
