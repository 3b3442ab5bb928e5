"""The `vllm` backend: a replica's requests relayed to vLLM's own OpenAI-compatible server, which
runs as a child process from its own environment (vllm_server.py starts and stops it).

    backend = VllmBackend(EngineConfig(...), model_dir, served_name="smol")
    backend.load()                         # starts the server, returns once it is healthy (minutes on CPU)
    handle = backend.submit(EngineRequest(...))
    handle.poll() / handle.events()        # the same protocol events as the builtin engine's handles
    backend.check(); backend.stats(); backend.close()

Relaying: one asyncio loop thread owns an AsyncOpenAI client (the official client: its SSE
decoder, typed chunks and error mapping; retries off). Each request is one task that streams a
chat or completion from the server and translates the chunks (StreamTranslator) into delta / end
/ error events on the handle's queue, which the replica reads from its own thread. vLLM is asked
for `return_token_ids` (the tokens of each chunk: exact token counts per delta, and the prompt's
length) and `stream_options.include_usage` (the final usage).
Cancel = cancelling the task, which closes the HTTP response: vLLM sees the disconnect and aborts
the request (it leaves vllm:num_requests_running); the handle ends "cancelled".
Requests are checked here as the builtin engine checks them where that needs no tokenizer
(messages, tools against the template, completions without tools); limits that need the prompt's
length (context, KV budget) are vLLM's to check, and come back as 400 errors.
"""
from __future__ import annotations

import asyncio
import collections
import json
import queue
import shutil
import threading
import time
from pathlib import Path

from .chat import normalise_messages, select_tools
from .engine import RATE_WINDOW_SECONDS, EngineConfig, EngineRequest, RequestHandle
from .errors import BackendUnavailable, EngineFailure, InvalidRequest
from .vllm_server import VllmServer, cuda_host, make_workdir, plan_server, vllm_python

FINISH_REASONS = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
METRICS_TIMEOUT_S = 5.0  # read in the background: a busy server may answer slowly
CLOSE_SECONDS = 10.0


