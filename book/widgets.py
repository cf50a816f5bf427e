"""Live explorers (ipywidgets) and the one entry point that picks live or static.

How ``show_attention`` decides what to show (``mode="auto"``):

1. While the website is being built (``BOOK_SITE_BUILD=1``, set by ``book.sphinx_ext``) it returns
   a static plotly figure whose slider holds precomputed maps — interactive in any browser, no kernel.
2. Otherwise, inside a running Jupyter kernel with ipywidgets installed, it returns a live widget:
   type your own sentence, move the sliders, and the map is recomputed by PyTorch.
3. Anywhere else (a plain Python script, a test) it returns the static figure.

Pass ``mode="static"`` or ``mode="live"`` to choose yourself.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from book import viz
from book.attention import causal_mask, scaled_dot_product_attention
from book.data import tokenize, word_vectors
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


def attention_widget(text: str, attend: Callable = toy_self_attention, *,
                     title: str = "Self-attention of your sentence"):
    """ipywidgets explorer: a text box, a temperature slider and a causal-mask switch."""
    import ipywidgets as w
    from IPython.display import display

    box = w.Text(value=text, description="sentence", layout=w.Layout(width="100%"),
                 continuous_update=False)
    temp = w.FloatLogSlider(value=1.0, base=2, min=-3, max=3, step=0.25, description="temperature",
                            continuous_update=False)
    causal = w.Checkbox(value=False, description="causal mask")
    out = w.Output()

    def redraw(*_):
        tokens = tokenize(box.value)
        with out:
            out.clear_output(wait=True)
            if not tokens:
                print("Type a sentence to see its attention map.")
                return
            weights = attend(tokens, temp.value, causal.value)
            display(viz.attention_heatmap(weights, tokens, title=f"{title} (T = {temp.value:.2f})"))

    for control in (box, temp, causal):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([box, w.HBox([temp, causal]), out])


def show_attention(text: str = "the cat sat on the mat", *, attend: Callable = toy_self_attention,
                   temperatures: Sequence[float] = DEFAULT_TEMPERATURES, mode: str = "auto",
                   title: str = "Self-attention of your sentence"):
    """Show the attention map of ``text``: a live widget in your kernel, a slider figure on the site.

    ``attend(tokens, temperature, causal) -> (T, T) weights`` computes one map.
    """
    tokens = tokenize(text)
    if not tokens:
        raise ValueError("text has no tokens: give a sentence such as 'the cat sat on the mat'")
    if choose_mode(mode) == "live":
        return attention_widget(text, attend, title=title)
    maps = {f"{t:g}": attend(tokens, t, False) for t in temperatures}
    active = list(temperatures).index(1.0) if 1.0 in temperatures else 0
    return viz.attention_explorer(maps, tokens, label="temperature", title=title, active=active)
