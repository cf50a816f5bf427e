"""Attention maps: rows are queries, columns are keys, both labelled with their tokens.

One map (``attention_heatmap``), maps behind a slider or menu (``attention_explorer`` for one
sentence, ``token_map_explorer`` when the tokens change too), one query's weights as bars
(``query_explorer``), and every head at once (``attention_grid``, ``attention_views``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from book.viz.controls import add_variant_control, check_variants
from book.viz.style import (BLUE, COLORSCALE, MASK_COLORSCALE, book_layout, check_labels, colorbar,
                            hover_cells, to_numpy, token_axes, token_map_height)

_HOVER = "query %{customdata[0]} → key %{customdata[1]}<br>"


def _cells(z: np.ndarray, rows, cols, masks: bool) -> np.ndarray:
    """Hover data: (T_q, T_k, 2) token pairs, plus 'may attend'/'blocked' for masks (T_q, T_k, 3)."""
    cells = hover_cells(rows, cols)
    if not masks:
        return cells
    status = np.where(z > 0.5, "may attend", "blocked")  # (T_q, T_k)
    return np.concatenate([cells, status[..., None].astype(object)], axis=-1)


def _cell_text(z: np.ndarray, masks: bool) -> str | None:
    return "%{z:.2f}" if not masks and z.size <= 100 else None  # the numbers in the cells of small maps


def _token_trace(z: np.ndarray, rows, cols, *, zmax: float = 1.0, masks: bool = False,
                 colorbar_title: str = "weight") -> go.Heatmap:
    """One map z (T_q, T_k) at positions 0..T-1 (repeated tokens stay distinct): weights on the blue
    scale, or with ``masks`` booleans in two colours (dark = may attend, light = blocked)."""
    mask_style = dict(showscale=False, xgap=1, ygap=1) if masks else {}
    return go.Heatmap(
        z=z, x=list(range(len(cols))), y=list(range(len(rows))), customdata=_cells(z, rows, cols, masks),
        hovertemplate=_HOVER + ("%{customdata[2]}" if masks else "weight %{z:.4f}") + "<extra></extra>",
        texttemplate=_cell_text(z, masks),
        colorscale=MASK_COLORSCALE if masks else COLORSCALE, zmin=0.0, zmax=1.0 if masks else zmax,
        colorbar=colorbar(colorbar_title), **mask_style,
    )


def _maps_update(zs: Sequence[np.ndarray], rows, cols, *, masks: bool = False, relabel: bool = True,
                 cell_text: bool = True) -> tuple[dict, dict]:
    """(trace changes, layout changes) that draw maps zs, one per trace/subplot, all (T_q, T_k).

    ``relabel``: also move the cells and rename the token axes (the tokens differ between variants).
    """
    data = {"z": list(zs)}
    if masks or relabel:  # a mask's hover says 'blocked' or not: it changes with z
        data["customdata"] = [_cells(z, rows, cols, masks) for z in zs]
    if not relabel:
        return data, {}
    data.update(x=[list(range(len(cols)))] * len(zs), y=[list(range(len(rows)))] * len(zs))
    if cell_text:
        data["texttemplate"] = [_cell_text(z, masks) or "" for z in zs]
    ticks = {}
    for i in range(len(zs)):
        n = str(i + 1) if i else ""  # xaxis, xaxis2, ...
        ticks.update({f"xaxis{n}.tickvals": list(range(len(cols))), f"xaxis{n}.ticktext": list(cols),
                      f"yaxis{n}.tickvals": list(range(len(rows))), f"yaxis{n}.ticktext": list(rows)})
    return data, ticks


def _checked(weights, rows, cols) -> tuple[np.ndarray, list, list]:
    z = to_numpy(weights)
    check_labels(z, rows, cols)
    return z, list(rows), list(cols)


def attention_heatmap(weights, rows: Sequence[str], cols: Sequence[str] | None = None, *,
                      title: str = "Attention weights", zmax: float = 1.0,
                      colorbar_title: str = "weight") -> go.Figure:
    """One attention map: rows are queries, columns are keys; hover shows the exact weight."""
    z, rows, cols = _checked(weights, rows, list(rows) if cols is None else cols)  # (T_q, T_k)
    fig = go.Figure(_token_trace(z, rows, cols, zmax=zmax, colorbar_title=colorbar_title))
    token_axes(fig, rows, cols)
    return book_layout(fig, title, height=token_map_height(len(rows)), margin=dict(b=70))


def token_map_explorer(variants: Mapping[str, tuple], *, control: str = "dropdown", label: str = "variant",
                       title: str = "Attention weights", masks: bool = False, zmax: float = 1.0,
                       x_title: str = "key (attended to)", y_title: str = "query (attending)",
                       active: int = 0, name_in_title: bool = True) -> go.Figure:
    """Token-labelled maps whose labels change from variant to variant, behind a slider or a dropdown.

    ``variants``: {name: (matrix (T_q, T_k), row tokens, column tokens)} — other sentences, or queries
    from one sequence and keys from another (cross-attention). ``masks=True`` draws boolean masks in
    two colours (dark = may attend, light = blocked); otherwise weights on the book's blue scale.
    ``name_in_title=False`` keeps the title short (the control already shows the name; good for phones).
    """
    check_variants(variants, control=control, active=active, what="{name: (matrix, rows, cols)}")
    names = list(variants)
    drawn = [_checked(*variants[n]) for n in names]  # [(z (T_q, T_k), rows, cols)]
    z, rows, cols = drawn[active]
    fig = go.Figure(_token_trace(z, rows, cols, zmax=zmax, masks=masks))
    token_axes(fig, rows, cols, title_x=x_title, title_y=y_title)
    book_layout(fig, title, height=token_map_height(max(len(r) for _, r, _ in drawn)), margin=dict(b=70))
    relabel = any((r, c) != (rows, cols) for _, r, c in drawn)  # same tokens throughout: only z changes
    updates = []
    for n, (z, r, c) in zip(names, drawn):
        data, layout = _maps_update([z], r, c, masks=masks, relabel=relabel)
        named = name_in_title and len(names) > 1  # one map: nothing to name
        updates.append((data, {"title.text": f"{title} — {label}: {n}" if named else title, **layout}))
    return add_variant_control(fig, names, updates, control=control, label=label, active=active)


def attention_explorer(maps: Mapping[str, object], rows: Sequence[str], cols: Sequence[str] | None = None, *,
                       control: str = "slider", label: str = "variant", title: str = "Attention weights",
                       active: int = 0, zmax: float = 1.0) -> go.Figure:
    """Several precomputed maps of the same shape behind a slider or a dropdown.

    ``maps``: {"T = 0.5": weights, "T = 1": weights, ...} — one entry per position of the control.
    The control swaps the drawn map in the browser, so it works on the static site.
    """
    check_variants(maps, control=control, active=active, what="{label: weights}")
    cols = list(rows) if cols is None else list(cols)
    return token_map_explorer({n: (m, rows, cols) for n, m in maps.items()}, control=control, label=label,
                              title=title, zmax=zmax, active=active)


def query_explorer(weights, rows: Sequence[str], cols: Sequence[str] | None = None, *,
                   title: str = "Where one query looks") -> go.Figure:
    """Bar chart of one query's weights over the keys, with a slider to pick the query token."""
    z, rows, cols = _checked(weights, rows, list(rows) if cols is None else cols)  # (T_q, T_k)
    x = list(range(len(cols)))  # positions: repeated tokens stay distinct
    fig = go.Figure(go.Bar(x=x, y=z[0], marker_color=BLUE, customdata=[f"{c} [{j}]" for j, c in enumerate(cols)],
                           hovertemplate="key %{customdata}<br>weight %{y:.4f}<extra></extra>"))
    book_layout(fig, title, height=320, margin=dict(l=60),
                yaxis=dict(range=[0, 1], title_text="attention weight"),
                xaxis=dict(tickmode="array", tickvals=x, ticktext=cols, tickangle=-45, title_text="key"))
    labels = [f"{r} [{i}]" for i, r in enumerate(rows)]
    updates = [({"y": [z[i]]}, {"title.text": f"{title}: query “{r}” [{i}]"}) for i, r in enumerate(rows)]
    return add_variant_control(fig, labels, updates, label="query")


