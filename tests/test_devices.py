"""Every tensor is made on its input's device: the book's reference functions and every solution
run on PyTorch's `meta` device (shapes only, no data), where a stray CPU tensor — `torch.eye(n)`
or `torch.full(...)` without `device=`, `torch.tensor(-inf)` in `torch.where` — raises a device
error, as it would on CUDA. Operations that need real numbers (`.item()`, data-dependent
branches) cannot run on `meta`; those cases are skipped, device errors never are."""
import copy
import re

import nbformat
import pytest
import torch

from book.grader import exercises, get_exercise
from book.grader.core import clone

from conftest import ROOT

DEVICE_ERROR = re.compile(r"(expected (all tensors to be on the same device|device)|device type|"
                          r"on device cpu|cpu.* meta|meta.* cpu)", re.I)


def _to_meta(obj):
    if isinstance(obj, torch.Tensor):
        return obj.to("meta")
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).to("meta")
    if hasattr(obj, "tables") and isinstance(obj.tables, torch.Tensor):  # chapter 08's stand-in model
        return type(obj)(obj.tables.to("meta"))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_meta(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_meta(v) for k, v in obj.items()}
    return obj


def _run_on_meta(fn, args, label=""):
    """'ok', 'skip: ...' (needs real data), or raise AssertionError on a device error."""
    try:
        fn(*_to_meta(clone(args)))
    except Exception as e:  # noqa: BLE001 — classify every failure
        msg = f"{type(e).__name__}: {e}"
        if DEVICE_ERROR.search(msg):
            raise AssertionError(f"{label}: a tensor was made on the wrong device: {msg.splitlines()[0]}") from None
        return "skip: " + msg.splitlines()[0][:120]
    return "ok"


def _function_exercises():
    out = []
    for ex_id in exercises():
        ex = get_exercise(ex_id)
        if ex.kind == "function" and ex.reference is not None:
            out.append(ex_id)
    return out


@pytest.mark.parametrize("ex_id", _function_exercises())
def test_references_make_tensors_on_the_inputs_device(ex_id):
    ex = get_exercise(ex_id)
    results = [_run_on_meta(ex.reference, case.args, f"{ex_id} on {case.name}") for case in ex.cases(torch.Generator().manual_seed(0))]
    print(ex_id, results)


def _solution_functions(path):
    """Run a solution notebook's code cells (check() replaced by a no-op) and return its namespace."""
    nb = nbformat.read(path, as_version=4)
    namespace = {}
    import book.grader as grader

    real_check = grader.check
    grader.check = lambda *a, **k: None
    try:
        for cell in nb.cells:
            if cell.cell_type == "code":
                exec(compile(cell.source, str(path), "exec"), namespace)  # noqa: S102
    finally:
        grader.check = real_check
    namespace.pop("check", None)
    return namespace


SOLUTIONS = sorted([*(ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"), *(ROOT / "solutions").glob("a[0-9]_*.ipynb")])  # chapters, appendices


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solutions_make_tensors_on_the_inputs_device(path):
    namespace = _solution_functions(path)
    ran = 0
    for ex_id in exercises(path.stem):
        ex = get_exercise(ex_id)
        fn = namespace.get(ex.name)
        if ex.kind != "function" or not callable(fn):
            continue
        for case in ex.cases(torch.Generator().manual_seed(0)):
            ran += _run_on_meta(fn, case.args, f"{ex_id} on {case.name}") == "ok"
    print(path.stem, "cases run on meta:", ran)


def test_bert_encoder_and_mean_pool_run_on_the_inputs_device():
    """Chapter 09's encoder makes its position ids and default token types on the input's device."""
    from book import pretrained

    cfg = pretrained.BertConfig(vocab_size=50, max_len=16, d_model=24, num_heads=4, d_ff=48, num_layers=2)
    model = pretrained.BertEncoder(cfg).to("meta")
    ids = torch.zeros(2, 7, dtype=torch.long, device="meta")
    mask = torch.ones(2, 7, dtype=torch.long, device="meta")
    out = model(ids, mask)
    assert out.device.type == "meta" and out.shape == (2, 7, 24)
    assert pretrained.mean_pool(out, mask).shape == (2, 24)


def test_gpt_and_greedy_generation_run_on_the_inputs_device():
    """Chapter 10's GPT builds its positions and causal masks on the input's device, cache or not."""
    from book.decoding import generate
    from book.gpt import GPT, GPTConfig

    for positions in ("learned", "rope"):
        model = GPT(GPTConfig(vocab_size=20, max_len=16, d_model=16, num_heads=2, d_ff=32,
                              positions=positions)).to("meta")
        out = generate(model, torch.zeros(2, 3, dtype=torch.long, device="meta"), 4, temperature=0)
        assert out.device.type == "meta" and out.shape == (2, 7)
