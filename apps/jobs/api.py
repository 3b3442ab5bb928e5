"""The jobs API: everything the job pages do."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from django.conf import settings
from django.utils import timezone
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from pydantic import Field, WithJsonSchema

from apps.accounts.visibility import get_visible_or_404, visible_to
from apps.jobs import services
from apps.jobs.models import Job, JobKind, JobStatus, WorkerNode
from apps.jobs.snapshot import metric_series
from workers.tasks.catalog import GENERIC_KINDS, public_params, public_value

router = Router(tags=["jobs"])

# The schema documents only the generic kinds; any other string reaches the view, which answers
# 422 naming `kind` and the app that creates such jobs (a bare enum error would not say where).
GenericKind = Annotated[str, Field(max_length=40), WithJsonSchema(
    {"type": "string", "enum": list(GENERIC_KINDS), "title": "Kind",
     "description": "Only these kinds are submitted here; the others are created by their app "
                    "(datasets, models, training, deployments), which chooses their paths."})]


class JobIn(Schema):
    kind: GenericKind
    params: dict[str, Any] = {}
    queue: str | None = None
    title: str = ""


class JobOut(Schema):
    id: int
    kind: str
    title: str
    owner: str
    status: JobStatus
    queue: str
    params: dict[str, Any]
    attempts: int = Field(description="every start of the job, including those a warm shutdown handed back; "
                                      "the attempt number that fences a worker's writes")
    released_attempts: int = Field(description="starts handed back at a warm shutdown (checkpointed, not failed)")
    counted_attempts: int = Field(description="attempts - released_attempts: the attempts max_attempts caps")
    max_attempts: int = Field(description="the cap the job was created with (PUYU_JOB_MAX_ATTEMPTS)")
    progress: float
    eta_seconds: float | None
    progress_message: str
    cancel_requested: bool
    error: str
    result: dict[str, Any] | None
    retry_of: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_owner(obj: Job) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_retry_of(obj: Job) -> int | None:
        return obj.retry_of_id

    # What users see never holds a server path or a secret (the stored params stay absolute).
    @staticmethod
    def resolve_params(obj: Job) -> dict[str, Any]:
        return public_params(obj.kind, obj.params)

    @staticmethod
    def resolve_result(obj: Job) -> dict[str, Any] | None:
        return public_value(obj.result)


class JobPage(Schema):
    count: int
    items: list[JobOut]


class JobFilters(Schema):
    kind: JobKind | None = None
    status: JobStatus | None = None
    owner: str | None = None
    limit: int = 50
    offset: int = 0


class LogLineOut(Schema):
    seq: int
    level: str
    message: str
    created_at: datetime


class WorkerOut(Schema):
    name: str
    hostname: str
    queues: list[str]
    devices: dict[str, Any]
    online: bool
    last_seen_at: datetime


def _job_or_404(request, job_id: int) -> Job:
    return get_visible_or_404(Job.objects.select_related("owner"), request.auth, pk=job_id)


def _act(fn, *args):
    try:
        return fn(*args)
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except services.TooManyJobs as exc:
        raise HttpError(429, str(exc)) from None
    except services.InvalidParams as exc:
        raise HttpError(422, str(exc)) from None


@router.get("/jobs", response=JobPage)
def list_jobs(request, filters: JobFilters = Query(...)):
    jobs = visible_to(Job.objects.select_related("owner"), request.auth)
    if filters.kind:
        jobs = jobs.filter(kind=filters.kind)
    if filters.status:
        jobs = jobs.filter(status=filters.status)
    if filters.owner:
        jobs = jobs.filter(owner__username=filters.owner)
    limit = min(max(filters.limit, 1), 200)
    offset = max(filters.offset, 0)
    return {"count": jobs.count(), "items": list(jobs[offset: offset + limit])}


@router.post("/jobs", response={201: JobOut})
def create_job(request, payload: JobIn):
    """Submit a generic job (diagnostics, probe). 422 names the field at fault (`kind` for a
    kind only its app creates); 429 when you already have too many queued or running jobs."""
    job = _act(lambda: services.submit_generic_job(request.auth, payload.kind, payload.params, queue=payload.queue,
                                                   title=payload.title))
    return Status(201, job)


@router.get("/jobs/{job_id}", response=JobOut)
def get_job(request, job_id: int):
    return _job_or_404(request, job_id)


@router.get("/jobs/{job_id}/log", response=list[LogLineOut])
def get_log(request, job_id: int, after: int = 0):
    """The kept tail of the log (the last PUYU_JOB_LOG_TAIL_LINES lines), after a given seq."""
    return list(_job_or_404(request, job_id).log_lines.filter(seq__gt=after).order_by("seq")[:1000])


@router.get("/jobs/{job_id}/metrics", response=dict[str, dict[str, list[float]]])
def get_metrics(request, job_id: int):
    return metric_series(_job_or_404(request, job_id))


@router.post("/jobs/{job_id}/cancel", response=JobOut)
def cancel_job(request, job_id: int):
    job = _job_or_404(request, job_id)
    _act(services.cancel_job, job, request.auth)
    job.refresh_from_db()
    return job


@router.post("/jobs/{job_id}/retry", response={201: JobOut})
def retry_job(request, job_id: int):
    return Status(201, _act(services.retry_job, _job_or_404(request, job_id), request.auth))


@router.get("/workers", response=list[WorkerOut])
def list_workers(request):
    horizon = timezone.now() - timedelta(seconds=settings.WORKER_ONLINE_SECONDS)
    nodes = WorkerNode.objects.all()
    return [
        {**{f: getattr(n, f) for f in ("name", "hostname", "queues", "devices", "last_seen_at")},
         "online": n.stopped_at is None and n.last_seen_at >= horizon}
        for n in nodes
    ]
