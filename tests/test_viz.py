"""Figure builders, the one slider/menu helper they share, and the static/live switch."""
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from book import viz
from book.attention import causal_mask
from book.viz import controls
from book.widgets import choose_mode, live_explorer, show_attention, toy_self_attention


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


@pytest.fixture
def displayed(monkeypatch):
    """The figures the live widgets display, in order (no kernel here to show them)."""
    shown = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    return shown


def test_live_explorer_redraws_with_the_new_values_and_surfaces_bugs(displayed, capsys):
    calls = []

    def make_figure(sentence, temperature):
        calls.append((sentence, temperature))
        if sentence == "crash":
            raise RuntimeError("a bug in make_figure")
        if not sentence.strip():
            raise ValueError("Type a sentence to see its attention map.")
        return go.Figure(layout_title_text=f"{sentence} @ {temperature:g}")

    box, slider, out = live_explorer(make_figure, sentence="the cat", temperature=(0.5, 2.0, 1.0)).children
    assert calls == [("the cat", 1.0)] and [f.layout.title.text for f in displayed] == ["the cat @ 1"]
    box.value = "dogs chase cats"
    slider.value = 2.0
    assert calls[1:] == [("dogs chase cats", 1.0), ("dogs chase cats", 2.0)]
    assert [f.layout.title.text for f in displayed[1:]] == ["dogs chase cats @ 1", "dogs chase cats @ 2"]
    capsys.readouterr()
    box.value = "   "  # bad input: a friendly message instead of a figure
    assert "Type a sentence" in capsys.readouterr().out and len(displayed) == 3
    with pytest.raises(RuntimeError, match="a bug"):  # a bug is not swallowed
        box.value = "crash"


def test_live_attention_widget_recomputes_the_map_for_a_new_sentence(displayed):
    box, temperature, causal, out = show_attention("the cat sat", mode="live").children
    assert list(displayed[-1].layout.xaxis.ticktext) == ["the", "cat", "sat"]
    box.value = "dogs chase cats"
    assert list(displayed[-1].layout.xaxis.ticktext) == ["dogs", "chase", "cats"]
    causal.value = True
    z = np.array(displayed[-1].data[0].z)
    assert z.shape == (3, 3) and z[0, 1] == 0 and z[0, 0] == 1  # the mask reached the recomputed map


def test_toy_attention_rows_are_distributions():
    w = toy_self_attention(["the", "cat", "the", "dog"], 0.5, causal=True)
    assert torch.allclose(w.sum(-1), torch.ones(4))
    assert (w.triu(1) == 0).all()


# ----------------------------------------------------------------------------- the slider/menu helper
def _variants(n=3):
    zs = [np.full((2, 2), float(i)) for i in range(n)]
    fig = viz.attention_heatmap(np.zeros((2, 2)), ["a", "b"], title="base")
    return fig, [f"v{i}" for i in range(n)], [({"z": [z]}, {"title.text": f"t{i}"}) for i, z in enumerate(zs)]


def test_slider_has_one_step_per_variant_under_the_plot_and_starts_on_the_active_one():
    fig, labels, updates = _variants()
    height, bottom = fig.layout.height, fig.layout.margin.b
    fig = viz.add_variant_control(fig, labels, updates, label="size", active=1)
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == labels and slider.active == 1
    assert all(s.method == "update" and "title.text" in s.args[1] for s in slider.steps)
    assert slider.currentvalue.prefix == "size: "
    assert slider.pad.t == bottom + controls.SLIDER_GAP  # clear of the x-axis labels
    assert fig.layout.height == height + controls.SLIDER_ROOM  # the plot keeps its size
    assert fig.layout.title.text == "t1" and np.all(np.array(fig.data[0].z) == 1.0)  # shows the active one
    assert not fig.layout.updatemenus


def test_menu_has_one_button_per_variant_on_its_own_line_under_the_title():
    fig, labels, updates = _variants(4)
    top = fig.layout.margin.t
    fig = viz.add_variant_control(fig, labels, updates, control="dropdown", active=3)
    (menu,) = fig.layout.updatemenus
    assert [b.label for b in menu.buttons] == labels and menu.active == 3
    assert (menu.x, menu.xanchor, menu.y, menu.yanchor) == (0.0, "left", 1.0, "bottom")  # left, just above the plot
    assert fig.layout.margin.t == top + controls.MENU_ROOM + controls.MENU_GAP  # room for title and menu
    assert fig.layout.title.text == "t3" and not fig.layout.sliders


def test_restyle_steps_change_traces_only_and_one_variant_gets_no_control():
    fig, labels, updates = _variants()
    fig = viz.add_variant_control(fig, labels, [data for data, _ in updates], method="restyle")
    assert [len(s.args) for s in fig.layout.sliders[0].steps] == [1, 1, 1]
    fig, labels, updates = _variants(1)
    fig = viz.add_variant_control(fig, labels, updates)
    assert not fig.layout.sliders and not fig.layout.updatemenus and fig.layout.title.text == "t0"


