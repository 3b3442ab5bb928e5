"""The only place that changes deployments: create / scale / stop / start / delete, and
`reconcile`, which brings a deployment's replica jobs in line with what it asks for.

Replicas are ordinary jobs of kind "serve" (one Celery task each, on the deployment's queue), so
they get leases, the reaper, cancel and logs from the job system. Their live state (loading,
ready, draining) and metrics come from the Redis hash each replica keeps alive (see
workers/core/inference/protocol.py). `reconcile` runs on every change and from the beat task
`serving.reconcile` every few seconds."""
from __future__ import annotations

import json
import logging
import uuid

import redis
from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext

from apps.accounts.visibility import PermissionDenied, require_manager  # noqa: F401  (views catch services.PermissionDenied)
from apps.jobs import lifecycle
from apps.jobs import services as jobs
from apps.jobs.models import FINISHED_STATUSES, JobStatus
from apps.registry.models import (
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    VersionKind,
    VersionUse,
)
from apps.serving.models import ACTIVE_STATES, Deployment, DeploymentState, Replica
from workers.tasks import serving_protocol as protocol
from workers.tasks.catalog import InvalidParams, validate_params

log = logging.getLogger(__name__)

# Replica spec fields the studio fills in from the rows; a user's engine options may not set them.
# (redis_url is not stored at all: the replica task passes the worker's REDIS_URL at run time.)
RESERVED_FIELDS = ("deployment_id", "replica_id", "redis_url", "model_dir", "adapter_dir", "served_name", "version_label")
MAX_REPLICAS = 16


class ServingError(InvalidParams):
    """A refused deployment change; names the field (`.field`) and the reason (`.reason`)."""


def _require_manager(user, deployment: Deployment) -> None:
    require_manager(user, deployment, "deployment")


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


# ---- what a deployment serves ----------------------------------------------------------------

def resolve_version(deployment: Deployment) -> ModelVersion | None:
    """The version the deployment should serve now: the pinned one, or where its alias points."""
    if deployment.version_id:
        return deployment.version
    alias = ModelAlias.objects.select_related("version").filter(model_id=deployment.model_id, name=deployment.alias).first()
    return alias.version if alias else None


def _model_paths(version: ModelVersion) -> dict:
    if version.kind == VersionKind.ADAPTER:
        if version.parent is None:
            raise ServingError("version", gettext("%(version)s is an adapter without a base model; merge or "
                                                  "re-import it with its base") % {"version": version})
        return {"model_dir": str(version.parent.path), "adapter_dir": str(version.path)}
    return {"model_dir": str(version.path), "adapter_dir": ""}


def replica_params(deployment: Deployment, version: ModelVersion, replica_id: str) -> dict:
    """The ReplicaSpec fields for one replica (engine options first, the studio's own fields win)."""
    return {
        **(deployment.engine_options or {}),
        "deployment_id": deployment.pk,
        "replica_id": replica_id,
        **_model_paths(version),
        "served_name": deployment.served_name,
        "version_label": str(version),
    }


