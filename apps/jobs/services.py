"""The only place that creates jobs and sends them to Celery (after the transaction commits)."""
from __future__ import annotations

import logging
import uuid

import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection, transaction
from django.utils import timezone
from django.utils.text import get_text_list
from django.utils.translation import gettext

from apps.accounts.visibility import PermissionDenied, can_manage
from apps.jobs import lifecycle
from apps.jobs.models import FINISHED_STATUSES, Job, JobStatus
from apps.studio.labels import choice_word, use_role
from puyu_site.celery import app as celery_app
from workers.tasks.catalog import GENERIC_KINDS, KINDS, InvalidParams, check_generic_kind, task_name, validate_params

log = logging.getLogger(__name__)

__all__ = ["InvalidParams", "TooManyJobs", "submit_job", "submit_generic_job", "dispatch", "cancel_job", "retry_job",
           "PermissionDenied"]

# Replicas run as long as their deployment does; the deployment bounds how many there are.
LIMIT_EXEMPT_KINDS = ("serve",)


class TooManyJobs(InvalidParams):
    """The owner already has MAX_ACTIVE_JOBS_PER_USER queued or running jobs (the API answers 429)."""


GENERIC_QUEUES = ("gpu", "cpu")


def submit_generic_job(owner, kind: str, params: dict | None = None, *, queue: str | None = None, title: str = "") -> Job:
    """What the generic job API and forms call: only the kinds that touch no file
    (catalog.GENERIC_KINDS). Every other kind is created by its app's service, which derives
    its paths from ids, through `submit_job`."""
    check_generic_kind(kind)
    if queue is not None and queue not in GENERIC_QUEUES:
        # serve and agent workers hold long-lived replicas and chat turns: a probe there would
        # take a replica's slot or delay a reply.
        raise InvalidParams("queue", gettext("%(queue)s: generic jobs run on %(queues)s")
                                     % {"queue": repr(queue), "queues": get_text_list(GENERIC_QUEUES, gettext("or"))})
    return submit_job(owner, kind, params, queue=queue, title=title)


def submit_job(owner, kind: str, params: dict | None = None, *, queue: str | None = None, title: str = "",
               resources: dict | None = None, retry_of: Job | None = None) -> Job:
    """The internal entry point (app services): any kind, parameters already built by the server."""
    clean = validate_params(kind, params)
    queue = queue or KINDS[kind].default_queue
    if queue not in settings.JOB_QUEUES:
        raise InvalidParams("queue", gettext("unknown queue %(queue)s (known: %(known)s)")
                                     % {"queue": repr(queue), "known": ", ".join(settings.JOB_QUEUES)})
    with transaction.atomic():
        _check_active_limit(owner, kind)
        job = Job.objects.create(
            owner=owner, kind=kind, params=clean, queue=queue, title=title[:200], resources=resources or {},
            max_attempts=settings.JOB_MAX_ATTEMPTS, retry_of=retry_of, celery_task_id=_new_task_id(),
            dispatched_at=timezone.now(),
        )
        # The message id and its publish time are written with the row, so publishing after
        # commit costs no query (see _publish).
        transaction.on_commit(lambda: _publish(job))
    return job


def _check_active_limit(owner, kind: str) -> None:
    if kind in LIMIT_EXEMPT_KINDS or owner.is_staff:
        return
    # Lock the owner's row so two submits at once cannot both pass the count (PostgreSQL; SQLite
    # serialises writers anyway: its transactions take the write lock up front, and it has no
    # FOR UPDATE, so the read would only cost a query on a chat turn's path).
    if connection.features.has_select_for_update:
        get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
    limit = settings.MAX_ACTIVE_JOBS_PER_USER
    active = (Job.objects.filter(owner=owner, status__in=(JobStatus.QUEUED, JobStatus.RUNNING))
              .exclude(kind__in=LIMIT_EXEMPT_KINDS).count())
    if active >= limit:
        raise TooManyJobs("jobs", gettext("you already have %(active)s queued or running jobs (the limit is "
                                          "%(limit)s); wait for some to finish or cancel them")
                                  % {"active": active, "limit": limit})


def _new_task_id() -> str:
    return f"job-{uuid.uuid4().hex}"


