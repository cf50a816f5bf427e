"""The one way a figure gets a control: precomputed variants behind a slider or a dropdown menu.

The variants travel inside the figure (plotly's own slider steps / menu buttons), so the browser
switches between them with no kernel — on the static website too. Placement is the same for every
figure: a slider sits under the plot, clear of the x-axis labels, with "label: value" above its
rail; a menu gets its own line under the title, left-aligned, so it never covers the title on a
390 px phone. The figure grows by the room the control takes, so the plot keeps its size. Titles
that change with the control, and long menu labels, are broken into lines that fit a phone.
"""
from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from book.viz.style import TITLE_CHARS, TITLE_LINE, extra_lines, place_title, wrap_text

CONTROLS = ("slider", "dropdown")
METHODS = ("update", "restyle")  # traces and layout / traces only
SLIDER_ROOM = 100  # px the figure grows by for a slider: current value, rail and step labels
SLIDER_GAP = 20  # px between the x-axis labels (in the bottom margin) and the slider
MENU_ROOM = 45  # px the top margin grows by: the menu's own line under the title
MENU_GAP = 8  # px between the menu and the plot
MENU_GAP_OVER_TITLES = 30  # ... when subplot titles sit just above the plots
MENU_CHARS = 26  # characters of a menu label line: the open menu stays inside a figure on a 390 px phone
MENU_HEIGHT, MENU_LINE = 37, 17  # px: a closed menu showing a one-line label; each further line
MENU_TITLE_GAP = 10  # px between the title's last line and the menu


def check_variants(variants: Sequence, *, control: str, active: int = 0, what: str = "variant") -> None:
    """Clear errors for an unknown control, no variants, or an ``active`` index out of range.

    Builders call it before drawing anything; ``what`` names one entry in the message.
    """
    if control not in CONTROLS:
        raise ValueError(f"control must be 'slider' or 'dropdown', got {control!r}")
    if not len(variants):
        raise ValueError(f"no variants: give at least one {what} entry")
    if not 0 <= active < len(variants):
        raise ValueError(f"active must be an index from 0 to {len(variants) - 1}, got {active}")


def add_variant_control(fig: go.Figure, labels: Sequence[str], updates: Sequence, *, control: str = "slider",
                        label: str = "variant", active: int = 0, method: str = "update") -> go.Figure:
    """Put precomputed variants behind a slider or a dropdown menu; returns ``fig``, showing ``active``.

    ``labels``: one name per variant (the step or button text). ``updates``: one per variant, in
    plotly.js's terms — with ``method="update"`` a pair (trace changes, layout changes), e.g.
    ``({"z": [z]}, {"title.text": "..."})`` (dotted layout keys: that is what works on the site);
    with ``method="restyle"`` the trace changes alone. A list value holds one entry per trace.
    ``label`` prefixes the slider's current value. With one variant there is nothing to choose:
    the figure shows it and gets no control.
    """
    labels, updates = [str(n) for n in labels], list(updates)
    check_variants(labels, control=control, active=active)
    if method not in METHODS:
        raise ValueError(f"method must be 'update' or 'restyle', got {method!r}")
    if len(updates) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(updates)} updates: give one update per variant")
    args = [[dict(u[0]), dict(u[1])] if method == "update" else [dict(u)] for u in updates]
    _wrap_titles(fig, args)
    fig.plotly_update(*args[active])  # the figure starts on the active variant, as the control says
    if len(labels) == 1:
        return fig
    steps = [dict(method=method, label=n, args=a) for n, a in zip(labels, args)]
    if control == "slider":
        return _add_slider(fig, steps, active, label)
    return _add_menu(fig, steps, active)


def _wrap_titles(fig: go.Figure, args: list) -> None:
    """Break the variants' titles into lines like ``book_layout`` does; the figure grows by the
    lines wrapping adds to the longest one, less those ``book_layout`` made room for already."""
    added, lines = 0, (fig.layout.title.text or "").count("<br>") + 1
    for a in args:
        if len(a) > 1 and isinstance(a[1].get("title.text"), str):
            text = a[1]["title.text"]
            a[1]["title.text"] = wrap_text(text, TITLE_CHARS)
            added = max(added, extra_lines(a[1]["title.text"], text))
            lines = max(lines, a[1]["title.text"].count("<br>") + 1)
    grow = added - getattr(fig, "_title_lines_added", 0)
    if grow > 0:
        fig.update_layout(height=(fig.layout.height or 450) + TITLE_LINE * grow,
                          margin=dict(t=(fig.layout.margin.t or 100) + TITLE_LINE * grow))
    place_title(fig, lines=lines)


def _add_slider(fig: go.Figure, steps: list, active: int, label: str) -> go.Figure:
    below_axis = (fig.layout.margin.b or 80) + SLIDER_GAP  # px under the plot area: the x-axis labels live in b
    return fig.update_layout(
        height=(fig.layout.height or 450) + SLIDER_ROOM,
        sliders=[dict(active=active, steps=steps, pad=dict(t=below_axis), currentvalue=dict(prefix=f"{label}: "))],
    )


def _add_menu(fig: go.Figure, steps: list, active: int) -> go.Figure:
    gap = MENU_GAP_OVER_TITLES if fig.layout.annotations else MENU_GAP  # subplot titles are annotations
    for step in steps:  # a long label gets lines of its own: the menu is as wide as its widest label
        step["label"] = wrap_text(step["label"], MENU_CHARS)
    lines = max(step["label"].count("<br>") for step in steps)
    room = MENU_ROOM + gap + TITLE_LINE * lines  # the closed menu shows one (wrapped) label
    place_title(fig, below=gap + MENU_HEIGHT + MENU_LINE * lines + MENU_TITLE_GAP)  # just above the menu
    return fig.update_layout(
        height=(fig.layout.height or 450) + room,
        margin=dict(t=(fig.layout.margin.t or 100) + room),
        updatemenus=[dict(buttons=steps, active=active, direction="down", x=0.0, xanchor="left",
                          y=1.0, yanchor="bottom", pad=dict(b=gap))],
    )
