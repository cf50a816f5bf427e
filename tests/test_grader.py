"""The grader's own tests: every kind of broken submission becomes feedback instead of an exception
or a hang; ids, progress and display. (Chapter 04's exercise data, like every chapter's, lives in its
own test file, tests/test_ch04_self_attention.py, and test_exercises.py runs it.)"""
import threading
import time

import torch

from book import attention as A
from book.grader import check, ch04, exercises, get_exercise, progress


# ----------------------------------------------------------------------------- broken submissions become feedback
def test_exception_is_reported_with_type_and_line_not_a_traceback():
    def padded_cross_attention(x_q, x_kv, kv_lengths, w_q, w_k, w_v):
        scores = x_q @ x_kv  # forgot the transpose
        return scores, scores

    r = check(padded_cross_attention)
    assert not r.passed
    assert "RuntimeError" in r.feedback and "line 2 of your function" in r.feedback
    assert "Traceback" not in r.feedback and 'File "' not in r.feedback


def test_an_endless_loop_times_out():
    def prefix_lm_mask(token_ids, prefix_lengths, pad_id):
        while True:
            pass

    r = check(prefix_lm_mask)
    limit = get_exercise("04_self_attention/prefix_lm_mask").time_limit
    assert not r.passed and f"longer than {limit:g} s" in r.feedback


def test_timeout_also_works_outside_the_main_thread():
    box = {}

    def slow(token_ids, prefix_lengths, pad_id):
        time.sleep(600)  # without the time limit, check() would not return for ten minutes

    t = threading.Thread(target=lambda: box.setdefault("r", check("prefix_lm_mask", slow)), daemon=True)
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


def test_a_forbidden_call_is_found_however_it_is_reached():
    """"torch.softmax" also covers torch.nn.functional.softmax and the tensor method, and the function
    itself handed to check(); a built-in whose code can't be read is refused with a reason."""
    import torch.nn.functional as F

    from book.grader.core import forbidden_calls

    def sm_torch(x, dim=-1):
        return torch.softmax(x, dim=dim)

    def sm_functional(x, dim=-1):
        return F.softmax(x, dim)

    for fn, says in [(sm_torch, "`torch.softmax`"), (sm_functional, "`F.softmax`"),
                     (lambda x, dim=-1: x.softmax(dim), "`x.softmax`"), (F.softmax, "that is `torch.softmax` itself"),
                     (print, "can't read the code")]:
        msg = forbidden_calls(fn, ("torch.softmax",))
        assert msg and says in msg, (fn, msg)
    assert forbidden_calls(A.softmax, ("torch.softmax",)) is None  # exp, a sum and a division


def test_check_never_raises_on_nonsense():
    for args, says in [(("no/such_exercise", A.softmax), "unknown exercise 'no/such_exercise'"),
                       ((None,), "the first argument should be an exercise id"),
                       ((42,), "the first argument should be an exercise id"),
                       (("prefix_lm_mask", "not a function"), "needs your function itself"),
                       ((A.softmax, 3), "the first argument should be an exercise id")]:
        r = check(*args)
        assert not r.passed and says in r.feedback, (args, r.feedback)


def test_short_form_uses_the_function_name():
    def prefix_lm_mask(token_ids, prefix_lengths, pad_id):
        T = token_ids.shape[1]
        past = torch.ones(T, T, dtype=torch.bool).tril()
        in_prefix = torch.arange(T) < prefix_lengths[:, None]
        return (past | in_prefix[:, None, :]) & (token_ids != pad_id)[:, None, :]

    assert check(prefix_lm_mask).exercise == "04_self_attention/prefix_lm_mask"
    assert check("prefix_lm_mask", prefix_lm_mask).passed


def test_result_displays_in_a_notebook_and_terminal():
    r = check(ch04.streaming_attention)
    assert "passed" in r._repr_html_() and "PASS" in str(r)
    bad = check("streaming_attention", lambda q, kv_blocks: q)
    assert "not yet" in bad._repr_html_() and "FAIL" in str(bad)


def test_exercise_ids_and_progress(tmp_path, monkeypatch):
    ids = exercises("04")
    assert "04_self_attention/streaming_attention" in ids and len(ids) == len(ch04.EXERCISES)
    assert get_exercise(ids[0]).id == ids[0]
    check(ch04.streaming_attention)
    check("prefix_lm_mask", lambda token_ids, prefix_lengths, pad_id: None)
    p = progress("04_self_attention")
    rows = {r[0]: r for r in p.rows}
    assert rows["04_self_attention/streaming_attention"][1] is True
    assert rows["04_self_attention/prefix_lm_mask"][1] is False and rows["04_self_attention/prefix_lm_mask"][2] == "fail"
    assert p.passed == 1 and f"1/{len(ch04.EXERCISES)} exercises passed" in str(p)
    # a later failure does not take away a pass already earned
    check("streaming_attention", lambda q, kv_blocks: q)
    assert {r[0]: r for r in progress().rows}["04_self_attention/streaming_attention"][1] is True


def test_a_pytorch_not_implemented_error_is_not_mistaken_for_the_stub():
    """torch raises NotImplementedError for some dtype combinations: that is a bug to report, not a stub."""
    from book.grader import get_exercise

    ex_id = next(i for i in exercises() if get_exercise(i).kind == "function")

    def stub(*args):
        raise NotImplementedError("your code here")

    def dtype_bug(*args):
        return torch.tensor([1.5]) | torch.tensor([True])  # float | bool: not implemented in torch

    assert "not implemented yet" in check(ex_id, stub).feedback
    fb = check(ex_id, dtype_bug).feedback
    assert "not implemented yet" not in fb and "dtypes" in fb
