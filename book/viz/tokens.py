"""How a text splits into tokens: one coloured box per token, rows that fit a phone; and what each
layer of a language model predicts at each token (the logit lens, chapter 11); and a weight on
each character of a text (what a classifier attends to, chapter 14)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from book.viz.controls import add_variant_control, check_variants
from book.viz.style import COLORSCALE, book_layout, colorbar, to_numpy

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


def logit_lens_explorer(variants: Mapping[str, tuple], *, title: str = "The logit lens",
                        label: str = "prompt", control: str = "dropdown", active: int = 0) -> go.Figure:
    """What each layer would predict: one heatmap per prompt, layers (rows, bottom = first) ×
    input positions (columns), coloured by the probability of that layer's most likely next token,
    which is written in the cell; hover shows the input token too.

    ``variants``: {prompt name: (probs (L, T), top tokens (L, T) strings, input tokens (T,))}.
    """
    check_variants(variants, control=control, active=active, what="{name: (probs, top tokens, inputs)}")
    names = list(variants)
    drawn = []
    for n in names:
        probs, top, inputs = variants[n]
        z = np.asarray(to_numpy(probs), dtype=float)  # (L, T)
        top = np.asarray(top, dtype=object)
        if z.ndim != 2 or top.shape != z.shape or len(inputs) != z.shape[1]:
            raise ValueError(f"{n!r}: need probs (L, T), top tokens (L, T) and T input tokens; got "
                             f"{z.shape}, {top.shape} and {len(inputs)}")
        hover = np.array([[f"layer {i} · after “{inputs[j]}” [{j}]" for j in range(z.shape[1])]
                          for i in range(z.shape[0])], dtype=object)
        drawn.append((z, top, list(inputs), hover))

    def cells(z, top, inputs, hover):
        return {"z": [z], "text": [top], "customdata": [hover], "x": [list(range(z.shape[1]))],
                "y": [list(range(z.shape[0]))]}

    z, top, inputs, hover = drawn[active]
    fig = go.Figure(go.Heatmap(**{k: v[0] for k, v in cells(z, top, inputs, hover).items()},
                               texttemplate="%{text}", textfont=dict(size=9), zmin=0, zmax=1,
                               colorscale=COLORSCALE, colorbar=colorbar("probability"),
                               hovertemplate="%{customdata}<br>top next token “%{text}”"
                                             "<br>probability %{z:.3f}<extra></extra>"))
    height = 160 + 16 * max(d[0].shape[0] for d in drawn)
    book_layout(fig, title, height=height, margin=dict(l=60, b=90))
    updates = []
    for n, (z, top, inputs, hover) in zip(names, drawn):
        axes = {"xaxis.tickvals": list(range(len(inputs))), "xaxis.ticktext": inputs}
        updates.append((cells(z, top, inputs, hover), {"title.text": f"{title} — {n}", **axes}))
    fig.update_xaxes(tickvals=list(range(len(inputs))), ticktext=inputs, tickangle=-45,
                     title_text="input position (the next token is predicted)")
    fig.update_yaxes(title_text="layer (0 = embeddings)")
    return add_variant_control(fig, names, updates, control=control, label=label, active=active)


def _strip(chars: Sequence[str], weights, per_row: int):
    """Characters row by row: (z, text, hover), each (rows, per_row); None = an empty cell."""
    n_rows = max(1, -(-len(chars) // per_row))
    z = np.full((n_rows, per_row), None, dtype=object)
    text = np.full((n_rows, per_row), "", dtype=object)
    hover = np.full((n_rows, per_row), "", dtype=object)
    for i, (c, w) in enumerate(zip(chars, weights)):
        r, col = divmod(i, per_row)
        z[r, col], text[r, col] = float(w), c.replace(" ", "␣")
        hover[r, col] = f"character {i + 1} “{text[r, col]}”: weight {float(w):.3f}"
    return z.tolist(), text.tolist(), hover.tolist()


def character_attention_explorer(variants: Mapping[str, tuple], *, title: str, label: str = "review",
                                 per_row: int = 16, value_name: str = "attention") -> go.Figure:
    """{name: (characters, weights)} -> each review's characters in rows of ``per_row``, each cell
    shaded by its weight (e.g. the class token's attention), behind a dropdown menu."""
    check_variants(variants, control="dropdown", what="{name: (characters, weights)}")
    names = list(variants)
    for n in names:
        chars, w = variants[n]
        if len(chars) != len(to_numpy(w)):
            raise ValueError(f"{n!r}: {len(chars)} characters but {len(to_numpy(w))} weights")
    drawn = [_strip(variants[n][0], to_numpy(variants[n][1]), per_row) for n in names]
    zmax = max(float(to_numpy(variants[n][1]).max()) for n in names)
    most_rows = max(len(z) for z, _, _ in drawn)
    z, text, hover = drawn[0]
    fig = go.Figure(go.Heatmap(z=z, text=text, customdata=hover, texttemplate="%{text}", zmin=0, zmax=zmax,
                               colorscale=COLORSCALE, colorbar=colorbar(value_name), xgap=2, ygap=2,
                               hovertemplate="%{customdata}<extra></extra>", textfont=dict(size=15)))
    book_layout(fig, title, height=150 + 40 * most_rows, margin=dict(l=10, b=20))
    fig.update_xaxes(visible=False, range=[-0.5, per_row - 0.5])
    fig.update_yaxes(visible=False, autorange="reversed")
    updates = [({"z": [z], "text": [t], "customdata": [h]}, {"title.text": f"{title} — {n}"})
               for n, (z, t, h) in zip(names, drawn)]
    return add_variant_control(fig, names, updates, control="dropdown", label=label)
