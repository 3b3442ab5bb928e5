"""The web side of the replica protocol (workers/core/inference/protocol.py), async: rate limit,
token reservation against the daily quota, admission (a ready replica, queue length) and the XADD
of the request in one script (one round trip, atomic), reading its event stream with XREAD BLOCK
(watching the replica's heartbeat while it waits), and cancel. One redis.asyncio client per event
loop (daphne runs one)."""
from __future__ import annotations

import asyncio
import time
import weakref

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils.translation import gettext

from apps.serving.access import Caller, Target, tokens_used_today
from apps.serving.openai_format import ApiError
from workers.tasks import serving_protocol as protocol

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()
READ_BLOCK_MS = 1000  # at most this long between checks of the request's deadline and replica


def client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    redis = _clients.get(loop)
    if redis is None:
        # No socket timeout: XREAD BLOCK waits on purpose; our own deadlines bound every wait.
        redis = aioredis.Redis.from_url(settings.REDIS_URL, decode_responses=True, socket_timeout=None,
                                        socket_connect_timeout=2)
        _clients[loop] = redis
    return redis


def rate_key(key_tag: str, minute: int) -> str:
    return f"puyu:serve:ratelimit:{key_tag}:{minute}"


def quota_key(key_tag: str, day: str) -> str:
    return f"puyu:serve:quota:{key_tag}:{day}"


# Settle a reservation to the real count (only while the counter exists: a missing one is
# re-seeded from the database, which already holds the real count).
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


def _quota_refusal(caller: Caller, used: int, amount: int) -> ApiError:
    left = max(0, caller.token_quota_per_day - used)
    return ApiError(429, gettext("this key has %(left)s of its %(quota)s tokens for today (UTC) left, and this "
                                 "request may use up to %(amount)s (lower max_tokens, or wait until midnight UTC)")
                    % {"left": left, "quota": caller.token_quota_per_day, "amount": amount},
                    type="insufficient_quota", code="insufficient_quota", retry_after=caller.seconds_to_midnight)


async def settle_tokens(caller: Caller, reserved: int, used: int) -> None:
    await client().eval(_SETTLE, 1, quota_key(caller.key_tag, caller.day), int(used) - int(reserved))


def clock() -> float:
    """The wall clock of the rate-limit windows (a seam for tests at a minute's edge)."""
    return time.time()


# Admission and XADD in one script, refusing in the order a client can act on: the key's rate
# limit (a fixed one-minute window), then its quota, then a ready replica, then the queue's length;
# a refusal after the reservation gives it back. The day's tokens of a key = what the database
# recorded + the reservations of requests in flight: the counter is seeded from the database when
# it does not exist yet (first request of the day, or Redis restarted), then checked and
# incremented in the same script, so concurrent requests cannot all pass a check made before any
# of them counted.
# A missing counter without a seed ("": not read) changes nothing and answers "seed": the caller
# reads the database and calls again.
# KEYS: rate counter, quota counter, requests stream, the replicas' hashes.
# ARGV: rate limit (0: none), tokens recorded today (the seed, or ""), tokens to reserve, quota
#       (0: none), the quota counter's TTL, max queue, the request (JSON).
_ADMIT = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if ARGV[2] == '' then return {'seed', 0} end
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[5])
end
local limit = tonumber(ARGV[1])
if limit > 0 then
  local count = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], 120)
  if count > limit then return {'rate_limit', count} end
end
local used = tonumber(redis.call('GET', KEYS[2]))
local quota = tonumber(ARGV[4])
if quota > 0 and used + tonumber(ARGV[3]) > quota then return {'quota', used} end
redis.call('INCRBY', KEYS[2], ARGV[3])
local ready = false
for i = 4, #KEYS do
  if redis.call('HGET', KEYS[i], 'state') == 'ready' then ready = true end
end
local refusal = nil
if not ready then refusal = {'no_replica', 0} end
local length = redis.call('XLEN', KEYS[3])
if refusal == nil and length >= tonumber(ARGV[6]) then refusal = {'queue_full', length} end
if refusal ~= nil then
  redis.call('INCRBY', KEYS[2], -tonumber(ARGV[3]))
  return refusal
