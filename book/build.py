"""Build the website: ``python -m book.build`` (the README's command).

Runs jupyter-book 1 on the repository with warnings as errors (``-W -n --keep-going``); every
chapter and solution notebook is executed (``_config.yml``: any cell error fails the build).
Executed notebooks are cached in ``_build/.jupyter_cache``; the cache is dropped whenever the
``book`` package changes (see ``book.sphinx_ext``), so figures never come from stale code.

    python -m book.build            # build (re-using cached executions)
    python -m book.build --clean    # drop the cache and build from scratch
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(clean: bool = False, output: Path | None = None) -> int:
    out = output or ROOT
    if clean:
        shutil.rmtree(out / "_build", ignore_errors=True)
    shutil.rmtree(out / "_build" / "html", ignore_errors=True)  # no stale pages; executions stay cached
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(ROOT),
           "--all", "-W", "-n", "--keep-going"]
    if output:
        cmd += ["--path-output", str(output)]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    took = time.perf_counter() - t0
    index = out / "_build" / "html" / "index.html"
    if rc == 0:
        print(f"\nBuilt in {took:.0f} s. Open {index} in a browser, or serve it:\n"
              f"    python -m http.server -d {index.parent} 8000   # then visit http://localhost:8000")
    else:
        print(f"\nThe build FAILED after {took:.0f} s (exit {rc}); the errors are listed above.")
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m book.build", description="Build the course website.")
    p.add_argument("--clean", action="store_true", help="remove _build (and its execution cache) first")
    args = p.parse_args(argv)
    return build(clean=args.clean)


if __name__ == "__main__":
    sys.exit(main())