def validate_engine_options(options, version: ModelVersion) -> dict:
    """Engine options as the core's ReplicaSpec accepts them, or ServingError naming the field."""
    if options is None or options == "":
        options = {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as exc:
            raise ServingError("engine_options", gettext("not valid JSON (line %(line)s, column %(column)s: %(error)s)")
                               % {"line": exc.lineno, "column": exc.colno, "error": exc.msg}) from None
    if not isinstance(options, dict):
        raise ServingError("engine_options", gettext("must be a JSON object of ReplicaSpec field: value"))
    for field in RESERVED_FIELDS:
        if field in options:
            raise ServingError(f"engine_options.{field}", gettext("is set by the studio from the deployment and may "
                                                                  "not be given"))
    probe = {**options, "deployment_id": 1, "replica_id": "check", **_model_paths(version), "served_name": "check", "version_label": "check"}
    try:
        validate_params("serve", probe)
    except InvalidParams as exc:
        raise ServingError(f"engine_options.{exc.field}" if exc.field not in ("params",) else "engine_options", exc.reason) from None
    return options


# ---- changes ---------------------------------------------------------------------------------

def _check_numbers(replicas: int, max_queue: int, request_timeout_s: float, max_restarts: int) -> None:
    if not isinstance(replicas, int) or not 1 <= replicas <= MAX_REPLICAS:
        raise ServingError("replicas", gettext("must be a whole number from 1 to %(max)s") % {"max": MAX_REPLICAS})
    if not isinstance(max_queue, int) or not 1 <= max_queue <= 100_000:
        raise ServingError("max_queue", gettext("must be a whole number from 1 to 100000"))
    if not 1 <= float(request_timeout_s) <= 3600:
        raise ServingError("request_timeout_s", gettext("must be between 1 and 3600 seconds"))
    if not isinstance(max_restarts, int) or not 0 <= max_restarts <= 100:
        raise ServingError("max_restarts", gettext("must be a whole number from 0 to 100"))


def create_deployment(user, *, name: str, model: RegisteredModel, version: ModelVersion | None = None, alias: str = "",
                      replicas: int = 1, queue: str = "serve", engine_options=None, max_queue: int = 64,
                      request_timeout_s: float = 120.0, max_restarts: int = 3) -> Deployment:
    """Deploy `version` (pinned) or `alias` of `model` (followed when it moves). The user must be
    able to see the model (a teammate may deploy a team model); the deployment is theirs."""
    from apps.accounts.visibility import visible_to

    if not visible_to(RegisteredModel.objects.filter(pk=model.pk), user).exists():
        raise ServingError("model", gettext("no such model, or you may not see it"))
    name = (name or "").strip().lower()
    if not name or len(name) > 60 or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise ServingError("name", gettext("%(name)s: use letters, digits, - and _ (1 to 60); it becomes the API "
                                           "model id") % {"name": repr(name)})
    if Deployment.objects.filter(owner=user, name=name).exists():
        raise ServingError("name", gettext("you already have a deployment named %(name)s") % {"name": repr(name)})
    if bool(version) == bool(alias):
        raise ServingError("version", gettext("choose either a version or an alias to follow (not both)"))
    if version is not None and version.model_id != model.pk:
        raise ServingError("version", gettext("%(version)s is not a version of %(model)s")
                                              % {"version": version, "model": model})
    if alias and not ModelAlias.objects.filter(model=model, name=alias).exists():
        raise ServingError("alias", gettext("%(model)s has no alias %(alias)s")
                                            % {"model": model, "alias": repr(alias)})
    if queue not in settings.JOB_QUEUES:
        raise ServingError("queue", gettext("unknown queue %(queue)s (known: %(known)s)")
                                            % {"queue": repr(queue), "known": ', '.join(settings.JOB_QUEUES)})
    _check_numbers(replicas, max_queue, request_timeout_s, max_restarts)
    deployment = Deployment(owner=user, name=name, model=model, version=version, alias=alias or "", replicas=replicas,
                            queue=queue, max_queue=max_queue, request_timeout_s=float(request_timeout_s),
                            max_restarts=max_restarts)
    target = resolve_version(deployment)
    deployment.engine_options = validate_engine_options(engine_options, target)
    with transaction.atomic():
        deployment.save()
        reconcile(deployment)
    return deployment


def scale(user, deployment: Deployment, replicas: int) -> Deployment:
    _require_manager(user, deployment)
    _check_numbers(replicas, deployment.max_queue, deployment.request_timeout_s, deployment.max_restarts)
    Deployment.objects.filter(pk=deployment.pk).update(replicas=replicas)
    return reconcile(deployment)


def stop(user, deployment: Deployment) -> Deployment:
    """Drain: replicas finish what they run (within their drain time) and end; no new requests."""
    _require_manager(user, deployment)
    if deployment.state in (DeploymentState.STOPPED, DeploymentState.DRAINING):
        return deployment
    Deployment.objects.filter(pk=deployment.pk).update(state=DeploymentState.DRAINING, state_reason=f"stopped by {user.username}")
    return reconcile(deployment)


def start(user, deployment: Deployment) -> Deployment:
    """Start a stopped or failed deployment again (its restart count starts over)."""
    _require_manager(user, deployment)
    if deployment.is_active and deployment.state != DeploymentState.DRAINING:
        return deployment
    Deployment.objects.filter(pk=deployment.pk).update(state=DeploymentState.STARTING, state_reason="", restarts=0)
    return reconcile(deployment)


def delete(user, deployment: Deployment) -> None:
    _require_manager(user, deployment)
    if deployment.replica_set.exclude(job__status__in=FINISHED_STATUSES).exists():
        raise ServingError("deployment", gettext("it still has running replicas: stop it and wait until it is "
                                                 "stopped"))
    deployment.delete()


# ---- replicas --------------------------------------------------------------------------------

def _start_replica(deployment: Deployment, version: ModelVersion) -> Replica:
    replica_id = uuid.uuid4().hex[:8]
    job = jobs.submit_job(deployment.owner, "serve", replica_params(deployment, version, replica_id), queue=deployment.queue,
                          title=f"Replica {replica_id} of {deployment.served_name} ({version})")
    VersionUse.objects.get_or_create(version=version, job=job, role="serving")
    if version.kind == VersionKind.ADAPTER and version.parent_id:
        VersionUse.objects.get_or_create(version_id=version.parent_id, job=job, role="serving base")
    return Replica.objects.create(deployment=deployment, job=job, version=version, replica_id=replica_id, state="queued")


def _drain(replica: Replica, reason: str) -> None:
    """Cancel the replica's job: a queued one never starts, a running one drains and ends. The
    reason marks the drain as the studio's: the replica's job then ends SUCCEEDED, "stopped:
    <reason>" (workers/tasks/serving.py), where a cancel of the job itself ends CANCELLED."""
    Replica.objects.filter(pk=replica.pk).update(stop_reason=reason[:200])
    lifecycle.request_cancel(replica.job)
    replica.job.refresh_from_db(fields=["status", "cancel_requested"])


def replica_hashes(deployment: Deployment, replica_ids) -> dict[str, dict]:
    """replica_id → its live Redis hash ({} when it has none); None for all when Redis is down."""
    replica_ids = list(replica_ids)
    if not replica_ids:
        return {}
    try:
        client = redis_client()
        with client.pipeline(transaction=False) as pipe:
            for rid in replica_ids:
                pipe.hgetall(protocol.replica_key(deployment.pk, rid))
            rows = pipe.execute()
    except redis.RedisError as exc:
        log.warning("deployment %s: Redis unreachable while reading replica states (%s)", deployment.pk, exc)
        return {}
    return dict(zip(replica_ids, rows))


def live_state(replica: Replica, live: dict) -> str:
    """The replica's state now, from its job and its Redis hash (reconcile, the live metrics)."""
    job = replica.job
    if job.status == JobStatus.FAILED:
        return "failed"
    if job.status in FINISHED_STATUSES:
        return "stopped"
    if job.status == JobStatus.QUEUED:
        return "queued"
    state = (live or {}).get("state")
    if job.cancel_requested:
        return "draining"
    return state if state in ("loading", "ready", "draining") else "starting"


def reconcile(deployment: Deployment | int) -> Deployment:
    """Bring the replicas in line with the deployment and record its state. Idempotent."""
    pk = deployment if isinstance(deployment, int) else deployment.pk
    with transaction.atomic():
        # of=self: lock the deployment row only. PostgreSQL refuses FOR UPDATE on the nullable side
        # of an outer join (version is null for a deployment that follows an alias).
        deployment = (Deployment.objects.select_for_update(of=("self",)).select_related("owner", "model", "version")
                      .get(pk=pk))
        replicas = list(deployment.replica_set.select_related("job", "version").exclude(state__in=("stopped", "failed")))
        live = replica_hashes(deployment, [r.replica_id for r in replicas if r.job.status == JobStatus.RUNNING])
        failures = []
        for replica in replicas:
            state = live_state(replica, live.get(replica.replica_id, {}))
            if state == "failed":
                failures.append(replica)
            if state != replica.state:
                Replica.objects.filter(pk=replica.pk).update(state=state)
                replica.state = state
        active = [r for r in replicas if r.state not in ("stopped", "failed")]

        if deployment.state in (DeploymentState.DRAINING, DeploymentState.STOPPED, DeploymentState.FAILED):
            for replica in active:
                if not replica.job.cancel_requested:
                    _drain(replica, deployment.state_reason or f"the deployment is {deployment.state}")
            if deployment.state == DeploymentState.DRAINING and not any(r.job.status not in FINISHED_STATUSES for r in active):
                deployment.state = DeploymentState.STOPPED
            deployment.save(update_fields=["state", "state_reason", "updated_at"])
            return deployment

        for replica in failures:
            if deployment.restarts >= deployment.max_restarts:
                deployment.state = DeploymentState.FAILED
                deployment.state_reason = (f"replica {replica.replica_id} failed and the {deployment.max_restarts} restarts "
                                           f"allowed are used up; last error: {replica.job.error or 'unknown'}")
                for other in active:
                    _drain(other, deployment.state_reason)
                deployment.save(update_fields=["state", "state_reason", "updated_at"])
                return deployment
            deployment.restarts += 1
            deployment.state_reason = f"replica {replica.replica_id} failed ({replica.job.error or 'unknown'}); restarted"

        target = resolve_version(deployment)
        if target is None:
            deployment.state_reason = f"alias {deployment.alias!r} of {deployment.model} no longer exists; keeping the current replicas"
        else:
            _converge(deployment, [r for r in active if not r.job.cancel_requested], target)
        states = [r.state for r in deployment.replica_set.exclude(state__in=("stopped", "failed"))]
        deployment.state = DeploymentState.READY if "ready" in states else DeploymentState.STARTING
        deployment.save(update_fields=["state", "state_reason", "restarts", "updated_at"])
    return deployment


def _converge(deployment: Deployment, active: list[Replica], target: ModelVersion) -> None:
    """Scale to `deployment.replicas` on `target`; when the target moved (alias), roll over one
    replica at a time: start one on the new version, and only once it is ready drain an old one."""
    wanted = deployment.replicas
    current = [r for r in active if r.version_id == target.pk]
    old = [r for r in active if r.version_id != target.pk]
    if not old:
        for _ in range(wanted - len(current)):
            _start_replica(deployment, target)
        # Scale down: drop the replicas that serve nothing yet first.
        extra = sorted(current, key=lambda r: (r.state == "ready", r.created_at), reverse=False)[: max(0, len(current) - wanted)]
        for replica in extra:
            _drain(replica, f"scaled down to {wanted} replica(s)")
        return
    ready = [r for r in current if r.state == "ready"]
    if ready and len(current) + len(old) > wanted:
        _drain(old[0], f"replaced by a replica of {target}")
        old = old[1:]
    if len(current) < wanted and len(ready) == len(current) and len(current) + len(old) <= wanted:
        _start_replica(deployment, target)


def reconcile_active() -> int:
    """Reconcile every deployment that is not stopped or failed (the beat task)."""
    count = 0
    for pk in Deployment.objects.filter(state__in=ACTIVE_STATES).values_list("pk", flat=True):
        try:
            reconcile(pk)
            count += 1
        except Exception:
            log.exception("reconcile of deployment %s failed", pk)
    return count