end
return {'ok', redis.call('XADD', KEYS[3], '*', 'request', ARGV[7])}
"""


async def admit_and_enqueue(caller: Caller, target: Target, request: dict, reserve: int) -> str:
    """Check the rate limit, reserve `reserve` tokens of the key's daily quota (settled by
    `settle_tokens` when the request ends), check that a replica is ready and the queue has room,
    and XADD the request: one round trip. Returns the entry id; ApiError 429 / 503 when refused
    (nothing is reserved then)."""
    now = clock()
    keys = [rate_key(caller.key_tag, int(now // 60)), quota_key(caller.key_tag, caller.day),
            protocol.requests_stream(target.deployment_id),
            *(protocol.replica_key(target.deployment_id, rid) for rid in target.replica_ids)]
    payload, seed = protocol.encode(request), "" if caller.used_today is None else caller.used_today

    async def admit(seed):
        return await client().eval(_ADMIT, len(keys), *keys, caller.rate_limit_per_minute or 0, seed, reserve,
                                   caller.token_quota_per_day, caller.seconds_to_midnight + 3600, target.max_queue, payload)

    verdict, value = await admit(seed)
    if verdict == "seed":  # the day's first request of this key (or Redis restarted): count from the database
        verdict, value = await admit(await sync_to_async(tokens_used_today)(caller.key_id))
    if verdict == "ok":
        return value
    if verdict == "rate_limit":
        raise ApiError(429, gettext("rate limit: this key may send %(rate)s requests per minute")
                                    % {"rate": caller.rate_limit_per_minute},
                       type="requests", code="rate_limit_exceeded", retry_after=int(60 - now % 60) + 1)
    if verdict == "quota":
        raise _quota_refusal(caller, int(value), reserve)
    if verdict == "no_replica":
        if target.waiting_reason:  # placement, not loading: retrying shortly would not help
            raise ApiError(503, gettext("no replica of %(target)s is running: %(waiting_reason)s")
                                        % {"target": target.served_name, "waiting_reason": target.waiting_reason},
                           type="server_error", code="no_ready_replica", retry_after=30)
        raise ApiError(503, gettext("no replica of %(target)s is ready yet (deployment %(state)s); retry shortly")
                                    % {"target": target.served_name, "state": target.state},
                       type="server_error", code="no_ready_replica", retry_after=5)
    raise ApiError(429, gettext("%(target)s is at capacity (%(count)s requests waiting or running); retry shortly")
                                % {"target": target.served_name, "count": value},
                   type="requests", code="queue_full", retry_after=1)


async def cancel(deployment_id: int, request_id: str) -> None:
    """Ask the replicas to stop the request: the key for one that has not claimed it yet, the
    channel for the one running it."""
    redis = client()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(protocol.cancel_key(request_id), "1", ex=protocol.CANCEL_TTL_SECONDS)
        pipe.publish(protocol.cancel_channel(deployment_id), request_id)
        await pipe.execute()


async def drop_unclaimed(deployment_id: int, entry_id: str) -> None:
    """Remove a queue entry no replica has read (XDEL of a pending entry is harmless too)."""
    await client().xdel(protocol.requests_stream(deployment_id), entry_id)


async def replica_alive(deployment_id: int, replica_id: str, consumer: str = "") -> bool:
    """Whether the replica beat recently: its hash exists, its last beat (how much of the hash's
    TTL has run down, on the Redis clock: no skew between machines) is within
    SERVING_REPLICA_DEAD_SECONDS (and 2.5 of its own beats), and, when `consumer` is given, it
    is still that incarnation (a process restarted under the same id did not take over the
    requests the killed one was answering)."""
    key = protocol.replica_key(deployment_id, replica_id)
    async with client().pipeline(transaction=False) as pipe:
        pipe.pttl(key)
        pipe.hmget(key, "consumer", "heartbeat_seconds")
        ttl_ms, (current, beat) = await pipe.execute()
    if ttl_ms == -2:  # no hash: stopped, or its TTL ran out
        return False
    if consumer and current and current != consumer:
        return False
    return not protocol.missed_beats(ttl_ms, beat, settings.SERVING_REPLICA_DEAD_SECONDS)


class EventReader:
    """Reads a request's events in order; `next(deadline)` returns one event or raises
    TimeoutError at the deadline (time.monotonic()). Whenever a block passes without an event,
    it awaits `watch()` (a liveness check that raises to end the wait)."""

    def __init__(self, request_id: str) -> None:
        self.stream = protocol.events_stream(request_id)
        self.last_id = "0-0"
        self.buffer: list[dict] = []

    async def _read(self, block: int | None) -> None:
        answer = await client().xread({self.stream: self.last_id}, count=256, block=block)
        for _, entries in answer or ():
            for entry_id, fields in entries:
                self.last_id = entry_id
                self.buffer.append(protocol.decode(fields["event"]))

    async def next(self, deadline: float, watch=None) -> dict:
        while not self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            await self._read(max(1, min(READ_BLOCK_MS, int(remaining * 1000))))
            if not self.buffer and watch is not None:
                try:
                    await watch()
                except Exception:
                    await self._read(None)  # a last event (the final one) may have come meanwhile
                    if not self.buffer:
                        raise
        return self.buffer.pop(0)
