"""Sphinx extension for the website build (listed in _config.yml): an offline site.

* Marks the build (``BOOK_SITE_BUILD=1``) so notebooks executed by jupyter-book render plotly
  figures for the site and ``show_attention`` returns static figures (see ``book.widgets``).
* Copies plotly.js (from the installed plotly wheel) and MathJax 3 (from the installed
  ``django-static-mathjax`` package) into ``_static/vendor/`` and points the pages at them,
  so the built HTML loads nothing from a CDN. No third-party JavaScript is committed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from book.runtime import SITE_BUILD_ENV

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


def copy_vendor(static_dir: Path) -> None:
    """Put plotly.min.js and the parts of MathJax the pages use under ``static_dir/vendor``."""
    vendor = static_dir / "vendor"
    vendor.mkdir(parents=True, exist_ok=True)
    shutil.copy2(plotly_js_source(), vendor / "plotly.min.js")
    src = mathjax_source()
    for part in _MATHJAX_PARTS:
        s, d = src / part, vendor / "mathjax" / part
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True)
        else:
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


STATIC_DIR = Path(__file__).parent / "static"  # the book's own CSS and favicon


def book_code_hash() -> str:
    """A fingerprint of the book package: cached notebook executions are only valid for one version."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def drop_stale_cache(outdir: Path) -> None:
    """Remove jupyter-book's execution cache when the book package changed since it was filled."""
    build_dir = outdir.parent  # .../_build (outdir is .../_build/html)
    stamp, cache = build_dir / ".book_code_hash", build_dir / ".jupyter_cache"
    current = book_code_hash()
    if cache.exists() and (not stamp.exists() or stamp.read_text() != current):
        shutil.rmtree(cache)
    build_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current)


def _config_inited(app, config):
    drop_stale_cache(Path(app.outdir))
    config.html_static_path = [*config.html_static_path, str(STATIC_DIR)]
    config.html_favicon = str(STATIC_DIR / "favicon.svg")
    config.mathjax_path = MATHJAX_JS  # relative paths are resolved inside _static
    config.nb_ipywidgets_js = {}  # the site embeds no widgets, so no widget manager from a CDN


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
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _page_context)
    app.connect("build-finished", _build_finished, priority=900)  # after sphinx-external-toc's redirect
    return {"parallel_read_safe": True, "parallel_write_safe": True}