@pytest.mark.parametrize("change, message", [
    (dict(control="knob"), "control"), (dict(labels=[], updates=[]), "no variants"),
    (dict(active=3), "active"), (dict(method="animate"), "method"), (dict(updates=[]), "one update per variant"),
])
def test_control_helper_rejects_bad_requests(change, message):
    fig, labels, updates = _variants()
    args = {"labels": labels, "updates": updates, **change}
    with pytest.raises(ValueError, match=message):
        viz.add_variant_control(fig, args.pop("labels"), args.pop("updates"), **args)


def test_only_the_helper_builds_sliders_and_menus():
    package = Path(viz.__file__).parent
    builders = [p.name for p in package.glob("*.py") if "sliders=" in p.read_text() or "updatemenus=" in p.read_text()]
    assert builders == ["controls.py"]


def _menu_figures():
    tokens = ["a", "b", "c"]
    maps = {k: torch.softmax(torch.randn(3, 3), -1) for k in "xy"}
    views = [{"label": k, "maps": {"h1": m, "h2": m}, "rows": tokens, "cols": tokens} for k, m in maps.items()]
    return {
        "attention_explorer": viz.attention_explorer(maps, tokens, control="dropdown"),
        "token_map_explorer": viz.token_map_explorer({k: (m, tokens, tokens) for k, m in maps.items()}),
        "matrix_explorer": viz.matrix_explorer(maps, title="t", x_title="x", y_title="y", control="dropdown"),
        "log_heatmap_explorer": viz.log_heatmap_explorer(maps, [0, 1, 2], [0, 1, 2], title="t", x_title="x",
                                                         y_title="y"),
        "attention_views": viz.attention_views(views),
    }


@pytest.mark.parametrize("name", list(_menu_figures()))
def test_every_menu_sits_left_under_the_title(name):
    fig = _menu_figures()[name]
    (menu,) = fig.layout.updatemenus
    assert (menu.x, menu.xanchor, menu.y, menu.yanchor) == (0.0, "left", 1.0, "bottom")
    assert fig.layout.margin.t >= 60 + controls.MENU_ROOM and fig.layout.title.xanchor == "left"


# ----------------------------------------------------------------------------- matrices and charts
def test_similarity_heatmap_is_diverging_and_labelled():
    words = ["cat", "dog", "the", "cat"]
    fig = viz.similarity_heatmap(torch.eye(4) * 2 - 1, words)
    tr = fig.data[0]
    assert tr.zmin == -1 and tr.zmax == 1 and tr.zmid == 0
    assert list(fig.layout.xaxis.ticktext) == words and list(tr.x) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="labels"):
        viz.similarity_heatmap(torch.eye(3), words)


def test_linear_map_explorer_has_one_step_per_matrix_and_draws_eigenvectors():
    mats = {"a": torch.tensor([[2.0, 0.0], [0.0, 0.5]]), "b": torch.tensor([[1.0, 0.9], [0.9, 1.0]])}
    fig = viz.linear_map_explorer(mats)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 2 and len(fig.data) == 4
    x_arrow, y_arrow = steps[1].args[0]["x"][2], steps[1].args[0]["y"][2]  # λ₁ q₁ of the second matrix
    assert math.isclose(math.hypot(x_arrow[1], y_arrow[1]), 1.9, rel_tol=1e-6)
    assert fig.layout.yaxis.scaleanchor == "x"
    with pytest.raises(ValueError, match="symmetric"):
        viz.linear_map_explorer({"not symmetric": torch.tensor([[1.0, 2.0], [0.0, 1.0]])})


def test_labeled_scatter_groups_points():
    fig = viz.labeled_scatter(torch.randn(4, 2), list("abcd"), ["x", "x", "y", "y"], title="t", x_title="1", y_title="2")
    assert [tr.name for tr in fig.data] == ["x", "y"] and list(fig.data[1].text) == ["c", "d"]
    with pytest.raises(ValueError):
        viz.labeled_scatter(torch.randn(4, 3), list("abcd"), title="t", x_title="1", y_title="2")


def test_log_heatmap_explorer():
    maps = {"a": np.full((2, 3), 1e-3), "b": np.full((2, 3), 10.0)}
    fig = viz.log_heatmap_explorer(maps, [0, 1, 2], [0, 5], title="t", x_title="x", y_title="y")
    assert len(fig.layout.updatemenus[0].buttons) == 2
    np.testing.assert_allclose(np.array(fig.data[0].z), -3.0)
    np.testing.assert_allclose(np.array(fig.layout.updatemenus[0].buttons[1].args[0]["z"][0]), 1.0)
    assert "customdata" in fig.data[0].hovertemplate
    with pytest.raises(ValueError, match="shape"):
        viz.log_heatmap_explorer({"a": np.ones((3, 3))}, [0, 1], [0, 1], title="t", x_title="x", y_title="y")
    with pytest.raises(ValueError):
        viz.log_heatmap_explorer(maps, [0, 1, 2], [0, 5], title="t", x_title="x", y_title="y", control="knob")