def _heads_grid(zs: Sequence[np.ndarray], names: Sequence[str], rows, cols, *, ncols: int,
                spacing: tuple[float, float], masks: bool = False) -> go.Figure:
    """One small map per head, ncols to a row, sharing one colour scale (its bar shown once).

    Every head has the same query tokens, so only the first column names them: the maps can sit
    close together without one map's labels running into its neighbour (on a phone too). Small
    tick labels and subplot titles; single characters (letters) stand upright."""
    fig = make_subplots(rows=-(-len(zs) // ncols), cols=ncols, subplot_titles=list(names),
                        horizontal_spacing=spacing[0], vertical_spacing=spacing[1])
    for i, z in enumerate(zs):
        r, c = i // ncols + 1, i % ncols + 1
        trace = _token_trace(z, rows, cols, masks=masks).update(texttemplate=None, showscale=i == 0 and not masks)
        fig.add_trace(trace, row=r, col=c)
        token_axes(fig, rows, cols, row=r, col=c, title_x="", title_y="")
        fig.update_yaxes(showticklabels=c == 1, row=r, col=c)
    upright = max((len(str(t)) for t in cols), default=0) <= 2
    fig.update_xaxes(tickfont=dict(size=10), **(dict(tickangle=0) if upright else {}))
    fig.update_yaxes(tickfont=dict(size=10))
    fig.update_annotations(font_size=12)  # the subplot titles
    return fig


def attention_grid(maps: Mapping[str, object], rows: Sequence[str], cols: Sequence[str] | None = None, *,
                   ncols: int = 4, title: str = "All heads", masks: bool = False) -> go.Figure:
    """Small multiples: one map per entry (e.g. per head), sharing one colour scale; ``masks=True``
    draws boolean masks in two colours (dark = may attend, light = blocked)."""
    cols = list(rows) if cols is None else list(cols)
    zs = [_checked(maps[n], rows, cols)[0] for n in maps]  # each (T_q, T_k)
    fig = _heads_grid(zs, list(maps), rows, cols, ncols=ncols, spacing=(0.03, 0.08), masks=masks)
    n_rows = -(-len(zs) // ncols)
    return book_layout(fig, title, height=120 + n_rows * (60 + 16 * len(rows)), margin=dict(l=60, t=80, b=40))


def attention_views(views: Sequence[Mapping], *, title: str = "Attention", ncols: int = 2,
                    label: str = "view", active: int = 0) -> go.Figure:
    """Every head of one attention layer as a grid of maps, and a dropdown over many such layers.

    ``views``: [{"label": "encoder · layer 1", "maps": {"head 1": (T_q, T_k), ...}, "rows": [...],
    "cols": [...]}, ...]; all views have the same number of heads but may differ in size (other
    sentences, self- or cross-attention). The dropdown swaps all heads and the token labels at once.
    """
    check_variants(views, control="dropdown", active=active, what='{"label", "maps", "rows", "cols"}')
    heads = list(views[0]["maps"])
    if any(list(v["maps"]) != heads for v in views):
        raise ValueError("every view must have the same heads, in the same order")
    drawn = [([_checked(v["maps"][h], v["rows"], v["cols"])[0] for h in heads], list(v["rows"]), list(v["cols"]))
             for v in views]  # per view: ([z (T_q, T_k) per head], rows, cols)
    zs, rows, cols = drawn[active]
    fig = _heads_grid(zs, heads, rows, cols, ncols=ncols, spacing=(0.05, 0.2))
    fig.update_xaxes(tickangle=0)
    tallest = max(len(r) for _, r, _ in drawn)
    book_layout(fig, title, height=110 + -(-len(heads) // ncols) * (40 + 15 * tallest), margin=dict(l=40, b=40))
    updates = []
    for v, (zs, rows, cols) in zip(views, drawn):
        data, ticks = _maps_update(zs, rows, cols, cell_text=False)
        updates.append((data, {"title.text": f"{title}: {v['label']}", **ticks}))
    return add_variant_control(fig, [v["label"] for v in views], updates, control="dropdown", label=label,
                               active=active)
