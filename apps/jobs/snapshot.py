"""The full current state of a job from the database: what a (re)connecting page is sent first."""
from __future__ import annotations

from collections import defaultdict

from apps.jobs.lifecycle import status_payload
from apps.jobs.models import Job
from apps.jobs.outputs import job_outputs
from workers.tasks.catalog import public_value

SNAPSHOT_LOG_LINES = 200


def metric_series(job: Job) -> dict[str, dict[str, list]]:
    series: dict[str, dict[str, list]] = defaultdict(lambda: {"steps": [], "values": []})
    for name, step, value in job.metrics.order_by("name", "step").values_list("name", "step", "value"):
        series[name]["steps"].append(step)
        series[name]["values"].append(value)
    return dict(series)


def recent_log(job: Job, limit: int = SNAPSHOT_LOG_LINES) -> list[dict]:
    rows = job.log_lines.order_by("-seq").values("seq", "level", "message")[:limit]
    return list(reversed(rows))


def job_snapshot(job: Job) -> dict:
    return {
        "id": job.pk,
        "kind": job.kind,
        **status_payload(job),
        "result": public_value(job.result),
        "log": recent_log(job),
        "metrics": metric_series(job),
        "outputs": job_outputs(job),
    }
