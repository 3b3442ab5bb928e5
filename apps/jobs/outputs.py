"""What a finished job created, as links for its pages ("Created: numbers v2"), so the page that
started something links to it the moment it exists, without a reload and without reading the raw
result. Each app registers a resolver for its kinds in its AppConfig.ready (apps/jobs may not
import the apps that build on it)."""
from __future__ import annotations

from collections.abc import Callable

from apps.jobs.models import Job, JobStatus

# kind → resolver(job) → [(label, url)]; the objects belong to the job's owner, so whoever may
# see the job may see them.
OUTPUT_LINKS: dict[str, list[Callable[[Job], list[tuple[str, str]]]]] = {}


def register(kinds, resolver) -> None:
    for kind in kinds:
        OUTPUT_LINKS.setdefault(kind, []).append(resolver)


def job_outputs(job: Job) -> list[dict]:
    if job.status != JobStatus.SUCCEEDED:
        return []
    return [{"label": label, "url": url} for resolver in OUTPUT_LINKS.get(job.kind, []) for label, url in resolver(job)]
