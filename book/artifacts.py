"""Trained models shared between chapters, cached by the code and config that produced them.

A later chapter that needs a model an earlier chapter trained does not load a committed
checkpoint; it asks for the model by name, config and code::

    from book import transformer, training
    from book.artifacts import cached

    model = cached("date-translator", config, lambda: train_translator(config),
                   code=(transformer, training))

The first call runs ``build_fn()`` (it trains, and returns an ``nn.Module`` or a dict of tensors),
saves the result with ``torch.save`` and returns it; every later call — in the same build, in a
later chapter, or in a reader's kernel — loads the saved file instead. The file name holds
sha256(name, config, source of the ``code`` modules), so changing the config or the code trains
again; old entries are simply never read (delete the folder to reclaim the space).

``build_fn`` runs after ``book.seed_everything(seed)``, and the caller's random generators
(Python, NumPy, PyTorch) are restored afterwards, so what a notebook computes next is the same
whether the model was trained or loaded.

The cache lives in ``$BOOK_CACHE_DIR`` if set (the site build sets ``_build/.book_cache``), else in
``_build/.book_cache`` of the repository when the ``book`` package is used from a checkout, else
in ``~/.cache/transformer-book``. It is never committed (``_build/`` is git-ignored).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

CACHE_ENV = "BOOK_CACHE_DIR"
_REPO = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where trained models are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if (_REPO / "_toc.yml").is_file() and (_REPO / "_config.yml").is_file():
        return _REPO / "_build" / ".book_cache"
    return Path.home() / ".cache" / "transformer-book"


def _canonical(obj) -> str:
    """A stable text form of a config: dataclasses and mappings by sorted field, floats by repr."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return f"{type(obj).__qualname__}({_canonical(fields)})"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{_canonical(k)}: {_canonical(v)}" for k, v in
                               sorted(obj.items(), key=lambda kv: repr(kv[0]))) + "}"
    if isinstance(obj, (list, tuple)):
        inner = ", ".join(_canonical(v) for v in obj)
        return f"[{inner}]" if isinstance(obj, list) else f"({inner},)"
    if isinstance(obj, (set, frozenset)):
        return "{" + ", ".join(sorted(_canonical(v) for v in obj)) + "}"
    return repr(obj)


def _code_files(code: Iterable[ModuleType | str | Path]) -> list[Path]:
    """The source files of modules (a package: every ``.py`` under it); names are imported."""
    import importlib

    files: list[Path] = []
    for item in code:
        if isinstance(item, str):
            item = importlib.import_module(item)
        if isinstance(item, ModuleType):
            if getattr(item, "__file__", None) is None:
                raise ValueError(f"module {item.__name__} has no source file to fingerprint")
            path = Path(item.__file__).resolve()
            if hasattr(item, "__path__"):  # a package: all of it
                files += sorted(p for p in path.parent.rglob("*.py") if "__pycache__" not in p.parts)
                continue
            files.append(path)
        else:
            path = Path(item).resolve()
            files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return sorted(set(files))


def cache_key(name: str, config, code: Iterable[ModuleType | str | Path] = ()) -> str:
    """sha256 of the name, the config and the current source of the ``code`` modules."""
    h = hashlib.sha256(b"book-artifact/1\0" + name.encode() + b"\0" + _canonical(config).encode())
    for path in _code_files(code):
        h.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cache_path(name: str, config, code: Iterable[ModuleType | str | Path] = ()) -> Path:
    """The file ``cached`` reads or writes for this name, config and code."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"
    return cache_dir() / f"{slug}-{cache_key(name, config, code)[:20]}.pt"


@contextmanager
def _preserved_rng():
    """Run a block without disturbing the caller's Python, NumPy and PyTorch random generators."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _check(obj, name: str):
    import torch

    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise TypeError(f"cached({name!r}): build_fn must return an nn.Module or a dict of tensors, "
                    f"not {type(obj).__name__}")


def cached(name: str, config, build_fn: Callable[[], object], *,
           code: Iterable[ModuleType | str | Path] = (), seed: int | None = 0,
           map_location=None, verbose: bool = True):
    """Load the model called ``name`` built with ``config`` by ``code``, or build, save and return it.

    ``build_fn()`` trains and returns an ``nn.Module`` (saved whole: its class must be importable,
    i.e. defined in a module, not in a notebook cell) or a dict of tensors. ``code`` lists the
    modules (objects, dotted names or paths) whose source the result depends on; a change to any
    of them, to ``name`` or to ``config`` gives a new cache entry. ``seed`` seeds the generators
    before ``build_fn`` (``None``: leave them); the caller's generators are restored either way.
    ``map_location`` is passed to ``torch.load``.
    """
    import torch

    code = list(code)
    path = cache_path(name, config, code)
    if path.is_file():
        try:
            obj = _check(torch.load(path, map_location=map_location, weights_only=False), name)
        except Exception as err:  # unreadable or from an incompatible version: build it again
            if verbose:
                print(f"cached({name!r}): could not load {path.name} ({type(err).__name__}: {err}); rebuilding")
        else:
            if verbose:
                print(f"{name}: loaded from the cache ({path.name})")
            return obj

    t0 = time.perf_counter()
    with _preserved_rng():
        if seed is not None:
            from book.runtime import seed_everything

            seed_everything(seed)
        obj = _check(build_fn(), name)
    seconds = time.perf_counter() - t0

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    meta = {"name": name, "config": _canonical(config), "code": [str(p) for p in _code_files(code)],
            "seed": seed, "build_seconds": round(seconds, 2), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    if verbose:
        print(f"{name}: built in {seconds:.1f} s and cached ({path.name})")
    return obj
