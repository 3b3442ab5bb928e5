"""A client that goes away cancels its request: the replica is told over the cancel channel (and
the cancel key), for a streamed answer and for one still waiting for its JSON body."""
import asyncio
import json
import time

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from workers.tasks import serving_protocol as protocol

CHAT = {"model": "owner/tiny-chat", "messages": [{"role": "user", "content": "Hi"}]}


async def call_then_disconnect(body: dict, key: str, disconnect_after) -> list[dict]:
    """Drive Django's ASGI handler like daphne does, and send http.disconnect once
    `disconnect_after(sent messages)` says so (or after 2 s)."""
    sent: list[dict] = []
    gone = asyncio.Event()
    delivered = False

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
        try:
            await asyncio.wait_for(gone.wait(), 2)
        except TimeoutError:
            pass
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if disconnect_after(sent):
            gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    await asyncio.wait_for(ASGIHandler()(scope, receive, send), 30)
    return sent


def wait_cancelled(fake, timeout=10):
    deadline = time.monotonic() + timeout
    while not fake.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    return fake.cancelled


@pytest.mark.django_db(transaction=True)
def test_a_client_that_disconnects_mid_stream_cancels_its_request(deployment, replica, make_key, users):
    key = make_key(users["owner"])
    streamed_text = lambda sent: any(m["type"] == "http.response.body" and b"partial" in m.get("body", b"") for m in sent)
    with replica(script=lambda request: "hold") as fake:
        sent = async_to_sync(call_then_disconnect)({**CHAT, "stream": True}, key, streamed_text)
        assert streamed_text(sent)
        assert wait_cancelled(fake) == [fake.requests[0]["id"]]
    assert redis.Redis.from_url(settings.REDIS_URL).exists(protocol.cancel_key(fake.requests[0]["id"]))


@pytest.mark.django_db(transaction=True)
def test_a_client_that_disconnects_while_waiting_for_a_json_answer_cancels_it(deployment, replica, make_key, users):
    key = make_key(users["owner"])
    with replica(script=lambda request: "hold") as fake:
        sent = async_to_sync(call_then_disconnect)(CHAT, key, lambda sent: False)
        assert not any(m["type"] == "http.response.start" for m in sent)  # nobody left to answer
        assert wait_cancelled(fake) == [fake.requests[0]["id"]]
