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
TITLE_CHARS = 40  # characters of a title line that fit a 390 px phone (a 334 px figure, 15 px font)
TITLE_LINE = 20  # px the top margin (and the figure) grows by for each extra title line
TITLE_PAD = 18  # px between the title's last line and the plot (the control helper adds a menu's room)
SUBPLOT_TITLES_PAD = 22  # ... and more above subplot titles
_BREAK_AFTER = (("—", "→"), (":",), ("·",))  # a line may end after these; the first ones are the better places


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


def value_range(zs, zmin: float | None, zmax: float | None, colorscale: str | None):
    """The colour range and scale of heatmaps of numbers: without zmin/zmax, ±(largest |value| of
    all of ``zs``); a range reaching below 0 gets the diverging scale, else the book's blue one."""
    if zmin is None and zmax is None:
        m = max(float(np.abs(z).max()) for z in zs) or 1.0
        zmin, zmax = -m, m
    if colorscale is None:
        colorscale = DIVERGING if zmin is not None and zmin < 0 else COLORSCALE
    return zmin, zmax, colorscale


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


def wrap_text(text: str, width: int) -> str:
    """``text`` with line breaks (``<br>``) so that no line is longer than about ``width`` characters:
    plotly never wraps a title or a button label, and a phone is narrow. Breaks at spaces,
    preferably after '—' or '→', then ':', then '·'; parts that carry markup (``<sub>``) are kept."""
    lines = []
    for part in text.split("<br>"):
        if "<" in part or len(part) <= width:
            lines.append(part)
            continue
        words = []
        for w in part.split(" "):  # a lone separator stays with the word before it
            if words and any(w in seps for seps in _BREAK_AFTER):
                words[-1] += " " + w
            elif w:
                words.append(w)
        line: list[str] = []
        for w in words:
            if line and len(" ".join(line + [w])) > width:
                cut = _break_at(line, width)
                lines.append(" ".join(line[:cut + 1]))
                line = line[cut + 1:]
            line.append(w)
        lines.append(" ".join(line))
    return "<br>".join(lines)


def _break_at(words: list[str], width: int) -> int:
    """Index of the word a full line ends with: after the strongest separator that leaves the line
    at least half full, else after the last word."""
    for seps in _BREAK_AFTER:
        ok = [i for i, w in enumerate(words) if w.endswith(seps) and len(" ".join(words[:i + 1])) >= width // 2]
        if ok:
            return ok[-1]
    return len(words) - 1


def extra_lines(wrapped: str, text: str) -> int:
    """Lines ``wrap_text`` added to ``text``."""
    return wrapped.count("<br>") - text.count("<br>")


def place_title(fig: go.Figure, *, below: float | None = None, lines: int | None = None) -> go.Figure:
    """Keep the title's last line ``below`` px above the plot (or above a menu: the control helper
    says so). Plotly anchors a title's first line and runs further lines downwards, so the anchor
    moves up by the extra lines of the longest title the figure shows (``lines``, in any variant)."""
    if below is not None:
        fig._title_below = below
    if lines is not None:
        fig._title_lines = lines
    below = getattr(fig, "_title_below", TITLE_PAD)
    lines = getattr(fig, "_title_lines", (fig.layout.title.text or "").count("<br>") + 1)
    return fig.update_layout(title_pad_b=below + TITLE_LINE * (lines - 1))


def token_map_height(n_rows: int) -> int:
    """px for a token-labelled map of n_rows rows (without a control)."""
    return int(min(720, 200 + 26 * n_rows))


def book_layout(fig: go.Figure, title: str, *, height: float, margin: dict | None = None, **more) -> go.Figure:
    """The book's layout: a left-aligned title, white template, system font; ``margin`` overrides
    some sides of MARGIN; ``more`` goes to ``update_layout``. A title too long for a phone is
    broken into lines (``wrap_text``); the top margin and the figure grow by the extra lines."""
    margin = {**MARGIN, **(margin or {})}
    shown = wrap_text(title, TITLE_CHARS)
    fig._title_lines_added = extra_lines(shown, title)  # read by the control helper (titles per variant)
    grow = TITLE_LINE * fig._title_lines_added
    margin["t"] += grow
    fig.update_layout(
        title=dict(text=shown, x=0.0, xanchor="left", font=dict(size=15), yref="paper", y=1.0, yanchor="bottom"),
        template="plotly_white",
        font=FONT,
        height=int(height) + grow,
        margin=margin,
        **more,
    )
    pad = TITLE_PAD + (SUBPLOT_TITLES_PAD if fig.layout.annotations else 0)  # subplot titles are annotations
    return place_title(fig, below=pad, lines=shown.count("<br>") + 1)
