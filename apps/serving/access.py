"""Who may call what, from the database (sync; the async views call it through sync_to_async in
one hop): API key → user, `model` id → a deployment the user may see, today's token use."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone
from django.utils.translation import gettext

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
from apps.studio.labels import choice_word



@dataclass(frozen=True)
class Caller:
    key_id: int
    key_tag: str  # a stable, non-secret tag of the key (its hash's start) for Redis counters
    user_id: int
    rate_limit_per_minute: int
    token_quota_per_day: int
    used_today: int | None = None  # the tokens the database recorded today, when read (they seed the Redis counter)
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
        raise ApiError(401, gettext("no API key: send `Authorization: Bearer sk-puyu-…` (create keys on the API "
                                    "keys page)"),
                       code="invalid_api_key")
    key = ApiKey.objects.select_related("user").filter(key_hash=hash_token(raw)).first() if raw.startswith(KEY_PREFIX) else None
    if key is None or not key.user.is_active:
        raise ApiError(401, gettext("invalid API key"), code="invalid_api_key")
    if key.revoked_at is not None:
        raise ApiError(401, gettext("this API key was revoked"), code="invalid_api_key")
    touch(key)
    return key, key.user


def touch(key: ApiKey) -> None:
    """Record that `key` was used: by an API call, the try-it box or the playground (their studio
    keys never pass through `authenticate`). A write per request would contend for SQLite's write
    lock: at most one a minute per key (a minute's precision says the key is in use)."""
    now = timezone.now()
    if key.last_used is None or now - key.last_used > LAST_USED_PRECISION:
        ApiKey.objects.filter(pk=key.pk).update(last_used=now)
        key.last_used = now  # admit_key touches again after authenticate: no second write


def visible_deployments(user):
    return visible_to(Deployment.objects.select_related("owner"), user)


def visible_by_pk(queryset, user, pk):
    """visible_to(queryset, user).filter(pk=pk).first(), with the user's own object (the usual
    case on a hot path: a send, an API request) read by one plain query: Django takes ~5 ms to
    build the team subquery on a busy 2-core machine. Someone else's takes the full check."""
    found = queryset.filter(pk=pk).first()
    if found is None or (user.is_authenticated and found.owner_id == user.pk):
        return found
    return visible_to(queryset, user).filter(pk=pk).first()


def resolve_model(user, model_id: str) -> Deployment | None:
    """"owner/name", or a bare "name" of the caller's own deployment."""
    owner, _, name = model_id.rpartition("/")
    if not owner or owner == user.username:
        # The caller's own (the usual case): visible by definition, so no team subquery. Django
        # took ~5 ms to build that query on every API request on a busy 2-core machine, a quarter
        # of the API's whole overhead over the engine (bench/serving_api.py).
        deployment = Deployment.objects.filter(owner=user, name=name).first()
        if deployment is not None:
            deployment.owner = user  # the caller: no join to read it again
        return deployment
    return visible_deployments(user).filter(owner__username=owner, name=name).first()


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
    deployment the key may use (404) and its state (503). The quota is the gateway's (Redis)."""
    key, user = authenticate(raw_key)
    spec = parse_request(body, kind, default_max_tokens)
    deployment = resolve_model(user, body["model"])
    if deployment is None:
        raise ApiError(404, gettext("the model %(model)s does not exist or this key may not use it")
                                    % {"model": repr(body['model'])}, code="model_not_found",
                       param="model")
    return (spec, *admit_key(key, deployment, user))


TRY_KEY_NAME = "Studio try-it box"


def admit_session(user, deployment_id: int, key_name: str = TRY_KEY_NAME) -> tuple[Caller, Target]:
    """The deployment page's try-it box: the signed-in user, through a key of theirs that the
    studio keeps (its secret is never shown), so that limits and usage work as for any key."""
    deployment = visible_deployments(user).filter(pk=deployment_id).first()
    if deployment is None:
        raise ApiError(404, gettext("no such deployment, or you may not see it"), code="model_not_found")
    key = ApiKey.objects.filter(user=user, name=key_name, revoked_at__isnull=True).first()
    if key is None:
        key, _ = ApiKey.issue(user, key_name)
    return admit_key(key, deployment, user)


def _waiting_reason(deployment: Deployment, replicas: list[tuple[str, str]], viewer) -> str:
    """Why none of the replicas serves yet, when all of them wait in the queue (a loading one will
    serve soon: no reason then). Only computed when no replica is ready, off the common path."""
    from apps.serving import slots

    if not replicas or any(state != "queued" for _, state in replicas):
        return ""
    waiting = list(Replica.objects.filter(deployment=deployment, state="queued").select_related("job"))
    return next(iter(slots.replica_reasons(waiting, viewer).values()), "")


def admit_key(key: ApiKey, deployment: Deployment, viewer, *, used: int | None = None) -> tuple[Caller, Target]:
    """(Caller, Target) of a request through `key` to `deployment` (one `viewer` may see). The
    quota is checked and reserved in Redis (gateway.admit_and_enqueue), which reads the key's
    tokens today from the database only to seed the day's counter; `used`, when the caller has
    read them already, also refuses a used-up quota here. ApiError 429 / 503."""
    if used is not None and key.token_quota_per_day and used >= key.token_quota_per_day:
        raise ApiError(429, gettext("this key used its %(quota)s tokens for today (UTC)")
                                    % {"quota": key.token_quota_per_day}, type="insufficient_quota",
                       code="insufficient_quota", retry_after=seconds_to_midnight_utc())
    if deployment.state not in (DeploymentState.READY, DeploymentState.STARTING):
        raise ApiError(503, gettext("the deployment %(deployment)s is %(state)s")
                       % {"deployment": deployment.served_name, "state": choice_word(deployment, "state")},
                       type="server_error", code="deployment_unavailable", retry_after=30)
    # Ids and states only: the replicas' jobs (large JSON columns) matter only to a waiting reason.
    replicas = list(Replica.objects.filter(deployment=deployment).exclude(state__in=("stopped", "failed"))
                    .values_list("replica_id", "state"))
    replica_ids = tuple(replica_id for replica_id, _ in replicas)
    waiting = "" if any(state == "ready" for _, state in replicas) else _waiting_reason(deployment, replicas, viewer)
    touch(key)  # admitted (the refusals above did not use the key)
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
