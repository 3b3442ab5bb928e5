"""The built-in inference engine: continuous batching with streaming, wrapped with what serving
needs. Two runners do the decoding (EngineConfig.runner):
- "plain" (the CPU default, plain.py): our own loop on plain KV caches. A request alone decodes
  as `generate` does (its own cache of batch 1, no paging: the same logits as a DynamicCache) and
  keeps that path while others join a padded batch; on CPU it beats the manager at every
  concurrency (see plain.py for the profile);
- "manager" (the CUDA default): transformers' continuous batching manager (paged KV cache, CUDA
  graphs), plus the exclusive lane for what it cannot vary per request.

    engine = Engine(EngineConfig(...), model_dir)   # cheap; load() after a fork
    engine.load(); engine.start()
    handle = engine.submit(EngineRequest(id=..., messages=[...], sampling=SamplingParams(...)))
    for event in handle.events(): ...               # protocol-shaped dicts: delta / end / error
    engine.stats(); engine.close()

Threads: the runner (plain runner or manager) has its own generation thread; the engine runs ONE
asyncio loop thread that owns it (creates it, registers result handlers before add_request,
cancels, rebuilds): the manager wants one event loop, created in the process that uses it (after a
fork). Caller threads only post work to that loop and read thread-safe event queues; the runners
post their tokens to it.

What the wrapper adds over the runners (each verified on transformers 5.24, see sampling.py and
exclusive.py for the sampling side):
- stop strings on the decoded text (then cancel_request), finish reasons, usage and timing;
- a cancelled request never gets a final output from the manager: the engine emits the end event
  itself and drops the result handler;
- a request larger than the whole KV cache kills the manager and every request in it: refused
  up front (400) against the real cache size;
- after a fatal error the manager's add_request returns None forever: a watchdog sees the dead
  thread, fails the in-flight requests with a clear error, and builds a new manager (the plain
  runner fails what a broken forward had in flight and keeps serving; both count as rebuilds).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat import render_chat, resolve_template, select_tools
from .errors import EngineFailure, InferenceError, InvalidRequest
from .sampling import MANAGER_SAMPLING_DEFAULTS, SamplingParams, sampling_from_request
from .stops import TextTracker
from .tools import ToolCallHoldback, parse_tool_calls

_LOAD_LOCK = threading.Lock()
DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# CPU defaults: bounded (the manager's own default reserves ~10 GB and takes ~20 s on CPU).
CPU_KV_CACHE_BYTES = 256 * 1024**2
CPU_MAX_BATCH_TOKENS = 512
# The manager keeps an fp32 attention mask of max_batch_tokens x cache tokens: 256 MiB of KV gave
# the tiny test Llama 524,288 tokens and a 1 GiB mask (+1.26 GiB per replica); 32k tokens cost
# 64 MiB, and a serve worker now hosts several replicas.
CPU_MAX_KV_TOKENS = 32768
WATCHDOG_SECONDS = 0.2
RATE_WINDOW_SECONDS = 10.0


def blocks_for_bytes(model, budget: int, block_size: int) -> int:
    """KV pages of `block_size` tokens that `budget` bytes hold for `model` (0: no budget)."""
    if not budget:
        return 0
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize
    return max(1, budget // (per_token * block_size))


@dataclass
class EngineConfig:
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    kv_cache_bytes: int = 0  # KV budget in bytes (0: num_blocks, else a device default)
    num_blocks: int = 0  # KV budget in blocks of block_size tokens (wins over kv_cache_bytes)
    block_size: int = 32  # tokens per KV page (the plain runner counts its budget in these blocks)
    max_batch_tokens: int = 0  # tokens per forward step, prefill chunks (0: 512 on cpu, auto on cuda)
    max_new_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_concurrent: int = 32  # requests decoding at once (the replica claims up to this)
    # copy | off: where the manager's seeded / repetition-penalty requests run (the plain runner
    # serves them itself and never copies the model)
    exclusive_lane: str = "copy"
    quantize: str = "none"  # none | int8-dynamic (cpu only: torch dynamic int8 linears)
    chat_template: str = ""  # "" (the model's) | a name from chat.NAMED_TEMPLATES | jinja
    threads: int = 0  # torch CPU threads (0: leave as is)
    # auto: on for CUDA (transformers' own heuristic leaves graphs off with sdpa; measured on an
    # H200, 0.5B shape: batch 1 16 → 63 tok/s, 32 requests 434 → 1,466 tok/s), off on CPU
    cuda_graphs: str = "auto"  # auto | on | off
    # auto: plain on CPU (plain.py: solo requests decode as generate does, faster batches), the
    # manager on CUDA (CUDA graphs) and for models the plain runner cannot serve (sliding windows)
    runner: str = "auto"  # auto | plain | manager
    # onednn: the plain runner's fp32 linears run oneDNN's inner product (onednn_linear.py: 1.1-2.5x
    # ATen's at decode shapes on CPU); aten: torch's own, bit for bit what `generate` computes
    cpu_linear: str = "onednn"  # onednn | aten

    def validate(self) -> None:
        from workers.core.specs import SpecError, short

        if self.dtype not in DTYPES:
            raise SpecError("dtype", f"must be one of {', '.join(DTYPES)}, got {short(self.dtype)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise SpecError("device", f"must be auto, cpu, cuda or cuda:N, got {short(self.device)}")
        for name in ("kv_cache_bytes", "num_blocks", "max_batch_tokens", "threads"):
            if getattr(self, name) < 0:
                raise SpecError(name, "must be >= 0")
        for name in ("block_size", "max_new_tokens_cap", "default_max_tokens", "max_concurrent"):
            if getattr(self, name) < 1:
                raise SpecError(name, "must be >= 1")
        if self.block_size < 4:
            raise SpecError("block_size", "must be at least 4 tokens")
        if self.exclusive_lane not in ("copy", "off"):
            raise SpecError("exclusive_lane", f"must be copy or off, got {short(self.exclusive_lane)}")
        if self.cuda_graphs not in ("auto", "on", "off"):
            raise SpecError("cuda_graphs", f"must be auto, on or off, got {short(self.cuda_graphs)}")
        if self.runner not in ("auto", "plain", "manager"):
            raise SpecError("runner", f"must be auto, plain or manager, got {short(self.runner)}")
        if self.cpu_linear not in ("onednn", "aten"):
            raise SpecError("cpu_linear", f"must be onednn or aten, got {short(self.cpu_linear)}")
        if self.quantize not in ("none", "int8-dynamic"):
            raise SpecError("quantize", f"must be none or int8-dynamic, got {short(self.quantize)}")


@dataclass
class EngineRequest:
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    prompt_ids: list[int] | None = None  # already tokenized (benchmarks, tests)
    prompt: str | None = None  # completion
    messages: list | None = None  # chat (OpenAI shape)
    tools: list | None = None
    tool_choice: Any = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens_explicit: bool = True  # False: max_tokens may be lowered to fit the context / KV budget


def request_from_payload(payload: dict, config: EngineConfig) -> EngineRequest:
    """A protocol request (see protocol.py) → EngineRequest; bad fields raise InvalidRequest."""
    kind = payload.get("kind")
    if kind not in ("chat", "completion"):
        raise InvalidRequest("kind", f'must be "chat" or "completion", got {kind!r}')
    sampling = sampling_from_request(
        payload, default_max_tokens=config.default_max_tokens, max_tokens_cap=config.max_new_tokens_cap
    )
    request = EngineRequest(
        id=str(payload.get("id") or uuid.uuid4().hex),
        sampling=sampling,
        tools=payload.get("tools"),
        tool_choice=payload.get("tool_choice"),
        max_tokens_explicit=payload.get("max_tokens") is not None,
    )
    if kind == "chat":
        request.messages = payload.get("messages")
    else:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest("prompt", "must be a non-empty string")
        request.prompt = prompt
    return request


class RequestHandle:
    """One request's state and its event queue (protocol-shaped dicts). Written by the engine's
    loop thread; read from any thread through events()/poll()/result()."""

    def __init__(self, engine: Engine, request: EngineRequest, prompt_ids: list[int], tools, max_new_tokens: int):
        self.engine = engine
        self.id = request.id
        self.sampling = request.sampling
        self.prompt_ids = prompt_ids
        self.tools = tools
        self.max_new_tokens = max_new_tokens
        self.tracker = TextTracker(engine.tokenizer, request.sampling.stop)
        self.holdback = ToolCallHoldback() if tools else None
        self.token_ids: list[int] = []
        self.queue: queue.Queue = queue.Queue()
        self.done = threading.Event()
        self.closed = False  # set on the loop thread when the end/error event is queued
        self.lane = "batch"  # or "exclusive" (see exclusive.py); Engine.submit decides
        self.runner_done = False  # the runner reported it finished (a cancel would be stale)
        self.path: str | None = None  # how it decoded: solo | batch (plain runner), paged (manager), exclusive
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.final: dict | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def poll(self) -> list[dict]:
        events = []
        while True:
            try:
                events.append(self.queue.get_nowait())
            except queue.Empty:
                return events

    def events(self, timeout: float = 60.0):
        """Yield events until the closing end/error (blocking); TimeoutError if none comes."""
        while True:
            try:
                event = self.queue.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"request {self.id}: no event in {timeout} s") from None
            yield event
            if event["type"] in ("end", "error"):
                return

    def result(self, timeout: float = 60.0) -> dict:
        """Block until the request closes; return its end or error event."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish in {timeout} s")
        return self.final

    def cancel(self) -> None:
        self.engine.cancel(self.id)


