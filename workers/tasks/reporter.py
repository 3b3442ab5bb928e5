"""The Reporter the core sees when it runs under Celery: rows in the database (the truth) plus a
push to the job's websocket group. Progress writes are throttled; logs and metrics are not.

Fencing: every write is conditional on this attempt still holding the job (status RUNNING, the
same lease owner and attempt number), checked in the same transaction as the write. An attempt
whose lease was taken away (the reaper re-queued its job, a newer attempt runs) writes nothing
more, and learns it has lost the job at its next write. The same conditional UPDATE records
`progress_at`, the sign of progress the reaper's hung-job check reads.

Warm shutdown: the worker's signal handler calls `request_suspend()`; `should_suspend()` then
tells a resumable job (training) to checkpoint and stop (workers/core/reporting.py).
"""
from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.jobs import events
from apps.jobs.models import Job, JobLogLine, JobMetric, JobStatus
from workers.core.paths import scrub_text

PROGRESS_MIN_INTERVAL = 0.2  # seconds between progress writes; the last one is always written
CANCEL_CHECK_INTERVAL = 0.2  # seconds between reads of the cancel flag (a cheap indexed read; training
# checks it every optimizer step and must stop within two steps, and steps can be a few tenths of a second)
TRIM_EVERY = 50  # delete log rows beyond the tail every this many lines

# Set from a signal handler (celery's worker_shutting_down, see workers/tasks/base.py): a plain
# attribute, because a signal handler must not take locks the interrupted code may hold.
_suspend = {"requested": False}


def request_suspend() -> None:
    _suspend["requested"] = True


def shutting_down() -> bool:
    """Whether this worker process is in warm shutdown (request_suspend was called)."""
    return _suspend["requested"]


class DatabaseReporter:
    def __init__(self, job: Job, worker: str, first_line: JobLogLine | None = None) -> None:
        """`first_line`: the attempt's line its claim wrote (its file gets it too; seq goes on from it)."""
        self.job_id = job.pk
        self.worker = worker
        self.attempt = job.attempts
        self.lost = threading.Event()  # set by the heartbeat, or by a fenced write, when the lease is gone
        self._cancel = job.cancel_requested
        self._last_cancel_check = time.monotonic()
        self._last_progress_write = 0.0
        self._attempt_started = time.monotonic()
        self._start_fraction = job.progress
        self._seq = first_line.seq if first_line else JobLogLine.objects.filter(job_id=job.pk).aggregate(m=Max("seq"))["m"] or 0
        path = job.log_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        if first_line:
            self._write_file([first_line.message], first_line.level)

    def _held(self, **fields) -> bool:
        """Update this attempt's row (and progress_at) only while it holds the job; call inside the
        transaction of the write it guards. False (and `lost` set) once the lease is gone."""
        held = Job.objects.filter(pk=self.job_id, status=JobStatus.RUNNING, lease_owner=self.worker,
                                  attempts=self.attempt).update(progress_at=timezone.now(), **fields)
        if not held:
            self.lost.set()
        return bool(held)

    # -- Reporter protocol --------------------------------------------------------------------
    def progress(self, fraction: float, message: str = "") -> None:
        if float(fraction) < 1.0 and time.monotonic() - self._last_progress_write < PROGRESS_MIN_INTERVAL:
            return
        update = self._progress_update(fraction, message)
        if self._held(**update):
            self._publish_progress(update)

    def log(self, message: str, level: str = "info") -> None:
        self.log_batch([message], level=level)

    def log_batch(self, messages: list[str], level: str = "info", progress: tuple[float, str] | None = None) -> None:
        """Several log lines and, when given, a progress update, in one transaction (the agent's
        steps come faster than one write each; workers/core/reporting.log_batch). A progress
        update that rides along is written whatever its throttle says: it costs no extra write."""
        messages = [scrub_text(message) for message in messages]  # tracebacks name server folders
        update = self._progress_update(*progress) if progress else {}
        with transaction.atomic():
            if not self._held(**update):
                return
            first = self._seq + 1
            self._seq += len(messages)
            JobLogLine.objects.bulk_create([JobLogLine(job_id=self.job_id, seq=seq, level=level, message=message)
                                            for seq, message in enumerate(messages, start=first)])
            if self._seq // TRIM_EVERY > (first - 1) // TRIM_EVERY:  # crossed a multiple of TRIM_EVERY
                JobLogLine.objects.filter(job_id=self.job_id, seq__lte=self._seq - settings.JOB_LOG_TAIL_LINES).delete()
        self._write_file(messages, level)
        for seq, message in enumerate(messages, start=first):
            events.publish(self.job_id, "log", {"seq": seq, "level": level, "message": message})
        if update:
            self._publish_progress(update)

    def _write_file(self, messages: list[str], level: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file.writelines(f"{stamp} {level.upper():7} {message}\n" for message in messages)
        self._file.flush()

    def _progress_update(self, fraction: float, message: str) -> dict:
        fraction = min(max(float(fraction), 0.0), 1.0)
        now = time.monotonic()
        self._last_progress_write = now
        return {"progress": fraction, "eta_seconds": self._eta(fraction, now), "progress_message": message[:200]}

    def _publish_progress(self, update: dict) -> None:
        events.publish(self.job_id, "progress", {"progress": update["progress"], "eta_seconds": update["eta_seconds"],
                                                 "message": update["progress_message"]})

    def metric(self, name: str, step: int, value: float) -> None:
        with transaction.atomic():
            if not self._held():
                return
            JobMetric.objects.bulk_create(
                [JobMetric(job_id=self.job_id, name=name, step=step, value=value)],
                update_conflicts=True, unique_fields=["job", "name", "step"], update_fields=["value"],
            )
        events.publish(self.job_id, "metric", {"name": name, "step": step, "value": value})

    def should_stop(self) -> bool:
        if self.lost.is_set():
            return True
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL:
            self._last_cancel_check = now
            self._cancel = Job.objects.filter(pk=self.job_id, cancel_requested=True).exists()
        return self._cancel

    def should_suspend(self) -> bool:
        return _suspend["requested"]

    # -----------------------------------------------------------------------------------------
    def _eta(self, fraction: float, now: float) -> float | None:
        done_this_attempt = fraction - self._start_fraction
        if done_this_attempt <= 0 or fraction >= 1.0:
            return None if fraction < 1.0 else 0.0
        rate = done_this_attempt / (now - self._attempt_started)
        return round((1.0 - fraction) / rate, 1)

    def close(self) -> None:
        self._file.close()
