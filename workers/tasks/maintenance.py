"""The beat task: re-queue or fail jobs whose worker died, fail jobs that hang, then dispatch
jobs that no message carries: publish failed while Redis was down, just re-queued, or the
message was lost (Redis restarted without persistence, or evicted it). Last, at most once an
hour, the storage retention sweep (apps/studio/storage.py)."""
import logging
import re
from datetime import timedelta

import redis
from django.conf import settings
from django.utils import timezone

from apps.jobs import lifecycle, services
from apps.jobs.models import Job, JobStatus
from apps.studio import storage
from puyu_site.celery import app

log = logging.getLogger(__name__)

TASK_ID = re.compile(rb"job-[0-9a-f]{32}")  # services._new_task_id
UNACKED = "unacked"  # kombu's Redis transport keeps delivered, unacknowledged messages in this hash
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's Redis priority sub-queues
SCAN_CHUNK = 1000


def broker_task_ids(queues) -> set[str] | None:
    """Task ids of every message waiting in `queues` or delivered but not yet acknowledged.
    None when Redis cannot be read (then nothing is re-published)."""
    found: set[str] = set()
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)
        for queue in queues:
            for suffix in PRIORITY_SUFFIXES:
                key, start = queue + suffix, 0
                while chunk := client.lrange(key, start, start + SCAN_CHUNK - 1):
                    found.update(m.decode() for item in chunk for m in TASK_ID.findall(item))
                    start += SCAN_CHUNK
        for _, value in client.hscan_iter(UNACKED, count=SCAN_CHUNK):
            found.update(m.decode() for m in TASK_ID.findall(value))
    except redis.RedisError as exc:
        log.warning("could not read the broker's queues (%s); not checking for lost messages", exc)
        return None
    return found


def lost_messages(now=None) -> list[int]:
    """QUEUED jobs published more than JOB_MESSAGE_CHECK_SECONDS ago whose message is in neither
    their queue nor the unacked hash: only those are re-published, never a merely long queue."""
    now = now or timezone.now()
    waiting = list(Job.objects.filter(
        status=JobStatus.QUEUED, dispatched_at__lt=now - timedelta(seconds=settings.JOB_MESSAGE_CHECK_SECONDS),
    ).values_list("pk", "celery_task_id", "queue"))
    if not waiting:
        return []
    present = broker_task_ids({queue for _, _, queue in waiting})
    if present is None:
        return []
    return [pk for pk, task_id, _ in waiting if task_id not in present]


@app.task(name="jobs.maintain", ignore_result=True)
def maintain() -> dict:
    report = lifecycle.reap_stale()
    if report.requeued or report.failed or report.cancelled:
        log.warning("reaper: requeued %s, failed %s, cancelled %s", report.requeued, report.failed, report.cancelled)
    hung = lifecycle.reap_hung()
    if hung:
        log.warning("reaper: failed hung jobs %s", hung)
    lost = lost_messages()
    for job_id in lost:
        lifecycle.append_log_line(job_id, "warning", "its queue message was lost by the broker; publishing it again")
    if lost:
        log.warning("re-publishing jobs whose broker message was lost: %s", lost)
    candidates = list(lifecycle.undispatched().values_list("pk", flat=True)) + lost
    dispatched = [job_id for job_id in candidates if services.dispatch(job_id)]
    return {"requeued": report.requeued, "failed": report.failed, "cancelled": report.cancelled, "hung": hung,
            "lost": lost, "dispatched": dispatched, "retention": retention_sweep()}


def retention_sweep() -> dict | None:
    """The retention sweep when it is due (None otherwise). A failing sweep is logged and never
    stops the reaper: jobs matter more than disk space for one tick."""
    try:
        return storage.sweep_if_due()
    except Exception:
        log.exception("retention: the sweep failed; trying again at the next interval")
        return None
