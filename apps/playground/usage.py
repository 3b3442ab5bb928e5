"""The playground's token accounting: a key of the user's that the studio keeps (as the try-it
box's), so a playground answer counts in the user's usage and daily quota like any /v1 request.
Plain answers go through the gateway under it; an agent turn's model calls are counted here."""
from __future__ import annotations

from functools import cached_property

import redis
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext

from apps.serving import access, gateway
from apps.serving.models import ApiKey

PLAYGROUND_KEY_NAME = "Studio playground"


def playground_key(user) -> ApiKey:
    """A key of the user's that the studio keeps (its secret is never shown), so the
    playground's usage and daily quota work as for any key (admin sets its limits)."""
    key = ApiKey.objects.filter(user=user, name=PLAYGROUND_KEY_NAME, revoked_at__isnull=True).first()
    if key is None:
        key, _ = ApiKey.issue(user, PLAYGROUND_KEY_NAME)
    return key


_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One client (a connection pool) per process and URL: a send or an agent turn reads the quota
    counter with no new connection."""
    url = settings.REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    return _clients[url]


def _counter(key: ApiKey) -> str:
    return gateway.quota_key(key.key_hash[:24], timezone.now().date().isoformat())


class Quota:
    """The user's playground key and the tokens it used today, read once for every answer of one
    send: the quota check and the admission of each plain answer (access.admit_key) use them.
    The tokens are the gateway's running counter of the key when it exists (what the database
    recorded plus the reservations of requests in flight: one Redis read instead of an aggregate
    over the day's rows on every send), else the database's count (`recorded`, which then also
    seeds the counter). They are read when first needed: a key with no daily quota refuses
    nothing, so its check reads none (an agent turn's send and its worker)."""

    def __init__(self, user) -> None:
        self.user = user
        self.key = playground_key(user)

    @cached_property
    def _counted(self) -> int | None:
        try:
            counted = _redis().get(_counter(self.key))
        except redis.RedisError:
            return None  # the database has it
        return None if counted is None else int(counted)

    @cached_property
    def recorded(self) -> int | None:
        return None if self._counted is not None else access.tokens_used_today(self.key.pk)

    @property
    def used(self) -> int:
        return self._counted if self._counted is not None else self.recorded

    def refusal(self) -> str:
        """Why the quota refuses another answer today ("" while it does not)."""
        quota = self.key.token_quota_per_day
        if quota and self.used >= quota:  # read only for a key with a quota (an agent turn's check)
            return gettext("you used your %(quota)s playground tokens for today (UTC); the quota renews at midnight "
                           "UTC (staff can raise it on the key in the admin)") % {"quota": format(quota, ",")}
        return ""

    def admit(self, deployment):
        """(Caller, Target) of a plain answer from `deployment` (one the user may see), under the
        playground key. ApiError (429 quota, 503 state) when refused."""
        return access.admit_key(self.key, deployment, self.user, used=self.recorded)


def admit(user, deployment_id: int):
    """(Caller, Target) of a plain reply, as access.admit_session does for the try-it box, under
    the playground key. ApiError (429 quota, 503 state) when refused."""
    return access.admit_session(user, deployment_id, key_name=PLAYGROUND_KEY_NAME)


def quota_refusal(user) -> str:
    """Why the user's playground quota refuses another answer today ("" while it does not)."""
    return Quota(user).refusal()


def record_usage(user, deployment_id: int, usage: dict) -> None:
    """Count tokens used outside the gateway (an agent turn) against the playground key: today's
    row, and the gateway's running counter in Redis so concurrent streams see them at once."""
    key = playground_key(user)
    access.record_usage(key.pk, deployment_id, usage)
    total = max(0, int(usage.get("prompt_tokens") or 0)) + max(0, int(usage.get("completion_tokens") or 0))
    counter = _counter(key)

    def bump():
        try:  # the gateway's own settle script: it adds only to a counter that exists
            _redis().eval(gateway._SETTLE, 1, counter, total)
        except redis.RedisError:
            pass  # a missing counter is seeded from the database, which holds these tokens already

    transaction.on_commit(bump)


def trace_usage(trace: list) -> dict:
    """The tokens of an agent turn: the sum of its model steps' usage."""
    prompt = completion = 0
    for step in trace or ():
        tokens = step.get("tokens") if isinstance(step, dict) else None
        if isinstance(tokens, dict):
            prompt += int(tokens.get("prompt_tokens") or 0)
            completion += int(tokens.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
