"""Serving tasks: one long-lived task per model replica (queue "serve" by default) and the beat
task that reconciles deployments (queue "control").

A serve worker is a threads pool: each replica task holds one thread (a serve slot) for the
replica's life, with its own engine, so one process hosts as many replicas as it has slots (see
launcher.worker_plan). What the replicas of one process share, and how that is handled:
- torch's CPU thread count is process-wide: it stays the worker's OMP_NUM_THREADS; the engine
  option `threads` (torch.set_num_threads) would change it under every other replica, so it is
  ignored, with a line in the replica's log, where a worker hosts more than one;
- the warm-shutdown flag (workers/tasks/reporter.py) is process-wide on purpose: the whole worker
  stops, so every replica drains and hands its job back to the queue (another worker, or this one
  restarted, serves it again) instead of holding the shutdown until the launcher kills it;
- Django's database connections are per thread; model loads are serialised by the engine.
"""
from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.db import connection

from apps.jobs.models import Job
from apps.serving import services
from apps.serving.models import ACTIVE_STATES, Replica
from puyu_site.celery import app
from workers.core.kinds import run_core_job
from workers.core.reporting import JobCancelled, JobSuspended
from workers.tasks import presence
from workers.tasks.base import JobTask

log = logging.getLogger(__name__)


class ReplicaReporter:
    """The job's reporter, as the replica loop sees it: asked whether to stop, it also says yes
    once the worker is shutting down (the replica loop only asks should_stop); told the replica
    is ready, it reconciles the deployment at once, so the studio offers it without waiting for
    the beat's next reconcile (up to SERVING_RECONCILE_SECONDS)."""

    def __init__(self, reporter, deployment_id: int) -> None:
        self._reporter = reporter
        self._deployment_id = deployment_id

    def should_stop(self) -> bool:
        return self._reporter.should_stop() or self._reporter.should_suspend()

    def ready(self) -> None:
        # In a thread of its own: the replica serves at once, even while a busy SQLite makes the
        # reconcile wait for its write lock.
        threading.Thread(target=self._reconcile, name="replica-ready", daemon=True).start()

    def _reconcile(self) -> None:
        try:
            services.reconcile(self._deployment_id)
        except Exception:  # noqa: BLE001  (the beat's reconcile records it in a moment anyway)
            log.exception("reconcile of deployment %s after its replica was ready failed", self._deployment_id)
        finally:
            connection.close()  # this thread's own connection

    def __getattr__(self, name):
        return getattr(self._reporter, name)


def shared_process_params(params: dict, capacity: int, reporter) -> dict:
    """The replica's params for a worker hosting `capacity` replicas (see the module doc)."""
    if capacity > 1 and params.get("threads"):
        reporter.log(f"engine option threads={params['threads']} ignored: this worker hosts up to {capacity} replicas, "
                     "which share its torch threads (OMP_NUM_THREADS)", "warning")
        return {**params, "threads": 0}
    return params


class ReplicaTask(JobTask):
    abstract = True

    def execute(self, job, reporter) -> dict:
        # Re-read the rows: the deployment may have been stopped (or its options changed) while
        # this message waited in the queue.
        replica = Replica.objects.select_related("deployment__owner", "version__parent").filter(job_id=job.pk).first()
        if replica is None or replica.deployment.state not in ACTIVE_STATES or replica.deployment.state == "draining":
            reporter.log("the deployment was stopped or deleted before this replica started", "warning")
            raise JobCancelled()
        params = services.replica_params(replica.deployment, replica.version, replica.replica_id)
        params = shared_process_params(params, presence.slot_capacity(), reporter)
        # The broker URL (with its password) is handed over here, at run time: it is never stored
        # in the job's params, which users see. (Rows from before carried it; they are rebuilt
        # from the deployment above, and migration serving 0002 removed it from them.)
        with presence.holding_slot(job.pk, replica.deployment_id, replica.replica_id):
            try:
                return run_core_job(job.kind, {**params, "redis_url": settings.REDIS_URL}, ReplicaReporter(reporter, replica.deployment_id))
            except JobCancelled:
                if reporter.should_suspend() and not reporter.lost.is_set() and not _cancel_requested(job.pk):
                    raise JobSuspended("the replica drained") from None
                # Drained by the studio (the deployment stopped, scaled down or rolled over): the
                # normal end of a replica, not a failure. A cancel of the job itself stays CANCELLED.
                reason = Replica.objects.filter(pk=replica.pk).values_list("stop_reason", flat=True).first()
                if not reason or reporter.lost.is_set():
                    raise
                reporter.log(f"stopped: {reason}")
                reporter.progress(1.0, f"Stopped: {reason}")
                return {"outcome": "stopped", "reason": reason}

    def released(self, job) -> None:
        # Its deployment says "starting" now, not at beat's next reconcile (up to 10 s): a stack
        # restarted within that time offered a "ready" deployment that answered 503 "no replica".
        deployment_id = Replica.objects.filter(job_id=job.pk).values_list("deployment_id", flat=True).first()
        if deployment_id is not None:
            try:
                services.reconcile(deployment_id)
            except Exception:  # a shutting-down worker must not fail on it: beat reconciles anyway
                log.exception("deployment %s: reconcile after a warm shutdown failed", deployment_id)


def _cancel_requested(job_id: int) -> bool:
    return Job.objects.filter(pk=job_id, cancel_requested=True).exists()


@app.task(base=ReplicaTask, bind=True, name="serving.replica")
def replica(self, job_id: int):
    return ReplicaTask.run(self, job_id)


@app.task(name="serving.reconcile", ignore_result=True)
def reconcile() -> int:
    return services.reconcile_active()
