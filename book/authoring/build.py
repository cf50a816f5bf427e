"""Build the website: ``python -m book.authoring.build`` (the README's command).

Runs jupyter-book 1 on the repository with warnings as errors (``-W -n --keep-going``); every
chapter and solution notebook is executed (``_config.yml``: any cell error fails the build).
Executed notebooks are cached in ``_build/.jupyter_cache``; a notebook is executed again only when
its code cells or the ``book`` modules it imports change (see ``book.authoring.exec_cache``), so
figures never come from stale code and an edit re-runs only the chapters it affects.

Rebuilds are incremental: Sphinx re-reads only the pages whose source changed (or whose cached
execution was dropped) and writes every page from its stored doctree. After a failed build the
Sphinx environment is removed, so the next build reads every page again and reports every warning
(executions stay cached).

    python -m book.authoring.build            # build (re-using cached executions)
    python -m book.authoring.build --clean    # drop _build (all caches) and build from scratch
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (book/authoring/ -> ../..)


def build(clean: bool = False, output: Path | None = None) -> int:
    out = output or ROOT
    build_dir = out / "_build"
    if clean:
        shutil.rmtree(build_dir, ignore_errors=True)
    # Every page is written afresh (no stale page, every sidebar lists the current toc); pages
    # are only *read* again when their source or their cached execution changed.
    shutil.rmtree(build_dir / "html", ignore_errors=True)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(ROOT),
           "-W", "-n", "--keep-going"]
    if output:
        cmd += ["--path-output", str(output)]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    took = time.perf_counter() - t0
    index = build_dir / "html" / "index.html"
    if rc == 0:
        print(f"\nBuilt in {took:.0f} s. Open {index} in a browser, or serve it:\n"
              f"    python -m http.server -d {index.parent} 8000   # then visit http://localhost:8000")
    else:
        # Sphinx keeps the pages it read even when they warned; forget them so that the next
        # build reads (and checks) every page again. Executions stay in _build/.jupyter_cache.
        shutil.rmtree(build_dir / ".doctrees", ignore_errors=True)
        print(f"\nThe build FAILED after {took:.0f} s (exit {rc}); the errors are listed above.")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m book.authoring.build", description="Build the course website.")
    p.add_argument("--clean", action="store_true", help="remove _build (and its execution cache) first")
    args = p.parse_args(argv)
    return build(clean=args.clean)


if __name__ == "__main__":
    sys.exit(main())
