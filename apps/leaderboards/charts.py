"""The leaderboards' plotly figures, built on the server and drawn by static/js/plotly_figures.js
(puyu_site/charts.py: no inline script under the Content-Security-Policy): the radar of capability
dimensions for chosen rows, and the arena's win-rate heatmap."""
from __future__ import annotations

from apps.leaderboards.models import DIMENSIONS
from puyu_site.charts import figure_html

CONFIG = {"displaylogo": False, "responsive": True}


def radar_html(radar: dict, div_id: str = "radar-chart") -> str:
    """`radar` is board.radar's {"dimensions": [...], "series": [{"label", "values"}]}; a value may be
    None (the run has no benchmark of that dimension): plotly leaves a gap there. With fewer than
    three dimensions a polygon says nothing: grouped bars instead."""
    import plotly.graph_objects as go

    labels = dict(DIMENSIONS)  # in the reader's language ("knowledge" in English, as the data has it)
    dimensions = [str(labels.get(d, d)).lower() for d in radar.get("dimensions") or []]
    fig = go.Figure()
    if len(dimensions) < 3:
        for series in radar.get("series") or []:
            values = [None if v is None else round(100 * float(v), 1) for v in series.get("values") or []]
            fig.add_trace(go.Bar(x=dimensions, y=values, name=str(series.get("label", "")),
                                 hovertemplate="%{x}: %{y:.1f}<extra>%{fullData.name}</extra>"))
        fig.update_layout(barmode="group", yaxis={"range": [0, 100], "ticksuffix": "%"}, height=360,
                          margin={"t": 30, "b": 40, "l": 50, "r": 20}, legend={"orientation": "h"})
        return figure_html(fig, div_id, CONFIG)
    for series in radar.get("series") or []:
        values = [None if v is None else round(100 * float(v), 1) for v in series.get("values") or []]
        # Close the polygon: repeat the first point.
        fig.add_trace(go.Scatterpolar(r=values + values[:1], theta=dimensions + dimensions[:1], name=str(series.get("label", "")),
                                      fill="toself", opacity=0.55, connectgaps=False,
                                      hovertemplate="%{theta}: %{r:.1f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(polar={"radialaxis": {"range": [0, 100], "ticksuffix": "%"}}, height=420,
                      margin={"t": 30, "b": 30, "l": 40, "r": 40}, legend={"orientation": "h"})
    return figure_html(fig, div_id, CONFIG)


def win_rate_html(ratings: list[dict], win_rate: dict, div_id: str = "win-rate-chart") -> str:
    """The share of battles the row's model won against the column's (a tie is half a win), in the
    ratings' order (best first); an empty cell: the two never met."""
    import plotly.graph_objects as go

    ids = [str(r["version_id"]) for r in ratings]
    labels = [str(r.get("label") or f"#{r['version_id']}") for r in ratings]
    z = [[_share(win_rate, row, col) for col in ids] for row in ids]
    text = [["" if v is None else f"{100 * v:.0f}%" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, text=text, texttemplate="%{text}", zmin=0, zmax=1,
                               colorscale="RdBu", hoverongaps=False,
                               hovertemplate="%{y} beat %{x}: %{z:.0%}<extra></extra>", colorbar={"tickformat": ".0%"}))
    fig.update_layout(height=max(320, 60 + 36 * len(ids)), margin={"t": 30, "b": 80, "l": 120, "r": 20},
                      xaxis={"title": {"text": "opponent"}, "side": "bottom"}, yaxis={"autorange": "reversed", "title": {"text": "model"}})
    return figure_html(fig, div_id, CONFIG)


def _share(win_rate: dict, row: str, col: str):
    value = (win_rate.get(row) or win_rate.get(_int(row)) or {}).get(col)
    if value is None:
        value = (win_rate.get(row) or win_rate.get(_int(row)) or {}).get(_int(col))
    return None if value is None else float(value)


def _int(text: str):
    return int(text) if text.lstrip("-").isdigit() else text
