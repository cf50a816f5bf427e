"""Figure builders and the static/live switch."""
import numpy as np
import plotly.io as pio
import pytest
import torch

from book import viz
from book.widgets import choose_mode, show_attention, toy_self_attention


def test_heatmap_keeps_duplicate_tokens_distinct_and_hovers_exact_weight():
    tokens = ["the", "cat", "saw", "the", "dog"]
    w = torch.softmax(torch.randn(5, 5), -1)
    fig = viz.attention_heatmap(w, tokens)
    tr = fig.data[0]
    assert list(tr.x) == list(range(5)) and list(tr.y) == list(range(5))  # positions, not strings
    assert list(fig.layout.xaxis.ticktext) == tokens and list(fig.layout.yaxis.ticktext) == tokens
    assert "%{z:.4f}" in tr.hovertemplate
    assert tr.customdata[0][3][1] != tr.customdata[0][0][1]  # "the [3]" vs "the [0]"
    np.testing.assert_allclose(np.array(tr.z), w.numpy(), atol=5e-5)  # stored to 4 decimals


def test_explorer_slider_and_dropdown_hold_every_variant():
    tokens = ["a", "b", "c"]
    maps = {f"{t}": torch.softmax(torch.randn(3, 3) / t, -1) for t in (0.5, 1.0, 2.0)}
    fig = viz.attention_explorer(maps, tokens, label="temperature")
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 3
    zs = [np.array(s.args[0]["z"][0]) for s in steps]
    assert not np.allclose(zs[0], zs[2])
    assert "title.text" in steps[0].args[1]  # plotly.js 4 needs the dotted key
    fig = viz.attention_explorer(maps, tokens, control="dropdown", label="mask")
    assert len(fig.layout.updatemenus[0].buttons) == 3
    with pytest.raises(ValueError):
        viz.attention_explorer(maps, tokens, control="knob")


def test_query_explorer_has_one_step_per_query():
    fig = viz.query_explorer(torch.softmax(torch.randn(4, 4), -1), list("abcd"))
    assert len(fig.layout.sliders[0].steps) == 4


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="labels"):
        viz.attention_heatmap(torch.rand(3, 3), ["a", "b"])
    with pytest.raises(ValueError, match="2-D"):
        viz.attention_heatmap(torch.rand(2, 3, 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="no tokens"):
        show_attention("   ")
    with pytest.raises(ValueError, match="temperature"):
        toy_self_attention(["a"], temperature=0)


def test_site_renderer_emits_html_without_plotly_js_or_cdn():
    viz.use_site_renderer()
    try:
        fig = viz.attention_heatmap(torch.rand(2, 2), ["x", "y"])
        bundle = pio.renderers[viz.SITE_RENDERER].to_mimebundle(fig.to_dict())
    finally:
        pio.renderers.default = "plotly_mimetype"
    html = bundle["text/html"]
    assert set(bundle) == {"text/html"}
    assert "Plotly.newPlot" in html and len(html) < 100_000
    assert "cdn" not in html.lower() and "mathjax" not in html.lower()


def test_show_attention_picks_static_on_the_site_and_outside_a_kernel(monkeypatch):
    assert choose_mode("auto") == "static"  # no kernel in pytest
    monkeypatch.setenv("BOOK_SITE_BUILD", "1")
    assert choose_mode("auto") == "static"
    assert choose_mode("live") == "live"
    fig = show_attention("the cat sat on the mat")
    assert len(fig.layout.sliders[0].steps) == 5
    with pytest.raises(ValueError):
        choose_mode("sometimes")


def test_live_widget_recomputes():
    w = show_attention("the cat sat", mode="live")
    box = w.children[0]
    box.value = "dogs chase cats"  # the widget redraws without error
    assert w.children[0].value == "dogs chase cats"


def test_toy_attention_rows_are_distributions():
    w = toy_self_attention(["the", "cat", "the", "dog"], 0.5, causal=True)
    assert torch.allclose(w.sum(-1), torch.ones(4))
    assert (w.triu(1) == 0).all()
