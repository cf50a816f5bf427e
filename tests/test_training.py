"""book.training: the one loop every chapter calls (full-batch and streamed batches, schedule,
clipping, evaluation callback, history), and the progress bar that also shows on the website."""
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import training


def _mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x).squeeze(-1), y)


def _line_data(n=32):
    x = torch.randn(n, 2)
    return x, x @ torch.tensor([1.0, -2.0]) + 0.5


def test_full_batch_training_reduces_the_loss_and_calls_on_step():
    torch.manual_seed(0)
    model, data = nn.Linear(2, 1), _line_data()
    seen = []
    hist = training.train(model, data, _mse, 300, lr=0.05, on_step=lambda s, loss: seen.append((s, loss)))
    assert len(hist.loss) == len(hist.lr) == len(hist.seconds) == 300
    assert hist.loss[-1] < 1e-3 < hist.loss[0]
    assert [s for s, _ in seen] == list(range(1, 301)) and [l for _, l in seen] == hist.loss
    assert all(b >= a for a, b in zip(hist.seconds, hist.seconds[1:]))  # cumulative training time
    assert not model.training  # handed back in eval mode


def test_streamed_batches_schedule_clip_and_evaluation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    stream = (_line_data(16) for _ in itertools.count())
    modes = []

    def evaluate(m):
        modes.append((m.training, torch.is_grad_enabled()))
        return {"mse": _mse(m, _line_data(64)).item()}

    grad_norms = []
    hist = training.train(model, stream, _mse, 40, lr=0.01, schedule=training.warmup_cosine(40, 0.25),
                          clip=0.1, evaluate=evaluate, eval_every=15,
                          on_step=lambda s, l: grad_norms.append(
                              torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()))
    assert [s for s, _, _ in hist.evals] == [15, 30, 40]
    assert modes == [(False, False)] * 3  # eval mode, no gradients
    assert hist.lr[0] == pytest.approx(0.01 / 10) and hist.lr[9] == pytest.approx(0.01)  # warm-up of 10 steps
    assert hist.lr[-1] == pytest.approx(0.0, abs=1e-12)  # cosine down to 0
    assert max(grad_norms) <= 0.1 + 1e-5  # clipped


def test_bad_arguments_raise_clear_errors():
    model, data = nn.Linear(2, 1), _line_data()
    with pytest.raises(ValueError, match="steps"):
        training.train(model, data, _mse, 0)
    with pytest.raises(ValueError, match="learning rate"):
        training.train(model, data, _mse, 5, lr=-1.0)


def test_batches_are_moved_to_the_models_device():
    model = nn.Linear(2, 1).to("meta")
    seen = []

    def loss_fn(m, batch):
        seen.append(batch[0].device.type)
        m(batch[0])  # runs on the meta device (shapes only)
        return torch.zeros((), requires_grad=True) * 1.0  # a real number, so .item() works

    training.train(model, _line_data(), loss_fn, 2)
    assert seen == ["meta", "meta"]


def test_progress_bar_prints_its_final_state_once_on_the_site(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_SITE_BUILD", "1")
    bar = training.progress_bar(range(50), desc="demo")
    for _ in bar:
        bar.set_postfix(loss="0.1")
    bar.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("demo: 100%") and "50/50" in out[0] and "loss=0.1" in out[0]
    assert "#" not in out[0]  # the unicode bar, as in a notebook
    monkeypatch.delenv("BOOK_SITE_BUILD")
    live = training.progress_bar(range(3), disable=True)
    assert not isinstance(live, training._SiteBar)


def test_warmup_cosine_and_noam():
    f = training.warmup_cosine(100, 0.1)
    assert f(1) == pytest.approx(0.1) and f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))
    assert training.noam_lr(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)
