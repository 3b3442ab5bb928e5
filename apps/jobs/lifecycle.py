"""State transitions of a job, each one a conditional UPDATE so that concurrent actors (two
workers given the same message, the reaper, a user's cancel) can never both win.

    QUEUED ──claim──▶ RUNNING ──finish──▶ SUCCEEDED | FAILED | CANCELLED
      ▲                  │
      ├──reap (lease expired, attempts left)      reap (no attempts left) ──▶ FAILED "worker lost"
      └──release (warm shutdown: checkpointed, not a failed attempt: released_attempts + 1)
    QUEUED ──cancel──▶ CANCELLED        RUNNING ──cancel──▶ flag, the worker stops ──▶ CANCELLED
    RUNNING ──reap_hung (past its kind's time limit, or no progress for N s)──▶ FAILED

A lease is (lease_owner, attempts): a worker process that runs the same job again later holds a
new attempt, so a write of the earlier attempt can never pass for the later one. `attempts` only
grows (it is that fencing token); the cap `max_attempts` applies to `attempts - released_attempts`,
the attempts a warm shutdown did not hand back.
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
from workers.tasks.catalog import public_text

WORKER_LOST = "worker lost"


def _lease_deadline(now):
    return now + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def status_payload(job: Job) -> dict:
    return {
        "status": job.status,
        "attempts": job.attempts,
        "counted_attempts": job.counted_attempts,
        "released_attempts": job.released_attempts,
        "progress": job.progress,
        "eta_seconds": job.eta_seconds,
        "message": job.progress_message,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def attempt_text(job: Job, worker: str = "") -> str:
    """"attempt 2 of 3 on w1": the current attempt as the cap counts it, and the hand-backs beside it."""
    text = f"attempt {job.counted_attempts} of {job.max_attempts}" + (f" on {worker}" if worker else "")
    if job.released_attempts:
        text += f" (run {job.attempts}: {job.released_attempts} handed back at a worker shutdown)"
    return text


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
        pk=job_id, status=JobStatus.QUEUED, cancel_requested=False,
        attempts__lt=F("max_attempts") + F("released_attempts"),  # counted attempts < the cap
    ).update(
        status=JobStatus.RUNNING,
        attempts=F("attempts") + 1,
        lease_owner=worker,
        heartbeat_at=now,
        lease_expires_at=_lease_deadline(now),
        started_at=Coalesce(F("started_at"), now),
        progress_at=now,
        error="",
    )
    if not claimed:
        return None
    return _announce(job_id)


def _held(job_id: int, worker: str, attempt: int | None):
    """The job's row while `worker` (and, when given, this attempt) holds its lease."""
    held = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING, lease_owner=worker)
    return held if attempt is None else held.filter(attempts=attempt)


def renew_lease(job_id: int, worker: str, attempt: int | None = None) -> bool:
    """Heartbeat: extend the lease. False means the worker no longer holds the job."""
    now = timezone.now()
    return bool(_held(job_id, worker, attempt).update(heartbeat_at=now, lease_expires_at=_lease_deadline(now)))


def finish(job_id: int, worker: str, status: str, *, result: dict | None = None, error: str = "",
           attempt: int | None = None) -> bool:
    """Record the outcome, only if `worker` still holds the lease."""
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        raise ValueError(f"finish: {status!r} is not a final status")
    fields = {"status": status, "finished_at": timezone.now(), "error": public_text(error)[:4000], "eta_seconds": None, "lease_expires_at": None}
    if status == JobStatus.SUCCEEDED:
        # The last progress message ("step 5/8") described the work in flight; the result speaks now.
        fields.update(progress=1.0, result=result, progress_message="")
    with transaction.atomic():
        done = _held(job_id, worker, attempt).update(**fields)
        if done:
            _announce(job_id)
    return bool(done)


