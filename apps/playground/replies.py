"""Plain replies streamed from a deployment, and the conversation's live events.

A reply runs in one event loop per process, in a daemon thread (the pattern of apps/jobs/events.py),
not in the socket that asked for it: the page's socket, a teammate's and the API all get the same
events from the conversation's channel group, a reload picks the stream up again, and a reply
asked through the API (no socket at all) streams the same way. The request takes the gateway's
path (apps/serving/openai_views.open_exchange: rate limit, quota reservation under the user's
playground key, admission, XADD, the event stream, usage counted however it ends).

Events (to the group, forwarded by consumers.py):
    {"event": "message", "message": {...}}              a new message (user message or placeholder)
    {"event": "delta", "message_id", "column", "text", "offset"}   offset: characters before it
    {"event": "end", "message_id", "column", "status", "html", "content", "usage", "error"}
The partial text is saved every SAVE_INTERVAL seconds and at the end; "stop" cancels the engine
request (or, before it exists, marks the placeholder stopped, which the stream notices)."""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from apps.playground import services
from apps.playground.models import Message, MessageStatus
from apps.playground.rendering import render_markdown
from apps.serving import gateway
from apps.serving.openai_format import ApiError, parse_request
from apps.serving.openai_views import open_exchange

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0  # seconds between saves of the partial text
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None
_running: dict[int, Future] = {}  # message id → its stream in this process (tests wait on them)


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid():  # a forked child has the variable, not the thread
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="playground-replies", daemon=True).start()
        return _loop


def submit(coroutine) -> Future:
    return asyncio.run_coroutine_threadsafe(coroutine, _event_loop())


def group_name(conversation_id: int) -> str:
    return f"playground-conversation-{conversation_id}"


async def publish(conversation_id: int, event: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group_name(conversation_id), {"type": "playground.event", "event": event})
    except Exception as exc:  # best effort: the database holds the truth; a page re-syncs from it
        log.warning("playground event push failed: %s", exc)


def _db(function):
    def call(*args, **kwargs):
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)


def _announcements(message_ids: list[int]) -> list[dict]:
    messages = Message.objects.select_related("conversation__battle", "deployment__owner", "model_version__model") \
        .filter(pk__in=message_ids).order_by("created_at", "id")
    return [{"event": "message", "message": services.message_payload(m, hide_models=services.hides_models(m.conversation))}
            for m in messages]


def announce_and_stream(conversation_id: int, announce: list[int], stream: list[int]) -> Future:
    """Called when the transaction that stored the messages commits. The replies' requests go to
    the engine while the new messages are announced (on a busy machine announcing took ~35 ms,
    all of it added to the time to first token when it came first); a reply's own events wait
    until the announcements are out, so a page always hears of a message before its text."""
    async def run():
        announced = asyncio.Event()

        async def announce_all():
            try:
                for event in await _db(_announcements)(announce):
                    await publish(conversation_id, event)
            finally:
                announced.set()

        await asyncio.gather(announce_all(), *(stream_reply(message_id, announced) for message_id in stream))

    future = submit(run())
    for message_id in stream:
        _running[message_id] = future
    future.add_done_callback(lambda done: _settled(done, stream))
    return future


def _settled(future: Future, stream: list[int]) -> None:
    for message_id in stream:
        _running.pop(message_id, None)
    if not future.cancelled() and future.exception() is not None:
        log.error("playground replies %s failed", stream, exc_info=future.exception())


def wait(message_ids, timeout: float = 30.0) -> None:
    """Block until the streams of these messages (in this process) have ended (tests, CLI)."""
    deadline = time.monotonic() + timeout
    for message_id in message_ids:
        future = _running.get(message_id)
        if future is not None:
            future.result(max(0.0, deadline - time.monotonic()))


def cancel_engine_request(deployment_id: int, request_id: str) -> None:
    submit(gateway.cancel(deployment_id, request_id)).result(timeout=5)


# ---- one reply ---------------------------------------------------------------------------------

