"""The beat task: re-queue or fail jobs whose worker died, then dispatch jobs that no message
carries (publish failed while Redis was down, or just re-queued)."""
import logging

from apps.jobs import lifecycle, services
from puyu_site.celery import app

log = logging.getLogger(__name__)


@app.task(name="jobs.maintain", ignore_result=True)
def maintain() -> dict:
    report = lifecycle.reap_stale()
    if report.requeued or report.failed or report.cancelled:
        log.warning("reaper: requeued %s, failed %s, cancelled %s", report.requeued, report.failed, report.cancelled)
    dispatched = [job_id for job_id in lifecycle.undispatched().values_list("pk", flat=True) if services.dispatch(job_id)]
    return {"requeued": report.requeued, "failed": report.failed, "cancelled": report.cancelled, "dispatched": dispatched}
