"""Plain replies streamed from a deployment, and the conversation's live events.

A reply runs in one event loop per process, in a daemon thread (the pattern of apps/jobs/events.py),
not in the socket that asked for it: the page's socket, a teammate's and the API all get the same
events from the conversation's channel group, a reload picks the stream up again, and a reply
asked through the API (no socket at all) streams the same way. The request takes the gateway's
path (apps/serving/openai_views.open_exchange: rate limit, quota reservation under the user's
playground key, admission, XADD, the event stream, usage counted however it ends); what it needs
from the database (the admission, the chat body) was read by the transaction that stored the
placeholder (services.send), so nothing but the XADD stands between that commit and the engine.

Events (to the group, forwarded by consumers.py):
    {"event": "message", "message": {...}}              a new message (user message or placeholder)
    {"event": "delta", "message_id", "column", "text", "offset"}   offset: characters before it
    {"event": "end", "message_id", "column", "status", "html", "content", "usage", "error", "trace",
     "model_version"}                                   (services.end_event; an agent turn's too)
The partial text is saved every SAVE_INTERVAL seconds and at the end; "stop" cancels the engine
request (or, before it exists, marks the placeholder stopped, which the stream notices)."""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from concurrent.futures import Future

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import close_old_connections

from apps.playground import services
from apps.playground.models import Message, MessageStatus
from apps.serving import gateway
from apps.serving.openai_format import ApiError
from apps.serving.openai_views import open_exchange

log = logging.getLogger(__name__)

SAVE_INTERVAL = 1.0  # seconds between saves of the partial text
SEND_TIMEOUT = 10.0  # seconds a send waits for its request's XADD (Redis's connect timeout is 2 s)
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
    """Run `coroutine` on the replies loop, in a fresh context: a send arrives from daphne's
    database thread (asgiref's single-thread executor), and a task started from there would
    inherit asgiref's "that executor is in use" mark, so the stream's own sync_to_async calls (the
    usage write in openai_views.Exchange.settle) would refuse to run ("would deadlock"): playground
    answers then counted no usage and settled no quota reservation."""
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coroutine, _event_loop())


def group_name(conversation_id: int) -> str:
    return f"playground-conversation-{conversation_id}"


async def publish(conversation_id: int, *events: dict) -> None:
    """Push events to the conversation's group, in order, as one channel message (a group send
    costs a few Redis round trips; the socket relays each event as its own frame)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group_name(conversation_id), {"type": "playground.events", "events": list(events)})
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


def send_request(reply: services.PlainReply):
    """Send a prepared reply's request to the engine now, from the thread of the transaction that
    prepares it (services._Sending), and return its Exchange; ApiError when refused."""
    future = submit(open_exchange("chat", reply.spec, reply.caller, reply.target))
    try:
        return future.result(SEND_TIMEOUT)
    except TimeoutError:
        future.cancel()  # not sent by now (Redis unreachable): it must not leave later, unwatched
        raise


def abandon(exchange) -> None:
    """Cancel a request whose placeholder was never stored (its transaction rolled back); its
    reservation is settled and any tokens it made are counted."""
    submit(exchange.abort())


def announce_and_stream(conversation_id: int, announce: list[Message], streams: list[services.PlainReply], *,
                        hide_models: bool = False) -> None:
    """Called in the thread whose transaction stored the messages, once it commits. The replies
    stream (their requests were sent in that transaction, or leave now: no database read stands
    before them); the new messages are announced meanwhile, from the objects the transaction
    stored; a reply's own events wait until the announcements are out, so a page always hears of
    a message before its text."""
    announced = asyncio.Event()  # bound to the replies loop when first awaited there
    for stream in streams:
        message_id = stream.message.pk
        future = submit(stream_reply(stream, announced))
        _running[message_id] = future
        future.add_done_callback(lambda done, message_id=message_id: _settled(done, [message_id]))
    events = [{"event": "message", "message": services.message_payload(m, hide_models=hide_models)} for m in announce]

    async def announce_all():
        try:
            await publish(conversation_id, *events)
        finally:
            announced.set()

    submit(announce_all()).add_done_callback(lambda done: _settled(done, []))


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


def announce_end(conversation_id: int, event: dict) -> None:
    """Push an answer's "end" event from any thread (the agent worker's, when it settles a turn)."""
    submit(publish(conversation_id, event))


def cancel_engine_request(deployment_id: int, request_id: str) -> None:
    submit(gateway.cancel(deployment_id, request_id)).result(timeout=5)


# ---- one reply ---------------------------------------------------------------------------------

def _started(message_id: int, request_id: str) -> bool:
    return bool(Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(request_id=request_id))


def _save(message_id: int, text: str) -> bool:
    """The partial text; False when the message is no longer streaming (stopped elsewhere)."""
    return bool(Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(content=text))


def _end_event(message_id: int) -> dict | None:
    message = Message.objects.select_related("conversation", "deployment__owner", "model_version__model") \
        .filter(pk=message_id).first()
    if message is None:  # the conversation was deleted meanwhile
        return None
    return services.end_event(message, hide_models=services.hides_models(message.conversation))


def _store_end(reply: services.PlainReply, text: str, outcome: dict) -> dict | None:
    """Store how the answer ended and return its "end" event: from what was stored when this
    stream settled it, else (stopped or deleted meanwhile) as the database has it."""
    message = reply.message
    usage = outcome["usage"]
    if not services.finish_turn(message.pk, status=outcome["status"], content=text, error=outcome["error"], usage=usage):
        return _end_event(message.pk)
    message.status, message.content, message.request_id = outcome["status"], text, ""
    message.error = services.public_error(outcome["error"])
    if usage is not None:
        message.usage = usage
    return services.end_event(message, hide_models=reply.hide_models)


async def stream_reply(reply: services.PlainReply, announced: asyncio.Event | None = None) -> None:
    """Stream one placeholder's answer (prepared, claimed and usually sent by the transaction
    that stored it); its events wait for `announced` (see announce_and_stream)."""
    message_id, conversation_id, column = reply.message.pk, reply.message.conversation_id, reply.message.column

    async def emit(event: dict) -> None:
        if announced is not None:
            await announced.wait()
        await publish(conversation_id, event)

    parts: list[str] = []
    exchange, recorded = reply.exchange, None
    outcome = {"status": MessageStatus.FAILED, "error": reply.failure, "usage": None}
    try:
        if reply.failure:
            return
        if exchange is None:  # sent now: its id is stored (so "stop" can cancel it) while a replica takes it
            exchange = await open_exchange("chat", reply.spec, reply.caller, reply.target)
            recorded = asyncio.ensure_future(_db(_started)(message_id, exchange.request_id))
        event = await exchange.until_start()
        if recorded is not None and not await recorded:  # stopped before the request existed
            await exchange.abort()
            return
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
        if recorded is not None and not recorded.done():  # its write must land before the final one
            await asyncio.shield(asyncio.wait([recorded]))
        await asyncio.shield(_finish(reply, "".join(parts), outcome, emit))


async def _finish(reply: services.PlainReply, text: str, outcome: dict, emit) -> None:
    event = await _db(_store_end)(reply, text, outcome)
    if event is not None:
        await emit(event)
