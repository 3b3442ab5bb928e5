"""The OpenAI-compatible endpoints (async views under daphne; keys, not sessions):
GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

Request path: validate → key + scope + token quota (one database hop) → rate limit (Redis) →
queue length and a ready replica → XADD → read the request's event stream → SSE chunks or one
JSON body. Every wait has a deadline (504, never a hang); a client that goes away cancels its
request (Django cancels the view's task on http.disconnect, and we tell the replica)."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
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


class Exchange:
    """One request in flight: its events, deadlines, cancel and usage."""

    def __init__(self, kind, request_id, caller, target, entry_id, shaper, deadline) -> None:
        self.kind, self.request_id, self.caller, self.target, self.entry_id = kind, request_id, caller, target, entry_id
        self.shaper, self.deadline = shaper, deadline
        self.queue_deadline = time.monotonic() + settings.SERVING_QUEUE_TIMEOUT_SECONDS
        self.reader = gateway.EventReader(request_id)
        self.started = False
        self.finished = False
        self.replica = ""

    async def abort(self) -> None:
        if self.finished:
            return
        self.finished = True
        try:
            await gateway.cancel(self.target.deployment_id, self.request_id)
            if not self.started:
                await gateway.drop_unclaimed(self.target.deployment_id, self.entry_id)
        except Exception:  # the client is gone either way; the replica's deadline ends it
            log.warning("could not cancel request %s", self.request_id, exc_info=True)

    async def next(self) -> dict:
        deadline = self.deadline if self.started else min(self.deadline, self.queue_deadline)
        try:
            event = await self.reader.next(deadline)
        except TimeoutError:
            await self.abort()
            if not self.started and deadline < self.deadline:
                raise ApiError(504, f"no replica of {self.target.served_name} started the request within "
                                    f"{settings.SERVING_QUEUE_TIMEOUT_SECONDS:g} s; it was cancelled, try again",
                               type="server_error", code="queue_timeout") from None
            raise ApiError(504, f"the request did not finish within the deployment's timeout of "
                                f"{self.target.request_timeout_s:g} s; it was cancelled", type="server_error",
                           code="timeout") from None
        kind = event.get("type")
        if kind == "start":
            self.started = True
            self.replica = str(event.get("replica") or "")
        elif kind == "error":
            self.finished = True
            raise _error_from_event(event)
        elif kind == "end":
            self.finished = True
            await sync_to_async(access.record_usage)(self.caller.key_id, self.target.deployment_id, event.get("usage") or {})
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
    await gateway.check_rate_limit(caller)
    now = time.time()
    entry_id = await gateway.enqueue(target, {**spec, "id": request_id, "created": now, "deadline": now + target.request_timeout_s})
    return Exchange(kind, request_id, caller, target, entry_id, Shaper(kind, request_id, target.served_name),
                    time.monotonic() + target.request_timeout_s)


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
