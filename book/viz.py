"""Plotly figures for the book, built so they stay interactive on the static website.

Every control here (slider, dropdown) is plotly's own: the variants are computed in Python
beforehand and stored in the figure, so the browser can switch between them with no kernel.

On the website, ``use_site_renderer()`` (called by ``book.setup()`` during the build) makes each
figure an HTML snippet that relies on the site's single shared copy of plotly.js.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer
from plotly.subplots import make_subplots

SITE_RENDERER = "book_site"
PLOT_CONFIG = {"responsive": True, "displaylogo": False, "displayModeBar": False}  # no toolbar over titles on phones
COLORSCALE = "Blues"  # light -> dark blue: readable on white cards in both light and dark themes
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', sans-serif", size=13)


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


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor, on any device
        a = a.detach().cpu().numpy()
    return np.round(np.asarray(a, dtype=float), 4)  # 4 decimals: what hover shows; keeps pages light


def _check_labels(weights: np.ndarray, rows: Sequence[str], cols: Sequence[str]) -> None:
    if weights.ndim != 2:
        raise ValueError(f"an attention map must be 2-D (T_q, T_k); got shape {weights.shape}")
    if len(rows) != weights.shape[0] or len(cols) != weights.shape[1]:
        raise ValueError(
            f"labels don't match the map: {len(rows)} row labels and {len(cols)} column labels "
            f"for a map of shape {weights.shape}"
        )


def _hover_cells(rows: Sequence[str], cols: Sequence[str]) -> np.ndarray:
    """(T_q, T_k, 2) array of (query token, key token) strings, shown on hover."""
    cells = np.empty((len(rows), len(cols), 2), dtype=object)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cells[i, j] = (f"{r} [{i}]", f"{c} [{j}]")
    return cells


def _heatmap_trace(z, rows, cols, zmax, colorbar_title) -> go.Heatmap:
    show_text = len(rows) * len(cols) <= 100  # write the numbers in the cells of small maps
    return go.Heatmap(
        z=z,
        x=list(range(len(cols))),  # positions, not strings: duplicate tokens stay distinct
        y=list(range(len(rows))),
        customdata=_hover_cells(rows, cols),
        hovertemplate="query %{customdata[0]} → key %{customdata[1]}<br>weight %{z:.4f}<extra></extra>",
        texttemplate="%{z:.2f}" if show_text else None,
        colorscale=COLORSCALE,
        zmin=0.0,
        zmax=zmax,
        colorbar=dict(title=dict(text=colorbar_title), thickness=12),
    )


def _axes(fig, rows, cols, row=None, col=None, title_x="key (attended to)", title_y="query (attending)"):
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(cols))), ticktext=list(cols),
                     title_text=title_x, tickangle=-45, side="bottom", row=row, col=col)
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(rows))), ticktext=list(rows),
                     title_text=title_y, autorange="reversed", row=row, col=col)


def _layout(fig, title, n_rows, extra_height=0):
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=15)),
        template="plotly_white",
        font=FONT,
        height=int(min(720, 200 + 26 * n_rows + extra_height)),
        margin=dict(l=70, r=20, t=60, b=70),
    )
    return fig


def attention_heatmap(weights, rows: Sequence[str], cols: Sequence[str] | None = None, *,
                      title: str = "Attention weights", zmax: float = 1.0,
                      colorbar_title: str = "weight") -> go.Figure:
    """One attention map: rows are queries, columns are keys; hover shows the exact weight."""
    z = _to_numpy(weights)
    cols = list(rows) if cols is None else list(cols)
    _check_labels(z, rows, cols)
    fig = go.Figure(_heatmap_trace(z, rows, cols, zmax, colorbar_title))
    _axes(fig, rows, cols)
    return _layout(fig, title, len(rows))


def attention_explorer(maps: Mapping[str, object], rows: Sequence[str], cols: Sequence[str] | None = None, *,
                       control: str = "slider", label: str = "variant", title: str = "Attention weights",
                       active: int = 0, zmax: float = 1.0) -> go.Figure:
    """Several precomputed maps of the same shape behind a slider or a dropdown.

    ``maps``: {"T = 0.5": weights, "T = 1": weights, ...} — one entry per position of the control.
    The control swaps the drawn map in the browser, so it works on the static site.
    """
    if control not in ("slider", "dropdown"):
        raise ValueError(f"control must be 'slider' or 'dropdown', got {control!r}")
    if not maps:
        raise ValueError("maps is empty: give at least one {label: weights} entry")
    cols = list(rows) if cols is None else list(cols)
    names = list(maps)
    zs = [_to_numpy(maps[n]) for n in names]
    for z in zs:
        _check_labels(z, rows, cols)
    fig = go.Figure(_heatmap_trace(zs[active], rows, cols, zmax, "weight"))
    _axes(fig, rows, cols)
    steps = [
        dict(method="update", label=n, args=[{"z": [z]}, {"title.text": f"{title} — {label}: {n}"}])
        for n, z in zip(names, zs)
    ]
    fig.update_layout(title_text=f"{title} — {label}: {names[active]}")
    if control == "slider":
        fig.update_layout(sliders=[dict(active=active, steps=steps, pad=dict(t=95),
                                         currentvalue=dict(prefix=f"{label}: ", xanchor="right"))])
        return _layout(fig, fig.layout.title.text, len(rows), extra_height=110)
    fig.update_layout(updatemenus=[dict(buttons=steps, active=active, x=0.0, xanchor="left", y=1.0,
                                        yanchor="bottom", pad=dict(b=8), direction="down")])
    fig = _layout(fig, fig.layout.title.text, len(rows), extra_height=60)
    return fig.update_layout(margin=dict(t=110))  # title on top, the menu below it: no overlap on phones


def query_explorer(weights, rows: Sequence[str], cols: Sequence[str] | None = None, *,
                   title: str = "Where one query looks") -> go.Figure:
    """Bar chart of one query's weights over the keys, with a slider to pick the query token."""
    z = _to_numpy(weights)
    cols = list(rows) if cols is None else list(cols)
    _check_labels(z, rows, cols)
    x = list(range(len(cols)))
    fig = go.Figure(go.Bar(x=x, y=z[0], marker_color="#2b6cb0",
                           customdata=[f"{c} [{j}]" for j, c in enumerate(cols)],
                           hovertemplate="key %{customdata}<br>weight %{y:.4f}<extra></extra>"))
    steps = [
        dict(method="update", label=f"{r} [{i}]",
             args=[{"y": [z[i]]}, {"title.text": f"{title}: query “{r}” [{i}]"}])
        for i, r in enumerate(rows)
    ]
    fig.update_layout(
        title=dict(text=f"{title}: query “{rows[0]}” [0]", x=0.0, xanchor="left"),
        template="plotly_white", font=FONT, height=420, margin=dict(l=60, r=20, t=60, b=60),
        yaxis=dict(range=[0, 1], title_text="attention weight"),
        xaxis=dict(tickmode="array", tickvals=x, ticktext=cols, tickangle=-45, title_text="key"),
        sliders=[dict(active=0, steps=steps, pad=dict(t=85), currentvalue=dict(prefix="query: ", xanchor="right"))],
    )
    return fig


