"""State transitions of a job, each one a conditional UPDATE so that concurrent actors (two
workers given the same message, the reaper, a user's cancel) can never both win.

    QUEUED ──claim──▶ RUNNING ──finish──▶ SUCCEEDED | FAILED | CANCELLED
      ▲                  │
      └──reap (lease expired, attempts left)      reap (no attempts left) ──▶ FAILED "worker lost"
    QUEUED ──cancel──▶ CANCELLED        RUNNING ──cancel──▶ flag, the worker stops ──▶ CANCELLED
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max
from django.db.models.functions import Coalesce
from django.utils import timezone

from apps.jobs import events
from apps.jobs.models import Job, JobLogLine, JobStatus

WORKER_LOST = "worker lost"


def _lease_deadline(now):
    return now + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def status_payload(job: Job) -> dict:
    return {
        "status": job.status,
        "attempts": job.attempts,
        "progress": job.progress,
        "eta_seconds": job.eta_seconds,
        "message": job.progress_message,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def _announce(job_id: int) -> Job | None:
    job = Job.objects.filter(pk=job_id).first()
    if job is not None:
        transaction.on_commit(lambda: events.publish(job_id, "status", status_payload(job)))
    return job


def claim(job_id: int, worker: str) -> Job | None:
    """Take a QUEUED job for `worker`. Returns the job, or None when someone else has it, it was
    cancelled, it is finished, or it has used all its attempts."""
    now = timezone.now()
    claimed = Job.objects.filter(
        pk=job_id, status=JobStatus.QUEUED, cancel_requested=False, attempts__lt=F("max_attempts")
    ).update(
        status=JobStatus.RUNNING,
        attempts=F("attempts") + 1,
        lease_owner=worker,
        heartbeat_at=now,
        lease_expires_at=_lease_deadline(now),
        started_at=Coalesce(F("started_at"), now),
        error="",
    )
    if not claimed:
        return None
    return _announce(job_id)


def renew_lease(job_id: int, worker: str) -> bool:
    """Heartbeat: extend the lease. False means the worker no longer holds the job."""
    now = timezone.now()
    return bool(
        Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, lease_owner=worker).update(
            heartbeat_at=now, lease_expires_at=_lease_deadline(now)
        )
    )


def finish(job_id: int, worker: str, status: str, *, result: dict | None = None, error: str = "") -> bool:
    """Record the outcome, only if `worker` still holds the lease."""
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        raise ValueError(f"finish: {status!r} is not a final status")
    fields = {"status": status, "finished_at": timezone.now(), "error": error[:4000], "eta_seconds": None, "lease_expires_at": None}
    if status == JobStatus.SUCCEEDED:
        fields.update(progress=1.0, result=result)
    with transaction.atomic():
        done = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, lease_owner=worker).update(**fields)
        if done:
            _announce(job_id)
    return bool(done)


def request_cancel(job: Job) -> str:
    """Cancel a job: a queued job is cancelled at once (and will never start); a running job
    gets the flag its worker checks every step. Returns the resulting status."""
    now = timezone.now()
    with transaction.atomic():
        if Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
            status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now
        ):
            _announce(job.pk)
            return JobStatus.CANCELLED
        if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(cancel_requested=True):
            _announce(job.pk)
            return JobStatus.RUNNING
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


@dataclass
class ReapReport:
    requeued: list[int]
    failed: list[int]
    cancelled: list[int]


def reap_stale(now=None) -> ReapReport:
    """Jobs whose worker stopped heart-beating: re-queue them (they resume on the next claim),
    or fail them with "worker lost" when they have used all attempts. A job whose cancel was
    requested ends CANCELLED instead of running again."""
    now = now or timezone.now()
    report = ReapReport([], [], [])
    stale = Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
    for job in stale.only("pk", "attempts", "max_attempts", "cancel_requested", "lease_owner"):
        base = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, lease_owner=job.lease_owner, lease_expires_at__lt=now)
        with transaction.atomic():
            if job.cancel_requested:
                changed = base.update(status=JobStatus.CANCELLED, finished_at=now, lease_expires_at=None)
                bucket = report.cancelled
            elif job.attempts >= job.max_attempts:
                reason = f"{WORKER_LOST}: the worker stopped responding on each of {job.attempts} attempts"
                changed = base.update(status=JobStatus.FAILED, finished_at=now, error=reason, lease_expires_at=None)
                bucket = report.failed
            else:
                changed = base.update(
                    status=JobStatus.QUEUED, lease_owner="", lease_expires_at=None, dispatched_at=None,
                    progress_message=f"re-queued: {WORKER_LOST} (attempt {job.attempts} of {job.max_attempts})",
                )
                bucket = report.requeued
            if changed:
                bucket.append(job.pk)
                append_log_line(job.pk, "warning", f"{WORKER_LOST}: no heartbeat from {job.lease_owner}")
                _announce(job.pk)
    return report


def undispatched(now=None):
    """QUEUED jobs that no broker message is known to carry (publish failed, or re-queued)."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.JOB_DISPATCH_GRACE_SECONDS)
    return Job.objects.filter(status=JobStatus.QUEUED, dispatched_at__isnull=True, created_at__lt=now - grace)


def append_log_line(job_id: int, level: str, message: str) -> JobLogLine:
    """Append one line to the job's bounded tail (used outside the worker, e.g. by the reaper)."""
    seq = (JobLogLine.objects.filter(job_id=job_id).aggregate(m=Max("seq"))["m"] or 0) + 1
    line = JobLogLine.objects.create(job_id=job_id, seq=seq, level=level, message=message)
    payload = {"seq": seq, "level": level, "message": message}
    transaction.on_commit(lambda: events.publish(job_id, "log", payload))
    return line