def _claim(message_id: int):
    """(message, caller, target, spec) for a placeholder nobody streams yet, or None. ApiError
    (quota, state, a bad request) is returned as the failure to store."""
    if not Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING, request_id="", job=None).update(
            request_id=services.PENDING):
        return None
    message = Message.objects.select_related("conversation__owner", "deployment__owner").get(pk=message_id)
    try:
        if message.deployment is None:
            raise ApiError(404, "the deployment was deleted", code="model_not_found")
        caller, target = services.admit(message.conversation.owner, message.deployment_id)
        spec = parse_request(services.chat_body(message), "chat", settings.SERVING_DEFAULT_MAX_TOKENS)
    except ApiError as exc:
        return message, exc
    return message, caller, target, spec


def _started(message_id: int, request_id: str) -> bool:
    return bool(Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(request_id=request_id))


def _save(message_id: int, text: str) -> bool:
    """The partial text; False when the message is no longer streaming (stopped elsewhere)."""
    return bool(Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(content=text))


def _end_event(message_id: int) -> dict | None:
    message = Message.objects.filter(pk=message_id).first()
    if message is None:  # the conversation was deleted meanwhile
        return None
    return {"event": "end", "message_id": message.pk, "column": message.column, "status": message.status,
            "content": message.content, "html": render_markdown(message.content), "usage": message.usage,
            "error": message.error}


async def stream_reply(message_id: int, announced: asyncio.Event | None = None) -> None:
    """Stream one placeholder's answer; its events wait for `announced` (see announce_and_stream)."""
    claimed = await _db(_claim)(message_id)
    if claimed is None:
        return
    message = claimed[0]
    conversation_id, column = message.conversation_id, message.column

    async def emit(event: dict) -> None:
        if announced is not None:
            await announced.wait()
        await publish(conversation_id, event)

    if isinstance(claimed[1], ApiError):
        await _db(services.finish_turn)(message_id, status=MessageStatus.FAILED, error=claimed[1].message)
        await _publish_end(message_id, emit)
        return
    _, caller, target, spec = claimed
    parts: list[str] = []
    exchange = None
    outcome = {"status": MessageStatus.FAILED, "error": "", "usage": None}
    try:
        exchange = await open_exchange("chat", spec, caller, target)
        if not await _db(_started)(message_id, exchange.request_id):  # stopped before the request existed
            await exchange.abort()
            return
        event = await exchange.until_start()
        saved_at = time.monotonic()
        while event.get("type") != "end":
            event = await exchange.next()
            if event.get("type") == "delta" and event.get("text"):
                offset = sum(map(len, parts))
                parts.append(event["text"])
                await emit({"event": "delta", "message_id": message_id, "column": column, "text": event["text"],
                            "offset": offset})
                if time.monotonic() - saved_at >= SAVE_INTERVAL:
                    saved_at = time.monotonic()
                    await _db(_save)(message_id, "".join(parts))
        cancelled = event.get("finish_reason") == "cancelled"
        text = event.get("text") or "".join(parts)
        parts = [text]
        outcome = {"status": MessageStatus.STOPPED if cancelled else MessageStatus.DONE,
                   "error": "stopped" if cancelled else "", "usage": event.get("usage") or {}}
    except ApiError as exc:
        outcome["error"] = exc.message
    except asyncio.CancelledError:  # the process is stopping: cancel the request, keep the text
        if exchange is not None:
            await asyncio.shield(exchange.abort())
        outcome = {"status": MessageStatus.STOPPED, "error": "stopped: the web server was shutting down", "usage": None}
        raise
    except Exception as exc:  # Redis gone, a bug: the answer fails with the reason, never hangs
        log.exception("playground reply %s failed", message_id)
        if exchange is not None:
            await asyncio.shield(exchange.abort(wait=False))
        outcome["error"] = f"the answer failed: {exc.__class__.__name__}"
    finally:
        await asyncio.shield(_finish(message_id, "".join(parts), outcome, emit))


async def _finish(message_id: int, text: str, outcome: dict, emit) -> None:
    await _db(services.finish_turn)(message_id, status=outcome["status"], content=text, error=outcome["error"],
                                    usage=outcome["usage"])
    await _publish_end(message_id, emit)


async def _publish_end(message_id: int, emit) -> None:
    event = await _db(_end_event)(message_id)
    if event is not None:
        await emit(event)