def attention_grid(maps: Mapping[str, object], rows: Sequence[str], cols: Sequence[str] | None = None, *,
                   ncols: int = 4, title: str = "All heads") -> go.Figure:
    """Small multiples: one map per entry (e.g. per head), sharing one colour scale."""
    cols = list(rows) if cols is None else list(cols)
    names = list(maps)
    nrows = -(-len(names) // ncols)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=names,
                        horizontal_spacing=0.04, vertical_spacing=0.08)
    for idx, n in enumerate(names):
        z = _to_numpy(maps[n])
        _check_labels(z, rows, cols)
        tr = _heatmap_trace(z, rows, cols, 1.0, "weight")
        tr.update(texttemplate=None, showscale=idx == 0)
        r, c = idx // ncols + 1, idx % ncols + 1
        fig.add_trace(tr, row=r, col=c)
        _axes(fig, rows, cols, row=r, col=c, title_x="", title_y="")
    fig.update_layout(title=dict(text=title, x=0.0), template="plotly_white", font=FONT,
                      height=int(120 + nrows * (60 + 16 * len(rows))), margin=dict(l=60, r=20, t=80, b=40))
    return fig


def line_plot(x, ys: Mapping[str, Sequence[float]], *, title: str, x_title: str, y_title: str,
              log_x: bool = False, log_y: bool = False, mode: str = "lines+markers") -> go.Figure:
    """A plain multi-series line chart in the book's style (hover shows exact values)."""
    fig = go.Figure()
    for name, y in ys.items():
        fig.add_trace(go.Scatter(x=list(x), y=list(y), name=name, mode=mode))
    fig.update_layout(title=dict(text=title, x=0.0), template="plotly_white", font=FONT, height=420,
                      margin=dict(l=70, r=20, t=60, b=60), xaxis_title=x_title, yaxis_title=y_title,
                      legend=dict(orientation="h", y=-0.2))
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


