"""The grader's own tests: references pass, catalogued mistakes are named, alternatives pass,
and every kind of broken submission becomes feedback instead of an exception or a hang."""
import math
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from book import attention as A
from book.grader import check, ch04, exercises, get_exercise, progress

ALL = ch04.EXERCISES
REFERENCES = {
    "softmax": A.softmax, "scaled_dot_product_attention": A.scaled_dot_product_attention,
    "causal_mask": A.causal_mask, "padding_mask": A.padding_mask, "self_attention": A.self_attention,
    "predict_weight": ch04.predict_weight, "predict_shapes": ch04.predict_shapes,
}


def test_every_exercise_has_a_reference_here_and_a_catalogue():
    assert sorted(REFERENCES) == sorted(e.name for e in ALL)
    for ex in ALL:
        assert len(ex.mistakes) >= 2, ex.id


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.name)
def test_reference_passes(ex):
    r = check(ex.id, REFERENCES[ex.name])
    assert r.passed, r.feedback
    assert "all public checks passed" in r.feedback


@pytest.mark.parametrize("ex,mistake", [(e, m) for e in ALL for m in e.mistakes],
                         ids=lambda x: getattr(x, "name", None))
def test_catalogued_mistake_is_rejected_and_named(ex, mistake):
    r = check(ex.id, mistake.fn)
    assert not r.passed
    assert r.mistake == mistake.name, r.feedback
    assert mistake.name in r.feedback and "Hint:" in r.feedback


# ----------------------------------------------------------------------------- alternatives that must pass
def sm_torch(x, dim=-1):
    return torch.softmax(x, dim=dim)


def sm_logsumexp(x, dim=-1):
    return torch.exp(x - torch.logsumexp(x, dim=dim, keepdim=True))


def sdpa_einsum_big_negative(q, k, v, mask=None):
    s = torch.einsum("...id,...jd->...ij", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s.masked_fill(mask.logical_not(), -1e9)
    w = s.softmax(-1)
    return torch.einsum("...ij,...jd->...id", w, v), w


def sdpa_torch_kernel(q, k, v, mask=None):
    s = (q @ k.mT) * (1.0 / math.sqrt(k.size(-1)))
    if mask is not None:
        s = torch.where(mask, s, torch.finfo(s.dtype).min)
    w = F.softmax(s, dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), w


ALTERNATIVES = [
    ("softmax", sm_torch), ("softmax", sm_logsumexp),
    ("scaled_dot_product_attention", sdpa_einsum_big_negative),
    ("scaled_dot_product_attention", sdpa_torch_kernel),
    ("causal_mask", lambda n: torch.tril(torch.ones(n, n)).bool()),
    ("causal_mask", lambda n: torch.arange(n)[:, None] >= torch.arange(n)[None, :]),
    ("padding_mask", lambda lengths, max_len: torch.arange(max_len).expand(len(lengths), max_len) < lengths.unsqueeze(1)),
    ("padding_mask", lambda lengths, max_len: torch.stack([torch.arange(max_len) < int(n) for n in lengths])),
    ("self_attention", lambda x, wq, wk, wv, mask=None: sdpa_einsum_big_negative(
        F.linear(x, wq.T), F.linear(x, wk.T), F.linear(x, wv.T), mask)),
    ("predict_weight", lambda: 0.88),
    ("predict_weight", lambda: torch.tensor(0.8808)),
    ("predict_shapes", lambda: (torch.Size([2, 3, 5, 32]), [2, 3, 5, 7])),
]


@pytest.mark.parametrize("name,fn", ALTERNATIVES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALTERNATIVES)])
def test_valid_alternatives_pass(name, fn):
    r = check(name, fn)
    assert r.passed, r.feedback


# ----------------------------------------------------------------------------- broken submissions become feedback
def test_stub_fails_with_not_implemented_message():
    def softmax(x, dim=-1):
        raise NotImplementedError("your code here")

    r = check(softmax)
    assert not r.passed and "not implemented yet" in r.feedback


def test_exception_is_reported_with_type_and_line_not_a_traceback():
    def scaled_dot_product_attention(q, k, v, mask=None):
        scores = q @ k  # forgot the transpose
        return scores, scores

    r = check(scaled_dot_product_attention)
    assert not r.passed
    assert "RuntimeError" in r.feedback and "line 2 of your function" in r.feedback
    assert "Traceback" not in r.feedback and 'File "' not in r.feedback


