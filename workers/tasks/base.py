"""The one base task that owns a job's lifecycle. Subclasses only say which core job to run.

claim (conditional UPDATE) → heartbeat thread renewing the lease → run the core with a
DatabaseReporter → record SUCCEEDED / FAILED / CANCELLED. A duplicate delivery finds the job
claimed and returns. A worker that dies leaves the message unacknowledged and the lease
expiring; the beat reaper re-queues the job (or fails it once its attempts are used up).

Warm shutdown (SIGTERM, Ctrl-C, the launcher stopping): celery lets the running task finish; the
signal also raises the reporter's suspend flag, so a training job checkpoints at the end of its
step and raises JobSuspended; the job is released to the queue and dispatched again at once, and
another worker resumes it from that step (no lost steps, no wait for the lease to expire).
Every write of an attempt is fenced by (lease owner, attempt number).
"""
from __future__ import annotations

import logging
import os
import threading
import time
import traceback

from celery import Task
from celery.signals import worker_shutting_down
from django.conf import settings
from django.db import close_old_connections, connection, transaction

from apps.jobs import lifecycle
from apps.jobs.models import Job, JobStatus
from workers.core.data.readers import DataFileError
from workers.core.kinds import run_core_job
from workers.core.modelstore.errors import ModelFolderError
from workers.core.reporting import JobCancelled, JobSuspended
from workers.core.specs import SpecError
from workers.tasks.reporter import DatabaseReporter, request_suspend, shutting_down

log = logging.getLogger(__name__)
# The core's own refusals of a user's input already say what and where ("train.jsonl: line 3: ...");
# a class name in front ("DataFileError: ...") tells the user nothing. Anything else keeps its
# type: it is a defect or an environment problem, and the type helps whoever reads the log.
INPUT_ERRORS = (DataFileError, ModelFolderError)
HAND_BACK_PAUSE_SECONDS = 0.5


def failure_text(exc: Exception) -> str:
    return str(exc) if isinstance(exc, INPUT_ERRORS) and str(exc) else f"{type(exc).__name__}: {exc}"


@worker_shutting_down.connect
def _suspend_on_warm_shutdown(sender=None, sig=None, how=None, **kwargs):
    """Runs in the worker's main process, from its signal handler: only raise a flag."""
    if how == "Warm":
        request_suspend()


class LeaseLost(Exception):
    """Another worker (or the reaper) holds the job now; this attempt must store nothing."""