# ----------------------------------------------------------------------------- chapter 01 (foundations)
def similarity_heatmap(sim, labels: Sequence[str], *, title: str = "Cosine similarity",
                       colorbar_title: str = "cosine") -> go.Figure:
    """A symmetric similarity matrix in [-1, 1] on a diverging scale: red = opposite, blue = alike."""
    z = _to_numpy(sim)
    _check_labels(z, labels, labels)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(labels))), y=list(range(len(labels))),
        customdata=_hover_cells(labels, labels),
        hovertemplate="%{customdata[0]} · %{customdata[1]}<br>similarity %{z:.3f}<extra></extra>",
        texttemplate="%{z:.1f}" if len(labels) ** 2 <= 144 else None,
        colorscale="RdBu", zmin=-1.0, zmax=1.0, zmid=0.0,
        colorbar=dict(title=dict(text=colorbar_title), thickness=12),
    ))
    _axes(fig, labels, labels, title_x="", title_y="")
    return _layout(fig, title, len(labels))


def linear_map_explorer(matrices: Mapping[str, object], *, title: str = "What a matrix does to the unit circle",
                        label: str = "matrix") -> go.Figure:
    """For symmetric 2×2 matrices: the unit circle, its image (an ellipse) and the eigenvectors scaled
    by their eigenvalues, with a slider over the precomputed matrices (short names as slider labels;
    the title shows the matrix itself)."""
    if not matrices:
        raise ValueError("matrices is empty: give at least one {label: 2x2 matrix} entry")
    t = np.linspace(0, 2 * np.pi, 121)
    circle = np.stack([np.cos(t), np.sin(t)])  # (2, 121)
    variants = []
    for name, m in matrices.items():
        a = _to_numpy(m)
        if a.shape != (2, 2) or not np.allclose(a, a.T):
            raise ValueError(f"{name!r}: need a symmetric 2x2 matrix, got shape {a.shape}")
        lam, vec = np.linalg.eigh(a)  # ascending eigenvalues, eigenvectors in the columns
        image = a @ circle  # (2, 121)
        arrows = [lam[i] * vec[:, i] for i in (1, 0)]  # largest eigenvalue first
        entries = ", ".join("[" + ", ".join(f"{v:g}" for v in row) + "]" for row in a)
        heading = (f"{title}<br><sub>{name}: A = [{entries}]<br>"
                   f"λ₁ = {lam[1]:.2f} (orange), λ₂ = {lam[0]:.2f} (green)</sub>")
        variants.append((name, heading, image, arrows, lam[::-1]))
    r = 1.15 * max(1.0, *(np.abs(v[2]).max() for v in variants))

    def traces(image, arrows, lam):
        xs = [circle[0], image[0]] + [[0, a[0]] for a in arrows]
        ys = [circle[1], image[1]] + [[0, a[1]] for a in arrows]
        names = ["unit circle", "image A·x", f"λ₁ = {lam[0]:.2f} · q₁", f"λ₂ = {lam[1]:.2f} · q₂"]
        return xs, ys, names

    xs, ys, names = traces(*variants[0][2:])
    styles = [dict(color="#a0aec0", dash="dot"), dict(color="#2b6cb0", width=3),
              dict(color="#dd6b20", width=4), dict(color="#2f855a", width=4)]
    fig = go.Figure([go.Scatter(x=x, y=y, name=n, mode="lines" if i < 2 else "lines+markers", line=s,
                                hoverinfo="name" if i < 2 else "x+y+name")
                     for i, (x, y, n, s) in enumerate(zip(xs, ys, names, styles))])
    steps = []
    for name, heading, image, arrows, lam in variants:
        sx, sy, sn = traces(image, arrows, lam)
        steps.append(dict(method="update", label=name, args=[{"x": sx, "y": sy, "name": sn}, {"title.text": heading}]))
    fig.update_layout(
        title=dict(text=variants[0][1], x=0.0, xanchor="left"),
        template="plotly_white", font=FONT, height=600, margin=dict(l=50, r=20, t=100, b=40),
        xaxis=dict(range=[-r, r], zeroline=True, constrain="domain"),
        yaxis=dict(range=[-r, r], zeroline=True, scaleanchor="x", scaleratio=1, constrain="domain"),
        showlegend=False,  # the subtitle names the colours; hover names every trace
        sliders=[dict(active=0, steps=steps, pad=dict(t=40), currentvalue=dict(prefix=f"{label}: "))],
    )
    return fig


