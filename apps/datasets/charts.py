"""plotly charts of a version's statistics and of a cleaning run (plotly.js is served locally)."""
from __future__ import annotations

from puyu_site.charts import figure_html


# The language detector's ISO 639-1 codes (langid, workers/core/data/stats.py) as a reader names the
# common ones; any other code is shown as it is.
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese 中文", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
                  "es": "Spanish", "pt": "Portuguese", "it": "Italian", "ru": "Russian", "ar": "Arabic",
                  "und": "undetermined (empty)"}


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
        unit = "tokens" if stats.get("tokens") is not None else "characters"
        fig.update_layout(title=f"Length ({unit})", xaxis_title=unit, yaxis_title="rows")
        if max_length:
            fig.add_vline(x=max_length, line_dash="dash", line_color="#c0352b", annotation_text=f"max length {max_length}")
        charts["lengths"] = _html(fig, "chart-lengths")
    if stats.get("turns"):
        turns = sorted(stats["turns"].items(), key=lambda kv: int(kv[0]))
        fig = go.Figure(go.Bar(x=[int(k) for k, _ in turns], y=[v for _, v in turns]))
        fig.update_layout(title="Turns per conversation", xaxis_title="turns", yaxis_title="rows")
        fig.update_xaxes(dtick=1)
        charts["turns"] = _html(fig, "chart-turns")
    if stats.get("languages"):
        langs = sorted(stats["languages"].items(), key=lambda kv: -kv[1])
        # Each slice names its language and share, and the legend lists them all (small slices
        # have no room for a label).
        fig = go.Figure(go.Pie(labels=[LANGUAGE_NAMES.get(k, k) for k, _ in langs], values=[v for _, v in langs], hole=0.4,
                               textinfo="label+percent", sort=False))
        fig.update_layout(title="Language mix")
        charts["languages"] = _html(fig, "chart-languages", legend=True)
    if "exact_duplicates" in stats:
        rows = stats.get("rows", 0)
        dups = stats["exact_duplicates"]
        fig = go.Figure(go.Bar(x=["unique", "duplicate"], y=[rows - dups, dups], marker_color=["#2357d9", "#f79009"]))
        fig.update_layout(title="Exact duplicates")
        charts["duplicates"] = _html(fig, "chart-duplicates")
    return charts


def funnel_chart(report: dict) -> str:
    """Docs and characters kept after each cleaning stage (WanJuan-CC style funnel)."""
    import plotly.graph_objects as go

    stages = [s for s in report.get("stages", []) if s.get("enabled", True)]
    names = ["input"] + [s["name"] for s in stages]
    docs = [report.get("input_docs", 0)] + [s["kept_docs"] for s in stages]
    chars = [stages[0]["input_chars"] if stages else 0] + [s["kept_chars"] for s in stages]
    fig = go.Figure()
    fig.add_trace(go.Funnel(y=names, x=docs, name="documents", textinfo="value+percent initial"))
    fig.add_trace(go.Funnel(y=names, x=chars, name="characters", textinfo="percent initial", visible="legendonly"))
    fig.update_layout(height=360, margin={"t": 20, "b": 20, "l": 120, "r": 10}, showlegend=True)
    return figure_html(fig, "chart-funnel", {"displaylogo": False})
