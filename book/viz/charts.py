"""Line, bar and scatter charts, and what a 2×2 matrix does to the unit circle."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from book.viz.controls import add_variant_control, check_variants
from book.viz.style import BLUE, LEGEND_BELOW, book_layout, to_numpy


def line_plot(x, ys: Mapping[str, Sequence[float]], *, title: str, x_title: str, y_title: str,
              log_x: bool = False, log_y: bool = False, mode: str = "lines+markers") -> go.Figure:
    """A plain multi-series line chart in the book's style (hover shows exact values)."""
    fig = go.Figure([go.Scatter(x=list(x), y=list(y), name=name, mode=mode) for name, y in ys.items()])
    book_layout(fig, title, height=420, xaxis_title=x_title, yaxis_title=y_title, legend=LEGEND_BELOW)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


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
    book_layout(fig, title, height=420, barmode="group", xaxis_title=x_title, yaxis_title=y_title,
                legend=LEGEND_BELOW)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


def labeled_scatter(points, labels: Sequence[str], groups: Sequence[str] | None = None, *,
                    title: str, x_title: str, y_title: str) -> go.Figure:
    """2-D points with a text label each, coloured by group (e.g. words on their top two axes)."""
    p = to_numpy(points)  # (N, 2)
    if p.ndim != 2 or p.shape[1] != 2 or len(labels) != len(p):
        raise ValueError(f"need points of shape (N, 2) and N labels, got {p.shape} and {len(labels)} labels")
    groups = list(groups) if groups is not None else [""] * len(p)
    places = ["top center", "bottom center", "middle right", "middle left"]  # spread crowded labels
    fig = go.Figure()
    for g in dict.fromkeys(groups):  # groups in order of first appearance
        idx = [i for i, gi in enumerate(groups) if gi == g]
        fig.add_trace(go.Scatter(x=p[idx, 0], y=p[idx, 1], mode="markers+text", name=g or "points",
                                 text=[labels[i] for i in idx], textfont=dict(size=11),
                                 textposition=[places[k % 4] for k in range(len(idx))],
                                 marker=dict(size=8), hovertemplate="%{text}<extra></extra>"))
    lo, hi = p.min(axis=0), p.max(axis=0)  # (2,) each
    pad = 0.15 * np.maximum(hi - lo, 1e-9)  # room for the labels at the edges
    return book_layout(fig, title, height=480, margin=dict(l=60), xaxis_title=x_title, yaxis_title=y_title,
                       xaxis_range=[lo[0] - pad[0], hi[0] + pad[0]], yaxis_range=[lo[1] - pad[1], hi[1] + pad[1]],
                       legend=dict(LEGEND_BELOW, y=-0.18), showlegend=groups[0] != "")


_ANGLES = np.linspace(0, 2 * np.pi, 121)
_CIRCLE = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)])  # (2, 121)
_LINES = [("lines", dict(color="#a0aec0", dash="dot")), ("lines", dict(color=BLUE, width=3)),  # circle, image
          ("lines+markers", dict(color="#dd6b20", width=4)), ("lines+markers", dict(color="#2f855a", width=4))]


def _linear_map(name: str, m, title: str) -> tuple[dict, dict]:
    """(trace changes, layout changes) drawing symmetric 2×2 matrix m: the unit circle, its image
    and the eigenvectors scaled by their eigenvalues, with A and the λs in the subtitle."""
    a = to_numpy(m)
    if a.shape != (2, 2) or not np.allclose(a, a.T):
        raise ValueError(f"{name!r}: need a symmetric 2x2 matrix, got shape {a.shape}")
    lam, vec = np.linalg.eigh(a)  # ascending eigenvalues, eigenvectors in the columns
    lam, vec = lam[::-1], vec[:, ::-1]  # largest first: λ₁ q₁, then λ₂ q₂
    image = a @ _CIRCLE  # (2, 121)
    arrows = lam * vec  # (2, 2): column i is λᵢ qᵢ
    entries = ", ".join("[" + ", ".join(f"{v:g}" for v in row) + "]" for row in a)
    heading = (f"{title}<br><sub>{name}: A = [{entries}]<br>"
               f"λ₁ = {lam[0]:.2f} (orange), λ₂ = {lam[1]:.2f} (green)</sub>")
    data = {"x": [_CIRCLE[0], image[0], [0, arrows[0, 0]], [0, arrows[0, 1]]],
            "y": [_CIRCLE[1], image[1], [0, arrows[1, 0]], [0, arrows[1, 1]]],
            "name": ["unit circle", "image A·x", f"λ₁ = {lam[0]:.2f} · q₁", f"λ₂ = {lam[1]:.2f} · q₂"]}
    return data, {"title.text": heading}


def linear_map_explorer(matrices: Mapping[str, object], *, title: str = "What a matrix does to the unit circle",
                        label: str = "matrix") -> go.Figure:
    """For symmetric 2×2 matrices: the unit circle, its image (an ellipse) and the eigenvectors scaled
    by their eigenvalues, with a slider over the precomputed matrices (short names as slider labels;
    the title shows the matrix itself)."""
    check_variants(matrices, control="slider", what="{label: 2x2 matrix}")
    updates = [_linear_map(name, m, title) for name, m in matrices.items()]
    r = 1.15 * max(1.0, *(max(np.abs(d["x"][1]).max(), np.abs(d["y"][1]).max()) for d, _ in updates))  # fits every image
    fig = go.Figure([go.Scatter(mode=mode, line=line, hoverinfo="name" if i < 2 else "x+y+name")
                     for i, (mode, line) in enumerate(_LINES)])
    book_layout(fig, title, height=500, margin=dict(l=50, t=100, b=40),
                xaxis=dict(range=[-r, r], zeroline=True, constrain="domain"),
                yaxis=dict(range=[-r, r], zeroline=True, scaleanchor="x", scaleratio=1, constrain="domain"),
                showlegend=False)  # the subtitle names the colours; hover names every trace
    return add_variant_control(fig, list(matrices), updates, label=label)


def distribution_explorer(variants: Mapping[str, Sequence[float]], categories: Sequence[str], *, title: str,
                          x_title: str = "token", y_title: str = "probability", label: str = "setting",
                          control: str = "dropdown", active: int = 0) -> go.Figure:
    """One probability distribution over ``categories`` per variant (e.g. a sampling setting), as bars
    behind a dropdown or slider; hover shows the exact probability."""
    check_variants(variants, control=control, active=active, what="{label: probabilities}")
    names = list(variants)
    ps = [np.asarray(to_numpy(variants[n]), dtype=float) for n in names]
    for n, p in zip(names, ps):
        if p.shape != (len(categories),):
            raise ValueError(f"{n!r}: {p.shape} probabilities for {len(categories)} categories")
    fig = go.Figure(go.Bar(x=list(categories), y=ps[active], marker_color=BLUE,
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    book_layout(fig, title, height=420, xaxis_title=x_title, yaxis_title=y_title,
                yaxis_range=[0, max(float(p.max()) for p in ps) * 1.05])
    fig.update_xaxes(type="category")
    updates = [({"y": [p]}, {"title.text": f"{title} — {n}"}) for n, p in zip(names, ps)]
    return add_variant_control(fig, names, updates, control=control, label=label, active=active)