def labeled_scatter(points, labels: Sequence[str], groups: Sequence[str] | None = None, *,
                    title: str, x_title: str, y_title: str) -> go.Figure:
    """2-D points with a text label each, coloured by group (e.g. words on their top two axes)."""
    p = _to_numpy(points)
    if p.ndim != 2 or p.shape[1] != 2 or len(labels) != len(p):
        raise ValueError(f"need points of shape (N, 2) and N labels, got {p.shape} and {len(labels)} labels")
    groups = list(groups) if groups is not None else [""] * len(p)
    fig = go.Figure()
    for g in dict.fromkeys(groups):  # groups in order of first appearance
        idx = [i for i, gi in enumerate(groups) if gi == g]
        places = ["top center", "bottom center", "middle right", "middle left"]  # spread crowded labels
        fig.add_trace(go.Scatter(x=p[idx, 0], y=p[idx, 1], mode="markers+text", name=g or "points",
                                 text=[labels[i] for i in idx], textfont=dict(size=11),
                                 textposition=[places[k % 4] for k in range(len(idx))],
                                 marker=dict(size=8), hovertemplate="%{text}<extra></extra>"))
    lo, hi = p.min(axis=0), p.max(axis=0)
    pad = 0.15 * np.maximum(hi - lo, 1e-9)  # room for the labels at the edges
    fig.update_layout(title=dict(text=title, x=0.0), template="plotly_white", font=FONT, height=480,
                      margin=dict(l=60, r=20, t=60, b=60), xaxis_title=x_title, yaxis_title=y_title,
                      xaxis_range=[lo[0] - pad[0], hi[0] + pad[0]], yaxis_range=[lo[1] - pad[1], hi[1] + pad[1]],
                      legend=dict(orientation="h", y=-0.18), showlegend=groups[0] != "")
    return fig


