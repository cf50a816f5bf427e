"""Plotly figures for the book, built so they stay interactive on the static website.

Every control here (slider, dropdown) is plotly's own: the variants are computed in Python
beforehand and stored in the figure, so the browser can switch between them with no kernel.
On the website, ``use_site_renderer()`` (called by ``book.setup()`` during the build) makes each
figure an HTML snippet that relies on the site's single shared copy of plotly.js.

The package is organised by kind of figure; import everything from here
(``from book import viz; viz.attention_heatmap(...)``):

- ``style``: what every figure shares — the site renderer and ``PLOT_CONFIG``, fonts, colour
  scales, input checks, hover cells, and the layout and token-axis helpers.
- ``controls``: ``add_variant_control``, the one way a figure gets a slider or a dropdown menu
  over precomputed variants (the same placement everywhere, phone-proof).
- ``attention``: attention maps — ``attention_heatmap``, ``attention_explorer``,
  ``token_map_explorer``, ``query_explorer``, ``attention_grid``, ``attention_views``.
- ``matrices``: heatmaps of numbers — ``similarity_heatmap``, ``matrix_explorer``,
  ``log_heatmap_explorer``, ``confusion_heatmap``.
- ``tokens``: how a text splits into tokens — ``token_strip_explorer``; what each layer predicts
  at each token — ``logit_lens_explorer``; a weight per character — ``character_attention_explorer``.
- ``charts``: line, bar and scatter charts — ``line_plot``, ``bar_chart``, ``distribution_explorer``, ``labeled_scatter``,
  ``linear_map_explorer``.
"""
from book.viz.attention import (attention_explorer, attention_grid, attention_heatmap, attention_views,
                                query_explorer, token_map_explorer)
from book.viz.charts import bar_chart, distribution_explorer, labeled_scatter, line_plot, linear_map_explorer
from book.viz.controls import add_variant_control
from book.viz.images import image_attention_grid, png_data_uri, tile_explorer
from book.viz.tokens import character_attention_explorer, logit_lens_explorer, token_strip_explorer
from book.viz.matrices import confusion_heatmap, log_heatmap_explorer, matrix_explorer, similarity_heatmap
from book.viz.style import (COLORSCALE, FONT, MASK_COLORSCALE, PLOT_CONFIG, SITE_RENDERER,
                            use_site_renderer)

__all__ = [
    "COLORSCALE", "FONT", "MASK_COLORSCALE", "PLOT_CONFIG", "SITE_RENDERER", "use_site_renderer",
    "add_variant_control",
    "attention_explorer", "attention_grid", "attention_heatmap", "attention_views", "query_explorer",
    "token_map_explorer",
    "confusion_heatmap", "log_heatmap_explorer", "matrix_explorer", "similarity_heatmap",
    "bar_chart", "distribution_explorer", "labeled_scatter", "line_plot", "linear_map_explorer",
    "character_attention_explorer", "logit_lens_explorer", "token_strip_explorer",
]