def test_matrix_explorer_steps_carry_each_shape_and_a_single_map_has_no_control():
    maps = {"4 x 5": torch.randn(4, 5), "6 x 2": torch.randn(6, 2)}
    fig = viz.matrix_explorer(maps, title="PE", x_title="feature", y_title="position", label="d")
    (step0, step1) = fig.layout.sliders[0].steps
    assert np.array(step1.args[0]["z"][0]).shape == (6, 2) and list(step1.args[0]["x"][0]) == [0, 1]
    assert step1.args[1]["title.text"] == "PE — d: 6 x 2" and fig.layout.title.text == "PE — d: 4 x 5"
    assert fig.data[0].zmin == -fig.data[0].zmax  # diverging around 0
    single = viz.matrix_explorer({"only": torch.rand(2, 2)}, title="PE", x_title="x", y_title="y", zmin=0, zmax=1)
    assert not single.layout.sliders and single.data[0].colorscale[0][1] != fig.data[0].colorscale[0][1]


# ----------------------------------------------------------------------------- token-labelled maps
def test_token_map_explorer_switches_labels_with_the_variant():
    fig = viz.token_map_explorer({"a": (torch.rand(2, 3), ["x", "y"], ["p", "q", "r"]),
                                  "b": (torch.rand(3, 2), ["u", "v", "w"], ["s", "t"])}, label="sentence")
    steps = fig.layout.updatemenus[0].buttons
    assert len(steps) == 2
    assert list(steps[1].args[1]["yaxis.ticktext"]) == ["u", "v", "w"]
    assert list(steps[1].args[1]["xaxis.ticktext"]) == ["s", "t"]
    assert np.array(steps[1].args[0]["z"][0]).shape == (3, 2)
    masks = viz.token_map_explorer({"m": (causal_mask(3), list("abc"), list("abc"))}, masks=True)
    tr = masks.data[0]
    assert tr.showscale is False and tr.customdata[0][2][2] == "blocked" and tr.customdata[2][0][2] == "may attend"
    with pytest.raises(ValueError, match="labels"):
        viz.token_map_explorer({"a": (torch.rand(2, 2), ["x"], ["p", "q"])})
    with pytest.raises(ValueError):
        viz.token_map_explorer({}, control="slider")
    fig = viz.token_map_explorer({"a": (torch.rand(2, 2), ["x", "y"], ["p", "q"]),
                                  "b": (torch.rand(2, 2), ["x", "y"], ["p", "q"])}, control="slider")
    assert len(fig.layout.sliders[0].steps) == 2


def test_masks_with_the_same_tokens_swap_colours_and_hover_but_not_labels():
    tokens = list("abc")
    fig = viz.token_map_explorer({"causal": (causal_mask(3), tokens, tokens),
                                  "full": (torch.ones(3, 3, dtype=torch.bool), tokens, tokens)}, masks=True)
    data, layout = fig.layout.updatemenus[0].buttons[1].args
    assert set(data) == {"z", "customdata"} and set(layout) == {"title.text"}  # no relabelling: a lighter page
    assert data["customdata"][0][0][2][2] == "may attend"


def test_attention_views_swap_every_head_and_its_axes():
    views = [{"label": f"layer {k}", "maps": {f"head {h}": torch.softmax(torch.randn(2 + k, 3), -1) for h in range(3)},
              "rows": list("xyz")[:2 + k], "cols": list("pqr")} for k in range(2)]
    fig = viz.attention_views(views, title="Attention")
    assert len(fig.data) == 3 and fig.layout.title.text == "Attention: layer 0"
    data, layout = fig.layout.updatemenus[0].buttons[1].args
    assert len(data["z"]) == 3 and np.array(data["z"][2]).shape == (3, 3)
    assert list(layout["yaxis3.ticktext"]) == ["x", "y", "z"] and layout["title.text"] == "Attention: layer 1"
    with pytest.raises(ValueError, match="same heads"):
        viz.attention_views([views[0], {**views[1], "maps": {"other": torch.rand(3, 3)}}])
    with pytest.raises(ValueError):
        viz.attention_views([])


def test_token_strip_shows_every_token_once_in_order_and_wraps_rows():
    tokens = [f"t{i}" for i in range(23)]
    fig = viz.token_strip_explorer({"few": ["the", "king"], "many": tokens}, label="merges", active=1)
    text = [t for row in fig.data[0].text for t in row if t]
    assert text == tokens and len(fig.data[0].z) == 3  # 23 tokens, 10 per row
    z = [v for row in fig.data[0].z for v in row if v is not None]
    assert z == [i % 2 for i in range(23)]  # neighbours differ in colour: boundaries show
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["few", "many"]
    few = steps[0].args[0]["text"][0]
    assert [t for row in few for t in row if t] == ["the", "king"] and "2 tokens" in steps[0].args[1]["title.text"]
    with pytest.raises(ValueError, match="no variants"):
        viz.token_strip_explorer({})