# ----------------------------------------------------------------------------- chapters 05–06 (heads, positions)
def matrix_explorer(maps: Mapping[str, object], *, title: str, x_title: str, y_title: str,
                    label: str = "variant", control: str = "slider", active: int = 0,
                    zmin: float | None = None, zmax: float | None = None, colorscale: str | None = None,
                    value_name: str = "value") -> go.Figure:
    """Heatmaps of numeric matrices (their shapes may differ) behind one slider or dropdown.

    Rows run top to bottom and columns left to right, both numbered from 0 (e.g. positions ×
    features). Without zmin/zmax the colour range is ±(largest |value| of all maps) on a diverging
    scale (red < 0 < blue); with zmin >= 0 the book's light-to-dark blue scale is used.
    """
    if control not in ("slider", "dropdown"):
        raise ValueError(f"control must be 'slider' or 'dropdown', got {control!r}")
    if not maps:
        raise ValueError("maps is empty: give at least one {label: matrix} entry")
    names = list(maps)
    zs = [np.round(_to_numpy(maps[n]), 4) for n in names]  # 4 decimals: a lighter page, same picture
    for n, z in zip(names, zs):
        if z.ndim != 2:
            raise ValueError(f"{n!r}: need a 2-D matrix, got shape {z.shape}")
    if zmin is None and zmax is None:
        m = max(float(np.abs(z).max()) for z in zs) or 1.0
        zmin, zmax = -m, m
    if colorscale is None:
        colorscale = "RdBu" if zmin is not None and zmin < 0 else COLORSCALE

    def axes_of(z):
        return list(range(z.shape[1])), list(range(z.shape[0]))

    x, y = axes_of(zs[active])
    fig = go.Figure(go.Heatmap(
        z=zs[active], x=x, y=y, colorscale=colorscale, zmin=zmin, zmax=zmax,
        hovertemplate=f"{y_title} %{{y}} · {x_title} %{{x}}<br>{value_name} %{{z:.3f}}<extra></extra>",
        colorbar=dict(title=dict(text=value_name), thickness=12),
    ))
    steps = [dict(method="update", label=n,
                  args=[{"z": [z], "x": [axes_of(z)[0]], "y": [axes_of(z)[1]]}, {"title.text": f"{title} — {label}: {n}"}])
             for n, z in zip(names, zs)]
    fig.update_layout(title=dict(text=f"{title} — {label}: {names[active]}", x=0.0, xanchor="left"),
                      template="plotly_white", font=FONT, margin=dict(l=70, r=20, t=60, b=60),
                      xaxis=dict(title_text=x_title), yaxis=dict(title_text=y_title, autorange="reversed"))
    if len(names) == 1:
        return fig.update_layout(height=440)
    if control == "slider":
        return fig.update_layout(height=530, sliders=[dict(active=active, steps=steps, pad=dict(t=50),
                                                           currentvalue=dict(prefix=f"{label}: "))])
    return fig.update_layout(height=460, updatemenus=[dict(buttons=steps, active=active, x=1.0, xanchor="right",
                                                           y=1.12, yanchor="bottom", direction="down")])


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
              x_title: str, y_title: str, y_range: Sequence[float] | None = None) -> go.Figure:
    """Grouped bars: one group per category, one bar per series; hover shows the exact value."""
    fig = go.Figure()
    for name, ys in series.items():
        ys = list(ys)
        if len(ys) != len(categories):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(categories)} categories")
        fig.add_trace(go.Bar(x=list(categories), y=ys, name=name,
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title=dict(text=title, x=0.0), template="plotly_white", font=FONT, height=420,
                      barmode="group", margin=dict(l=70, r=20, t=60, b=60), xaxis_title=x_title,
                      yaxis_title=y_title, legend=dict(orientation="h", y=-0.2))
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


# ----------------------------------------------------------------------------- chapter 07 (encoder–decoder)
MASK_COLORSCALE = [[0.0, "#e2e8f0"], [0.5, "#e2e8f0"], [0.5, "#2b6cb0"], [1.0, "#2b6cb0"]]  # blocked, may attend


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
    if control not in ("slider", "dropdown"):
        raise ValueError(f"control must be 'slider' or 'dropdown', got {control!r}")
    if not variants:
        raise ValueError("variants is empty: give at least one {name: (matrix, rows, cols)} entry")
    names = list(variants)
    drawn = []
    for n in names:
        z, rows, cols = variants[n]
        z = _to_numpy(z)
        _check_labels(z, rows, cols)
        cells = _hover_cells(rows, cols)
        if masks:
            status = np.where(z > 0.5, "may attend", "blocked")
            cells = np.concatenate([cells, status[..., None].astype(object)], axis=-1)  # (T_q, T_k, 3)
        show_text = not masks and z.size <= 100
        drawn.append(dict(z=z, x=list(range(len(cols))), y=list(range(len(rows))), customdata=cells,
                          rows=list(rows), cols=list(cols), text=show_text))
    first = drawn[active]
    hover = ("query %{customdata[0]} → key %{customdata[1]}<br>%{customdata[2]}<extra></extra>" if masks else
             "query %{customdata[0]} → key %{customdata[1]}<br>weight %{z:.4f}<extra></extra>")
    fig = go.Figure(go.Heatmap(
        z=first["z"], x=first["x"], y=first["y"], customdata=first["customdata"], hovertemplate=hover,
        colorscale=MASK_COLORSCALE if masks else COLORSCALE, zmin=0.0, zmax=1.0 if masks else zmax,
        showscale=not masks, xgap=1 if masks else 0, ygap=1 if masks else 0,
        texttemplate="%{z:.2f}" if first["text"] else None,
        colorbar=dict(title=dict(text="weight"), thickness=12),
    ))

    def ticks(d):
        return {"xaxis.tickvals": d["x"], "xaxis.ticktext": d["cols"],
                "yaxis.tickvals": d["y"], "yaxis.ticktext": d["rows"]}

    def title_of(n):
        return f"{title} — {label}: {n}" if name_in_title else title

    steps = [dict(method="update", label=n,
                  args=[{"z": [d["z"]], "x": [d["x"]], "y": [d["y"]], "customdata": [d["customdata"]],
                         "texttemplate": ["%{z:.2f}" if d["text"] else ""]},
                        {"title.text": title_of(n), **ticks(d)}])
             for n, d in zip(names, drawn)]
    _axes(fig, first["rows"], first["cols"], title_x=x_title, title_y=y_title)
    n_rows = max(len(d["rows"]) for d in drawn)
    if len(names) == 1:
        return _layout(fig, title, n_rows)
    fig.update_layout(title_text=title_of(names[active]))
    if control == "slider":
        fig.update_layout(sliders=[dict(active=active, steps=steps, pad=dict(t=80),
                                         currentvalue=dict(prefix=f"{label}: "))])
        return _layout(fig, fig.layout.title.text, n_rows, extra_height=110)
    fig.update_layout(updatemenus=[dict(buttons=steps, active=active, x=1.0, xanchor="right",
                                        y=1.12, yanchor="bottom", direction="down")])
    return _layout(fig, fig.layout.title.text, n_rows, extra_height=20)


# ----------------------------------------------------------------------------- chapter 03 (sequence models)
def log_heatmap_explorer(maps: Mapping[str, object], x: Sequence[float], y: Sequence[float], *, title: str,
                         x_title: str, y_title: str, value_name: str = "value", label: str = "variant",
                         control: str = "dropdown", zmin: float = -8.0, zmax: float = 4.0,
                         active: int = 0) -> go.Figure:
    """Positive numbers (e.g. gradient norms) on a log scale, behind a dropdown or slider.

    Each entry of ``maps`` is a (len(y), len(x)) matrix. Colour is log10(value): white at 1, blue
    below (shrinking), red above (growing); hover shows the value itself. ``x`` and ``y`` are the
    labels of the columns and rows: numbers are placed to scale, strings as evenly spaced categories.
    """
    if control not in ("slider", "dropdown"):
        raise ValueError(f"control must be 'slider' or 'dropdown', got {control!r}")
    if not maps:
        raise ValueError("maps is empty: give at least one {label: matrix} entry")
    names = list(maps)
    values = [_to_numpy(maps[n]) for n in names]
    for n, v in zip(names, values):
        if v.shape != (len(y), len(x)):
            raise ValueError(f"{n!r}: need a matrix of shape (len(y), len(x)) = {(len(y), len(x))}, got {v.shape}")
    if not zmin < 0 < zmax:
        raise ValueError(f"need zmin < 0 < zmax (log10 of the colour range), got {zmin} and {zmax}")
    logs = [np.log10(np.clip(v, 1e-30, None)) for v in values]
    ticks = list(range(int(np.ceil(zmin)), int(np.floor(zmax)) + 1, 2))
    w = -zmin / (zmax - zmin)  # where 10^0 = 1 falls on the colour bar: white
    scale = [[0.0, "#08306b"], [0.5 * w, "#4292c6"], [0.9 * w, "#deebf7"], [w, "#ffffff"],
             [w + 0.4 * (1 - w), "#fc9272"], [1.0, "#a50f15"]]
    fig = go.Figure(go.Heatmap(
        z=logs[active], x=list(x), y=list(y), customdata=values[active],
        colorscale=scale, zmin=zmin, zmax=zmax,
        hovertemplate=f"{y_title} %{{y}} · {x_title} %{{x}}<br>{value_name} %{{customdata:.2e}}<extra></extra>",
        colorbar=dict(title=dict(text=value_name), thickness=12, tickvals=ticks,
                      ticktext=[f"1e{t}" if t else "1" for t in ticks]),
    ))
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"),  # the control names the variant
                      template="plotly_white", font=FONT, margin=dict(l=70, r=20, t=60, b=60),
                      xaxis=dict(title_text=x_title), yaxis=dict(title_text=y_title, autorange="reversed"))
    for axis, labels in ((fig.layout.xaxis, x), (fig.layout.yaxis, y)):
        if all(isinstance(v, str) for v in labels):
            axis.type = "category"
    if len(names) == 1:
        return fig.update_layout(height=440)
    steps = [dict(method="restyle", label=n, args=[{"z": [z], "customdata": [v]}])
             for n, z, v in zip(names, logs, values)]
    if control == "slider":
        return fig.update_layout(height=530, sliders=[dict(active=active, steps=steps, pad=dict(t=50),
                                                           currentvalue=dict(prefix=f"{label}: "))])
    # the menu sits on its own line under the title, left-aligned, so the two never overlap on a phone
    return fig.update_layout(height=500, margin=dict(t=105), updatemenus=[dict(
        buttons=steps, active=active, x=0.0, xanchor="left", y=1.02, yanchor="bottom", direction="down")])


