"""The grader's own tests: every kind of broken submission becomes feedback instead of an exception
or a hang; ids, progress and display. Also chapter 04's data for test_exercises.py (references pass,
catalogued mistakes are named, alternatives pass, wrong variants are rejected there)."""
import math
import threading
import time

import torch
import torch.nn.functional as F

from book import attention as A
from book.grader import check, ch04, exercises, get_exercise, progress


# ----------------------------------------------------------------------------- chapter 04's data for test_exercises.py
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


def sm_shift_by_logsumexp(x, dim=-1):
    shifted = x - x.max(dim=dim, keepdim=True).values
    return shifted.exp().div(shifted.exp().sum(dim=dim, keepdim=True))


def sa_linear_and_tril(x, wq, wk, wv, mask=None, causal=False):
    if causal:
        T = x.shape[-2]
        tril = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        mask = tril if mask is None else mask.logical_and(tril)
    return sdpa_einsum_big_negative(F.linear(x, wq.T), F.linear(x, wk.T), F.linear(x, wv.T), mask)


def sa_where_positions(x, wq, wk, wv, mask=None, causal=False):
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = q @ k.mT / math.sqrt(q.shape[-1])
    if causal:
        pos = torch.arange(x.shape[-2], device=x.device)
        scores = torch.where(pos[None, :] <= pos[:, None], scores, float("-inf"))
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ v, weights


ALTERNATIVES = {
    "softmax": [sm_logsumexp, sm_shift_by_logsumexp],
    "scaled_dot_product_attention": [sdpa_einsum_big_negative, sdpa_torch_kernel],
    "causal_mask": [lambda n: torch.tril(torch.ones(n, n)).bool(),
                    lambda n: torch.arange(n)[:, None] >= torch.arange(n)[None, :]],
    "padding_mask": [
        lambda lengths, max_len, left=False: (lambda m: m.flip(-1) if left else m)(
            torch.arange(max_len).expand(len(lengths), max_len) < lengths.unsqueeze(1)),
        lambda lengths, max_len, left=False: torch.stack(
            [(torch.arange(max_len) >= max_len - int(n)) if left else (torch.arange(max_len) < int(n))
             for n in lengths])],
    "self_attention": [sa_linear_and_tril, sa_where_positions],
    "predict_weight": [lambda: 0.88, lambda: torch.tensor(0.8808)],
    "predict_shapes": [lambda: (torch.Size([2, 3, 5, 32]), [2, 3, 5, 7])],
}


def _stub(x, dim=-1):
    raise NotImplementedError("your code here")


def _softmax_in_place(x, dim=-1):
    x -= x.amax(dim=dim, keepdim=True)  # modifies the caller's tensor
    x.exp_()
    return x / x.sum(dim=dim, keepdim=True)


WRONG = [  # broken submissions that no catalogued mistake describes: what the feedback must say
    ("softmax", _stub, "not implemented yet"),
    ("softmax", lambda x, dim=-1: A.softmax(x, dim).numpy(), "numpy"),
    ("scaled_dot_product_attention", lambda q, k, v, mask=None: A.scaled_dot_product_attention(q, k, v, mask)[0],
     "is a single tensor; expected a tuple of 2 values"),
    ("softmax", lambda x, dim=-1: A.softmax(x, dim).sum(dim), "shape"),
    ("causal_mask", lambda n: torch.ones(n, n).tril(), "bool"),
    ("softmax", lambda x, dim=-1: torch.full_like(x, float("nan")), "NaN"),
    ("softmax", _softmax_in_place, "modified its input"),
    ("causal_mask", lambda n: None, "expected a torch.Tensor"),
    ("padding_mask", A.padding_mask, "takes 2 positional arguments but 3 were given"),  # the chapter's, unextended
    ("self_attention", A.self_attention, "takes from 4 to 5 positional arguments but 6 were given"),
    # "don't call torch.softmax" is enforced, by name, however it is reached
    ("softmax", sm_torch, "`torch.softmax`"),
    ("softmax", lambda x, dim=-1: x.softmax(dim), "`x.softmax`"),
    ("softmax", F.softmax, "that is `torch.softmax` itself"),
    ("softmax", print, "can't read the code"),
]


# ----------------------------------------------------------------------------- broken submissions become feedback
def test_exception_is_reported_with_type_and_line_not_a_traceback():
    def scaled_dot_product_attention(q, k, v, mask=None):
        scores = q @ k  # forgot the transpose
        return scores, scores

    r = check(scaled_dot_product_attention)
    assert not r.passed
    assert "RuntimeError" in r.feedback and "line 2 of your function" in r.feedback
    assert "Traceback" not in r.feedback and 'File "' not in r.feedback


def test_an_endless_loop_times_out():
    def causal_mask(n):
        while True:
            pass

    r = check(causal_mask)
    limit = get_exercise("04_self_attention/causal_mask").time_limit
    assert not r.passed and f"longer than {limit:g} s" in r.feedback


def test_timeout_also_works_outside_the_main_thread():
    box = {}

    def slow(n):
        time.sleep(600)  # without the time limit, check() would not return for ten minutes

    t = threading.Thread(target=lambda: box.setdefault("r", check("causal_mask", slow)), daemon=True)
    t.start()
    t.join(120)  # a guard against hanging the test run, not a measurement
    assert "r" in box, "check() did not return: the time limit did not stop the function"
    assert not box["r"].passed and "longer than" in box["r"].feedback


def test_expected_values_are_never_shown():
    r = check("predict_weight", lambda: 0.7)
    assert not r.passed
    truth = ch04.predict_weight()
    for digits in (f"{truth:.2f}", f"{truth:.3f}", f"{truth:.4f}"):
        assert digits not in r.feedback
    r = check("predict_shapes", lambda: ((1, 1), (1, 1)))
    assert not r.passed and "(2, 3, 5" not in r.feedback


def test_check_never_raises_on_nonsense():
    for args, says in [(("no/such_exercise", A.softmax), "unknown exercise 'no/such_exercise'"),
                       ((None,), "the first argument should be an exercise id"),
                       ((42,), "the first argument should be an exercise id"),
                       (("softmax", "not a function"), "needs your function itself"),
                       ((A.softmax, 3), "the first argument should be an exercise id")]:
        r = check(*args)
        assert not r.passed and says in r.feedback, (args, r.feedback)


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


def test_exercise_ids_and_progress(tmp_path, monkeypatch):
    ids = exercises("04")
    assert "04_self_attention/scaled_dot_product_attention" in ids and len(ids) == len(ch04.EXERCISES)
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