def dispatch(job_id: int) -> bool:
    """(Re-)publish a QUEUED job's message under a new id (used by beat for jobs that no
    message is known to carry). A duplicate message is harmless: only one claim can win."""
    job = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).first()
    if job is None:
        return False
    job.celery_task_id = _new_task_id()
    Job.objects.filter(pk=job.pk).update(celery_task_id=job.celery_task_id, dispatched_at=timezone.now())
    return _publish(job)


def _publish(job: Job) -> bool:
    """Send the job's message; its row already holds the message id and `dispatched_at`. A failure
    (Redis down) clears `dispatched_at`: the job waits QUEUED and the beat task tries again.
    Why the time is written before the publish and not after it: the write after it was a second
    SQLite write racing the worker's claim of the job it had just received (SQLite has one writer;
    a claim that waits sleeps at least 1 ms), on every chat turn's path. A process that dies
    between its commit and the publish leaves a stamped job with no message: the beat's
    lost-message check (workers/tasks/maintenance.lost_messages) publishes it again."""
    try:
        celery_app.send_task(task_name(job.kind), args=[job.pk], queue=job.queue, task_id=job.celery_task_id)
    except Exception as exc:  # kombu raises several connection errors; all mean "try later"
        log.warning("job %s: could not reach the broker (%s); beat will dispatch it later", job.pk, exc)
        Job.objects.filter(pk=job.pk, celery_task_id=job.celery_task_id).update(dispatched_at=None)
        return False
    return True


def cancel_job(job: Job, user) -> str:
    if not can_manage(user, job):
        raise PermissionDenied(gettext("only the owner or staff can cancel this job"))
    status = lifecycle.request_cancel(job)
    if status == JobStatus.CANCELLED and job.celery_task_id:
        # Best effort: a revoked message is dropped by workers; if it still arrives, the claim
        # finds the job CANCELLED and does nothing.
        try:
            celery_app.control.revoke(job.celery_task_id)
        except Exception as exc:
            log.info("revoke of %s failed (harmless): %s", job.celery_task_id, exc)
    return status


# Kinds whose jobs carry state outside Job.params (e.g. what a registry job will register)
# resubmit through their own app: kind → function(old_job, user) -> new Job.
RETRY_HANDLERS: dict = {}


def retry_job(job: Job, user) -> Job:
    """A new job with the same kind, queue and parameters; the old one keeps its history.
    Generic kinds are resubmitted as they were; app kinds only through their app's handler (a
    job without the app's records, e.g. one made by the generic API before it was restricted,
    is refused with a 422 instead of failing)."""
    if not can_manage(user, job):
        raise PermissionDenied(gettext("only the owner or staff can retry this job"))
    if job.status not in FINISHED_STATUSES:
        raise InvalidParams("status", gettext("only finished jobs can be retried; this one is %(status)s")
                                      % {"status": choice_word(job, "status")})
    if job.kind in GENERIC_KINDS:
        return submit_job(user, job.kind, job.params, queue=job.queue, title=job.title, resources=job.resources, retry_of=job)
    handler = RETRY_HANDLERS.get(job.kind)
    if handler is None:
        check_generic_kind(job.kind)  # raises: says where such jobs are (re)started
    try:
        return handler(job, user)
    except ObjectDoesNotExist:
        raise InvalidParams("kind", gettext("this %(kind)s job was not created by its app, so it cannot be retried; "
                                            "start it again from its app") % {"kind": job.kind}) from None


def active_use_blockers(uses) -> list[str]:
    """For a version's `uses` (rows with `job` and `role`): the queued or running jobs that still
    read it, as reasons a delete is refused."""
    return [gettext("%(job)s (%(status)s) uses it as %(role)s")
            % {"job": use.job, "status": use.job.get_status_display().lower(), "role": use_role(use.role)}
            for use in uses.select_related("job").filter(job__status__in=(JobStatus.QUEUED, JobStatus.RUNNING))]


def queue_depths() -> dict[str, int | None]:
    """Messages waiting in the broker per queue (None when Redis cannot be reached)."""
    depths: dict[str, int | None] = {}
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        for queue in settings.JOB_QUEUES:
            depths[queue] = client.llen(queue)
    except redis.RedisError:
        depths = {queue: None for queue in settings.JOB_QUEUES}
    return depths
