"""Who may call what, from the database (sync; the async views call it through sync_to_async in
one hop): API key → user, `model` id → a deployment the user may see, today's token use."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from apps.accounts.models import LAST_USED_PRECISION, hash_token
from apps.accounts.visibility import visible_to
from apps.serving.models import (
    KEY_PREFIX,
    ApiKey,
    Deployment,
    DeploymentState,
    Replica,
    UsageDay,
)
from apps.serving.openai_format import ApiError, parse_request



@dataclass(frozen=True)
class Caller:
    key_id: int
    key_tag: str  # a stable, non-secret tag of the key (its hash's start) for Redis counters
    user_id: int
    rate_limit_per_minute: int
    token_quota_per_day: int
    used_today: int = 0  # tokens the database recorded today (seeds the quota counter in Redis)
    day: str = ""  # the UTC day those count for
    seconds_to_midnight: int = 86400


@dataclass(frozen=True)
class Target:
    deployment_id: int
    served_name: str
    state: str
    max_queue: int
    request_timeout_s: float
    replica_ids: tuple[str, ...]
    waiting_reason: str = ""  # why no replica has started (slots.py), when none is ready


def bearer(request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def authenticate(raw: str) -> tuple[ApiKey, object]:
    if not raw:
        raise ApiError(401, "no API key: send `Authorization: Bearer sk-puyu-…` (create keys on the API keys page)",
                       code="invalid_api_key")
    key = ApiKey.objects.select_related("user").filter(key_hash=hash_token(raw)).first() if raw.startswith(KEY_PREFIX) else None
    if key is None or not key.user.is_active:
        raise ApiError(401, "invalid API key", code="invalid_api_key")
    if key.revoked_at is not None:
        raise ApiError(401, "this API key was revoked", code="invalid_api_key")
    now = timezone.now()
    # A write per request would contend for SQLite's write lock; a minute's precision is enough.
    if key.last_used is None or now - key.last_used > LAST_USED_PRECISION:
        ApiKey.objects.filter(pk=key.pk).update(last_used=now)
    return key, key.user


def visible_deployments(user):
    return visible_to(Deployment.objects.select_related("owner"), user)


def resolve_model(user, model_id: str) -> Deployment | None:
    """"owner/name", or a bare "name" of the caller's own deployment."""
    owner, _, name = model_id.rpartition("/")
    if owner:
        return visible_deployments(user).filter(owner__username=owner, name=name).first()
    return visible_deployments(user).filter(owner=user, name=name).first()


def tokens_used_today(key_id: int) -> int:
    totals = UsageDay.objects.filter(key_id=key_id, date=timezone.now().date()).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
    return (totals["p"] or 0) + (totals["c"] or 0)


def seconds_to_midnight_utc() -> int:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), dtime(0), tzinfo=UTC)
    return int((midnight - now).total_seconds()) + 1


def admit(raw_key: str, body: dict, kind: str, default_max_tokens: int) -> tuple[dict, Caller, Target]:
    """Everything the request path needs from the database, in one hop: the key (401 first, so
    nothing about a request is checked for a stranger), the validated request (400), the
    deployment the key may use (404), quota and state (429, 503)."""
    key, user = authenticate(raw_key)
    spec = parse_request(body, kind, default_max_tokens)
    deployment = resolve_model(user, body["model"])
    if deployment is None:
        raise ApiError(404, f"the model {body['model']!r} does not exist or this key may not use it", code="model_not_found",
                       param="model")
    return (spec, *_admit(key, deployment, user))


TRY_KEY_NAME = "Studio try-it box"


def admit_session(user, deployment_id: int, key_name: str = TRY_KEY_NAME) -> tuple[Caller, Target]:
    """The deployment page's try-it box: the signed-in user, through a key of theirs that the
    studio keeps (its secret is never shown), so that limits and usage work as for any key."""
    deployment = visible_deployments(user).filter(pk=deployment_id).first()
    if deployment is None:
        raise ApiError(404, "no such deployment, or you may not see it", code="model_not_found")
    key = ApiKey.objects.filter(user=user, name=key_name, revoked_at__isnull=True).first()
    if key is None:
        key, _ = ApiKey.issue(user, key_name)
    return _admit(key, deployment, user)


def _waiting_reason(replicas: list[Replica], viewer) -> str:
    """Why none of the replicas serves yet, when all of them wait in the queue (a loading one will
    serve soon: no reason then). Only computed when no replica is ready, off the common path."""
    from apps.serving import slots

    if not replicas or any(r.state != "queued" for r in replicas):
        return ""
    return next(iter(slots.replica_reasons(replicas, viewer).values()), "")


def _admit(key: ApiKey, deployment: Deployment, viewer) -> tuple[Caller, Target]:
    # A quick refusal once the day's quota is used up; the reservation that really bounds
    # concurrent requests is made in Redis (gateway.reserve_tokens).
    used = tokens_used_today(key.pk)
    if key.token_quota_per_day and used >= key.token_quota_per_day:
        raise ApiError(429, f"this key used its {key.token_quota_per_day} tokens for today (UTC)", type="insufficient_quota",
                       code="insufficient_quota", retry_after=seconds_to_midnight_utc())
    if deployment.state not in (DeploymentState.READY, DeploymentState.STARTING):
        raise ApiError(503, f"the deployment {deployment.served_name} is {deployment.state}", type="server_error",
                       code="deployment_unavailable", retry_after=30)
    replicas = list(Replica.objects.filter(deployment=deployment).exclude(state__in=("stopped", "failed")).select_related("job"))
    replica_ids = tuple(r.replica_id for r in replicas)
    waiting = "" if any(r.state == "ready" for r in replicas) else _waiting_reason(replicas, viewer)
    caller = Caller(key.pk, key.key_hash[:24], key.user_id, key.rate_limit_per_minute, key.token_quota_per_day,
                    used_today=used, day=timezone.now().date().isoformat(), seconds_to_midnight=seconds_to_midnight_utc())
    return caller, Target(deployment.pk, deployment.served_name, deployment.state, deployment.max_queue,
                          deployment.request_timeout_s, replica_ids, waiting)


def list_models(raw_key: str) -> list[dict]:
    _, user = authenticate(raw_key)
    return [{"id": d.served_name, "object": "model", "created": int(d.created_at.timestamp()), "owned_by": d.owner.username}
            for d in visible_deployments(user).exclude(state=DeploymentState.STOPPED).order_by("owner__username", "name")]


def record_usage(key_id: int, deployment_id: int, usage: dict) -> None:
    """Add one request's tokens to today's row (an upsert: F() update, create on first use).
    Called for every request that reached a replica, however it ended (finished, cancelled,
    timed out, failed, or its client went away)."""
    prompt, completion = max(0, int(usage.get("prompt_tokens") or 0)), max(0, int(usage.get("completion_tokens") or 0))
    today = timezone.now().date()
    lookup = {"key_id": key_id, "deployment_id": deployment_id, "date": today}
    add = {"requests": F("requests") + 1, "prompt_tokens": F("prompt_tokens") + prompt,
           "completion_tokens": F("completion_tokens") + completion}
    if UsageDay.objects.filter(**lookup).update(**add):
        return
    try:
        with transaction.atomic():
            UsageDay.objects.create(**lookup, requests=1, prompt_tokens=prompt, completion_tokens=completion)
    except IntegrityError:  # another request created today's row first
        UsageDay.objects.filter(**lookup).update(**add)