class StreamTranslator:
    """One request's stream chunks (OpenAI chunk dicts, with vLLM's token_ids) → protocol events.
    Pure: fed chunks, it returns the delta events; end() builds the closing event."""

    def __init__(self, kind: str, submitted_at: float | None = None) -> None:
        self.kind = kind
        self.submitted_at = time.monotonic() if submitted_at is None else submitted_at
        self.parts: list[str] = []
        self.token_ids: list[int] = []
        self.tokens = 0
        self.prompt_tokens = 0
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.calls: dict[int, dict] = {}  # tool-call index → OpenAI call, arguments accumulated
        self.first_token_at: float | None = None

    def feed(self, chunk: dict) -> list[dict]:
        prompt_ids = chunk.get("prompt_token_ids")
        if prompt_ids:
            self.prompt_tokens = len(prompt_ids)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events = []
        for choice in chunk.get("choices") or []:
            if choice.get("prompt_token_ids"):  # completions put the prompt in the choice
                self.prompt_tokens = len(choice["prompt_token_ids"])
            if self.kind == "chat":
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    self._merge_call(call)
            else:
                text = choice.get("text") or ""
            ids = choice.get("token_ids")
            count = len(ids) if ids is not None else int(bool(text))  # a server without token_ids: ~1 a chunk
            self.token_ids.extend(ids or [])
            self.tokens += count
            if count and self.first_token_at is None:
                self.first_token_at = time.monotonic()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if text:
                self.parts.append(text)
            if text or count:
                events.append({"type": "delta", "text": text, "tokens": count})
        return events

    def _merge_call(self, delta: dict) -> None:
        index = int(delta.get("index") or 0)
        call = self.calls.setdefault(index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    def usage_so_far(self) -> dict:
        completion = self.tokens
        prompt = self.prompt_tokens
        if self.usage:
            prompt = int(self.usage.get("prompt_tokens") or prompt)
            completion = int(self.usage.get("completion_tokens") or completion)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def end(self, *, cancelled: bool = False) -> dict:
        """The closing event: "end" (finish reason, text, tool calls, usage, timing), or an
        "error" when the stream ended without a finish reason we know (vLLM's "abort", a cut)."""
        reason = "cancelled" if cancelled else FINISH_REASONS.get(self.finish_reason or "")
        usage = self.usage_so_far()
        if reason is None:
            return {"type": "error", "status": 500, "code": "engine_failure", "usage": usage,
                    "message": f"the vLLM server ended the request without finishing it "
                               f"(finish_reason={self.finish_reason!r}); retry the request"}
        calls = [self.calls[i] for i in sorted(self.calls)] if not cancelled else []
        if calls:
            reason = "tool_calls"
        now = time.monotonic()
        first = self.first_token_at
        return {
            "type": "end",
            "finish_reason": reason,
            "text": "".join(self.parts),
            "tool_calls": calls or None,
            "usage": usage,
            "timing": {
                "engine_ttft_s": round(first - self.submitted_at, 4) if first else None,
                "decode_s": round(now - first, 4) if first else 0.0,
            },
        }


def error_event(error: BaseException, usage: dict, server_exit: int | None = None) -> dict:
    """An openai client exception → the protocol's error event (with the tokens made so far)."""
    import openai

    if isinstance(error, openai.APIStatusError):
        body = error.body
        message = body.get("message") if isinstance(body, dict) else None
        message = message if isinstance(message, str) and message else str(error)
        status = error.status_code
        if status in (400, 422):
            event = InvalidRequest("request", f"vLLM refused it: {message}").as_event()
        else:
            event = EngineFailure(f"the vLLM server answered {status}: {message}",
                                  status=503 if status == 503 else 500).as_event()
    elif server_exit is not None:
        event = EngineFailure(f"the vLLM server stopped (exit code {server_exit}); retry the request").as_event()
    elif isinstance(error, openai.APIConnectionError):
        event = EngineFailure(f"lost the connection to the vLLM server ({error.__cause__ or error}); retry the request").as_event()
    else:
        event = EngineFailure(f"the vLLM server failed the request: {error}; retry the request").as_event()
    return {**event, "usage": usage}


class VllmRequestHandle(RequestHandle):
    """One relayed request. It reads like the builtin engine's handle (poll / events / result /
    cancel are RequestHandle's, over the same queue and done flag); its state comes from the
    vLLM stream instead of the engine's loop."""

    def __init__(self, relay: VllmRelay, request_id: str, kind: str) -> None:
        # RequestHandle.__init__ is not called: it sets up the engine's token and stop tracking,
        # which vLLM does itself; only the attributes its readers use are set here.
        self.engine = relay  # RequestHandle.cancel calls engine.cancel(id)
        self.id = request_id
        self.translator = StreamTranslator(kind)
        self.queue: queue.Queue = queue.Queue()
        self.done = threading.Event()
        self.closed = False
        self.final: dict | None = None
        self.task: asyncio.Task | None = None
        self.shutdown = False  # closed by the backend's close(): an error, not "cancelled"

    @property
    def prompt_tokens(self) -> int:
        return self.translator.usage_so_far()["prompt_tokens"]

    @property
    def token_ids(self) -> list[int]:
        return self.translator.token_ids

    def _close(self, event: dict) -> None:  # loop thread
        if self.closed:
            return
        self.closed = True
        self.final = event
        self.queue.put(event)
        self.done.set()


class VllmRelay:
    """Requests → an OpenAI-compatible server, on one asyncio loop thread. Separate from the
    child process so it can be tested against a scripted transport."""

    def __init__(self, base_url: str, model: str, *, http_client=None, server_exit=lambda: None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.http_client = http_client
        self.server_exit = server_exit  # the child's exit code, or None while it runs (error messages)
        self.handles: dict[str, VllmRequestHandle] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.client = None
        self.requests_total = 0
        self.tokens_total = 0
        self._rate: collections.deque = collections.deque()
        self.metrics: dict = {}  # the last figures read from the server's /metrics (parse_metrics)
        self._metrics_client = None
        self._metrics_pending = False

    def start(self) -> None:
        import httpx2
        import openai

        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            # No retries: a retried generation would be a second request the user pays for;
            # no read timeout: a long prefill is silent (the replica enforces deadlines).
            self.client = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0,
                                             timeout=openai.Timeout(None, connect=10.0), http_client=self.http_client)
            self._metrics_client = httpx2.AsyncClient(base_url=self.base_url, timeout=METRICS_TIMEOUT_S, trust_env=False)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="vllm-relay", daemon=True)
        self.thread.start()
        ready.wait()

    def submit(self, body: dict, kind: str, request_id: str) -> VllmRequestHandle:
        if self.loop is None:
            raise EngineFailure("the vLLM backend is not started")
        if request_id in self.handles:
            raise InvalidRequest("id", f"request {request_id} is already running")
        handle = VllmRequestHandle(self, request_id, kind)
        self.handles[request_id] = handle
        self.requests_total += 1
        self.loop.call_soon_threadsafe(self._start_task, handle, body, kind)
        return handle

    def cancel(self, request_id: str) -> None:
        handle = self.handles.get(request_id)
        if handle is not None and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._cancel_task, handle)

    def refresh_metrics(self) -> None:
        """Read /metrics again in the background (one read at a time); self.metrics updates."""
        if self.loop is not None and not self._metrics_pending and not self.loop.is_closed():
            self._metrics_pending = True
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.fetch_metrics()))

    async def fetch_metrics(self) -> None:
        try:
            response = await self._metrics_client.get("/metrics")
            response.raise_for_status()
            self.metrics = parse_metrics(response.text)
        except Exception:  # busy or gone: keep the last figures (a dead child is check()'s to report)
            pass
        finally:
            self._metrics_pending = False

    # ---------------------------------------------------------------- loop thread

    def _start_task(self, handle: VllmRequestHandle, body: dict, kind: str) -> None:
        handle.task = self.loop.create_task(self._run(handle, body, kind))
        # a task cancelled before its first step never runs _run's handlers: close it here
        handle.task.add_done_callback(lambda _task: self._finish(handle, self._cancelled(handle)))

    def _cancel_task(self, handle: VllmRequestHandle) -> None:
        if handle.task is not None:
            handle.task.cancel()

    async def _run(self, handle: VllmRequestHandle, body: dict, kind: str) -> None:
        translator = handle.translator
        create = self.client.chat.completions.create if kind == "chat" else self.client.completions.create
        body = dict(body)
        extra = {**body.pop("extra_body", {}), "return_token_ids": True}  # vLLM's own fields
        try:
            stream = await create(model=self.model, stream=True, stream_options={"include_usage": True},
                                  extra_body=extra, **body)
            async with stream:  # leaving it (a cancel included) closes the response: vLLM aborts
                async for chunk in stream:
                    for event in translator.feed(chunk.to_dict()):
                        self._count(event["tokens"])
                        handle.queue.put(event)
            self._finish(handle, translator.end())
        except asyncio.CancelledError:
            self._finish(handle, self._cancelled(handle))
        except Exception as error:  # every failure ends the request, never the loop
            self._finish(handle, error_event(error, translator.usage_so_far(), self.server_exit()))

    @staticmethod
    def _cancelled(handle: VllmRequestHandle) -> dict:
        """A cancelled request's closing event: "end" (cancelled), or an error when the backend
        itself is closing under it."""
        if handle.shutdown:
            return {**EngineFailure("the vLLM backend is shutting down").as_event(), "usage": handle.translator.usage_so_far()}
        return handle.translator.end(cancelled=True)

    def _finish(self, handle: VllmRequestHandle, event: dict) -> None:
        handle._close(event)
        if self.handles.get(handle.id) is handle:
            del self.handles[handle.id]

    def _count(self, tokens: int) -> None:
        self.tokens_total += tokens
        self._rate.append((time.monotonic(), tokens))

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - RATE_WINDOW_SECONDS:
            self._rate.popleft()
        return round(sum(n for _, n in list(self._rate)) / RATE_WINDOW_SECONDS, 2)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """End what is still running (an error event each), close the client, stop the loop."""
        if self.thread is None:
            return

        async def shutdown() -> None:
            tasks = []
            for handle in list(self.handles.values()):
                handle.shutdown = True
                if handle.task is not None:
                    handle.task.cancel()
                    tasks.append(handle.task)
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.client.close()
            await self._metrics_client.aclose()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout)
        except Exception:  # a stuck close must not keep the replica from stopping the child
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        self.thread = None


