"""Sphinx extension for the website build (listed in _config.yml): an offline site.

* Marks the build (``BOOK_SITE_BUILD=1``) so notebooks executed by jupyter-book render plotly
  figures for the site and ``show_attention`` returns static figures (see ``book.widgets``).
* Points the trained-model cache (``book.artifacts``) at ``_build/.book_cache`` (``BOOK_CACHE_DIR``)
  unless it is set already.
* Invalidates the execution cache (``_build/.jupyter_cache``) per notebook: only the notebooks
  whose ``book`` code changed lose their cached execution, and only they are re-read and
  re-executed (see ``book.authoring.exec_cache``).
* Copies plotly.js (from the installed plotly wheel) and MathJax 3 (from the installed
  ``django-static-mathjax`` package) into ``_static/vendor/`` and points the pages at them,
  so the built HTML loads nothing from a CDN. No third-party JavaScript is committed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.util import logging

from book.authoring import exec_cache
from book.runtime import SITE_BUILD_ENV

logger = logging.getLogger(__name__)
CACHE_DIR_ENV = "BOOK_CACHE_DIR"  # where book.artifacts keeps trained models

PLOTLY_JS = "vendor/plotly.min.js"
MATHJAX_JS = "vendor/mathjax/tex-chtml.js"
_MATHJAX_PARTS = ("tex-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2", "ui", "a11y", "adaptors")


def plotly_js_source() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package ({path})")
    return path


def mathjax_source() -> Path:
    import mathjax  # the module of the django-static-mathjax package

    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (path / "tex-chtml.js").exists():
        raise FileNotFoundError(f"MathJax 3 es5 build not found in {path}; pip install django-static-mathjax")
    return path


def _copy_if_changed(src: Path, dst: Path) -> None:
    """Copy a file unless ``dst`` already has its size and modification time (rebuilds stay fast)."""
    try:
        a, b = src.stat(), dst.stat()
        if a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime):
            return
    except FileNotFoundError:
        pass
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def copy_vendor(static_dir: Path) -> None:
    """Put plotly.min.js and the parts of MathJax the pages use under ``static_dir/vendor``."""
    vendor = static_dir / "vendor"
    _copy_if_changed(plotly_js_source(), vendor / "plotly.min.js")
    src = mathjax_source()
    for part in _MATHJAX_PARTS:
        s = src / part
        for f in sorted(s.rglob("*")) if s.is_dir() else [s]:
            if f.is_file():
                _copy_if_changed(f, vendor / "mathjax" / f.relative_to(src))


STATIC_DIR = Path(__file__).resolve().parent.parent / "static"  # the book's own CSS and favicon (book/static)


def _executed_notebooks(app, config) -> list[Path]:
    if config.nb_execution_mode != "cache":
        return []
    return exec_cache.executed_notebooks(Path(app.srcdir), config.exclude_patterns,
                                         config.nb_execution_excludepatterns)


def _cache_path(app, config) -> Path:
    """Where myst-nb keeps executions (its default, as in ``myst_nb.sphinx_ext``: next to the outdir)."""
    return Path(config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache").resolve()


def drop_stale_executions(app, config) -> list[str]:
    """Remove the cached executions of the notebooks whose ``book`` code changed since they ran."""
    build_dir = Path(app.outdir).parent  # .../_build (outdir is .../_build/html)
    (build_dir / ".book_code_hash").unlink(missing_ok=True)  # the old whole-cache stamp
    changed = exec_cache.invalidate(Path(app.srcdir), _cache_path(app, config),
                                    build_dir / exec_cache.STAMP_FILE, _executed_notebooks(app, config))
    if changed:
        logger.info(f"book: the code of {len(changed)} notebook(s) changed, their cached executions "
                    f"are dropped: {', '.join(changed)}")
    return changed


def _config_inited(app, config):
    os.environ.setdefault(CACHE_DIR_ENV, str(Path(app.outdir).parent.resolve() / ".book_cache"))
    drop_stale_executions(app, config)
    config.html_static_path = [*config.html_static_path, str(STATIC_DIR)]
    config.html_favicon = str(STATIC_DIR / "favicon.svg")
    config.mathjax_path = MATHJAX_JS  # relative paths are resolved inside _static
    config.nb_ipywidgets_js = {}  # the site embeds no widgets, so no widget manager from a CDN


def _env_get_outdated(app, env, added, changed, removed):
    """Re-read the executed notebooks that have no cached execution (Sphinx skips unchanged files)."""
    missing = exec_cache.uncached_notebooks(_cache_path(app, app.config), _executed_notebooks(app, app.config))
    docs = [d for d in (env.path2doc(str(nb)) for nb in missing) if d and d not in added | changed]
    if docs:
        logger.info(f"book: {len(docs)} unchanged notebook(s) to execute again: {', '.join(sorted(docs))}")
    return docs


def _builder_inited(app):
    if app.builder.format == "html":
        app.add_css_file("book.css")


def _page_context(app, pagename, templatename, context, doctree):
    """Load the shared plotly.js only on pages that draw figures, before their inline scripts."""
    if "Plotly.newPlot" in context.get("body", ""):
        app.add_js_file(PLOTLY_JS, priority=200)


REDIRECT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="_static/favicon.svg" type="image/svg+xml">
<meta http-equiv="Refresh" content="0; url={target}"></head>
<body><p><a href="{target}">{title} — start reading</a></p></body></html>
"""


def _build_finished(app, exception):
    if exception is None and app.builder.format == "html":
        outdir = Path(app.outdir)
        copy_vendor(outdir / "_static")
        if app.config.root_doc != "index":  # a redirect page with a favicon (no 404 for /favicon.ico)
            (outdir / "index.html").write_text(
                REDIRECT.format(title=app.config.html_title or app.config.project,
                                target=f"{app.config.root_doc}.html"), encoding="utf-8")


def _drop_thebe(app) -> None:
    """jupyter-book always loads sphinx-thebe, which writes a CDN URL into every page; the site has
    no live-kernel button (the launch buttons are off), so its page hooks are disconnected."""
    for listeners in app.events.listeners.values():
        for listener in list(listeners):
            handler = listener.handler
            if handler.__module__.startswith("sphinx_thebe") and handler.__name__ != "st_static_path":
                app.disconnect(listener.id)


def setup(app):
    os.environ[SITE_BUILD_ENV] = "1"  # inherited by the kernels that execute the notebooks
    _drop_thebe(app)
    app.connect("config-inited", _config_inited, priority=900)
    app.connect("env-get-outdated", _env_get_outdated)
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _build_finished, priority=900)  # after sphinx-external-toc's redirect
    return {"parallel_read_safe": True, "parallel_write_safe": True}