class LeaseHeartbeat:
    """Renews the job's lease every JOB_HEARTBEAT_SECONDS in a thread, so a long step in the core
    cannot make a live job look dead. Losing the lease tells the reporter to stop."""

    def __init__(self, job_id: int, worker: str, lost: threading.Event, attempt: int | None = None) -> None:
        self.job_id, self.worker, self.lost, self.attempt = job_id, worker, lost, attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.wait(settings.JOB_HEARTBEAT_SECONDS):
                try:
                    if not lifecycle.renew_lease(self.job_id, self.worker, self.attempt):
                        log.warning("job %s: lease lost; stopping", self.job_id)
                        self.lost.set()
                        return
                except Exception:  # a DB hiccup: keep trying until the lease really expires
                    log.exception("job %s: heartbeat failed", self.job_id)
        finally:
            connection.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class JobTask(Task):
    abstract = True
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    max_retries = 0
    typing = False

    def worker_name(self) -> str:
        return f"{self.request.hostname or 'local'}:{os.getpid()}"

    def execute(self, job: Job, reporter: DatabaseReporter) -> dict:
        return run_core_job(job.kind, job.params, reporter)

    def forget_refused(self, job: Job) -> None:
        """After the job refused its input (an INPUT_ERRORS failure): drop what only that input
        needed (e.g. an upload's raw file), so a refused input leaves nothing behind."""

    def hand_back_unclaimed(self, job_id: int) -> str:
        """A message taken while this worker shuts down (a threads pool keeps taking them until its
        consumer stops; a replica handed back by one slot came straight back to another, loaded its
        model again and drained again): leave the job unclaimed, with no attempt counted, and
        publish it again for the next worker. The pause keeps a worker that is still consuming
        from passing the message to itself in a tight loop."""
        from apps.jobs.services import dispatch  # here: services imports the task catalog

        time.sleep(HAND_BACK_PAUSE_SECONDS)
        dispatch(job_id)
        log.info("job %s: not started, this worker is shutting down; published again", job_id)
        return "handed back"

    def released(self, job: Job) -> None:
        """After a warm shutdown gave the job back to the queue (e.g. tell what it served that it
        is gone until another worker takes it)."""

    def record(self, job: Job, result: dict) -> dict:
        """Store what the job produced (e.g. register a model version). Runs in the same
        transaction as the SUCCEEDED transition, so both happen or neither; keep it idempotent."""
        return result

    def run(self, job_id: int):
        close_old_connections()
        if shutting_down():
            return self.hand_back_unclaimed(int(job_id))
        worker = self.worker_name()
        with transaction.atomic():  # the claim and its log line: one write (a chat turn waits on it)
            job = lifecycle.claim(int(job_id), worker)
            first_line = None if job is None else lifecycle.append_log_line(
                job.pk, "info", lifecycle.attempt_text(job, worker))
        if job is None:
            log.info("job %s: not claimable (finished, cancelled, or held by another worker)", job_id)
            return "skipped"
        attempt = job.attempts
        reporter = DatabaseReporter(job, worker, first_line)
        try:
            with LeaseHeartbeat(job.pk, worker, reporter.lost, attempt):
                result = self.execute(job, reporter)
        except JobCancelled:
            if reporter.lost.is_set():
                return "lease lost"
            reporter.log("cancelled on request", "warning")
            lifecycle.finish(job.pk, worker, JobStatus.CANCELLED, attempt=attempt)
            return JobStatus.CANCELLED
        except JobSuspended as exc:
            if reporter.lost.is_set():
                return "lease lost"
            if lifecycle.release(job.pk, worker, attempt, f"worker shutting down ({exc}); the next worker resumes there"):
                from apps.jobs.services import dispatch  # here: services imports the task catalog

                dispatch(job.pk)
                self.released(job)
            return "suspended"
        except SpecError as exc:
            reporter.log(f"invalid parameters: {exc}", "error")
            lifecycle.finish(job.pk, worker, JobStatus.FAILED, error=f"invalid parameters: {exc}", attempt=attempt)
            return JobStatus.FAILED
        except Exception as exc:
            # Errors in the job itself are not retried: they would fail the same way again.
            # Only a lost worker earns another attempt (see lifecycle.reap_stale).
            reporter.log(traceback.format_exc(), "error")
            if lifecycle.finish(job.pk, worker, JobStatus.FAILED, error=failure_text(exc), attempt=attempt) \
                    and isinstance(exc, INPUT_ERRORS):
                self.forget_refused(job)
            return JobStatus.FAILED
        finally:
            reporter.close()
        try:
            with transaction.atomic():
                # The registration (record) and SUCCEEDED commit together, only while this attempt
                # holds the lease: a stale attempt's checkpoints and results are never registered.
                result = self.record(job, result)
                if not lifecycle.finish(job.pk, worker, JobStatus.SUCCEEDED, result=result, attempt=attempt):
                    raise LeaseLost()
        except LeaseLost:
            log.warning("job %s: lease lost before its result was recorded; nothing stored", job.pk)
            return "lease lost"
        except Exception as exc:
            log.exception("job %s: recording the result failed", job.pk)
            lifecycle.finish(job.pk, worker, JobStatus.FAILED, attempt=attempt,
                             error=f"recording the result failed: {type(exc).__name__}: {exc}")
            return JobStatus.FAILED
        return JobStatus.SUCCEEDED
