"""book.artifacts.cached: a trained model is built once, then loaded; config or code changes rebuild."""
import dataclasses
import importlib
import random
import sys

import pytest
import torch

from book import artifacts
from book.artifacts import cached

from conftest import ROOT


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    d_in: int = 3
    d_out: int = 2
    lr: float = 0.1


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _builder(config, calls):
    def build():
        calls.append(config)
        model = torch.nn.Linear(config.d_in, config.d_out)
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight) * config.lr)  # "training"
        return model
    return build


def _entries(cache):
    return sorted(p.name for p in cache.glob("*.pt"))


def test_second_call_loads_instead_of_building(cache):
    calls = []
    first = cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), code=(artifacts,))
    second = cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), code=(artifacts,))
    assert len(calls) == 1
    assert isinstance(second, torch.nn.Linear) and second is not first
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert len(_entries(cache)) == 1 and _entries(cache)[0].startswith("tiny-")
    assert (cache / _entries(cache)[0]).with_suffix(".json").is_file()


def test_config_change_makes_a_new_entry(cache):
    calls = []
    cached("tiny", TinyConfig(), _builder(TinyConfig(), calls))
    cached("tiny", TinyConfig(lr=0.2), _builder(TinyConfig(lr=0.2), calls))
    cached("tiny", {"d_in": 3, "d_out": 2}, _builder(TinyConfig(), calls))  # a plain dict config works too
    cached("tiny", {"d_out": 2, "d_in": 3}, _builder(TinyConfig(), calls))  # ... key order does not matter
    assert len(calls) == 3 and len(_entries(cache)) == 3


def test_name_change_makes_a_new_entry(cache):
    calls = []
    cached("tiny", TinyConfig(), _builder(TinyConfig(), calls))
    cached("other", TinyConfig(), _builder(TinyConfig(), calls))
    assert len(calls) == 2 and len(_entries(cache)) == 2


def test_code_change_makes_a_new_entry(cache, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tinymodel.py").write_text("SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module("tinymodel")
    try:
        calls = []
        cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), code=(module,))
        cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), code=("tinymodel",))  # by name: same entry
        assert len(calls) == 1
        (src / "tinymodel.py").write_text("SCALE = 2.0  # the model code changed\n")
        cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), code=(module,))
        assert len(calls) == 2 and len(_entries(cache)) == 2
    finally:
        sys.modules.pop("tinymodel", None)


def test_a_package_counts_with_all_its_files(cache, tmp_path, monkeypatch):
    pkg = tmp_path / "src" / "tinypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "layers.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(pkg.parent))
    try:
        key = artifacts.cache_key("tiny", TinyConfig(), code=("tinypkg",))
        (pkg / "layers.py").write_text("X = 2\n")
        assert artifacts.cache_key("tiny", TinyConfig(), code=("tinypkg",)) != key
    finally:
        sys.modules.pop("tinypkg", None)


def test_dict_of_tensors_and_bad_results(cache):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(4.0), "b": torch.zeros(2)}

    a = cached("weights", {"n": 4}, build)
    b = cached("weights", {"n": 4}, build)
    assert len(calls) == 1 and torch.equal(a["w"], b["w"]) and set(b) == {"w", "b"}
    with pytest.raises(TypeError, match="nn.Module or a dict of tensors"):
        cached("bad", {}, lambda: [1, 2, 3])
    assert not list(cache.glob("bad-*"))


def test_the_callers_random_numbers_do_not_depend_on_a_cache_hit(cache):
    calls = []
    results = []
    for _ in range(2):  # first: built (draws random numbers), second: loaded (draws none)
        torch.manual_seed(123)
        random.seed(123)
        model = cached("tiny", TinyConfig(), _builder(TinyConfig(), calls))
        results.append((torch.rand(3), random.random(), model.weight.clone()))
    assert len(calls) == 1
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert torch.equal(results[0][2], results[1][2])


def test_training_is_seeded_so_a_rebuild_gives_the_same_model(cache, tmp_path, monkeypatch):
    calls = []
    torch.manual_seed(1)
    first = cached("tiny", TinyConfig(), _builder(TinyConfig(), calls))
    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path / "elsewhere"))
    torch.manual_seed(2)  # a different state before the call does not matter
    again = cached("tiny", TinyConfig(), _builder(TinyConfig(), calls))
    assert len(calls) == 2 and torch.equal(first.weight, again.weight)


def test_a_corrupt_entry_is_rebuilt(cache):
    calls = []
    cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), verbose=False)
    path = artifacts.cache_path("tiny", TinyConfig())
    path.write_bytes(b"not a checkpoint")
    model = cached("tiny", TinyConfig(), _builder(TinyConfig(), calls), verbose=False)
    assert len(calls) == 2 and isinstance(model, torch.nn.Linear)
    assert isinstance(torch.load(path, weights_only=False), torch.nn.Linear)


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv("BOOK_CACHE_DIR", raising=False)
    assert artifacts.cache_dir() == ROOT / "_build" / ".book_cache"  # inside the repository
    monkeypatch.setattr(artifacts, "_REPO", ROOT / "no-such-checkout")
    assert artifacts.cache_dir() == artifacts.Path.home() / ".cache" / "transformer-book"
    monkeypatch.setenv("BOOK_CACHE_DIR", "/tmp/some-cache")
    assert str(artifacts.cache_dir()) == "/tmp/some-cache"


def test_the_cache_is_never_committed():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "_build/" in ignored
