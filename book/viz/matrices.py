"""Heatmaps of numbers: a similarity matrix, numeric matrices behind a control (e.g. positions ×
features), positive values on a log scale (e.g. gradient norms), and confusion matrices."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from book.viz.controls import add_variant_control, check_variants
from book.viz.style import (COLORSCALE, DIVERGING, book_layout, check_labels, colorbar, hover_cells, to_numpy,
                            token_axes, token_map_height, value_range)


def similarity_heatmap(sim, labels: Sequence[str], *, title: str = "Cosine similarity",
                       colorbar_title: str = "cosine") -> go.Figure:
    """A symmetric similarity matrix in [-1, 1] on a diverging scale: red = opposite, blue = alike."""
    z = to_numpy(sim)  # (N, N)
    check_labels(z, labels, labels)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(labels))), y=list(range(len(labels))),
        customdata=hover_cells(labels, labels),
        hovertemplate="%{customdata[0]} · %{customdata[1]}<br>similarity %{z:.3f}<extra></extra>",
        texttemplate="%{z:.1f}" if len(labels) ** 2 <= 144 else None,
        colorscale=DIVERGING, zmin=-1.0, zmax=1.0, zmid=0.0, colorbar=colorbar(colorbar_title),
    ))
    token_axes(fig, labels, labels, title_x="", title_y="")
    return book_layout(fig, title, height=token_map_height(len(labels)), margin=dict(b=70))


def _hover(x_title: str, y_title: str, value: str) -> str:
    return f"{y_title} %{{y}} · {x_title} %{{x}}<br>{value}<extra></extra>"


def _matrix_layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    """Rows top to bottom, columns left to right, as a matrix is written."""
    return book_layout(fig, title, height=440, xaxis=dict(title_text=x_title),
                       yaxis=dict(title_text=y_title, autorange="reversed"))


def matrix_explorer(maps: Mapping[str, object], *, title: str, x_title: str, y_title: str,
                    label: str = "variant", control: str = "slider", active: int = 0,
                    zmin: float | None = None, zmax: float | None = None, colorscale: str | None = None,
                    value_name: str = "value") -> go.Figure:
    """Heatmaps of numeric matrices (their shapes may differ) behind one slider or dropdown.

    Rows run top to bottom and columns left to right, both numbered from 0 (e.g. positions ×
    features). Without zmin/zmax the colour range is ±(largest |value| of all maps) on a diverging
    scale (red < 0 < blue); with zmin >= 0 the book's light-to-dark blue scale is used.
    """
    check_variants(maps, control=control, active=active, what="{label: matrix}")
    names = list(maps)
    zs = [to_numpy(maps[n]) for n in names]  # each (rows, cols); shapes may differ
    for n, z in zip(names, zs):
        if z.ndim != 2:
            raise ValueError(f"{n!r}: need a 2-D matrix, got shape {z.shape}")
    zmin, zmax, colorscale = value_range(zs, zmin, zmax, colorscale)

    def cells(z):  # trace changes that draw z with its own row and column numbers
        return {"z": [z], "x": [list(range(z.shape[1]))], "y": [list(range(z.shape[0]))]}

    fig = go.Figure(go.Heatmap(colorscale=colorscale, zmin=zmin, zmax=zmax, colorbar=colorbar(value_name),
                               hovertemplate=_hover(x_title, y_title, f"{value_name} %{{z:.3f}}")))
    _matrix_layout(fig, title, x_title, y_title)
    updates = [(cells(z), {"title.text": f"{title} — {label}: {n}"}) for n, z in zip(names, zs)]
    return add_variant_control(fig, names, updates, control=control, label=label, active=active)


def _log_colorscale(zmin: float, zmax: float) -> list:
    """Blue below 10^0 = 1 (shrinking), white at 1, red above (growing), for colours log10(value)."""
    w = -zmin / (zmax - zmin)  # where 1 falls on the colour bar
    return [[0.0, "#08306b"], [0.5 * w, "#4292c6"], [0.9 * w, "#deebf7"], [w, "#ffffff"],
            [w + 0.4 * (1 - w), "#fc9272"], [1.0, "#a50f15"]]


def log_heatmap_explorer(maps: Mapping[str, object], x: Sequence[float], y: Sequence[float], *, title: str,
                         x_title: str, y_title: str, value_name: str = "value", label: str = "variant",
                         control: str = "dropdown", zmin: float = -8.0, zmax: float = 4.0,
                         active: int = 0) -> go.Figure:
    """Positive numbers (e.g. gradient norms) on a log scale, behind a dropdown or slider.

    Each entry of ``maps`` is a (len(y), len(x)) matrix. Colour is log10(value): white at 1, blue
    below (shrinking), red above (growing); hover shows the value itself. ``x`` and ``y`` are the
    labels of the columns and rows: numbers are placed to scale, strings as evenly spaced categories.
    """
    check_variants(maps, control=control, active=active, what="{label: matrix}")
    names = list(maps)
    values = [to_numpy(maps[n]) for n in names]  # each (len(y), len(x))
    for n, v in zip(names, values):
        if v.shape != (len(y), len(x)):
            raise ValueError(f"{n!r}: need a matrix of shape (len(y), len(x)) = {(len(y), len(x))}, got {v.shape}")
    if not zmin < 0 < zmax:
        raise ValueError(f"need zmin < 0 < zmax (log10 of the colour range), got {zmin} and {zmax}")
    ticks = list(range(int(np.ceil(zmin)), int(np.floor(zmax)) + 1, 2))  # powers of ten on the colour bar
    fig = go.Figure(go.Heatmap(
        x=list(x), y=list(y), colorscale=_log_colorscale(zmin, zmax), zmin=zmin, zmax=zmax,
        hovertemplate=_hover(x_title, y_title, f"{value_name} %{{customdata:.2e}}"),
        colorbar=colorbar(value_name, tickvals=ticks, ticktext=[f"1e{t}" if t else "1" for t in ticks]),
    ))
    _matrix_layout(fig, title, x_title, y_title)  # a fixed title: the control names the variant
    for axis, labels in ((fig.layout.xaxis, x), (fig.layout.yaxis, y)):
        if all(isinstance(v, str) for v in labels):
            axis.type = "category"
    updates = [{"z": [np.log10(np.clip(v, 1e-30, None))], "customdata": [v]} for v in values]  # colour, hover
    return add_variant_control(fig, names, updates, control=control, label=label, active=active, method="restyle")


def confusion_heatmap(tables: Mapping[str, object], labels: Sequence[str], *,
                      title: str = "Confusion matrix", label: str = "model") -> go.Figure:
    """{model name: (C, C) counts} -> a heatmap per model behind a menu: rows are the true class,
    columns the predicted one; each cell shows its count and the share of its row."""
    check_variants(tables, control="dropdown", what="{name: counts}")
    names, zs = list(tables), [to_numpy(tables[n]).astype(float) for n in tables]
    for n, z in zip(names, zs):
        if z.shape != (len(labels), len(labels)):
            raise ValueError(f"{n!r}: need a {len(labels)} × {len(labels)} table, got shape {z.shape}")

    def text(z):
        share = z / np.maximum(z.sum(1, keepdims=True), 1)
        n_rows, n_cols = z.shape
        return [[f"{int(z[i, j]):,}<br>{share[i, j]:.1%}" for j in range(n_cols)] for i in range(n_rows)]

    fig = go.Figure(go.Heatmap(z=zs[0], x=list(labels), y=list(labels), text=text(zs[0]),
                               texttemplate="%{text}", colorscale=COLORSCALE, zmin=0,
                               zmax=max(z.max() for z in zs), colorbar=colorbar("reviews"),
                               hovertemplate="true %{y}, predicted %{x}: %{z:,}<extra></extra>"))
    book_layout(fig, title, height=420, xaxis=dict(title_text="predicted", type="category"),
                yaxis=dict(title_text="true", type="category", autorange="reversed"))
    updates = [({"z": [z], "text": [text(z)]}, {"title.text": f"{title} — {n}"}) for n, z in zip(names, zs)]
    return add_variant_control(fig, names, updates, control="dropdown", label=label)
