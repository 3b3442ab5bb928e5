"""The OpenAI-compatible endpoints (async views under daphne; keys, not sessions):
GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

Request path: validate → key + scope (one database hop) → rate limit, reservation of max_tokens
of the day's quota, a ready replica, queue length and XADD (one Redis script, atomic) → read the
request's event stream → SSE chunks or one JSON body. Every wait has a deadline (504, never a
hang) and watches the replica's heartbeat (502 within seconds when it dies); a client that goes
away cancels its request (Django cancels the view's task on http.disconnect, and we tell the
replica). However a request ends, its tokens are counted and its reservation settled."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from django.utils.translation import gettext
from django.views.decorators.csrf import csrf_exempt

from apps.serving import access, gateway
from apps.serving.openai_format import (
    ApiError,
    Shaper,
    finish_reason,
    include_usage,
    parse_body,
    sse,
)

log = logging.getLogger(__name__)


def _method_not_allowed(allowed: str) -> JsonResponse:
    response = ApiError(405, f"use {allowed}", code="method_not_allowed").response()
    response["Allow"] = allowed
    return response


def _error_from_event(event: dict) -> ApiError:
    status = int(event.get("status") or 500)
    kind = "invalid_request_error" if 400 <= status < 500 else "server_error"
    return ApiError(status, event.get("message") or "the replica failed the request", type=kind, code=event.get("code"))


# After a cancel, how long the web waits for the replica's final event (with the tokens it made)
# before it counts what it saw streamed instead. A replica stops a cancelled request at once.
SETTLE_WAIT_SECONDS = 5.0


class Exchange:
    """One request in flight: its events, deadlines, cancel, the replica's liveness, and usage:
    `reserved` tokens of the key's quota were reserved at admission, and `settle` counts the real
    tokens exactly once, on every end path (end, error, timeout, a dead replica, a client that
    went away)."""

    def __init__(self, kind, request_id, caller, target, entry_id, shaper, deadline, reserved: int = 0) -> None:
        self.kind, self.request_id, self.caller, self.target, self.entry_id = kind, request_id, caller, target, entry_id
        self.shaper, self.deadline, self.reserved = shaper, deadline, reserved
        self.queue_deadline = time.monotonic() + settings.SERVING_QUEUE_TIMEOUT_SECONDS
        self.reader = gateway.EventReader(request_id)
        self.started = False
        self.finished = False
        self.settled = False
        self.replica = ""
        self.consumer = ""
        self.prompt_tokens = 0
        self.seen_tokens = 0  # completion tokens streamed so far

    def _count(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "start":
            self.started = True
            self.replica = str(event.get("replica") or "")
            self.consumer = str(event.get("consumer") or "")
            self.prompt_tokens = int(event.get("prompt_tokens") or 0)
        elif kind == "delta":
            self.seen_tokens += int(event.get("tokens") or 0)

    async def settle(self, usage: dict | None = None, *, ran: bool = True) -> None:
        """Record the request's tokens (the replica's count, or what was seen streamed) and settle
        its reservation; `ran=False` (it never reached a replica) only releases the reservation."""
        if self.settled:
            return
        self.settled = True
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or self.prompt_tokens)
        completion = max(int(usage.get("completion_tokens") or 0), self.seen_tokens)
        try:
            if ran:
                await sync_to_async(access.record_usage)(self.caller.key_id, self.target.deployment_id,
                                                         {"prompt_tokens": prompt, "completion_tokens": completion})
            await gateway.settle_tokens(self.caller, self.reserved, prompt + completion if ran else 0)
        except Exception:  # the answer (or the client's absence) stands; say what was not counted
            log.exception("could not record the usage of request %s (%s + %s tokens)", self.request_id, prompt, completion)

    async def _watch(self) -> None:
        """While no event comes: the replica answering must still beat (else 502 at once, not at
        the deadline); before one started the request, some replica must still be alive."""
        deployment = self.target.deployment_id
        if self.started:
            if self.replica and not await gateway.replica_alive(deployment, self.replica, self.consumer):
                raise ApiError(502, gettext("the replica answering this request stopped (it missed its heartbeats); "
                                            "retry the request"),
                               type="server_error", code="replica_lost")
            return
        for replica_id in self.target.replica_ids:
            if await gateway.replica_alive(deployment, replica_id):
                return
        raise ApiError(503, gettext("no replica of %(target)s is running any more (stopped, or missed its "
                                    "heartbeats); the request was cancelled, retry shortly")
                                    % {"target": self.target.served_name},
                       type="server_error", code="no_live_replica", retry_after=5)

    async def abort(self, wait: bool = True) -> None:
        """Cancel the request at the replica and count what it made: wait (briefly) for the
        replica's final event unless the replica is known dead."""
        if self.finished:
            return
        self.finished = True
        try:
            await gateway.cancel(self.target.deployment_id, self.request_id)
            if not self.started:
                await gateway.drop_unclaimed(self.target.deployment_id, self.entry_id)
        except Exception:  # the client is gone either way; the replica's deadline ends it
            log.warning("could not cancel request %s", self.request_id, exc_info=True)
        usage = None
        if wait and self.started:
            deadline = time.monotonic() + SETTLE_WAIT_SECONDS
            try:
                while usage is None:
                    event = await self.reader.next(deadline)
                    self._count(event)
                    if event.get("type") in ("end", "error"):
                        usage = event.get("usage") or {}
            except Exception:  # TimeoutError, Redis: count what was seen
                pass
        await self.settle(usage, ran=self.started)

    async def next(self) -> dict:
        deadline = self.deadline if self.started else min(self.deadline, self.queue_deadline)
        try:
            event = await self.reader.next(deadline, self._watch)
        except ApiError:  # the replica died: nobody will send a final event
            await self.abort(wait=False)
            raise
        except TimeoutError:
            await self.abort()
            if not self.started and deadline < self.deadline:
                raise ApiError(504, gettext("no replica of %(target)s started the request within "
                                            "%(seconds)s s; it was cancelled, try again")
                                            % {"target": self.target.served_name,
                                               "seconds": format(settings.SERVING_QUEUE_TIMEOUT_SECONDS, "g")},
                               type="server_error", code="queue_timeout") from None
            raise ApiError(504, gettext("the request did not finish within the deployment's timeout of "
                                        "%(seconds)s s; it was cancelled")
                           % {"seconds": format(self.target.request_timeout_s, "g")},
                           type="server_error", code="timeout") from None
        self._count(event)
        kind = event.get("type")
        if kind == "error":
            self.finished = True
            await self.settle(event.get("usage"))
            raise _error_from_event(event)
        if kind == "end":
            self.finished = True
            await self.settle(event.get("usage"))
        return event

    async def until_start(self) -> dict:
        """The first event that is not a delta-less preamble: "start" (or an early "end")."""
        while True:
            event = await self.next()
            if event.get("type") in ("start", "end"):
                return event

    async def collect(self) -> dict:
        while True:
            event = await self.next()
            if event.get("type") == "end":
                return event

    async def stream(self, first: dict, usage_chunk: bool):
        try:
            if self.kind == "chat":
                yield sse(self.shaper.chunk(role=True, text=""))
            event = first
            while True:
                if event.get("type") == "delta" and event.get("text"):
                    yield sse(self.shaper.chunk(text=event["text"]))
                elif event.get("type") == "end":
                    if event.get("tool_calls"):
                        yield sse(self.shaper.chunk(tool_calls=event["tool_calls"]))
                    yield sse(self.shaper.chunk(finish=finish_reason(event)))
                    if usage_chunk:
                        yield sse(self.shaper.usage_chunk(event.get("usage") or {}))
                    yield sse("[DONE]")
                    return
                event = await self.next()
        except ApiError as exc:
            yield sse(exc.body())
        except (asyncio.CancelledError, GeneratorExit):
            await asyncio.shield(self.abort())
            raise


