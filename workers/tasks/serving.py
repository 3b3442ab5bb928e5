"""Serving tasks: one long-lived task per model replica (queue "serve" by default) and the beat
task that reconciles deployments (queue "control")."""
from __future__ import annotations

import logging

from django.conf import settings

from apps.serving import services
from apps.serving.models import ACTIVE_STATES, Replica
from puyu_site.celery import app
from workers.core.kinds import run_core_job
from workers.core.reporting import JobCancelled
from workers.tasks.base import JobTask

log = logging.getLogger(__name__)


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
        # The broker URL (with its password) is handed over here, at run time: it is never stored
        # in the job's params, which users see. (Rows from before carried it; they are rebuilt
        # from the deployment above, and migration serving 0002 removed it from them.)
        return run_core_job(job.kind, {**params, "redis_url": settings.REDIS_URL}, reporter)


@app.task(base=ReplicaTask, bind=True, name="serving.replica")
def replica(self, job_id: int):
    return ReplicaTask.run(self, job_id)


@app.task(name="serving.reconcile", ignore_result=True)
def reconcile() -> int:
    return services.reconcile_active()