def release(job_id: int, worker: str, attempt: int | None, reason: str) -> bool:
    """Warm shutdown: the attempt checkpointed and stopped; give the job back to the queue at once.
    Not a failed attempt: it is counted in `released_attempts`, which the cap leaves out, so a job
    suspended by many restarts of its worker is never failed for it (a crash still uses up an
    attempt), and `max_attempts` stays the cap the job was created with. `attempts` is kept: the
    next claim is a new attempt number, so this one's lease can never be taken for it. The
    caller dispatches it."""
    with transaction.atomic():
        done = _held(job_id, worker, attempt).update(
            status=JobStatus.QUEUED, lease_owner="", lease_expires_at=None, dispatched_at=None, eta_seconds=None,
            released_attempts=F("released_attempts") + 1, progress_message=f"re-queued: {reason}"[:200],
        )
        if done:
            append_log_line(job_id, "warning", f"re-queued: {reason}")
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
    for job in stale.only("pk", "attempts", "released_attempts", "max_attempts", "cancel_requested", "lease_owner"):
        base = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, lease_owner=job.lease_owner, attempts=job.attempts,
                                  lease_expires_at__lt=now)
        with transaction.atomic():
            if job.cancel_requested:
                changed = base.update(status=JobStatus.CANCELLED, finished_at=now, lease_expires_at=None)
                bucket = report.cancelled
            elif job.counted_attempts >= job.max_attempts:
                reason = f"{WORKER_LOST}: the worker stopped responding on each of {job.counted_attempts} attempts"
                changed = base.update(status=JobStatus.FAILED, finished_at=now, error=reason, lease_expires_at=None)
                bucket = report.failed
            else:
                changed = base.update(
                    status=JobStatus.QUEUED, lease_owner="", lease_expires_at=None, dispatched_at=None,
                    progress_message=f"re-queued: {WORKER_LOST} ({attempt_text(job)})"[:200],
                )
                bucket = report.requeued
            if changed:
                bucket.append(job.pk)
                append_log_line(job.pk, "warning", f"{WORKER_LOST}: no heartbeat from {job.lease_owner}")
                _announce(job.pk)
    return report


def reap_hung(now=None) -> list[int]:
    """Fail RUNNING jobs that are alive (their heartbeat renews the lease) but do not move: past
    their kind's wall-clock limit, or with no progress, log or metric for JOB_NO_PROGRESS_SECONDS.
    Their worker learns it at its next heartbeat or write (the lease is gone) and stops."""
    now = now or timezone.now()
    failed = []
    quiet = settings.JOB_NO_PROGRESS_SECONDS
    running = Job.objects.filter(status=JobStatus.RUNNING).only("pk", "kind", "attempts", "lease_owner", "started_at", "progress_at")
    for job in running:
        limit_hours = settings.JOB_TIME_LIMIT_HOURS.get(job.kind, 0)
        last_sign = job.progress_at or job.started_at
        if limit_hours and job.started_at and job.started_at < now - timedelta(hours=limit_hours):
            reason = (f"time limit: ran for more than {_human_hours(limit_hours)}, the limit for {job.kind} jobs "
                      f"(setting PUYU_JOB_TIME_LIMIT_{job.kind.upper()})")
        elif (quiet and job.kind not in settings.JOB_NO_PROGRESS_EXEMPT_KINDS and last_sign
              and last_sign < now - timedelta(seconds=quiet)):
            reason = f"no progress for {quiet:.0f} s: the job looks hung"
        else:
            continue
        with transaction.atomic():
            if _held(job.pk, job.lease_owner, job.attempts).update(
                    status=JobStatus.FAILED, finished_at=now, error=reason, eta_seconds=None, lease_expires_at=None):
                failed.append(job.pk)
                append_log_line(job.pk, "error", reason)
                _announce(job.pk)
    return failed


def _human_hours(hours: float) -> str:
    return f"{hours:g} h" if hours >= 1 else f"{hours * 3600:.0f} s"


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
