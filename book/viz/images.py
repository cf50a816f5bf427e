"""Images and what a vision model makes of them: mosaics of small maps, attention over a picture.

* ``tile_explorer``: many small maps of one size (patches, filters, similarity maps) as one
  mosaic, with blank lines between them, behind a slider or menu over variants;
* ``image_attention_grid``: small copies of a picture with a map drawn over each, a grid of them
  (e.g. layers × heads), and a menu over pictures;
* ``png_data_uri``: a grey image as a tiny PNG inside the page (no file, no request).

A picture is drawn under the maps as a plotly layout image (a PNG in the page), so a control
that swaps the maps never has to resend the picture's pixels.
"""
from __future__ import annotations

import base64
import struct
import zlib
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from book.viz.controls import add_variant_control, check_variants
from book.viz.style import book_layout, colorbar, to_numpy, value_range

OVERLAY_COLORSCALE = "YlOrRd"  # light yellow -> dark red, seen through over a grey picture
OVERLAY_OPACITY = 0.6
INK = [[0.0, "#ffffff"], [1.0, "#1a202c"]]  # 0 = paper (white), 1 = ink (near black)


def png_data_uri(image, scale: int = 4) -> str:
    """A grey image (H, W) with values in [0, 1] (1 = ink) as a data URI: ink dark on white.

    Each pixel becomes a ``scale`` × ``scale`` block, so the browser's smoothing keeps it sharp.
    """
    a = np.asarray(to_numpy(image), dtype=float)
    if a.ndim != 2:
        raise ValueError(f"need a grey image (H, W), got shape {a.shape}")
    grey = np.round(255 * (1 - np.clip(a, 0, 1))).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    h, w = grey.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in grey)  # filter byte 0 before every row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _mosaic(tiles: np.ndarray, ncols: int) -> np.ndarray:
    """(n, h, w) -> one (rows·(h+1) - 1, ncols·(w+1) - 1) matrix, NaN between the tiles."""
    n, h, w = tiles.shape
    rows = -(-n // ncols)
    out = np.full((rows * (h + 1) - 1, ncols * (w + 1) - 1), np.nan)
    for k in range(n):
        r, c = divmod(k, ncols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[k]
    return out


def _mosaic_hover(names: Sequence[str], n_rows: int, ncols: int, h: int, w: int) -> np.ndarray:
    cells = np.full((n_rows * (h + 1) - 1, ncols * (w + 1) - 1), "", dtype=object)
    for k, name in enumerate(names):
        r, c = divmod(k, ncols)
        for i in range(h):
            for j in range(w):
                cells[r * (h + 1) + i, c * (w + 1) + j] = f"{name} · ({i}, {j})"
    return cells


def tile_explorer(variants: Mapping[str, object], *, ncols: int, title: str, tile_names: Sequence[str] | None = None,
                  label: str = "variant", control: str = "dropdown", active: int = 0,
                  zmin: float | None = None, zmax: float | None = None, colorscale: str | None = None,
                  value_name: str = "value", reverse: bool = False) -> go.Figure:
    """Every variant an (n, h, w) stack of small maps, drawn as one mosaic ``ncols`` maps wide.

    Hover names the map (``tile_names``, else its number) and the cell in it. Without zmin/zmax
    the colours run over ±(largest |value|) on the diverging scale; with zmin >= 0 on the book's
    blue scale (``reverse``: dark for small values); ``colorscale="ink"`` draws values in [0, 1]
    as ink on white paper (digits).
    """
    check_variants(variants, control=control, active=active, what="{label: (n, h, w) maps}")
    names = list(variants)
    stacks = [to_numpy(variants[v]) for v in names]
    shape = stacks[0].shape
    if len(shape) != 3 or any(s.shape != shape for s in stacks):
        raise ValueError(f"every variant must be an (n, h, w) stack of one shape; got {[s.shape for s in stacks]}")
    n, h, w = shape
    tile_names = list(tile_names) if tile_names is not None else [f"map {k}" for k in range(n)]
    if len(tile_names) != n:
        raise ValueError(f"{len(tile_names)} tile names for {n} maps")
    zmin, zmax, colorscale = value_range(stacks, zmin, zmax, INK if colorscale == "ink" else colorscale)
    n_rows = -(-n // ncols)
    fig = go.Figure(go.Heatmap(
        customdata=_mosaic_hover(tile_names, n_rows, ncols, h, w), hoverongaps=False,
        hovertemplate=f"%{{customdata}}<br>{value_name} %{{z:.3f}}<extra></extra>", colorscale=colorscale,
        reversescale=reverse, zmin=zmin, zmax=zmax, colorbar=colorbar(value_name)))
    blank = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    aspect = n_rows * (h + 1) / (ncols * (w + 1))  # the mosaic's height / width
    book_layout(fig, title, height=110 + min(480.0, 480.0 * aspect),
                margin=dict(l=20, r=20, b=20), plot_bgcolor="rgba(0,0,0,0)",
                xaxis=dict(blank, constrain="domain"),
                yaxis=dict(blank, autorange="reversed", scaleanchor="x", constrain="domain"))
    updates = [({"z": [_mosaic(s, ncols)]}, {"title.text": f"{title} — {label}: {v}" if len(names) > 1 else title})
               for v, s in zip(names, stacks)]
    return add_variant_control(fig, names, updates, control=control, label=label, active=active)


def image_attention_grid(images: Sequence, maps: Sequence, *, patch_size: int, row_names: Sequence[str],
                         col_names: Sequence[str], image_names: Sequence[str], title: str,
                         label: str = "image", active: int = 0) -> go.Figure:
    """One picture with a map over it in every cell of a grid (rows × cols), a menu over pictures.

    ``images``: per picture an (H, W) grey image in [0, 1]; ``maps``: per picture an array
    (rows, cols, H/p, W/p) — e.g. layers × heads, one weight per patch. Each map is drawn at patch
    resolution over its picture, with its own colour range (hover shows the value).
    """
    check_variants(images, control="dropdown", active=active, what="image")
    imgs = [to_numpy(im) for im in images]
    ms = [to_numpy(m) for m in maps]
    n_rows, n_cols = len(row_names), len(col_names)
    H, W = imgs[0].shape
    p = patch_size
    grid = (H // p, W // p)
    if len(ms) != len(imgs) or len(image_names) != len(imgs):
        raise ValueError(f"{len(imgs)} images, {len(ms)} map sets and {len(image_names)} names: give one of each")
    for m in ms:
        if m.shape != (n_rows, n_cols, *grid):
            raise ValueError(f"need maps of shape {(n_rows, n_cols, *grid)}, got {m.shape}")
    fig = make_subplots(rows=n_rows, cols=n_cols, horizontal_spacing=0.02, vertical_spacing=0.03,
                        column_titles=list(col_names), row_titles=list(row_names))
    centres_x = [(p - 1) / 2 + c * p for c in range(grid[1])]
    centres_y = [(H - 1) - ((p - 1) / 2 + r * p) for r in range(grid[0])]  # y grows upwards: row 0 on top
    hover = np.array([[f"patch ({r}, {c})" for c in range(grid[1])] for r in range(grid[0])], dtype=object)
    for i in range(n_rows):
        for j in range(n_cols):
            fig.add_trace(go.Heatmap(x=centres_x, y=centres_y, customdata=hover, colorscale=OVERLAY_COLORSCALE,
                                     opacity=OVERLAY_OPACITY, showscale=False, zmin=0,
                                     hovertemplate=f"{row_names[i]} · {col_names[j]}<br>%{{customdata}}"
                                                   "<br>weight %{z:.3f}<extra></extra>"),
                          row=i + 1, col=j + 1)
            k = "" if i == j == 0 else i * n_cols + j + 1  # axes x, x2, x3, ...
            fig.add_layout_image(source=png_data_uri(imgs[active]), xref=f"x{k}", yref=f"y{k}",
                                 x=-0.5, y=H - 0.5, sizex=W, sizey=H, xanchor="left", yanchor="top",
                                 sizing="stretch", layer="below")
    blank = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="")
    fig.update_xaxes(blank, range=[-0.5, W - 0.5], constrain="domain")
    fig.update_yaxes(blank, range=[-0.5, H - 0.5], constrain="domain")
    for k in range(n_rows * n_cols):  # square pixels in every cell
        fig.layout[f"yaxis{k + 1 if k else ''}"].scaleanchor = f"x{k + 1 if k else ''}"
    fig.update_annotations(font_size=11)  # the row and column titles
    height = max(130 + 110 * n_rows, 80 + 36 * len(imgs))  # room for the open menu, too
    book_layout(fig, title, height=height, margin=dict(l=10, r=30, b=10, t=90),
                plot_bgcolor="rgba(0,0,0,0)")
    updates = []
    for name, im, m in zip(image_names, imgs, ms):
        uri = png_data_uri(im)
        zs = [m[i, j] for i in range(n_rows) for j in range(n_cols)]
        layout = {f"images[{k}].source": uri for k in range(n_rows * n_cols)}
        layout["title.text"] = f"{title} — {name}"
        updates.append(({"z": zs, "zmax": [float(z.max()) or 1.0 for z in zs]}, layout))
    return add_variant_control(fig, list(image_names), updates, control="dropdown", label=label, active=active)
