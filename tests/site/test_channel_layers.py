"""The channel layer (puyu_site/channel_layers.py) against the session's real Redis.

The subscriber reaches Redis through a proxy that holds what it sends for a few milliseconds (a
busy Redis or a slow network does the same): upstream RedisPubSubChannelLayer's group_add then
returns before Redis has the subscription, and a group send made right after it reaches nobody;
ours returns once Redis confirmed it."""
from __future__ import annotations

import asyncio
import contextlib

from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from puyu_site.channel_layers import ConfirmedPubSubChannelLayer

UPSTREAM_DELAY_S = 0.02  # how long the proxy holds the subscriber's commands


def hosts(url: str) -> list[dict]:
    return [{"address": url, "socket_timeout": None}]


@contextlib.asynccontextmanager
async def slow_to_redis(redis_url: str):
    """A TCP proxy to Redis that forwards client -> Redis late (UPSTREAM_DELAY_S per chunk, in
    order) and Redis -> client at once. Yields its redis:// URL."""
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    pumps: set[asyncio.Task] = set()

    async def pump(reader, writer, delay):
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def connected(client_reader, client_writer):
        redis_reader, redis_writer = await asyncio.open_connection(host, int(port))
        pumps.add(asyncio.ensure_future(pump(client_reader, redis_writer, UPSTREAM_DELAY_S)))
        pumps.add(asyncio.ensure_future(pump(redis_reader, client_writer, 0)))

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        server.close()
        for task in pumps:
            task.cancel()


async def messages_heard_right_after_joining(layer_class, tries: int) -> int:
    """How many of `tries` group sends, each made by another connection as soon as group_add
    returned, reached the new member."""
    async with slow_to_redis(settings.REDIS_URL) as proxied:
        members = layer_class(hosts=hosts(proxied))
        senders = ConfirmedPubSubChannelLayer(hosts=hosts(settings.REDIS_URL))
        channel = await members.new_channel()
        heard = 0
        for attempt in range(tries):
            await members.group_add(f"test-join-{attempt}", channel)
            await senders.group_send(f"test-join-{attempt}", {"type": "hello", "attempt": attempt})
            try:
                message = await asyncio.wait_for(members.receive(channel), 0.5)
            except asyncio.TimeoutError:  # receive's cancel unsubscribed the channel: a new one
                channel = await members.new_channel()
                continue
            assert message == {"type": "hello", "attempt": attempt}
            heard += 1
        await members.flush()
        await senders.flush()
        return heard


def test_a_group_send_right_after_group_add_reaches_the_new_member():
    assert asyncio.run(messages_heard_right_after_joining(ConfirmedPubSubChannelLayer, tries=10)) == 10


def test_the_upstream_pub_sub_layer_loses_those_sends_which_is_why_ours_waits():
    # The proxy's delay is what the previous test overcomes: without the wait, nothing is heard.
    assert asyncio.run(messages_heard_right_after_joining(RedisPubSubChannelLayer, tries=3)) == 0


def test_a_long_token_stream_reaches_a_member_whole_and_in_order():
    """The list layer dropped messages past its capacity (100 by default); this one keeps them."""
    async def stream() -> list[int]:
        layer = ConfirmedPubSubChannelLayer(hosts=hosts(settings.REDIS_URL))
        sender = ConfirmedPubSubChannelLayer(hosts=hosts(settings.REDIS_URL))
        channel = await layer.new_channel()
        await layer.group_add("test-stream", channel)
        for index in range(2000):
            await sender.group_send("test-stream", {"type": "delta", "index": index})
        received = [(await asyncio.wait_for(layer.receive(channel), 5))["index"] for _ in range(2000)]
        await layer.flush()
        await sender.flush()
        return received

    assert asyncio.run(stream()) == list(range(2000))


def test_a_member_joining_after_everyone_left_hears_the_group():
    """The receiver idles once nothing is subscribed; a new subscription must wake it."""
    async def rejoin() -> dict:
        layer = ConfirmedPubSubChannelLayer(hosts=hosts(settings.REDIS_URL))
        sender = ConfirmedPubSubChannelLayer(hosts=hosts(settings.REDIS_URL))
        first = await layer.new_channel()
        await layer.group_add("test-rejoin", first)
        await layer.group_discard("test-rejoin", first)
        waiting = asyncio.ensure_future(layer.receive(first))
        await asyncio.sleep(0.05)
        waiting.cancel()  # as a consumer's receive when its socket closes: unsubscribes its channel
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        second = await layer.new_channel()
        await layer.group_add("test-rejoin", second)
        await sender.group_send("test-rejoin", {"type": "hello"})
        message = await asyncio.wait_for(layer.receive(second), 1)
        await layer.flush()
        await sender.flush()
        return message

    assert asyncio.run(rejoin()) == {"type": "hello"}
