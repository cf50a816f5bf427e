"""How a text splits into tokens: one coloured box per token, rows that fit a phone."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from book.viz.controls import add_variant_control, check_variants
from book.viz.style import book_layout

PER_ROW = 10  # tokens per row: a 390 px phone still shows ~30 px per box
STRIP_COLORS = [[0.0, "#bfdbfe"], [0.5, "#bfdbfe"], [0.5, "#fde68a"], [1.0, "#fde68a"]]  # blue, amber


def _grid(tokens: Sequence[str], per_row: int):
    """Tokens laid out row by row: (z, text, hover), each (rows, per_row); z alternates 0/1, None = empty."""
    n_rows = max(1, -(-len(tokens) // per_row))
    z = np.full((n_rows, per_row), None, dtype=object)
    text = np.full((n_rows, per_row), "", dtype=object)
    for i, tok in enumerate(tokens):
        r, c = divmod(i, per_row)
        z[r, c], text[r, c] = i % 2, tok.replace(" ", "␣")
    hover = np.array([[f"token {r * per_row + c + 1}: {text[r, c]}" if z[r, c] is not None else ""
                       for c in range(per_row)] for r in range(n_rows)], dtype=object)
    return z.tolist(), text.tolist(), hover.tolist()


def token_strip_explorer(variants: Mapping[str, Sequence[str]], *, title: str = "How the text splits",
                         label: str = "variant", control: str = "slider", active: int = 0,
                         per_row: int = PER_ROW) -> go.Figure:
    """{name: tokens} -> boxes, one per token (alternating colours show the boundaries), behind a
    slider or a dropdown: e.g. the same sentence after 0, 10, 100 … merges of a BPE tokenizer."""
    check_variants(variants, control=control, active=active, what="{name: tokens}")
    names = list(variants)
    most_rows = max(max(1, -(-len(variants[n]) // per_row)) for n in names)
    z, text, hover = _grid(variants[names[active]], per_row)
    fig = go.Figure(go.Heatmap(z=z, text=text, customdata=hover, texttemplate="%{text}", zmin=0, zmax=1,
                               colorscale=STRIP_COLORS, showscale=False, xgap=3, ygap=3,
                               hovertemplate="%{customdata}<extra></extra>", textfont=dict(size=13)))
    book_layout(fig, title, height=110 + 42 * most_rows, margin=dict(l=10, r=10, b=20))
    fig.update_xaxes(visible=False, range=[-0.5, per_row - 0.5])
    fig.update_yaxes(visible=False, autorange="reversed", range=None)
    updates = []
    for n in names:
        z, text, hover = _grid(variants[n], per_row)
        count = len(variants[n])
        updates.append(({"z": [z], "text": [text], "customdata": [hover]},
                        {"title.text": f"{title} — {label}: {n} ({count} token{'s' * (count != 1)})"}))
    return add_variant_control(fig, names, updates, control=control, label=label, active=active)
