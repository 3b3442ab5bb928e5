"""The channel layer: channels_redis's pub/sub layer, with every subscription confirmed.

Why pub/sub: a group send is one PUBLISH instead of the list layer's ~4 round trips and a
receive is pushed instead of polled (bench/playground.py: job end -> browser 6-8 ms instead of 14).

Why this subclass: redis-py writes SUBSCRIBE and returns without reading Redis's reply, so
RedisPubSubChannelLayer's group_add (and new_channel) could return before Redis had registered
the subscription, and a group send issued right after it reached nobody
(tests/site/test_channel_layers.py shows it through a slow link to Redis; possibly why a CI run's
playground browser test never showed the agent chat's sent message, 2026-12-04). Here a subscribe
returns once Redis's confirmation came back on the subscribing connection. Redis runs a
connection's commands in order and delivers a PUBLISH to the subscribers registered when it runs
it, so a group send that starts after group_add returned reaches the new member.

Delivery, for long token streams: the list layer's `capacity` and `expiry` do not exist here (the
pub/sub layer ignores them). A message reaches the channels subscribed when it is published and
waits in an unbounded in-process queue per channel, so a slow reader drops nothing. Only a reader
so far behind that Redis's pub/sub output buffer limit closes its connection (32 MB by default)
misses messages, until redis-py reconnects and subscribes again; the database holds the final state
either way (a page re-syncs from its snapshot).
"""
from __future__ import annotations

import asyncio
import logging

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close

log = logging.getLogger(__name__)

# Seconds a subscribe waits for Redis's reply, then fails loudly (a socket's connect fails and the
# page connects again) rather than leaving a consumer that may hear nothing.
CONFIRM_TIMEOUT = 10.0


class ConfirmedShardConnection(RedisSingleShardConnection):
    """One Redis host's connections; `subscribe` returns once Redis confirmed it."""

    def __init__(self, host, channel_layer):
        super().__init__(host, channel_layer)
        self._confirmations: dict[str, asyncio.Future] = {}  # channel -> its pending SUBSCRIBE's reply
        self._has_subscriptions = asyncio.Event()  # wakes an idle receiver at once (upstream polls 0.1 s)

    async def subscribe(self, channel):
        # Under the lock until confirmed, so a concurrent subscribe to the same channel (which
        # finds it in _subscribed_to) returns only once it is live too.
        async with self._lock:
            if channel in self._subscribed_to:
                return
            self._ensure_redis()
            self._ensure_receiver()
            confirmed = self._confirmations[channel] = asyncio.get_running_loop().create_future()
            try:
                await self._pubsub.subscribe(channel)
                self._subscribed_to.add(channel)
                self._has_subscriptions.set()
                await asyncio.wait_for(confirmed, CONFIRM_TIMEOUT)
            finally:
                self._confirmations.pop(channel, None)

    async def _do_receiving(self):
        """Upstream's receive loop, but it reads the SUBSCRIBE replies (upstream drops them) and
        sleeps on an event, not a 0.1 s poll, while nothing is subscribed."""
        while True:
            try:
                if not (self._pubsub and self._pubsub.subscribed):
                    self._has_subscriptions.clear()
                    await self._has_subscriptions.wait()
                    continue
                message = await self._pubsub.get_message(timeout=0.1)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._confirm(message["channel"])
                elif message["type"] == "message":
                    self._receive_message(message)
            except (asyncio.CancelledError, asyncio.TimeoutError, GeneratorExit):
                raise
            except BaseException:
                log.exception("Unexpected exception in the channel layer's receive task")
                await asyncio.sleep(1)

    def _confirm(self, channel) -> None:
        name = channel.decode() if isinstance(channel, bytes) else channel
        confirmed = self._confirmations.get(name)
        # None: a resubscription after a reconnect, or a wait that timed out.
        if confirmed is not None and not confirmed.done():
            confirmed.set_result(None)


class ConfirmedLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts=None, *args, **kwargs):
        super().__init__(hosts, *args, **kwargs)
        self._shards = [ConfirmedShardConnection(shard.host, self) for shard in self._shards]


class ConfirmedPubSubChannelLayer(RedisPubSubChannelLayer):
    """RedisPubSubChannelLayer whose group_add and new_channel return once the subscription is live."""

    def _get_layer(self):
        # Upstream's, building a ConfirmedLoopLayer: one per event loop, flushed when it closes.
        loop = asyncio.get_running_loop()
        if loop not in self._layers:
            self._layers[loop] = ConfirmedLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return self._layers[loop]