def test_numpy_instead_of_tensor():
    r = check("softmax", lambda x, dim=-1: torch.softmax(x, dim).numpy())
    assert not r.passed and "numpy" in r.feedback


def test_tensor_instead_of_tuple():
    r = check("scaled_dot_product_attention", lambda q, k, v, mask=None: A.scaled_dot_product_attention(q, k, v, mask)[0])
    assert not r.passed and "single tensor" in r.feedback and "tuple of 2" in r.feedback


def test_wrong_shape_is_named():
    r = check("softmax", lambda x, dim=-1: torch.softmax(x, dim).sum(dim))
    assert not r.passed and "shape" in r.feedback


def test_float_mask_instead_of_bool():
    r = check("causal_mask", lambda n: torch.ones(n, n).tril())
    assert not r.passed and "bool" in r.feedback


def test_nan_output_is_named():
    r = check("softmax", lambda x, dim=-1: torch.full_like(torch.softmax(x, dim), float("nan")))
    assert not r.passed and "NaN" in r.feedback


def test_in_place_mutation_of_inputs_is_caught():
    def softmax(x, dim=-1):
        x -= x.amax(dim=dim, keepdim=True)  # modifies the caller's tensor
        x.exp_()
        return x / x.sum(dim=dim, keepdim=True)

    r = check(softmax)
    assert not r.passed and "modified its input" in r.feedback


def test_infinite_loop_times_out_quickly():
    def causal_mask(n):
        while True:
            pass

    t0 = time.perf_counter()
    r = check(causal_mask)
    assert not r.passed and "longer than" in r.feedback
    assert time.perf_counter() - t0 < 10


def test_timeout_also_works_outside_the_main_thread():
    box = {}

    def slow(n):
        time.sleep(30)

    t = threading.Thread(target=lambda: box.setdefault("r", check("causal_mask", slow)))
    t0 = time.perf_counter()
    t.start()
    t.join(20)
    assert "r" in box and not box["r"].passed and "longer than" in box["r"].feedback
    assert time.perf_counter() - t0 < 15


def test_expected_values_are_never_shown():
    r = check("predict_weight", lambda: 0.7)
    assert not r.passed
    truth = ch04.predict_weight()
    for digits in (f"{truth:.2f}", f"{truth:.3f}", f"{truth:.4f}"):
        assert digits not in r.feedback
    r = check("predict_shapes", lambda: ((1, 1), (1, 1)))
    assert "(2, 3, 5" not in r.feedback


def test_check_never_raises_on_nonsense():
    for args in [("no/such_exercise", A.softmax), (None,), (42,), ("softmax", "not a function"), (A.softmax, 3)]:
        r = check(*args)
        assert not r.passed and r.feedback


def test_short_form_uses_the_function_name():
    def causal_mask(n):
        return torch.ones(n, n, dtype=torch.bool).tril()

    assert check(causal_mask).exercise == "04_self_attention/causal_mask"
    assert check("causal_mask", causal_mask).passed


def test_result_displays_in_a_notebook_and_terminal():
    r = check(A.softmax)
    assert "passed" in r._repr_html_() and "PASS" in str(r)
    bad = check("softmax", lambda x, dim=-1: x)
    assert "not yet" in bad._repr_html_() and "FAIL" in str(bad)


def test_one_check_is_fast():
    check(A.scaled_dot_product_attention)  # warm-up
    for ex in ALL:
        t0 = time.perf_counter()
        check(ex.id, REFERENCES[ex.name])
        assert time.perf_counter() - t0 < 1.0, ex.id


def test_exercise_ids_and_progress(tmp_path, monkeypatch):
    ids = exercises("04")
    assert "04_self_attention/scaled_dot_product_attention" in ids and len(ids) == len(ALL)
    assert get_exercise(ids[0]).id == ids[0]
    check(A.softmax)
    check("causal_mask", lambda n: None)
    p = progress("04_self_attention")
    rows = {r[0]: r for r in p.rows}
    assert rows["04_self_attention/softmax"][1] is True
    assert rows["04_self_attention/causal_mask"][1] is False and rows["04_self_attention/causal_mask"][2] == "fail"
    assert p.passed == 1 and "1/7 exercises passed" in str(p)
    # a later failure does not take away a pass already earned
    check("softmax", lambda x, dim=-1: x)
    assert {r[0]: r for r in progress().rows}["04_self_attention/softmax"][1] is True
