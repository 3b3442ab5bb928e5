"""The web side of the replica protocol (workers/core/inference/protocol.py), async: rate limit,
token reservations against the daily quota, admission (queue length, a ready replica), XADD of
the request, reading its event stream with XREAD BLOCK (watching the replica's heartbeat while it
waits), and cancel. One redis.asyncio client per event loop (daphne runs one)."""
from __future__ import annotations

import asyncio
import time
import weakref

import redis.asyncio as aioredis
from django.conf import settings

from apps.serving.access import Caller, Target
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


# The day's tokens of a key = what the database recorded + the reservations of requests in flight.
# Seeded from the database when the day's counter does not exist yet (first request of the day, or
# Redis restarted); checked and incremented in one script, so concurrent requests cannot all pass
# a check made before any of them counted (the overshoot a read-then-write check allows).
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4]) end
local used = tonumber(redis.call('GET', KEYS[1]))
local quota = tonumber(ARGV[3])
if quota > 0 and used + tonumber(ARGV[2]) > quota then return {0, used} end
redis.call('INCRBY', KEYS[1], ARGV[2])
return {1, used}
"""
# Settle a reservation to the real count (only while the counter exists: a missing one is
# re-seeded from the database, which already holds the real count).
_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('INCRBY', KEYS[1], ARGV[1]) end
return false
"""


async def reserve_tokens(caller: Caller, amount: int) -> None:
    """Reserve `amount` tokens (the request's max_tokens) of the key's daily quota before the
    request is admitted, or ApiError 429. Settled by `settle_tokens` when the request ends."""
    key = quota_key(caller.key_tag, caller.day)
    admitted, used = await client().eval(_RESERVE, 1, key, caller.used_today, amount, caller.token_quota_per_day,
                                         caller.seconds_to_midnight + 3600)
    if not admitted:
        left = max(0, caller.token_quota_per_day - int(used))
        raise ApiError(429, f"this key has {left} of its {caller.token_quota_per_day} tokens for today (UTC) left, "
                            f"and this request may use up to {amount} (lower max_tokens, or wait until midnight UTC)",
                       type="insufficient_quota", code="insufficient_quota", retry_after=caller.seconds_to_midnight)


async def settle_tokens(caller: Caller, reserved: int, used: int) -> None:
    await client().eval(_SETTLE, 1, quota_key(caller.key_tag, caller.day), int(used) - int(reserved))


def clock() -> float:
    """The wall clock of the rate-limit windows (a seam for tests at a minute's edge)."""
    return time.time()


async def check_rate_limit(caller: Caller) -> None:
    """A fixed one-minute window per key (INCR + EXPIRE in one round trip)."""
    if not caller.rate_limit_per_minute:
        return
    now = clock()
    minute = int(now // 60)
    async with client().pipeline(transaction=True) as pipe:
        count, _ = await pipe.incr(rate_key(caller.key_tag, minute)).expire(rate_key(caller.key_tag, minute), 120).execute()
    if count > caller.rate_limit_per_minute:
        raise ApiError(429, f"rate limit: this key may send {caller.rate_limit_per_minute} requests per minute",
                       type="requests", code="rate_limit_exceeded", retry_after=int(60 - now % 60) + 1)


async def enqueue(target: Target, request: dict) -> str:
    """XADD the request after checking the queue length and that some replica is ready."""
    redis = client()
    stream = protocol.requests_stream(target.deployment_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        for rid in target.replica_ids:
            pipe.hget(protocol.replica_key(target.deployment_id, rid), "state")
        length, *states = await pipe.execute()
    if "ready" not in states:
        if target.waiting_reason:  # placement, not loading: retrying shortly would not help
            raise ApiError(503, f"no replica of {target.served_name} is running: {target.waiting_reason}",
                           type="server_error", code="no_ready_replica", retry_after=30)
        raise ApiError(503, f"no replica of {target.served_name} is ready yet (deployment {target.state}); retry shortly",
                       type="server_error", code="no_ready_replica", retry_after=5)
    if length >= target.max_queue:
        raise ApiError(429, f"{target.served_name} is at capacity ({length} requests waiting or running); retry shortly",
                       type="requests", code="queue_full", retry_after=1)
    return await redis.xadd(stream, {"request": protocol.encode(request)})


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
