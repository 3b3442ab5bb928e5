"""Compare runs: overlaid metric curves, downsampled on the server so that 50 runs of thousands
of steps stay fast in the browser, and a table of only the config fields that differ."""
from __future__ import annotations

from collections import defaultdict

from apps.jobs.models import JobMetric

MAX_POINTS = 400
# Paths differ between any two runs and say nothing about the config.
NOT_CONFIG = ("output_dir", "checkpoint_dir")


def downsample(steps: list, values: list, max_points: int = MAX_POINTS) -> tuple[list, list]:
    """Min/max per bucket: keeps spikes (a loss blow-up) that averaging or striding would hide,
    in at most `max_points` points, in step order. First and last points are always kept."""
    n = len(steps)
    if n <= max_points:
        return list(steps), list(values)
    buckets = max(1, (max_points - 2) // 2)
    out: list[int] = [0]
    inner = range(1, n - 1)
    size = len(inner) / buckets
    for b in range(buckets):
        lo, hi = 1 + int(b * size), 1 + int((b + 1) * size)
        if lo >= hi:
            continue
        window = range(lo, min(hi, n - 1))
        if not window:
            continue
        i_min = min(window, key=lambda i: values[i])
        i_max = max(window, key=lambda i: values[i])
        out.extend(sorted({i_min, i_max}))
    out.append(n - 1)
    return [steps[i] for i in out], [values[i] for i in out]


def curves(jobs, max_points: int = MAX_POINTS) -> dict[str, list[dict]]:
    """metric name → [{"job_id", "label", "steps", "values"}] for the given (visible) jobs."""
    labels = {job.pk: f"#{job.pk} {job.title}"[:80] for job in jobs}
    raw: dict[tuple[str, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    rows = JobMetric.objects.filter(job_id__in=list(labels)).order_by("name", "job_id", "step")
    for job_id, name, step, value in rows.values_list("job_id", "name", "step", "value").iterator():
        steps, values = raw[(name, job_id)]
        steps.append(step)
        values.append(value)
    out: dict[str, list[dict]] = defaultdict(list)
    for (name, job_id), (steps, values) in raw.items():
        steps, values = downsample(steps, values, max_points)
        out[name].append({"job_id": job_id, "label": labels[job_id], "steps": steps, "values": values})
    return dict(sorted(out.items()))


def config_diff(jobs) -> list[dict]:
    """[{"field", "values": [per job, in order]}] for the fields whose values differ."""
    from workers.tasks.catalog import public_params

    shown = [public_params(job.kind, job.params) for job in jobs]  # no server paths on the page
    names = sorted({key for params in shown for key in params} - set(NOT_CONFIG))
    rows = []
    for name in names:
        values = [params.get(name, "—") for params in shown]
        if any(v != values[0] for v in values[1:]):
            rows.append({"field": name, "values": values})
    return rows
