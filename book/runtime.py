"""Run-time switches shared by every notebook: seeding, device choice, site-build detection."""
from __future__ import annotations

import os
import random

SITE_BUILD_ENV = "BOOK_SITE_BUILD"  # set to "1" by book.authoring.sphinx_ext while the website builds


def is_site_build() -> bool:
    """True while jupyter-book executes the notebook to make the static website."""
    return os.environ.get(SITE_BUILD_ENV) == "1"


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch so every number in the book is reproducible."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device():
    """The device the book's code runs on: CUDA when present, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int = 0, *, verbose: bool = True):
    """Prepare a notebook: seed everything, configure plotly, return the device.

    On the website build, plotly figures are rendered as HTML that uses the site's one shared
    copy of plotly.js; in a live kernel plotly's default renderer is left alone.
    """
    seed_everything(seed)
    if is_site_build():
        from book import viz

        viz.use_site_renderer()
    dev = device()
    if verbose:
        import torch

        print(f"torch {torch.__version__} · device: {dev} · seed: {seed}")
    return dev
