"""The web side of the replica protocol (workers/core/inference/protocol.py), async: rate limit,
admission (queue length, a ready replica), XADD of the request, reading its event stream with
XREAD BLOCK, and cancel. One redis.asyncio client per event loop (daphne runs one)."""
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
READ_BLOCK_MS = 1000  # at most this long between checks of the request's deadline


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


async def check_rate_limit(caller: Caller) -> None:
    """A fixed one-minute window per key (INCR + EXPIRE in one round trip)."""
    if not caller.rate_limit_per_minute:
        return
    now = time.time()
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


class EventReader:
    """Reads a request's events in order; `next(deadline)` returns one event or raises
    TimeoutError at the deadline (time.monotonic())."""

    def __init__(self, request_id: str) -> None:
        self.stream = protocol.events_stream(request_id)
        self.last_id = "0-0"
        self.buffer: list[dict] = []

    async def next(self, deadline: float) -> dict:
        redis = client()
        while not self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            block = max(1, min(READ_BLOCK_MS, int(remaining * 1000)))
            answer = await redis.xread({self.stream: self.last_id}, count=256, block=block)
            for _, entries in answer or ():
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    self.buffer.append(protocol.decode(fields["event"]))
        return self.buffer.pop(0)
