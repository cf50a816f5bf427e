"""Live explorers (ipywidgets) and the one entry point that picks live or static.

How ``show_attention`` decides what to show (``mode="auto"``):

1. While the website is being built (``BOOK_SITE_BUILD=1``, set by ``book.authoring.sphinx_ext``) it returns
   a static plotly figure whose slider holds precomputed maps — interactive in any browser, no kernel.
2. Otherwise, inside a running Jupyter kernel with ipywidgets installed, it returns a live widget:
   type your own sentence, move the sliders, and the map is recomputed by PyTorch.
3. Anywhere else (a plain Python script, a test) it returns the static figure.

Pass ``mode="static"`` or ``mode="live"`` to choose yourself. Other chapters use the same rule
through ``show(static, make_figure, **controls)``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from book import viz
from book.attention import causal_mask, scaled_dot_product_attention
from book.data.toy_words import tokenize, word_vectors
from book.runtime import is_site_build

DEFAULT_TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0)


def toy_self_attention(tokens: Sequence[str], temperature: float = 1.0, causal: bool = False,
                       dim: int = 16) -> torch.Tensor:
    """Attention from meaning alone: queries = keys = values = the toy word vectors.

    Returns the (T, T) weights of softmax(X Xᵀ / (√d · temperature)).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = word_vectors(tokens, dim)  # (T, d)
    mask = causal_mask(len(tokens)) if causal else None  # (T, T) or None
    _, weights = scaled_dot_product_attention(x / temperature, x, x, mask)  # (T, T)
    return weights


def in_live_kernel() -> bool:
    """True inside a running IPython kernel (JupyterLab, VS Code, Colab) that can show widgets."""
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def choose_mode(mode: str = "auto") -> str:
    """'static' or 'live', following the rules in this module's docstring."""
    if mode not in ("auto", "static", "live"):
        raise ValueError(f"mode must be 'auto', 'static' or 'live', got {mode!r}")
    if mode != "auto":
        return mode
    if is_site_build() or not in_live_kernel():
        return "static"
    return "live"


def _control(name: str, spec):
    """An ipywidget for one control spec: str -> text box, bool -> checkbox, list -> dropdown,
    (min, max, value) -> float slider, (min, max, value, step) with ints -> int slider."""
    import ipywidgets as w

    label = name.replace("_", " ")
    if isinstance(spec, w.ValueWidget):
        return spec
    if isinstance(spec, bool):
        return w.Checkbox(value=spec, description=label)
    if isinstance(spec, str):
        return w.Text(value=spec, description=label, layout=w.Layout(width="100%"), continuous_update=False)
    if isinstance(spec, list):
        return w.Dropdown(options=spec, value=spec[0], description=label)
    if isinstance(spec, tuple) and len(spec) in (3, 4):
        lo, hi, value = spec[:3]
        if all(isinstance(v, int) for v in spec):
            step = spec[3] if len(spec) == 4 else 1
            return w.IntSlider(min=lo, max=hi, value=value, step=step, description=label, continuous_update=False)
        step = spec[3] if len(spec) == 4 else (hi - lo) / 100
        return w.FloatSlider(min=lo, max=hi, value=value, step=step, description=label, continuous_update=False)
    raise TypeError(f"control {name!r}: don't know how to make a widget from {spec!r}")


def live_explorer(make_figure: Callable, **controls):
    """A live ipywidgets explorer: one widget per control, the figure redrawn on every change.

    ``make_figure(**values)`` returns a plotly figure, or raises ValueError with a message for the
    reader (bad input, e.g. an empty sentence): that message is printed instead of the figure.
    Any other exception is a bug and is not swallowed: in a kernel the output area shows its
    traceback (ipywidgets' Output does that), elsewhere it propagates to whoever changed the value.
    Controls: ``sentence="the cat"`` (text box), ``causal=False`` (checkbox),
    ``head=[0, 1, 2]`` (dropdown), ``temperature=(0.1, 4.0, 1.0)`` (slider).
    """
    import ipywidgets as w
    from IPython.display import display

    widgets = {name: _control(name, spec) for name, spec in controls.items()}
    out = w.Output()

    def redraw(*_):
        with out:
            out.clear_output(wait=True)
            try:
                fig = make_figure(**{n: c.value for n, c in widgets.items()})
            except ValueError as e:  # the reader's input, not the code: say why, no traceback
                print(e)
                return
            display(fig)

    for control in widgets.values():
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([*widgets.values(), out])


def show(static: Callable, make_figure: Callable, *, mode: str = "auto", **controls):
    """The book's one entry point for interactive figures.

    On the website (and outside a kernel) returns ``static()``: a plotly figure whose sliders and
    menus hold precomputed variants. In a live kernel returns ``live_explorer(make_figure, **controls)``.
    """
    if choose_mode(mode) == "live":
        return live_explorer(make_figure, **controls)
    return static()


def attention_widget(text: str, attend: Callable = toy_self_attention, *,
                     title: str = "Self-attention of your sentence"):
    """ipywidgets explorer: a text box, a temperature slider and a causal-mask switch."""

    def make_figure(sentence, temperature, causal_mask):
        tokens = tokenize(sentence)
        if not tokens:
            raise ValueError("Type a sentence to see its attention map.")
        weights = attend(tokens, temperature, causal_mask)
        return viz.attention_heatmap(weights, tokens, title=f"{title} (temperature {temperature:.2f})")

    return live_explorer(make_figure, sentence=text, temperature=(0.1, 4.0, 1.0, 0.05), causal_mask=False)


def show_attention(text: str = "the cat sat on the mat", *, attend: Callable = toy_self_attention,
                   temperatures: Sequence[float] = DEFAULT_TEMPERATURES, mode: str = "auto",
                   title: str = "Self-attention of your sentence"):
    """Show the attention map of ``text``: a live widget in your kernel, a slider figure on the site.

    ``attend(tokens, temperature, causal) -> (T, T) weights`` computes one map.
    """
    tokens = tokenize(text)
    if not tokens:
        raise ValueError("text has no tokens: give a sentence such as 'the cat sat on the mat'")

    def static():
        maps = {f"{t:g}": attend(tokens, t, False) for t in temperatures}
        active = list(temperatures).index(1.0) if 1.0 in temperatures else 0
        return viz.attention_explorer(maps, tokens, label="temperature", title=title, active=active)

    if choose_mode(mode) == "live":
        return attention_widget(text, attend, title=title)
    return static()