class Engine:
    name = "builtin"

    def __init__(self, config: EngineConfig, model_dir, *, adapter_dir="", merge_adapter: bool = False) -> None:
        config.validate()
        self.config = config
        self.model_dir = Path(model_dir)
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.merge_adapter = merge_adapter
        self.model = None
        self.tokenizer = None
        self.manager = None
        self.runner = None  # the PlainRunner when config.runner resolves to plain
        self.use_manager = True  # resolved when the model is adopted
        self.lane = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.handles: dict[str, RequestHandle] = {}
        self.capacity_tokens = 0
        self.context_length = 0
        self.rebuilds = 0
        self.per_request_sampling = True
        self.requests_total = 0
        self.tokens_total = 0
        self._rate: collections.deque = collections.deque()
        self._closing = False

    # ------------------------------------------------------------------ loading and lifecycle

    @classmethod
    def from_model(cls, config: EngineConfig, model, tokenizer) -> Engine:
        """An engine around an already loaded model (benchmarks): no folder, no exclusive lane
        unless configured (it copies the model)."""
        engine = cls(config, "<in-memory>")
        engine._adopt(model, tokenizer)
        return engine

    def load(self) -> None:
        """Backend protocol: weights, tokenizer and a running manager, ready to serve."""
        self.start()

    def load_weights(self) -> None:
        """Load weights and tokenizer (in the process that serves: call it after any fork)."""
        import torch

        from workers.core.modelstore.loading import load_causal_lm

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        device = self.device
        dtype = DTYPES[self.config.dtype] or ("bfloat16" if device.startswith("cuda") else "float32")
        # transformers patches module-level functions while it loads (weight init skipping,
        # tying): two engines loading at once in one process left the patch behind, so later
        # models in that process came out untied. One load at a time per process.
        with _LOAD_LOCK:
            if self.adapter_dir:
                model, tokenizer = load_causal_lm(self.adapter_dir, dtype=dtype, device=device, base_folder=self.model_dir)
                # merged: plain weights (fastest); else the base with peft's LoRA layers injected in place
                model = model.merge_and_unload() if self.merge_adapter else model.get_base_model()
            else:
                model, tokenizer = load_causal_lm(self.model_dir, dtype=dtype, device=device)
        if self.config.quantize == "int8-dynamic":
            model = quantize_dynamic_int8(model, device)
        self._adopt(model, tokenizer)

    def _adopt(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.template = resolve_template(tokenizer, self.config.chat_template)
        self.context_length = int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 1 << 30)
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else (tokenizer.pad_token_id or (self.eos_ids or [0])[0])
        self.use_manager = self._resolve_runner() == "manager"
        if not self.use_manager and self.config.cpu_linear == "onednn":
            from .onednn_linear import fuse_projections, use_onednn_linears

            use_onednn_linears(model)  # CPU fp32 plain nn.Linear only: int8 layers stay as they are
            fuse_projections(model)  # one q|k|v and one gate|up product per layer
        if self.config.exclusive_lane == "copy" and self.use_manager:
            import copy

            # copied before any manager touches the model (see exclusive.py); the plain runner
            # serves seeds and repetition penalties itself, so it needs no copy
            self.lane_model = copy.deepcopy(self.model)

    def _resolve_runner(self) -> str:
        from workers.core.specs import SpecError

        from .plain import supports_model

        wanted = self.config.runner
        why_not = supports_model(self.model)
        if wanted == "plain" and why_not:
            raise SpecError("runner", f"the plain runner cannot serve this model: {why_not}")
        if wanted == "auto":
            return "manager" if self.model.device.type != "cpu" or why_not else "plain"
        return wanted

    @property
    def device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def start(self) -> None:
        """Start the loop thread and the manager; returns once the KV cache exists."""
        if self.thread is not None:
            return
        self._closing = False  # a closed engine may start again (its weights stay loaded)
        if self.model is None:
            run_in_passing_thread(self.load_weights)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self._build_manager()
            except BaseException as error:  # reported to start()'s caller
                failure.append(error)
                ready.set()
                return
            self.loop.call_later(WATCHDOG_SECONDS, self._watchdog)
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="engine-loop", daemon=True)
        self.thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        if self.config.exclusive_lane == "copy" and self.use_manager:
            from .exclusive import ExclusiveLane

            self.lane = ExclusiveLane(
                self.lane_model, self.eos_ids, self.pad_id,
                on_tokens=lambda h, tokens, finished: self._post(self._advance, h, tokens, finished),
                on_error=lambda h, error: self._post(self._close_error, h, EngineFailure(f"generation failed: {error}")),
            )

    def close(self, timeout: float = 10.0) -> None:
        """Fail what is still running, stop the manager and the loop."""
        if self.thread is None:
            return
        self._closing = True

        def shutdown():
            for handle in list(self.handles.values()):
                self._close_error(handle, EngineFailure("the engine is shutting down"))
            if self.runner is not None:
                self.runner.stop(timeout)
                self.runner = None
            if self.manager is not None:
                try:
                    self.manager.stop(block=True, timeout=timeout)
                except Exception:  # a dead manager may refuse to stop; it is dropped anyway
                    pass
                self.manager = None
            self.loop.stop()

        self.loop.call_soon_threadsafe(shutdown)
        self.thread.join(timeout)
        self.thread = None
        if self.lane is not None:
            self.lane.close()

    def _kv_blocks(self) -> int:
        """The KV budget in blocks (0: the manager sizes it from free GPU memory)."""
        config = self.config
        on_cpu = self.model.device.type == "cpu"
        num_blocks = config.num_blocks or blocks_for_bytes(self.model, config.kv_cache_bytes or (CPU_KV_CACHE_BYTES if on_cpu else 0),
                                                           config.block_size)
        if on_cpu and not config.num_blocks and not config.kv_cache_bytes:
            num_blocks = min(num_blocks, CPU_MAX_KV_TOKENS // config.block_size)
        return num_blocks

    def _build_manager(self) -> None:
        """Create and start the runner: the plain runner, or a bounded manager (loop thread only)."""
        if not self.use_manager:
            self._build_plain()
            return
        import torch
        from transformers import GenerationConfig

        config = self.config
        on_cpu = self.model.device.type == "cpu"
        num_blocks = self._kv_blocks()
        cb_settings = dict(
            page_size=config.block_size,
            num_blocks=num_blocks or None,
            max_batch_tokens=config.max_batch_tokens or (CPU_MAX_BATCH_TOKENS if on_cpu else None),
            max_requests_per_batch=config.max_concurrent,
            per_request_processors=True,
            # prefix sharing costs bookkeeping per step and helps little with our prompts on CPU
            allow_block_sharing=not on_cpu,
            use_cuda_graph={"auto": not on_cpu, "on": True, "off": False}[config.cuda_graphs],
        )
        generation_config = GenerationConfig(
            do_sample=True,
            max_new_tokens=config.default_max_tokens,
            eos_token_id=self.eos_ids or -1,
            pad_token_id=self.pad_id,
            **MANAGER_SAMPLING_DEFAULTS,
        )
        kwargs = {"generation_config": generation_config}
        cb_config_class = _continuous_batching_config_class()
        if cb_config_class is not None:
            known = _init_parameters(cb_config_class)
            if "page_size" not in known:  # before 5.17 the page was called block_size
                cb_settings["block_size"] = cb_settings.pop("page_size")
            kwargs["continuous_batching_config"] = cb_config_class(**{k: v for k, v in cb_settings.items() if k in known})
            self.per_request_sampling = "per_request_processors" in known
        else:  # older transformers: the knobs lived on the generation config
            cb_settings["block_size"] = cb_settings.pop("page_size")
            for key, value in cb_settings.items():
                setattr(generation_config, key, value)
            self.per_request_sampling = False
        if not self.per_request_sampling:  # greedy only; sampled requests go to the exclusive lane
            generation_config.do_sample = False
        with torch.inference_mode():
            manager = self.model.init_continuous_batching(**kwargs)
            manager.start()
        deadline = time.monotonic() + 120
        while manager.batch_processor is None:  # the cache is built on the manager's thread
            if _fatal_error(manager) is not None or not manager.is_running():
                raise EngineFailure(f"the generation manager failed to start: {_fatal_error(manager)}")
            if time.monotonic() > deadline:
                raise EngineFailure("the generation manager did not start in 120 s")
            time.sleep(0.005)
        cache = getattr(manager.batch_processor, "cache", None)
        self.capacity_tokens = int(getattr(cache, "num_blocks", None) or num_blocks) * config.block_size
        self.manager = manager

    def _build_plain(self) -> None:
        from .onednn_linear import warm_primitives
        from .plain import PlainRunner

        from workers.core.specs import SpecError

        num_blocks = self._kv_blocks()
        if not num_blocks:  # no budget given on a GPU: the plain runner has no free-memory probe
            raise SpecError("kv_cache_bytes", "the plain runner needs a KV budget (kv_cache_bytes or num_blocks) on this device")
        self.capacity_tokens = num_blocks * self.config.block_size
        onednn = self.config.cpu_linear == "onednn"
        runner = PlainRunner(
            self.model, eos_ids=self.eos_ids, capacity_tokens=self.capacity_tokens,
            max_concurrent=self.config.max_concurrent,
            max_prefill_tokens=self.config.max_batch_tokens or CPU_MAX_BATCH_TOKENS,
            on_tokens=lambda updates: self._post(self._advance_many, updates),
            on_failure=lambda handles, error: self._post(self._fail_many, handles, error),
            warm_up=functools.partial(warm_primitives, self.model, self.config.max_concurrent) if onednn else None,
            lean_decode=onednn,  # decode_step.py: built on the fused oneDNN projections
        )
        runner.start()
        self.runner = runner
        runner.wait_set_up(timeout=120)  # kernel warm-up, lean decode step (decode_step.py)

    # ------------------------------------------------------------------ submitting

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Validate and queue a request (any thread). Invalid → InvalidRequest (400), raised here."""
        if self.thread is None:
            raise EngineFailure("the engine is not started")
        if request.id in self.handles:
            raise InvalidRequest("id", f"request {request.id} is already running")
        prompt_ids, tools = self.prepare(request)
        max_new = self._max_new_tokens(request, len(prompt_ids))
        exclusive = self.use_manager and (
            request.sampling.needs_exclusive_lane or not (self.per_request_sampling or request.sampling.greedy))
        if exclusive and self.lane is None:
            field_name = "repetition_penalty" if request.sampling.repetition_penalty != 1.0 else (
                "seed" if request.sampling.seed is not None else "temperature")
            raise InvalidRequest(field_name, "not supported by this deployment (its engine runs without the exclusive lane)")
        handle = RequestHandle(self, request, prompt_ids, tools, max_new)
        handle.lane = "exclusive" if exclusive else "batch"
        self.handles[handle.id] = handle
        self.requests_total += 1
        self._post(self._start_request, handle)
        return handle

    def prepare(self, request: EngineRequest) -> tuple[list[int], list | None]:
        """(prompt token ids, tools for the template) or InvalidRequest."""
        tools = None
        if request.prompt_ids is not None:
            ids = list(request.prompt_ids)
        elif request.messages is not None:
            tools = select_tools(request.tools, request.tool_choice)
            text = render_chat(self.tokenizer, self.template, request.messages, tools)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        elif request.prompt is not None:
            if request.tools:
                raise InvalidRequest("tools", "tools need a chat request (messages), not a completion prompt")
            ids = self.tokenizer(request.prompt)["input_ids"]
        else:
            raise InvalidRequest("prompt", "a request needs messages, a prompt or prompt_ids")
        if not ids:
            raise InvalidRequest("prompt", "is empty after tokenization")
        vocab = self.model.get_input_embeddings().num_embeddings
        if request.prompt_ids is not None and not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
            # an id past the embeddings would fail the forward of every request batched with it
            raise InvalidRequest("prompt_ids", f"must be integers in [0, {vocab})")
        return ids, tools

    def _max_new_tokens(self, request: EngineRequest, prompt_len: int) -> int:
        wanted = request.sampling.max_tokens
        if prompt_len >= self.context_length:
            raise InvalidRequest("prompt", f"has {prompt_len} tokens; this model's context is {self.context_length} tokens")
        if prompt_len + 1 > self.capacity_tokens:
            raise InvalidRequest(
                "prompt", f"has {prompt_len} tokens, more than this deployment's KV cache budget of {self.capacity_tokens} tokens"
            )
        room = min(self.context_length - prompt_len, self.capacity_tokens - prompt_len)
        if wanted > room and request.max_tokens_explicit:
            limit = "context" if self.context_length <= self.capacity_tokens else "KV cache budget"
            total = min(self.context_length, self.capacity_tokens)
            raise InvalidRequest(
                "max_tokens",
                f"prompt ({prompt_len} tokens) + max_tokens ({wanted}) exceeds this deployment's {limit} of {total} tokens; "
                f"lower max_tokens to at most {room}",
            )
        return min(wanted, room)

    def cancel(self, request_id: str) -> None:
        handle = self.handles.get(request_id)
        if handle is not None and self.loop is not None:
            self._post(self._finish, handle, "cancelled")

    def _post(self, fn, *args) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------------ loop-thread side

    def _start_request(self, handle: RequestHandle, retried: bool = False) -> None:
        if handle.closed:
            return
        if handle.lane == "exclusive":
            handle.path = "exclusive"
            self.lane.submit(handle, handle.max_new_tokens)
            return
        if self.runner is not None:
            self.runner.submit(handle)  # the runner sets handle.path when it admits it
            return
        handle.path = "paged"
        manager = self.manager
        manager.register_result_handler(handle.id, lambda output: self._on_output(handle, output))
        added = manager.add_request(
            handle.prompt_ids,
            request_id=handle.id,
            max_new_tokens=handle.max_new_tokens,
            streaming=True,
            **(handle.sampling.manager_kwargs(len(self.tokenizer)) if self.per_request_sampling else {}),
        )
        if added is None:  # the manager died: rebuild once, then try again
            self._drop_handler(handle.id)
            if retried:
                self._close_error(handle, EngineFailure("the generation engine is not accepting requests"))
                return
            self._rebuild("it refused a request")
            self._start_request(handle, retried=True)

    def _on_output(self, handle: RequestHandle, output) -> None:
        if handle.closed:
            return
        if output.error is not None or output.status.name == "FAILED":
            self._close_error(handle, EngineFailure(f"generation failed: {output.error}; retry the request"))
            return
        self._advance(handle, output.generated_tokens, output.is_finished())

    def _advance_many(self, updates: list) -> None:
        for handle, tokens, finished in updates:
            self._advance(handle, tokens, finished)

    def _fail_many(self, handles: list, error: Exception) -> None:
        self.rebuilds += 1
        for handle in handles:
            self._close_error(handle, EngineFailure(f"generation failed: {error}; retry the request"))

    def _advance(self, handle: RequestHandle, tokens: list[int], finished: bool) -> None:
        if handle.closed:
            return
        handle.runner_done = finished  # the runner has let go of it: nothing to cancel there
        new = len(tokens) - len(handle.token_ids)
        if new <= 0 and not finished:
            return
        now = time.monotonic()
        if handle.first_token_at is None and tokens:
            handle.first_token_at = now
        handle.token_ids = list(tokens)
        self.tokens_total += max(new, 0)
        self._rate.append((now, max(new, 0)))
        text = handle.tracker.update(handle.token_ids, final=finished)
        if handle.holdback is not None:
            text = handle.holdback.feed(text)
        if new > 0 or text:
            handle.queue.put({"type": "delta", "text": text, "tokens": max(new, 0)})
        if handle.tracker.stopped:
            self._finish(handle, "stop")
        elif finished:
            eos = bool(tokens) and tokens[-1] in self.eos_ids
            self._finish(handle, "stop" if eos else "length")

    def _finish(self, handle: RequestHandle, reason: str) -> None:
        """Close a request with its end event (loop thread). Cancels it in the manager if it is
        still running there (stop string, cancel)."""
        if handle.closed:
            return
        if reason in ("stop", "cancelled"):
            self._cancel_in_runner(handle)
        self._drop_handler(handle.id)
        text = handle.tracker.text if reason != "cancelled" else handle.tracker.text[: handle.tracker.emitted]
        tool_calls = None
        if handle.tools and reason != "cancelled":
            content, calls = parse_tool_calls(text, handle.tools)
            if calls:
                text, tool_calls, reason = content, calls, "tool_calls"
        rest = handle.holdback.finish(text) if handle.holdback is not None else handle.tracker.flush()
        if rest:
            handle.queue.put({"type": "delta", "text": rest, "tokens": 0})
        handle.finished_at = time.monotonic()
        completion = len(handle.token_ids)
        first = handle.first_token_at
        event = {
            "type": "end",
            "finish_reason": reason,
            "text": text,
            "tool_calls": tool_calls,
            "usage": {
                "prompt_tokens": handle.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": handle.prompt_tokens + completion,
            },
            "timing": {
                "engine_ttft_s": round(first - handle.submitted_at, 4) if first else None,
                "decode_s": round(handle.finished_at - first, 4) if first else 0.0,
            },
        }
        self._close(handle, event)

    def _close_error(self, handle: RequestHandle, error: InferenceError) -> None:
        if handle.closed:
            return
        self._cancel_in_runner(handle)
        self._drop_handler(handle.id)
        handle.finished_at = time.monotonic()
        self._close(handle, error.as_event())

    def _close(self, handle: RequestHandle, event: dict) -> None:
        handle.closed = True
        handle.final = event
        handle.queue.put(event)
        self.handles.pop(handle.id, None)
        handle.done.set()

    def _cancel_in_runner(self, handle: RequestHandle) -> None:
        if handle.lane != "batch" or handle.runner_done:
            return
        if self.runner is not None:
            self.runner.cancel(handle.id)
        elif self.manager is not None:
            self.manager.cancel_request(handle.id)  # no-op if it already finished

    def _drop_handler(self, request_id: str) -> None:
        router = getattr(self.manager, "output_router", None)  # 5.24's router; guarded for older versions
        if router is not None:
            with router._lock:
                router.result_handlers.pop(request_id, None)

    def _watchdog(self) -> None:
        if self._closing:
            return
        if self.runner is not None:
            if not self.runner.is_running():
                self._rebuild(str(self.runner.fatal_error or "its thread stopped"))
            self.loop.call_later(WATCHDOG_SECONDS, self._watchdog)
            return
        manager = self.manager
        router = getattr(manager, "output_router", None)
        if router is not None:
            # outputs that arrive for a request after its handler was dropped (cancel, stop
            # string) land on the router's shared queue, which nothing else reads
            while not router.output_queue.empty():
                router.output_queue.get_nowait()
        if manager is not None and (_fatal_error(manager) is not None or not manager.is_running()):
            self._rebuild(str(_fatal_error(manager) or "its thread stopped"))
        self.loop.call_later(WATCHDOG_SECONDS, self._watchdog)

    def _rebuild(self, why: str) -> None:
        """Fail the batch requests of a dead manager and build a new one (loop thread)."""
        if self.runner is not None:  # a dead runner (or compute thread): everything it held is lost
            self.runner = None
            for handle in [h for h in self.handles.values() if h.lane == "batch"]:
                self._close_error(handle, EngineFailure(f"the generation engine failed ({why}) and was restarted; retry the request"))
            self.rebuilds += 1
            self._build_plain()
            return
        old, self.manager = self.manager, None
        for handle in [h for h in self.handles.values() if h.lane == "batch"]:
            if handle.token_ids or handle.id in getattr(getattr(old, "output_router", None), "result_handlers", {}):
                self._close_error(handle, EngineFailure(f"the generation engine failed ({why}) and was restarted; retry the request"))
        if old is not None:
            try:
                old.stop(block=True, timeout=5)
            except Exception:  # the dead manager's stop may itself fail; it is replaced regardless
                pass
        self.rebuilds += 1
        self._build_manager()

    # ------------------------------------------------------------------ observing

    def stats(self) -> dict:
        manager = self.manager
        running = waiting = 0
        kv_used = 0.0
        processor = getattr(manager, "batch_processor", None) if manager is not None else None
        if self.runner is not None:
            running, waiting, kv_used = self.runner.stats()
        elif processor is not None:
            try:  # read racily from another thread (and internals differ across versions): a stat, not a decision
                scheduler = processor.scheduler
                running = len(scheduler.active_requests)
                waiting = len(scheduler.waiting_requests) + manager.input_queue.qsize()
                kv_used = 1.0 - float(processor.cache.compute_free_capacity())
            except Exception:
                pass
        if self.lane is not None:
            running += int(self.lane.busy)
            waiting += self.lane.waiting
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - RATE_WINDOW_SECONDS:
            self._rate.popleft()
        tokens = sum(n for _, n in self._rate)
        return {
            "running": running,
            "waiting": waiting,
            "in_flight": len(self.handles),
            "kv_cache_used": round(max(0.0, min(1.0, kv_used)), 4),
            "kv_capacity_tokens": self.capacity_tokens,
            "tokens_per_s": round(tokens / RATE_WINDOW_SECONDS, 2),
            "requests_total": self.requests_total,
            "tokens_total": self.tokens_total,
            "rebuilds": self.rebuilds,
        }


def _fatal_error(manager):
    status = getattr(manager, "background_thread_status", None)
    return getattr(status, "fatal_error", None)


def _continuous_batching_config_class():
    """transformers' ContinuousBatchingConfig where this version has one (5.24 does; the GPU
    workers may run an older transformers)."""
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        return None
    return ContinuousBatchingConfig


def _init_parameters(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls).parameters)


def run_in_passing_thread(work):
    """Run `work` (heavy torch code) on a thread that ends with it; its result, or its error.

    Why: every thread that runs a parallel torch/oneDNN op keeps its own OpenMP pool until it
    exits, and libgomp throttles its workers' spinning once its threads outnumber the cores: they
    sleep between ops and wake late. On 2 cores a load on the caller's thread (which lives on: a
    Celery worker thread, a test's main thread) left the compute thread's oneDNN linears ~1.4x slower, and
    SmolLM2's batch-1 decode lost its whole oneDNN gain (measured: 60 linears 8.8 ms on the only
    pool, 12.3 ms beside another)."""
    result: list = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as error:  # re-raised on the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="passing-torch-work")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def quantize_dynamic_int8(model, device: str):
    """int8 dynamic quantisation of the Linear layers (CPU only): weights int8, activations
    quantised on the fly. Trades exact greedy parity with the fp32 model for speed."""
    if not device.startswith("cpu"):
        raise InvalidRequest("quantize", "int8-dynamic runs on CPU only")
    import torch

    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