def parse_metrics(text: str) -> dict:
    """running, waiting, KV use (0-1) and the KV cache's size in tokens from vLLM's Prometheus
    text (summed over its engines)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = collections.defaultdict(float)
    capacity = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "vllm:cache_config_info":
                try:
                    capacity += int(sample.labels.get("num_gpu_blocks") or 0) * int(sample.labels.get("block_size") or 0)
                except ValueError:
                    pass
            elif sample.name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
                values[sample.name] += sample.value
    return {
        "running": int(values["vllm:num_requests_running"]),
        "waiting": int(values["vllm:num_requests_waiting"]),
        "kv_cache_used": round(max(0.0, min(1.0, values["vllm:kv_cache_usage_perc"])), 4),
        "kv_capacity_tokens": capacity,
    }


def build_body(request: EngineRequest, template: str | None, tool_parser: str | None) -> tuple[str, dict]:
    """(kind, the create() keyword arguments) for a request; InvalidRequest as the builtin
    engine raises it for what can be checked without the tokenizer."""
    sampling = request.sampling
    body: dict = {
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "extra_body": {"top_k": sampling.top_k, "repetition_penalty": sampling.repetition_penalty},
    }
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if request.messages is not None:
        tools = select_tools(request.tools, request.tool_choice)
        if not template:
            raise InvalidRequest("messages", "this model has no chat template: use /v1/completions or configure chat_template")
        if tools and tool_parser is None:
            raise InvalidRequest("tools", "this model's chat template does not support tools")
        body["messages"] = [_openai_message(m) for m in normalise_messages(request.messages)]
        if tools:
            # tool_choice is applied above as the builtin engine applies it ("none" drops the
            # tools, a named function keeps only that one); vLLM then parses calls freely.
            body["tools"] = tools
            body["tool_choice"] = "auto"
        return "chat", body
    if request.tools:
        raise InvalidRequest("tools", "tools need a chat request (messages), not a completion prompt")
    if request.prompt_ids is not None:
        if not request.prompt_ids:
            raise InvalidRequest("prompt", "is empty")
        body["prompt"] = list(request.prompt_ids)
    elif request.prompt:
        body["prompt"] = request.prompt
    else:
        raise InvalidRequest("prompt", "a request needs messages, a prompt or prompt_ids")
    return "completion", body


def _openai_message(message: dict) -> dict:
    """A normalised message (chat.normalise_messages: arguments as objects) back in OpenAI's
    shape, which vLLM's server takes (arguments as JSON strings)."""
    out = {"role": message["role"], "content": message["content"]}
    if message.get("tool_calls"):
        out["tool_calls"] = [{"id": call.get("id") or f"call_{i}", "type": "function",
                              "function": {"name": call["function"]["name"],
                                           "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}}
                             for i, call in enumerate(message["tool_calls"])]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    return out


class VllmBackend:
    """The Backend protocol over a vLLM server child (see the module doc)."""

    name = "vllm"

    def __init__(self, config: EngineConfig, model_dir, *, served_name: str = "", adapter_dir="", merge_adapter=False) -> None:
        config.validate()
        if adapter_dir:
            raise BackendUnavailable('backend "vllm": LoRA adapter versions are served by backend "builtin" '
                                     "(this adapter starts vLLM on base or merged versions only)")
        self.config = config
        self.model_dir = Path(model_dir)
        # The name only the relay uses (it is the server's one client) and vLLM's logs and metrics
        # show: the version folder's last two parts, e.g. "smol-v2".
        self.served_name = served_name or "-".join(self.model_dir.resolve().parts[-2:])
        self.python = vllm_python()  # BackendUnavailable ("run make vllm") before anything starts
        self.server: VllmServer | None = None
        self.relay: VllmRelay | None = None
        self.workdir: Path | None = None
        self.plan = None
        self.capacity_tokens = 0

    @property
    def device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if cuda_host() else "cpu"

    def load(self) -> None:
        self.workdir = make_workdir()
        try:
            self.plan = plan_server(self.config, self.model_dir, self.served_name, self.workdir, device=self.device)
            self.server = VllmServer(self.python, self.plan, self.workdir)
            self.server.start()
            self.relay = VllmRelay(self.server.base_url, self.served_name, server_exit=self.server.exit_code)
            self.relay.start()
        except BaseException:
            self.close()
            raise
        try:  # the first figures (the KV cache's real size) before the replica reports ready
            asyncio.run_coroutine_threadsafe(self.relay.fetch_metrics(), self.relay.loop).result(METRICS_TIMEOUT_S + 5)
        except Exception:  # figures only: serving does not depend on them
            pass
        self.capacity_tokens = self.relay.metrics.get("kv_capacity_tokens", 0)

    def submit(self, request: EngineRequest) -> VllmRequestHandle:
        if self.relay is None:
            raise EngineFailure("the vLLM backend is not loaded")
        kind, body = build_body(request, self.plan.chat_template, self.plan.tool_parser)
        return self.relay.submit(body, kind, request.id)

    def cancel(self, request_id: str) -> None:
        if self.relay is not None:
            self.relay.cancel(request_id)

    def check(self) -> None:
        """EngineFailure once the server child has died (the replica calls this every loop)."""
        if self.server is not None:
            self.server.check()

    def stats(self) -> dict:
        """The builtin engine's keys: running, waiting and KV use from vLLM's /metrics; tokens/s
        and totals counted here from what was relayed."""
        relay = self.relay
        figures = relay.metrics if relay else {}
        if relay:
            relay.refresh_metrics()  # for the next call: the replica's loop never waits on vLLM here
        return {
            "running": figures.get("running", 0),
            "waiting": figures.get("waiting", 0),
            "in_flight": len(relay.handles) if relay else 0,
            "kv_cache_used": figures.get("kv_cache_used", 0.0),
            "kv_capacity_tokens": figures.get("kv_capacity_tokens", self.capacity_tokens),
            "tokens_per_s": relay.tokens_per_s() if relay else 0.0,
            "requests_total": relay.requests_total if relay else 0,
            "tokens_total": relay.tokens_total if relay else 0,
            "server_pid": self.server.process.pid if self.server and self.server.process else None,
        }

    def close(self) -> None:
        """Fail what is running, stop the server child (its whole process group), drop its files."""
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.server is not None:
            self.server.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
