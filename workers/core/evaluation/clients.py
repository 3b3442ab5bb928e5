"""Clients of remote targets and judges: a studio deployment over the serving protocol, and an
external OpenAI-compatible endpoint. Both answer `chat(messages)`, `complete(prompt)` and
`send_many(requests)` with `Reply`s; `judge_function` turns either into the judge callable of
judge.py. Nothing here is a secret a spec holds: the Redis URL and the API key are arguments,
read from the environment by default.

Deployment (workers/core/inference/protocol.py, as apps/serving/gateway.py does it, but
synchronous and without Django): wait for a ready replica (its hash says "ready"), XADD the
request onto requests_stream(id), then XREAD its events stream until "end" or "error",
watching the replica's heartbeat once it has started; past the deadline the request is
cancelled (the cancel key and channel) and fails. No quota or rate limit: those belong to API
keys, and an evaluation is a job of the studio itself.

Endpoint: POST {base}/chat/completions or {base}/completions with streaming off, through
urllib (no extra dependency): the base URL is re-checked against the allowlist
(spec.check_endpoint_url) when the client is made, redirects are never followed (a 3xx would
lead off the allowlist), every request has a timeout and a total deadline, and a response over
MAX_RESPONSE_BYTES is refused unread.

Transient failures (HTTP 429/5xx, unreachable, a lost replica, no ready replica yet) are retried
RETRIES times with a growing pause; anything else fails the request at once."""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workers.core.evaluation.spec import check_endpoint_url
from workers.core.inference import protocol

REDIS_URL_ENV = "REDIS_URL"  # the worker's broker, as the replicas read it (inference/replica.py)
ENDPOINT_KEY_ENV = "PUYU_EVAL_ENDPOINT_API_KEY"
JUDGE_KEY_ENV = "PUYU_EVAL_JUDGE_API_KEY"
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_PARALLEL = 8  # endpoint requests in flight at once
RETRIES = 2
RETRY_PAUSE_S = 1.0
READ_BLOCK_MS = 1000
TRANSIENT_STATUSES = (408, 429, 500, 502, 503, 504)