# ----------------------------------------------------------------------------- chapter 08 (the full Transformer)
def attention_views(views: Sequence[Mapping], *, title: str = "Attention", ncols: int = 2,
                    label: str = "view", active: int = 0) -> go.Figure:
    """Every head of one attention layer as a grid of maps, and a dropdown over many such layers.

    ``views``: [{"label": "encoder · layer 1", "maps": {"head 1": (T_q, T_k), ...}, "rows": [...],
    "cols": [...]}, ...]; all views have the same number of heads but may differ in size (other
    sentences, self- or cross-attention). The dropdown swaps all heads and the token labels at once.
    """
    if not views:
        raise ValueError("views is empty")
    heads = list(views[0]["maps"])
    if any(list(v["maps"]) != heads for v in views):
        raise ValueError("every view must have the same heads, in the same order")
    n_rows = -(-len(heads) // ncols)
    fig = make_subplots(rows=n_rows, cols=ncols, subplot_titles=heads, horizontal_spacing=0.12,
                        vertical_spacing=0.2)
    prepared = []
    for v in views:
        zs = [_to_numpy(v["maps"][h]) for h in heads]
        for z in zs:
            _check_labels(z, v["rows"], v["cols"])
        prepared.append((zs, list(v["rows"]), list(v["cols"]), _hover_cells(v["rows"], v["cols"])))
    zs, rows, cols, cells = prepared[active]
    for i, z in enumerate(zs):
        tr = _heatmap_trace(z, rows, cols, 1.0, "weight")
        tr.update(texttemplate=None, showscale=i == 0, customdata=cells)
        fig.add_trace(tr, row=i // ncols + 1, col=i % ncols + 1)
        _axes(fig, rows, cols, row=i // ncols + 1, col=i % ncols + 1, title_x="", title_y="")
    fig.update_xaxes(tickangle=0, tickfont=dict(size=10))
    fig.update_yaxes(tickfont=dict(size=10))

    def axis_updates(rows, cols):
        upd = {}
        for i in range(len(heads)):
            suffix = "" if i == 0 else str(i + 1)
            upd.update({f"xaxis{suffix}.tickvals": list(range(len(cols))), f"xaxis{suffix}.ticktext": cols,
                        f"yaxis{suffix}.tickvals": list(range(len(rows))), f"yaxis{suffix}.ticktext": rows})
        return upd

    buttons = []
    for v, (zs, rows, cols, cells) in zip(views, prepared):
        data = {"z": zs, "x": [list(range(len(cols)))] * len(zs), "y": [list(range(len(rows)))] * len(zs),
                "customdata": [cells] * len(zs)}
        buttons.append(dict(method="update", label=v["label"],
                            args=[data, {"title.text": f"{title}: {v['label']}", **axis_updates(rows, cols)}]))
    tallest = max(len(r) for _, r, _, _ in prepared)
    fig.update_layout(
        title=dict(text=f"{title}: {views[active]['label']}", x=0.0, font=dict(size=15)),
        template="plotly_white", font=FONT, margin=dict(l=40, r=20, t=110, b=40),
        height=int(160 + n_rows * (40 + 15 * tallest)),
        updatemenus=[dict(buttons=buttons, active=active, x=0.0, xanchor="left", y=1.0, yanchor="bottom",
                          pad=dict(b=30), direction="down")],
    )
    return fig
