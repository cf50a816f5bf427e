"""Authoring and build tools for the book's maintainers — never imported by a notebook.

* ``python -m book.authoring.build`` builds the website (jupyter-book 1, see ``build.py``);
* ``book.authoring.sphinx_ext`` is the Sphinx extension listed in ``_config.yml`` (offline
  plotly.js and MathJax, ``BOOK_SITE_BUILD=1``, per-notebook execution-cache invalidation);
* ``book.authoring.exec_cache`` computes which ``book`` modules each notebook executes and drops
  only the cached executions whose code changed;
* ``python -m book.authoring.notebooks generate|check|strip`` writes ``exercises/`` from
  ``solutions/`` and keeps notebooks free of outputs.

These modules live apart from the model code so that editing them never invalidates an executed
chapter: no notebook imports ``book.authoring``, so it is in no notebook's code fingerprint.
"""
