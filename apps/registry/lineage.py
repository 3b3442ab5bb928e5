"""The lineage graph on a model card: where a version came from and what came of it, drawn
left to right by generation with plotly (served locally, no CDN)."""
from __future__ import annotations

from django.urls import reverse
from django.utils.translation import gettext

from apps.accounts.visibility import visible_to
from apps.registry.models import ModelVersion
from puyu_site.charts import figure_html

MAX_NODES = 60


def lineage_nodes(version: ModelVersion, user) -> tuple[dict, list[tuple[str, str]]]:
    """Nodes {key: (label, url, column)} and edges (from, to) around `version`, limited to what
    `user` may see."""
    visible = visible_to(ModelVersion.objects.select_related("model", "source_job"), user, "model__owner")
    nodes: dict[str, tuple[str, str, int]] = {}
    edges: list[tuple[str, str]] = []

    def add(v: ModelVersion, column: int) -> str:
        key = f"v{v.pk}"
        if key not in nodes:
            nodes[key] = (f"{v.model.name} v{v.number}<br>{v.get_kind_display().lower()}",
                          reverse("version-detail", args=[v.pk]), column)
        return key

    def walk_up(v: ModelVersion, column: int) -> None:
        key = add(v, column)
        if v.source_job_id:
            job_key = f"j{v.source_job_id}"
            label = gettext("job #%(id)s") % {"id": v.source_job_id} + f"<br>{v.source_job.get_kind_display()}"
            nodes.setdefault(job_key, (label, reverse("job-detail", args=[v.source_job_id]), column - 1))
            edges.append((job_key, key))
        for ancestor in (v.parent, v.adapter):
            if ancestor is not None and len(nodes) < MAX_NODES and visible.filter(pk=ancestor.pk).exists():
                edges.append((f"v{ancestor.pk}", key))
                walk_up(ancestor, column - 2)

    def walk_down(v: ModelVersion, column: int) -> None:
        key = add(v, column)
        for child in visible.filter(parent=v) | visible.filter(adapter=v):
            if len(nodes) >= MAX_NODES:
                return
            edges.append((key, f"v{child.pk}"))
            walk_down(child, column + 2)

    walk_up(version, 0)
    walk_down(version, 0)
    for key, line in evaluation_lines([int(k[1:]) for k in nodes if k.startswith("v")], user).items():
        label, url, column = nodes[key]
        nodes[key] = (f"{label}<br>{line}", url, column)
    return nodes, sorted(set(edges))


def evaluation_lines(version_ids: list[int], user) -> dict[str, str]:
    """{node key: "<suite> 41.2%"}: each version's latest finished evaluation the user may see,
    as the mean of its scores on one 0–1 scale (the leaderboard's naive average)."""
    from apps.jobs.models import JobStatus
    from apps.leaderboards.board import AVERAGE_SCALE
    from apps.leaderboards.services import visible_runs

    lines: dict[str, str] = {}
    runs = (visible_runs(user).filter(model_version_id__in=version_ids, job__status=JobStatus.SUCCEEDED)
            .select_related("suite_version__suite").prefetch_related("scores").order_by("-created_at", "-id"))
    for run in runs[:200]:
        key = f"v{run.model_version_id}"
        values = [s.score * AVERAGE_SCALE[s.metric] for s in run.scores.all() if s.metric in AVERAGE_SCALE]
        if key not in lines and values:
            lines[key] = f"{run.suite_version.suite.name} {100 * sum(values) / len(values):.1f}%"
    return lines


def lineage_figure(version: ModelVersion, user) -> str:
    import plotly.graph_objects as go

    nodes, edges = lineage_nodes(version, user)
    columns: dict[int, list[str]] = {}
    for key, (_, _, column) in nodes.items():
        columns.setdefault(column, []).append(key)
    position = {key: (column, row - (len(keys) - 1) / 2) for column, keys in columns.items() for row, key in enumerate(keys)}
    fig = go.Figure()
    for a, b in edges:
        (x0, y0), (x1, y1) = position[a], position[b]
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", line={"color": "#98a2b3"}, hoverinfo="skip"))
    keys = list(nodes)
    fig.add_trace(go.Scatter(
        x=[position[k][0] for k in keys], y=[position[k][1] for k in keys], mode="markers+text",
        text=[nodes[k][0] for k in keys], textposition="bottom center", customdata=[nodes[k][1] for k in keys],
        marker={"size": 18, "color": ["#2357d9" if k == f"v{version.pk}" else ("#f79009" if k.startswith("j") else "#98a2b3") for k in keys]},
        hovertemplate="%{text}<extra></extra>",
    ))
    fig.update_layout(showlegend=False, height=260, margin={"t": 10, "b": 40, "l": 10, "r": 10},
                      xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white")
    return figure_html(fig, "lineage-graph", {"displaylogo": False})  # no inline script (CSP)
