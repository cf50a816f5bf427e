import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_progress(tmp_path, monkeypatch):
    """Tests never touch the learner's real progress file, and never look like a site build."""
    monkeypatch.setenv("BOOK_PROGRESS_FILE", str(tmp_path / "progress.json"))
    monkeypatch.delenv("BOOK_SITE_BUILD", raising=False)
    monkeypatch.delenv("BOOK_GRADER_REPORT", raising=False)
    yield


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(scope="session")
def site():
    """Build the website once per test session with the README's command; return its facts."""
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("BOOK_SITE_BUILD", "BOOK_GRADER_REPORT")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "book.authoring.build"], cwd=ROOT, capture_output=True,
                          text=True, env=env, timeout=1800)
    return {"returncode": proc.returncode, "log": proc.stdout + proc.stderr,
            "html": ROOT / "_build" / "html", "seconds": time.perf_counter() - t0}
