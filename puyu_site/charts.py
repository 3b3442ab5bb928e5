"""A plotly figure as HTML that needs no inline script (the Content-Security-Policy allows only
our static scripts): its JSON in a `json_script` block (not executed), a div, and
static/js/plotly_figures.js, which draws every such figure once plotly.js is loaded (also in a
fragment htmx swapped in). The page must load plotly.js, as before."""
from __future__ import annotations

import json

from django.templatetags.static import static
from django.utils.html import format_html, json_script


def figure_html(fig, div_id: str, config: dict | None = None) -> str:
    spec = json.loads(fig.to_json())  # plotly's encoder: numpy arrays, dates
    spec["config"] = config or {}
    return format_html('<div id="{}" class="plotly-figure" data-figure="{}-figure"></div>{}'
                       '<script src="{}" defer></script>', div_id, div_id, json_script(spec, f"{div_id}-figure"),
                       static("js/plotly_figures.js"))
