"""plotly charts of a version's statistics and of a cleaning run (plotly.js is served locally)."""
from __future__ import annotations

from django.utils.translation import gettext, gettext_lazy

from puyu_site.charts import figure_html


# The language detector's ISO 639-1 codes (langid, workers/core/data/stats.py) as a reader names the
# common ones; any other code is shown as it is.
LANGUAGE_NAMES = {"en": gettext_lazy("English"), "zh": gettext_lazy("Chinese 中文"), "ja": gettext_lazy("Japanese"),
                  "ko": gettext_lazy("Korean"), "fr": gettext_lazy("French"), "de": gettext_lazy("German"),
                  "es": gettext_lazy("Spanish"), "pt": gettext_lazy("Portuguese"), "it": gettext_lazy("Italian"),
                  "ru": gettext_lazy("Russian"), "ar": gettext_lazy("Arabic"), "und": gettext_lazy("undetermined (empty)")}


def _html(fig, div_id: str, legend: bool = False) -> str:
    fig.update_layout(height=280, margin={"t": 30, "b": 40, "l": 50, "r": 10}, showlegend=legend)
    return figure_html(fig, div_id, {"displaylogo": False, "responsive": True})  # no inline script (CSP)


def stats_charts(stats: dict, max_length: int | None = None) -> dict[str, str]:
    import plotly.graph_objects as go

    charts = {}
    hist = stats.get("length_histogram") or {}
    if hist.get("counts"):
        edges = hist["edges"]
        fig = go.Figure(go.Bar(x=[(a + b) / 2 for a, b in zip(edges, edges[1:])], y=hist["counts"],
                               width=[b - a for a, b in zip(edges, edges[1:])]))
        unit = gettext("tokens") if stats.get("tokens") is not None else gettext("characters")
        fig.update_layout(title=gettext("Length (%(unit)s)") % {"unit": unit}, xaxis_title=unit, yaxis_title=gettext("rows"))
        if max_length:
            fig.add_vline(x=max_length, line_dash="dash", line_color="#c0352b",
                          annotation_text=gettext("max length %(n)s") % {"n": max_length})
        charts["lengths"] = _html(fig, "chart-lengths")
    if stats.get("turns"):
        turns = sorted(stats["turns"].items(), key=lambda kv: int(kv[0]))
        fig = go.Figure(go.Bar(x=[int(k) for k, _ in turns], y=[v for _, v in turns]))
        fig.update_layout(title=gettext("Turns per conversation"), xaxis_title=gettext("turns"), yaxis_title=gettext("rows"))
        fig.update_xaxes(dtick=1)
        charts["turns"] = _html(fig, "chart-turns")
    if stats.get("languages"):
        langs = sorted(stats["languages"].items(), key=lambda kv: -kv[1])
        # Each slice names its language and share, and the legend lists them all (small slices
        # have no room for a label).
        fig = go.Figure(go.Pie(labels=[str(LANGUAGE_NAMES.get(k, k)) for k, _ in langs], values=[v for _, v in langs], hole=0.4,
                               textinfo="label+percent", sort=False))
        fig.update_layout(title=gettext("Language mix"))
        charts["languages"] = _html(fig, "chart-languages", legend=True)
    if "exact_duplicates" in stats:
        rows = stats.get("rows", 0)
        dups = stats["exact_duplicates"]
        fig = go.Figure(go.Bar(x=[gettext("unique"), gettext("duplicate")], y=[rows - dups, dups],
                               marker_color=["#2357d9", "#f79009"]))
        fig.update_layout(title=gettext("Exact duplicates"))
        charts["duplicates"] = _html(fig, "chart-duplicates")
    return charts


def funnel_chart(report: dict) -> str:
    """Docs and characters kept after each cleaning stage (WanJuan-CC style funnel)."""
    import plotly.graph_objects as go

    stages = [s for s in report.get("stages", []) if s.get("enabled", True)]
    names = [gettext("input")] + [s["name"] for s in stages]
    docs = [report.get("input_docs", 0)] + [s["kept_docs"] for s in stages]
    chars = [stages[0]["input_chars"] if stages else 0] + [s["kept_chars"] for s in stages]
    fig = go.Figure()
    fig.add_trace(go.Funnel(y=names, x=docs, name=gettext("documents"), textinfo="value+percent initial"))
    fig.add_trace(go.Funnel(y=names, x=chars, name=gettext("characters"), textinfo="percent initial", visible="legendonly"))
    fig.update_layout(height=360, margin={"t": 20, "b": 20, "l": 120, "r": 10}, showlegend=True)
    return figure_html(fig, "chart-funnel", {"displaylogo": False})
