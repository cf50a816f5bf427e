"""The course book's shared code.

Every notebook starts with ``import book; book.setup()``. Nothing happens at import time:
``setup()`` is the one place that seeds random generators, picks the device and (only while the
website is being built) switches plotly to the site renderer.
"""
from book.runtime import device, is_site_build, seed_everything, setup

__all__ = ["device", "is_site_build", "seed_everything", "setup"]
__version__ = "0.1.0"
