"""Request bodies are refused while they are read, per route: uploads of datasets and model
archives may be GBs (PUYU_MAX_UPLOAD_BYTES), a preset file KBs, everything else a few MB
(PUYU_MAX_REQUEST_BYTES). Past the limit the client gets 413 at once and nothing is stored.

Two layers, because of how daphne reads a request:
- daphne hands a request to the application only after Twisted has received the WHOLE body
  (spooled to a temporary file), and a chunked body has no Content-Length to check up front.
  `install_daphne_limits` swaps daphne's request class for one that counts the body while
  Twisted reads it (Content-Length and chunked alike) and answers 413 as soon as the route's
  limit is passed. It also turns off Twisted's own multipart parsing, which would read a whole
  upload into memory to fill arguments daphne never uses.
- `BodyLimitMiddleware` does the same at the ASGI level (counting `http.request` messages), for
  any other ASGI server and for the test client.

Downloads need the opposite bound: daphne's `send` never waits, so a response produced faster
than the client reads piles up in Twisted's write buffer. The request class therefore offers a
Twisted push producer per request (paused while the socket's buffer is full), and the middleware
exposes it to the response through `current_flow` (see apps/studio/streaming.py).
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import html
import json
from io import BytesIO
from urllib.parse import unquote

# Routes (Django view names) whose bodies may be larger than PUYU_MAX_REQUEST_BYTES.
UPLOAD_VIEWS = ("dataset-upload", "api:upload", "model-import", "api:import_archive")
PRESET_VIEWS = ("training-preset-import", "api:import_preset")
# After a 413 the connection stays open this long, discarding the rest of the body, so the
# client reads the answer instead of a reset (a close with unread data sends RST).
LINGER_SECONDS = 2.0


class Flow:
    """Twisted push producer for one response: paused while the connection's write buffer is full.
    `await flow.writable()` before producing the next chunk."""

    def __init__(self, request) -> None:
        self._request = request
        self._ready = asyncio.Event()
        self._ready.set()
        self._registered = False

    async def writable(self) -> None:
        if not self._registered and self._request.producer is None and not self._request.finished:
            self._request.registerProducer(self, True)
            self._registered = True
        await self._ready.wait()

    # IPushProducer, called by Twisted on the event loop's thread (daphne runs the asyncio reactor)
    def pauseProducing(self) -> None:
        self._ready.clear()

    def resumeProducing(self) -> None:
        self._ready.set()

    def stopProducing(self) -> None:
        self._ready.set()  # the connection is gone: let the producer run on and end


# The ASGI side finds its daphne request by the client address daphne puts in the scope.
_flows: dict[tuple[str, int], Flow] = {}
current_flow: contextvars.ContextVar[Flow | None] = contextvars.ContextVar("current_flow", default=None)


@functools.lru_cache(maxsize=4096)
def _view_name(path: str) -> str:
    """The view a path resolves to ("" for none); cached, since the URLconf does not change while
    the server runs and every request with a body asks."""
    from django.urls import Resolver404, resolve

    try:
        return resolve(path).view_name
    except Resolver404:
        return ""


def limit_for(path: str) -> int:
    """The most body bytes the route at `path` accepts."""
    from django.conf import settings

    view = _view_name(path)
    if view in UPLOAD_VIEWS:
        return settings.MAX_UPLOAD_BYTES
    if view in PRESET_VIEWS:
        return settings.MAX_PRESET_UPLOAD_BYTES
    return settings.MAX_REQUEST_BYTES


def too_large(path: str, limit: int) -> tuple[bytes, bytes]:
    """(content type, body) of the 413 answer: JSON for the API, a short page otherwise."""
    message = f"the request body is over the limit of {limit:,} bytes for this address"
    if path.startswith(("/api/", "/v1/")):
        return b"application/json", json.dumps({"detail": message}).encode()
    page = f"<!doctype html><title>413 Request too large</title><h1>Request too large</h1><p>{html.escape(message)}.</p>"
    return b"text/html; charset=utf-8", page.encode()


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """ASGI: 413 for a declared Content-Length over the route's limit before the application runs,
    and for a body that grows past it while the application reads it (the application sees a
    disconnect, so Django drops what it spooled)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "/")
        client = scope.get("client")
        current_flow.set(_flows.get(tuple(client)) if client else None)
        limit = limit_for(path)
        declared = _content_length(scope.get("headers", []))
        if declared is not None and declared > limit:
            return await self._refuse(send, path, limit)
        received, refused, started = 0, False, False

        async def limited_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if refused and not started:
            await self._refuse(send, path, limit)

    @staticmethod
    async def _refuse(send, path: str, limit: int) -> None:
        content_type, body = too_large(path, limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def install_daphne_limits() -> None:
    """Make daphne (when it is the server: the module is imported) count request bodies while
    Twisted reads them. Idempotent."""
    try:
        from daphne import http_protocol
    except ImportError:
        return
    if getattr(http_protocol.WebRequest, "puyu_limited", False):
        return
    http_protocol.WebRequest = _limited_request_class(http_protocol.WebRequest)


def _limited_request_class(base):
    class LimitedWebRequest(base):
        puyu_limited = True
        # Twisted parses a multipart POST into self.args by reading the whole body into memory;
        # daphne passes the raw body on and never reads args.
        _parsePOSTFormSubmission = False
        _limit: int | None = None
        _received = 0
        _refused = False

        def gotLength(self, length):
            raw = getattr(self.channel, "_path", b"/")
            self._path_text = unquote(raw.split(b"?", 1)[0].decode("latin-1")) or "/"
            self._limit = limit_for(self._path_text)
            if length is not None and length > self._limit:
                self.content = BytesIO()
                self._refuse()
                return
            super().gotLength(length)

        def handleContentChunk(self, data):
            if self._refused:
                return  # lingering: read and drop the rest
            self._received += len(data)
            if self._limit is not None and self._received > self._limit:
                self.content.close()  # a spooled temporary file: closing deletes it
                self.content = BytesIO()
                self._refuse()
                return
            super().handleContentChunk(data)

        def requestReceived(self, command, path, version):
            if self._refused:
                return
            super().requestReceived(command, path, version)

        def process(self):
            address = getattr(self.client, "host", None), getattr(self.client, "port", None)
            # (a websocket upgrade hands the connection over and never finishes this request)
            if address[0] is not None and not self.requestHeaders.hasHeader(b"Upgrade"):
                self._flow_key = (str(address[0]), address[1])
                _flows[self._flow_key] = Flow(self)
            return super().process()

        def _forget_flow(self):
            key = getattr(self, "_flow_key", None)
            flow = _flows.get(key) if key else None
            if flow is not None and flow._request is self:
                del _flows[key]
                flow.stopProducing()
            if self.producer is not None:
                self.unregisterProducer()

        def finish(self):
            self._forget_flow()
            super().finish()

        def connectionLost(self, reason):
            self._forget_flow()
            super().connectionLost(reason)

        def _refuse(self):
            from twisted.internet import reactor

            self._refused = True
            self.requestHeaders.removeHeader(b"Expect")  # no "100 Continue" after the answer
            content_type, body = too_large(self._path_text, self._limit)
            self.channel.transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: " + content_type
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            channel = self.channel
            reactor.callLater(LINGER_SECONDS, lambda: channel.transport and channel.loseConnection())

    return LimitedWebRequest