class RemoteError(RuntimeError):
    """A remote request failed; `status` is HTTP-like, `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, status: int = 502, retryable: bool = False) -> None:
        super().__init__(message[:500])
        self.status, self.retryable = status, retryable


@dataclass
class Reply:
    text: str
    tool_calls: list | None = None
    finish_reason: str = ""
    usage: dict | None = None  # {prompt_tokens, completion_tokens, ...} when the server says

    def output(self) -> str:
        """The reply as one text, the way a local model writes it: the content, then each tool
        call as a Hermes/Qwen `<tool_call>` block, so one extractor reads local and remote
        answers alike."""
        parts = [self.text] if self.text else []
        for call in self.tool_calls or []:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except ValueError:
                    pass  # kept as the string the model wrote: the extractor finds it malformed
            block = json.dumps({"name": function.get("name"), "arguments": arguments}, ensure_ascii=False)
            parts.append(f"<tool_call>\n{block}\n</tool_call>")
        return "\n".join(parts)


def request(prompt: str | list, *, tools: list | None = None, max_tokens: int = 256, temperature: float = 0.0,
            stop: list | None = None) -> dict:
    """One request for `send_many`: a completion prompt (str) or chat messages (list)."""
    kind = "messages" if isinstance(prompt, list) else "prompt"
    return {kind: prompt, "tools": tools or None, "max_tokens": int(max_tokens), "temperature": float(temperature),
            "stop": list(stop or [])}


def _retrying(send, item: dict) -> Reply:
    for attempt in range(RETRIES + 1):
        try:
            return send(item)
        except RemoteError as error:
            if not error.retryable or attempt == RETRIES:
                raise
            time.sleep(RETRY_PAUSE_S * (attempt + 1))
    raise AssertionError("unreachable")


def _usage(answer: dict) -> dict | None:
    usage = answer.get("usage")
    return {k: v for k, v in usage.items() if isinstance(v, int)} if isinstance(usage, dict) else None


class _Client:
    def chat(self, messages: list, *, tools: list | None = None, max_tokens: int = 256, temperature: float = 0.0,
             stop: list | None = None) -> Reply:
        return self.send_many([request(messages, tools=tools, max_tokens=max_tokens, temperature=temperature, stop=stop)])[0]

    def complete(self, prompt: str, *, max_tokens: int = 256, temperature: float = 0.0) -> Reply:
        return self.send_many([request(prompt, max_tokens=max_tokens, temperature=temperature)])[0]

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------- endpoint


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises HTTPError with the 3xx status


class EndpointClient(_Client):
    """An OpenAI-compatible API at an allowlisted base URL ("https://host/v1")."""

    def __init__(self, base_url: str, model: str, *, api_key: str = "", timeout_s: float = 120.0,
                 field: str = "endpoint_base_url") -> None:
        self.base_url = check_endpoint_url(field, base_url)
        self.model, self.api_key, self.timeout_s = model, api_key or "", float(timeout_s)
        self.opener = urllib.request.build_opener(_NoRedirect)

    def send_many(self, requests: list[dict]) -> list[Reply]:
        if len(requests) <= 1:
            return [_retrying(self._send, item) for item in requests]
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(requests))) as pool:
            return list(pool.map(lambda item: _retrying(self._send, item), requests))

    def _send(self, item: dict) -> Reply:
        body = {"model": self.model, "max_tokens": item["max_tokens"], "temperature": item["temperature"], "stream": False}
        if item.get("stop"):
            body["stop"] = item["stop"]
        if "messages" in item:
            body["messages"] = item["messages"]
            if item.get("tools"):
                body["tools"] = item["tools"]
            answer = self._post("/chat/completions", body)
            message = _first_choice(answer, self.base_url).get("message")
            if not isinstance(message, dict) or not isinstance(message.get("content") or "", str):
                raise RemoteError(f"{self.base_url} answered without a message")
            calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else None
            return Reply(message.get("content") or "", calls, str(_first_choice(answer, self.base_url).get("finish_reason") or ""),
                         _usage(answer))
        body["prompt"] = item["prompt"]
        answer = self._post("/completions", body)
        choice = _first_choice(answer, self.base_url)
        if not isinstance(choice.get("text"), str):
            raise RemoteError(f"{self.base_url} answered a completion without text")
        return Reply(choice["text"], None, str(choice.get("finish_reason") or ""), _usage(answer))

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        http = urllib.request.Request(self.base_url + path, data=json.dumps(body, ensure_ascii=False).encode(),
                                      headers=headers, method="POST")
        deadline = time.monotonic() + self.timeout_s
        try:
            with self.opener.open(http, timeout=self.timeout_s) as response:
                raw = _read_bounded(response, deadline, self.base_url)
        except urllib.error.HTTPError as error:
            detail = _error_detail(error)
            raise RemoteError(f"{self.base_url}{path} answered HTTP {error.code}{detail}", status=error.code,
                              retryable=error.code in TRANSIENT_STATUSES) from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", None) or error.__class__.__name__
            raise RemoteError(f"could not reach {self.base_url}: {str(reason)[:200]}", status=502, retryable=True) from None
        try:
            answer = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RemoteError(f"{self.base_url}{path} answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise RemoteError(f"{self.base_url}{path} answered JSON that is not an object")
        return answer


def _read_bounded(response, deadline: float, where: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_RESPONSE_BYTES:
        raise RemoteError(f"{where} sent a response over {MAX_RESPONSE_BYTES // 2**20} MiB")
    chunks, size = [], 0
    while chunk := response.read(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise RemoteError(f"{where} sent a response over {MAX_RESPONSE_BYTES // 2**20} MiB")
        if time.monotonic() > deadline:  # the socket timeout is per read: a slow drip is bounded here
            raise RemoteError(f"{where} took longer than the request timeout", status=504, retryable=True)
        chunks.append(chunk)
    return b"".join(chunks)


def _error_detail(error: urllib.error.HTTPError) -> str:
    """The server's error message (OpenAI's {"error": {"message"}}), short."""
    if 300 <= error.code < 400:
        return " (a redirect; redirects are not followed: configure the final base URL)"
    try:
        body = json.loads(error.read(4096) or b"{}")
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
    except (ValueError, AttributeError, OSError):
        message = None
    return f": {str(message)[:200]}" if message else ""


def _first_choice(answer: dict, where: str) -> dict:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RemoteError(f"{where} answered without choices")
    return choices[0]


# ---------------------------------------------------------------------------------- deployment


class DeploymentClient(_Client):
    """A studio deployment, reached through its Redis request stream like the web's gateway."""

    def __init__(self, deployment_id: int, *, redis_url: str | None = None, timeout_s: float = 300.0) -> None:
        import redis

        url = redis_url or os.environ.get(REDIS_URL_ENV, "")
        if not url:
            raise RemoteError(f"this worker has no {REDIS_URL_ENV} in its environment: it cannot reach deployments",
                              status=503)
        self.deployment_id, self.timeout_s = int(deployment_id), float(timeout_s)
        # No socket timeout: XREAD BLOCK waits on purpose; the deadlines below bound every wait.
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=None, socket_connect_timeout=5)

    def close(self) -> None:
        self.redis.close()

    def send_many(self, requests: list[dict]) -> list[Reply]:
        """All requests are queued first (the replicas batch them), then read in order; one that
        failed for a transient reason is sent again on its own."""
        self._wait_for_ready_replica(time.monotonic() + self.timeout_s)
        queued = [(item, self._enqueue(item)) for item in requests]
        replies = []
        for item, (request_id, deadline) in queued:
            try:
                replies.append(self._collect(request_id, deadline))
            except RemoteError as error:
                if not error.retryable:
                    raise
                replies.append(_retrying(self._send, item))
        return replies

    def _send(self, item: dict) -> Reply:
        self._wait_for_ready_replica(time.monotonic() + self.timeout_s)
        return self._collect(*self._enqueue(item))

    def _wait_for_ready_replica(self, deadline: float) -> None:
        while True:
            if self._a_replica_is_ready():
                return
            if time.monotonic() > deadline:
                raise RemoteError(f"no replica of deployment {self.deployment_id} is ready (is it running?)",
                                  status=503, retryable=True)
            time.sleep(0.5)

    def _a_replica_is_ready(self) -> bool:
        """Two round trips: the deployment's replica ids (protocol.replica_index), then their
        states; ids whose hash expired (replicas killed before they could leave) are dropped."""
        index = protocol.replica_index(self.deployment_id)
        replica_ids = sorted(self.redis.smembers(index))[:64]
        with self.redis.pipeline(transaction=False) as pipe:
            for replica_id in replica_ids:
                pipe.hget(protocol.replica_key(self.deployment_id, replica_id), "state")
            states = pipe.execute()
        gone = [replica_id for replica_id, state in zip(replica_ids, states) if state is None]
        if gone:
            self.redis.srem(index, *gone)
        return "ready" in states

    def _enqueue(self, item: dict) -> tuple[str, float]:
        request_id, now = uuid.uuid4().hex, time.time()
        payload = {"id": request_id, "kind": "chat" if "messages" in item else "completion",
                   "tools": item.get("tools"), "tool_choice": None, "max_tokens": item["max_tokens"],
                   "temperature": item["temperature"], "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
                   "stop": item.get("stop") or [], "seed": None, "stream": False, "created": now, "deadline": now + self.timeout_s}
        payload["messages" if "messages" in item else "prompt"] = item.get("messages", item.get("prompt"))
        self.redis.xadd(protocol.requests_stream(self.deployment_id), {"request": protocol.encode(payload)})
        return request_id, time.monotonic() + self.timeout_s

    def _collect(self, request_id: str, deadline: float) -> Reply:
        stream, last, started = protocol.events_stream(request_id), "0-0", None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._cancel(request_id)
                raise RemoteError(f"deployment {self.deployment_id} did not answer within {self.timeout_s:g} s",
                                  status=504)
            answer = self.redis.xread({stream: last}, count=256, block=max(1, min(READ_BLOCK_MS, int(remaining * 1000))))
            if not answer and started and not self._alive(*started):
                raise RemoteError(f"the replica of deployment {self.deployment_id} answering the request was lost",
                                  status=502, retryable=True)
            for _, entries in answer or ():
                for entry_id, fields in entries:
                    last = entry_id
                    event = protocol.decode(fields["event"])
                    kind = event.get("type")
                    if kind == "start":
                        started = (str(event.get("replica", "")), str(event.get("consumer", "")))
                    elif kind == "end":
                        if event.get("finish_reason") == "cancelled":
                            raise RemoteError(f"deployment {self.deployment_id} cancelled the request", status=503,
                                              retryable=True)
                        return Reply(event.get("text") or "", event.get("tool_calls"), event.get("finish_reason") or "",
                                     event.get("usage") if isinstance(event.get("usage"), dict) else None)
                    elif kind == "error":
                        status = int(event.get("status") or 500)
                        raise RemoteError(f"deployment {self.deployment_id}: {event.get('message') or event.get('code')}",
                                          status=status, retryable=status in (502, 503))

    def _alive(self, replica_id: str, consumer: str) -> bool:
        key = protocol.replica_key(self.deployment_id, replica_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(key)
            pipe.hmget(key, "consumer", "heartbeat_seconds")
            ttl_ms, (current, beat) = pipe.execute()
        if ttl_ms == -2 or (consumer and current and current != consumer):
            return False
        return not protocol.missed_beats(ttl_ms, beat)

    def _cancel(self, request_id: str) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(protocol.cancel_key(request_id), "1", ex=protocol.CANCEL_TTL_SECONDS)
            pipe.publish(protocol.cancel_channel(self.deployment_id), request_id)
            pipe.execute()


# ---------------------------------------------------------------------------------- helpers


def open_client(kind: str, *, deployment_id: int = 0, base_url: str = "", model: str = "", api_key: str | None = None,
                key_env: str = ENDPOINT_KEY_ENV, redis_url: str | None = None, timeout_s: float = 300.0,
                field: str = "endpoint_base_url"):
    """A deployment or endpoint client; an endpoint's key is `api_key`, else the environment's."""
    if kind == "deployment":
        return DeploymentClient(deployment_id, redis_url=redis_url, timeout_s=timeout_s)
    key = api_key if api_key is not None else (os.environ.get(key_env) or os.environ.get(ENDPOINT_KEY_ENV, ""))
    return EndpointClient(base_url, model, api_key=key, timeout_s=timeout_s, field=field)


def judge_function(client, *, temperature: float = 0.0, max_tokens: int = 1024):
    """The judge callable of judge.py, `chat(messages) -> str`, on a client."""
    def chat(messages: list[dict]) -> str:
        return client.chat(messages, max_tokens=max_tokens, temperature=temperature).text

    return chat