@csrf_exempt
async def models(request):
    if request.method != "GET":
        return _method_not_allowed("GET")
    try:
        data = await sync_to_async(access.list_models)(access.bearer(request))
    except ApiError as exc:
        return exc.response()
    return JsonResponse({"object": "list", "data": data})


@csrf_exempt
async def chat_completions(request):
    return await _complete(request, "chat")


@csrf_exempt
async def completions(request):
    return await _complete(request, "completion")


async def _complete(request, kind: str):
    if request.method != "POST":
        return _method_not_allowed("POST")
    try:
        body = parse_body(request.body)
        spec, caller, target = await sync_to_async(access.admit)(access.bearer(request), body, kind,
                                                                 settings.SERVING_DEFAULT_MAX_TOKENS)
    except ApiError as exc:
        return exc.response()
    return await serve(kind, body, spec, caller, target)


async def open_exchange(kind: str, spec: dict, caller, target) -> Exchange:
    """Rate limit, admission and XADD of an admitted request (ApiError when refused)."""
    request_id = uuid.uuid4().hex
    reserved = int(spec["max_tokens"])
    now = time.time()
    entry_id = await gateway.admit_and_enqueue(caller, target, {**spec, "id": request_id, "created": now,
                                                                "deadline": now + target.request_timeout_s}, reserved)
    return Exchange(kind, request_id, caller, target, entry_id, Shaper(kind, request_id, target.served_name),
                    time.monotonic() + target.request_timeout_s, reserved)


async def serve(kind: str, body: dict, spec: dict, caller, target):
    """Run one admitted request through a replica and answer it (SSE or one JSON body)."""
    try:
        exchange = await open_exchange(kind, spec, caller, target)
    except ApiError as exc:
        return exc.response()
    try:
        # Wait for a replica to start it before answering, so that a refusal (bad tools, prompt
        # too long) is a real HTTP error even for a streamed request.
        first = await exchange.until_start()
        if spec["stream"]:
            response = StreamingHttpResponse(exchange.stream(first, include_usage(body)), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # proxies must not buffer the stream
            response["X-Puyu-Replica"] = exchange.replica
            return response
        end = first if first.get("type") == "end" else await exchange.collect()
    except ApiError as exc:
        return exc.response()
    except asyncio.CancelledError:
        await asyncio.shield(exchange.abort())
        raise
    response = JsonResponse(exchange.shaper.full(end))
    response["X-Puyu-Replica"] = exchange.replica  # which replica answered (tests, debugging)
    return response
