"""The look every figure shares: the site renderer, fonts and colour scales, input checks, hover
cells, and the layout and token-axis helpers the builders start from."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

SITE_RENDERER = "book_site"
PLOT_CONFIG = {"responsive": True, "displaylogo": False, "displayModeBar": False}  # no toolbar over titles on phones
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', sans-serif", size=13)
COLORSCALE = "Blues"  # light -> dark blue: readable on white cards in both light and dark themes
DIVERGING = "RdBu"  # red < 0 < blue, white at 0
MASK_COLORSCALE = [[0.0, "#e2e8f0"], [0.5, "#e2e8f0"], [0.5, "#2b6cb0"], [1.0, "#2b6cb0"]]  # blocked, may attend
BLUE = "#2b6cb0"  # the book's one accent colour (the dark end of COLORSCALE)
MARGIN = dict(l=70, r=20, t=60, b=60)  # px; room for axis titles and tick labels
LEGEND_BELOW = dict(orientation="h", y=-0.2)  # a legend under the plot leaves its full width to the data


class _SiteRenderer(MimetypeRenderer):
    """HTML without plotly.js, MathJax or auto-play: the page loads plotly.js once, from _static."""

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            auto_play=False,
            config=PLOT_CONFIG,
            validate=False,
        )
        return {"text/html": f'<div class="book-plotly">{html}</div>'}


def use_site_renderer() -> None:
    """Make every ``fig.show()`` / displayed figure emit site-ready HTML."""
    pio.renderers[SITE_RENDERER] = _SiteRenderer()
    pio.renderers.default = SITE_RENDERER


def to_numpy(a) -> np.ndarray:
    """Any array-like (a torch tensor on any device too) as floats rounded to 4 decimals."""
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.round(np.asarray(a, dtype=float), 4)  # 4 decimals: what hover shows; keeps pages light


def check_labels(weights: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> None:
    """A clear error unless ``weights`` is (len(rows), len(cols))."""
    if weights.ndim != 2:
        raise ValueError(f"an attention map must be 2-D (T_q, T_k); got shape {weights.shape}")
    if len(rows) != weights.shape[0] or len(cols) != weights.shape[1]:
        raise ValueError(
            f"labels don't match the map: {len(rows)} row labels and {len(cols)} column labels "
            f"for a map of shape {weights.shape}"
        )


def hover_cells(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """(T_q, T_k, 2) array of (row token, column token) strings, shown on hover."""
    cells = np.empty((len(rows), len(cols), 2), dtype=object)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cells[i, j] = (f"{r} [{i}]", f"{c} [{j}]")  # the index keeps repeated tokens apart
    return cells


def colorbar(title: str, **more) -> dict:
    """The book's slim colour bar."""
    return dict(title=dict(text=title), thickness=12, **more)


def token_axes(fig, rows, cols, row=None, col=None, title_x="key (attended to)", title_y="query (attending)"):
    """Label a heatmap drawn at positions 0..T-1 with its tokens: columns along x, rows down y."""
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(cols))), ticktext=list(cols),
                     title_text=title_x, tickangle=-45, side="bottom", row=row, col=col)
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(rows))), ticktext=list(rows),
                     title_text=title_y, autorange="reversed", row=row, col=col)


def token_map_height(n_rows: int) -> int:
    """px for a token-labelled map of n_rows rows (without a control)."""
    return int(min(720, 200 + 26 * n_rows))


def book_layout(fig: go.Figure, title: str, *, height: float, margin: dict | None = None, **more) -> go.Figure:
    """The book's layout: a left-aligned title, white template, system font; ``margin`` overrides
    some sides of MARGIN; ``more`` goes to ``update_layout``."""
    return fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=15)),
        template="plotly_white",
        font=FONT,
        height=int(height),
        margin={**MARGIN, **(margin or {})},
        **more,
    )
