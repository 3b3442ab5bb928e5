"""The plain runner: the engine's own decode loop on plain KV caches (the CPU default; see
EngineConfig.runner). It runs one iteration at a time on the process's compute thread (shared
by every CPU engine of the process: compute_thread.py), two paths interleaved step by step:

- the solo path: a request that arrives while nothing else runs decodes as `generate` does (the
  model's forward on its own cache of batch 1, no padding, no mask, the same logits processors)
  and keeps that path until it ends, even when others arrive meanwhile. Its cache is a
  preallocated buffer written in place (`SequenceCache`) where generate's DynamicCache copies
  itself every step with torch.cat: the logits are bitwise the same (checked on the ~30M Llama
  and SmolLM2 over 60 steps), minus the copy. On Llama-shaped models with the engine's fused
  oneDNN projections each solo token runs decode_step.py's lean step instead of the forward
  (the same logits, bitwise, checked when the runner starts; +18% tokens/s on SmolLM2);
- the batch path: every other request is prefilled, packed with the others that arrived with it
  into one sequence (a block-diagonal causal mask, positions restarting per prompt: one forward
  with large matmuls instead of one small forward per prompt, 2x the prefill tokens/s here), its
  keys and values are copied into one row of a padded cache (`SlotCache`), and all rows decode
  together, one token per row per forward, with a 4D mask that hides each row's padding. Rows
  leave when they end (the last row moves into the hole) and waiting requests join between
  steps: continuous batching.

Why not transformers' continuous batching manager on CPU (profiled with py-spy on the 2-core CPU,
~30M Llama, 32 concurrent requests, transformers 5.25): without CUDA/XPU flash-attention the
manager has no decode fast path, so every step flattens all requests into one sequence, gathers
every request's keys and values out of the pages (index_select per layer: 12% of a step) and runs
each query token's attention over the keys of ALL requests under a block-diagonal mask (28%: 32x
the attention work at 32 requests), leaving the matmuls at 45% of the step. A padded batch reads
each row's own keys in place: no gather, attention over max_len keys per row; the matmuls are what
is left. With one request the manager was also slower than `generate` (0.84x on SmolLM2).
On CUDA the manager stays the default (CUDA graphs, flash kernels, block tables).

Memory: the padded cache holds rows x the longest row. A request is admitted when
(rows + 1) x the longest reservation (prompt + max new tokens) fits the KV budget, so a running
request never runs out of room; the buffers are allocated for the admitted batch at its first
join, grow ahead (2x, within the longest reservation) and are freed when the batch empties.

Only models whose layers all use full attention (no sliding window, no linear attention) run here:
EngineConfig.runner "auto" picks the manager for the others (`supports_model`).
"""
from __future__ import annotations

import collections
import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .compute_thread import ComputeThread
from .packed_attention import SEGMENTS_KWARG
from .packed_attention import install as install_packed_attention

log = logging.getLogger(__name__)

LENGTH_CHUNK = 64  # the padded cache's length is a multiple of this many tokens
# A request that wakes an idle runner waits this long for others sent with it (one client
# submitting a batch): together they start on the batch path instead of one solo + the rest.
BURST_WAIT_SECONDS = 0.002
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def supports_model(model) -> str | None:
    """None when the plain runner can serve `model`, else why not (a sentence)."""
    config = model.config.get_text_config()
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        return f"attention implementation {implementation!r} (the plain runner builds sdpa/eager masks)"
    layer_types = getattr(config, "layer_types", None) or []
    other = sorted({t for t in layer_types if t != "full_attention"})
    if other:
        return f"layer types {other} (the padded cache masks full attention only)"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "a sliding attention window"
    return None


@dataclass
class Job:
    """One request inside the runner. `handle` is the engine's (opaque here: its id, prompt_ids,
    max_new_tokens and sampling are read)."""

    handle: Any
    reserved: int  # prompt + max new tokens: what admission counts against the KV budget
    solo: bool = False
    cache: Any = None  # its SequenceCache (solo, or while prefilling)
    prefilled: int = 0  # prompt tokens already in the cache
    generated: list[int] = field(default_factory=list)
    picker: Any = None

    @property
    def id(self) -> str:
        return self.handle.id

    @property
    def length(self) -> int:
        """Tokens in this job's KV: the prompt part done plus every generated token but the last
        (the last one is the next step's input)."""
        return self.prefilled + max(0, len(self.generated) - 1)


class TokenPicker:
    """Chooses a row's next token from its fp32 logits as `generate` does: the same processors
    (sampling.logits_processors), then argmax (greedy) or a draw from the softmax. A sampled request
    draws from its own torch.Generator (seeded when the request has a seed): concurrent requests
    never share a random stream, so a seed reproduces whatever else runs."""

    def __init__(self, sampling, prompt_ids: list[int], device) -> None:
        import torch

        from .sampling import logits_processors

        self.processors = logits_processors(sampling)
        self.greedy = sampling.greedy
        self.prompt_ids = prompt_ids
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if sampling.seed is not None:
                self.generator.manual_seed(sampling.seed)
            else:
                self.generator.seed()

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: such rows are picked together, in one argmax over the batch."""
        return self.greedy and not self.processors

    def pick(self, scores, generated: list[int]) -> int:
        import torch

        if self.processors:
            ids = torch.tensor([self.prompt_ids + generated], device=scores.device)
            scores = self.processors(ids, scores)
        if self.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))


@functools.cache
def cache_classes():
    """(SequenceCache, SlotCache): transformers Cache subclasses, so models take them as their
    cache; defined on first use (transformers is imported lazily)."""
    import torch
    from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

    class SequenceLayer(DynamicLayer):
        """One layer of a single sequence's cache: a buffer [1, kv heads, capacity, head dim]
        written in place, `keys`/`values` being views of its filled part. (DynamicLayer appends
        with torch.cat: a copy of the whole cache at every step, ~10% of a ~30M Llama's step at
        250 tokens.)"""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = capacity
            self.length = 0
            self.key_buffer = self.value_buffer = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self.key_buffer is None or end > self.key_buffer.shape[2]:
                size = max(end, self.capacity, 2 * (0 if self.key_buffer is None else self.key_buffer.shape[2]))
                self.key_buffer = self._grown(self.key_buffer, key_states, size)
                self.value_buffer = self._grown(self.value_buffer, value_states, size)
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values

        def _grown(self, old, like, size: int):
            buffer = torch.empty((*like.shape[:2], size, like.shape[3]), dtype=like.dtype, device=like.device)
            if old is not None:
                buffer[:, :, : self.length] = old[:, :, : self.length]
            return buffer

    class SequenceCache(Cache):
        """One sequence's cache (the solo path, and prefills), preallocated for `capacity` tokens."""

        def __init__(self, num_layers: int, capacity: int) -> None:
            super().__init__(layers=[SequenceLayer(capacity) for _ in range(num_layers)])

    class SlotLayer(CacheLayerMixin):
        """One layer of the padded cache: keys/values [rows, kv heads, length, head dim]. A decode
        step writes each row's new key at that row's own position and returns the first `rows`
        rows up to the longest length, as views (no copy)."""

        is_sliding = False

        def __init__(self, owner) -> None:
            super().__init__()
            self.owner = owner

        def lazy_initialization(self, key_states, value_states) -> None:  # allocated by SlotCache.ensure
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            owner = self.owner
            rows = owner.step_rows
            self.keys[owner.row_index, :, owner.positions] = key_states[:, :, 0]
            self.values[owner.row_index, :, owner.positions] = value_states[:, :, 0]
            return self.keys[:rows, :, : owner.read_length], self.values[:rows, :, : owner.read_length]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.owner.read_length, 0

        def get_seq_length(self) -> int:
            return self.owner.read_length

        def get_max_length(self) -> int:
            return -1 if self.keys is None else self.keys.shape[2]

    class SlotCache(Cache):
        """The batch path's padded KV cache (a transformers Cache, so models take it as their cache)."""

        def __init__(self, num_layers: int) -> None:
            super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])
            self.rows_allocated = 0
            self.length_allocated = 0
            self.step_rows = 0
            self.read_length = 0
            self.row_index = None
            self.positions = None

        def ensure(self, rows: int, length: int, *, max_rows: int, max_tokens: int, like=None,
                   expect_rows: int = 0, expect_length: int = 0) -> None:
            """Room for `rows` rows of `length` tokens, grown by copying. Every growth zero-fills
            and copies the whole cache (88 ms of a 2.6 s run of 32 requests on the ~30M Llama when
            it grew a chunk at a time), so a growth reaches ahead: to `expect_rows` rows (the
            admitted batch), rows doubling beyond that (joins come one by one) within `max_rows`
            and `max_tokens`, and to twice `length` but no further than `expect_length` (the
            batch's longest reservation, already counted against the budget by admission),
            in LENGTH_CHUNK steps. `like` (a prefilled SequenceCache) gives the heads, head size,
            dtype and device of the first allocation."""
            import torch

            if rows <= self.rows_allocated and length <= self.length_allocated:
                return
            ahead = max(length, min(expect_length, 2 * length))
            new_length = max(self.length_allocated, -(-ahead // LENGTH_CHUNK) * LENGTH_CHUNK)
            doubled = min(2 * self.rows_allocated or 4, max_rows, max_tokens // new_length)
            new_rows = max(rows, expect_rows, self.rows_allocated, doubled)
            for index, layer in enumerate(self.layers):
                for name in ("keys", "values"):
                    old = getattr(layer, name)
                    sample = old if old is not None else getattr(like.layers[index], name)
                    # zeros, not empty: a padding slot is masked out, but 0 x NaN would still be NaN
                    grown = torch.zeros((new_rows, sample.shape[1], new_length, sample.shape[3]),
                                        dtype=sample.dtype, device=sample.device)
                    if old is not None:
                        grown[: old.shape[0], :, : old.shape[2]] = old
                    setattr(layer, name, grown)
                layer.is_initialized = True
            self.rows_allocated, self.length_allocated = new_rows, new_length

        def put(self, row: int, source, start: int = 0, length: int | None = None) -> None:
            """Copy tokens [start, start + length) of a prefilled SequenceCache (a packed
            prefill holds several prompts) into `row`."""
            for layer, src in zip(self.layers, source.layers):
                end = src.keys.shape[2] if length is None else start + length
                layer.keys[row, :, : end - start] = src.keys[0, :, start:end]
                layer.values[row, :, : end - start] = src.values[0, :, start:end]

        def move(self, source: int, target: int, length: int) -> None:
            for layer in self.layers:
                layer.keys[target, :, :length] = layer.keys[source, :, :length]
                layer.values[target, :, :length] = layer.values[source, :, :length]

        def release(self) -> None:
            for layer in self.layers:
                layer.keys = layer.values = None
                layer.is_initialized = False
            self.rows_allocated = self.length_allocated = 0

    return SequenceCache, SlotCache


class PlainRunner:
    """An engine's generation loop, one iteration per turn on the compute thread.
    `on_tokens(updates)` gets [(handle, generated tokens, finished)] once per phase of an
    iteration (prefill, solo step, batch step); `on_failure(handles, error)` gets the requests a
    failed forward took down (all in flight: their caches may be half written). Both are called
    on the compute thread."""

    def __init__(self, model, *, eos_ids, capacity_tokens: int, max_concurrent: int, max_prefill_tokens: int,
                 on_tokens: Callable, on_failure: Callable, warm_up: Callable | None = None,
                 lean_decode: bool = False) -> None:
        import inspect

        self.model = model
        self.eos_ids = set(eos_ids)
        self.capacity_tokens = capacity_tokens
        self.max_concurrent = max_concurrent
        self.max_prefill_tokens = max_prefill_tokens
        self.on_tokens = on_tokens
        self.on_failure = on_failure
        self.warm_up = warm_up  # run at the first turn (kernel set-up a first burst would pay)
        # the solo path's decode step: decode_step.py's, when asked for and verified at the first
        # turn, else the model's own forward
        self.lean_decode = lean_decode
        self.decode_step: Callable | None = None
        self.set_up = threading.Event()  # set once the first turn has done the above
        if warm_up is None and not lean_decode:
            self.set_up.set()
        # transformers 5.x renamed the forward's past_key_values to cache (the old name warns)
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
        if self.sdpa:
            install_packed_attention()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: collections.deque[Job] = collections.deque()
        self.prefilling: list[Job] = []
        self.solo: Job | None = None
        self.rows: list[Job] = []
        self.num_layers = model.config.get_text_config().num_hidden_layers
        self.sequence_cache, slot_cache = cache_classes()
        self.slots = slot_cache(self.num_layers)
        self.failures = 0
        self.fatal_error: BaseException | None = None
        self.compute: ComputeThread | None = None
        self.stopped = threading.Event()

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        """Join the process's compute thread (compute_thread.py: one OpenMP pool per process)."""
        self.compute = ComputeThread.attach(self)

    def submit(self, handle) -> None:
        self.inbox.put(("add", handle))
        self.compute.notify()

    def cancel(self, request_id: str) -> None:
        self.inbox.put(("cancel", request_id))
        self.compute.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the compute thread to drop this runner; wait (at most `timeout`) until it has, or
        until the runner broke or the thread died (neither ever takes another turn)."""
        self.inbox.put(("stop", None))
        if self.compute is None:
            return
        self.compute.notify()
        self._wait_for(self.stopped, timeout)

    def wait_set_up(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the first turn's set-up, so a request sent after start()
        is served at full speed and no caller sees the set-up's forwards."""
        self._wait_for(self.set_up, timeout)

    def _wait_for(self, event: threading.Event, timeout: float) -> None:
        """Wait (at most `timeout`) for `event`, the compute thread's to set; return early once
        the runner broke or the thread died (neither ever takes another turn)."""
        deadline = time.monotonic() + timeout
        while not event.wait(0.01):
            if self.fatal_error is not None or not self.compute.is_alive() or time.monotonic() > deadline:
                return

    def is_running(self) -> bool:
        return (self.compute is not None and self.compute.is_alive() and self.fatal_error is None
                and not self.stopped.is_set())

    def stats(self) -> tuple[int, int, float]:
        """(running, waiting, KV used as a fraction of the budget), read racily: a stat."""
        jobs = [j for j in (self.solo, *self.rows, *self.prefilling) if j is not None]
        used = sum(j.length for j in jobs)
        return len(jobs), len(self.pending) + self.inbox.qsize(), used / max(1, self.capacity_tokens)

    # ------------------------------------------------------------------ the compute thread

    def wants_turn(self) -> bool:
        return not self.set_up.is_set() or not self.inbox.empty() or self._busy()

    def take_turn(self) -> bool:
        """One iteration on the compute thread (in inference mode there); False once stopped."""
        if not self.set_up.is_set():
            try:
                self._set_up()
            finally:
                self.set_up.set()
        was_idle = not self._busy()
        if not self._drain():
            self.stopped.set()
            return False
        if was_idle and self.pending:
            # woken by a request: wait a moment for others sent with it (one client submitting
            # a batch), so they start together on the batch path instead of one solo + the rest
            time.sleep(BURST_WAIT_SECONDS)
            if not self._drain():
                self.stopped.set()
                return False
        if self._busy():
            try:
                self._iterate()
            except Exception as error:  # a failed forward: fail what was in flight, keep serving
                self._fail_in_flight(error)
        return True

    def _set_up(self) -> None:
        """The first turn: the kernel warm-up, and the lean decode step if it reproduces the model's
        forward. Neither failing stops the runner: each is only a speed-up."""
        if self.warm_up is not None:
            try:
                self.warm_up()
            except Exception:  # only a head start: the first forwards build what it could not
                log.warning("the engine's kernel warm-up failed; serving without it", exc_info=True)
        if self.lean_decode:
            from . import decode_step

            try:
                step, why_not = decode_step.build(self.model)
                if step is not None:
                    why_not = decode_step.verify(step, self._forward, lambda size: self.sequence_cache(self.num_layers, size),
                                                 self.model.config.get_text_config().vocab_size)
            except Exception as error:  # a model shaped unlike the architectures it knows
                step, why_not = None, f"{type(error).__name__}: {error}"
            if why_not is None:
                self.decode_step = step
            else:
                log.info("solo decode on the model's own forward: %s", why_not)

    def _busy(self) -> bool:
        return bool(self.pending or self.prefilling or self.rows or self.solo)

    def _drain(self) -> bool:
        """Take what callers sent, in order (a cancel then a new request with the same id drops
        only the old one); False once asked to stop."""
        while True:
            try:
                kind, value = self.inbox.get_nowait()
            except queue.Empty:
                return True
            if kind == "stop":
                return False
            if kind == "add":
                self.pending.append(Job(value, reserved=len(value.prompt_ids) + value.max_new_tokens))
            else:
                self._drop(value)

    def _drop(self, request_id: str) -> None:
        """Forget a cancelled (or stopped) request wherever it is."""
        self.pending = collections.deque(j for j in self.pending if j.id != request_id)
        self.prefilling = [j for j in self.prefilling if j.id != request_id]
        if self.solo is not None and self.solo.id == request_id:
            self.solo = None
        for index in reversed(range(len(self.rows))):
            if self.rows[index].id == request_id:
                self._remove_row(index)

    def _iterate(self) -> None:
        self._admit()
        self._prefill()
        if self.solo is not None:
            self._solo_step()
        if self.rows:
            self._batch_step()

    def _admit(self) -> None:
        """Move waiting requests in (first come, first served: the first that does not fit stops
        the rest). Alone on an idle runner, a request takes the solo path."""
        while self.pending:
            job = self.pending[0]
            running = int(self.solo is not None) + len(self.rows) + len(self.prefilling)
            if running >= self.max_concurrent:
                return
            if running == 0 and len(self.pending) == 1:
                job.solo = True
            else:
                batch = [j for j in (*self.rows, *self.prefilling) if not j.solo]
                solo = [j for j in (self.solo, *self.prefilling) if j is not None and j.solo]
                longest = max([job.reserved, *(j.reserved for j in batch)])
                if sum(j.reserved for j in solo) + (len(batch) + 1) * longest > self.capacity_tokens and running:
                    return
            self.pending.popleft()
            job.handle.path = "solo" if job.solo else "batch"
            self.prefilling.append(job)

    def _forward(self, input_ids, cache, logits_to_keep=1, **kwargs):
        """fp32 scores [batch, kept positions, vocab] (generate's scores are fp32 too)."""
        output = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=logits_to_keep,
                            **{self.cache_kwarg: cache}, **kwargs)
        return output.logits.float()

    def _mask(self, visible):
        """A boolean [.., queries, keys] visibility as the attention implementation wants it, 4D."""
        import torch

        if self.sdpa:
            return visible[:, None]
        # eager attention adds the mask to the scores
        mask = torch.zeros(visible.shape, dtype=self.model.dtype, device=visible.device)
        return mask.masked_fill(~visible, torch.finfo(self.model.dtype).min)[:, None]

    def _prefill(self) -> None:
        """Prefill waiting jobs, at most max_prefill_tokens prompt tokens per iteration. Batch jobs
        whose whole prompt fits go into one packed forward; a solo job (generate's own prefill) and
        a prompt longer than what is left go alone, a long one in chunks, so running requests
        keep decoding between them."""
        budget = self.max_prefill_tokens
        pack, alone = [], []
        for job in self.prefilling:
            remaining = len(job.handle.prompt_ids) - job.prefilled
            fits = remaining <= budget
            if fits and not job.solo and job.cache is None:
                pack.append(job)
            elif (pack or alone) and not fits:
                break  # it waits for the next iteration, whole (a partial chunk would be a forward of its own)
            else:  # the solo job, a chunked prefill under way, or a prompt longer than the whole budget
                alone.append((job, min(remaining, budget)))
            budget -= min(remaining, budget)
            if budget <= 0:
                break
        if len(pack) == 1:  # nothing to pack it with
            job = pack.pop()
            alone.append((job, len(job.handle.prompt_ids)))
        updates = []
        for job, size in alone:
            self._prefill_alone(job, size, updates)
        if pack:
            self._prefill_packed(pack, updates)
        if updates:
            self.on_tokens(updates)

    def _start(self, job: Job) -> None:
        if job.picker is None:
            job.picker = TokenPicker(job.handle.sampling, job.handle.prompt_ids, self.model.device)

    def _prefill_alone(self, job: Job, size: int, updates: list) -> None:
        import torch

        self._start(job)
        prompt = job.handle.prompt_ids
        if job.cache is None:  # the solo job keeps it to decode on: room for all it may generate
            job.cache = self.sequence_cache(self.num_layers, job.reserved if job.solo else len(prompt))
        chunk = prompt[job.prefilled : job.prefilled + size]
        scores = self._forward(torch.tensor([chunk], device=self.model.device), job.cache)
        job.prefilled += len(chunk)
        if job.prefilled == len(prompt):
            self._first_token(job, scores[:, -1], job.cache, 0, updates)

    def _prefill_packed(self, jobs: list[Job], updates: list) -> None:
        import torch

        device = self.model.device
        prompts = [job.handle.prompt_ids for job in jobs]
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        segment = torch.repeat_interleave(torch.arange(len(prompts), device=device), lengths)
        ends = torch.cumsum(lengths, 0)
        starts = ends - lengths
        positions = torch.arange(int(ends[-1]), device=device) - starts[segment]
        index = torch.arange(int(ends[-1]), device=device)
        visible = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
        cache = self.sequence_cache(self.num_layers, int(ends[-1]))
        input_ids = torch.tensor([[token for prompt in prompts for token in prompt]], device=device)
        extra = {}
        if self.sdpa:  # each prompt attends over its own slice (packed_attention); the mask stays as the fallback
            extra[SEGMENTS_KWARG] = list(zip(starts.tolist(), ends.tolist()))
        scores = self._forward(input_ids, cache, logits_to_keep=ends - 1, attention_mask=self._mask(visible[None]),
                               position_ids=positions[None], **extra)
        for number, job in enumerate(jobs):
            self._start(job)
            job.prefilled = len(prompts[number])
            self._first_token(job, scores[:, number], cache, int(starts[number]), updates)

    def _first_token(self, job: Job, scores, cache, start: int, updates: list) -> None:
        """The prompt is in `cache` (from `start`): pick the first token, then decode on."""
        self.prefilling.remove(job)
        job.generated.append(job.picker.pick(scores, []))
        finished = self._finished(job)
        updates.append((job.handle, list(job.generated), finished))
        if finished:
            return
        if job.solo:
            self.solo = job
            return
        row = len(self.rows)
        batch = [*self.rows, job, *(j for j in self.prefilling if not j.solo)]
        # room for the longest prompt of the batch now: the rows still prefilling join in a moment
        length = max(job.length, *(len(j.handle.prompt_ids) for j in batch)) + 1
        self.slots.ensure(row + 1, length, max_rows=self.max_concurrent, max_tokens=self.capacity_tokens, like=cache,
                          expect_rows=len(batch), expect_length=max(j.reserved for j in batch))
        self.slots.put(row, cache, start, job.prefilled)
        job.cache = None  # its keys and values now live in the row
        self.rows.append(job)

    def _solo_step(self) -> None:
        import torch

        job = self.solo
        if self.decode_step is not None:
            scores = self.decode_step(job.generated[-1], job.cache, job.length)
        else:
            scores = self._forward(torch.tensor([[job.generated[-1]]], device=self.model.device), job.cache)[:, -1]
        job.generated.append(job.picker.pick(scores, job.generated))
        finished = self._finished(job)
        if finished:
            self.solo = None
        self.on_tokens([(job.handle, list(job.generated), finished)])

    def _remove_row(self, index: int) -> None:
        last = len(self.rows) - 1
        if index != last:
            self.slots.move(last, index, self.rows[last].length)
            self.rows[index] = self.rows[last]
        self.rows.pop()
        if not self.rows:
            self.slots.release()  # an idle replica holds no padded cache

    def _batch_step(self) -> None:
        import torch

        device = self.model.device
        rows = self.rows
        positions = torch.tensor([job.length for job in rows], device=device)
        read_length = int(positions.max()) + 1
        self.slots.ensure(len(rows), read_length, max_rows=self.max_concurrent, max_tokens=self.capacity_tokens,
                          expect_length=max(job.reserved for job in rows))
        slots = self.slots
        slots.step_rows, slots.read_length = len(rows), read_length
        slots.row_index = torch.arange(len(rows), device=device)
        slots.positions = positions
        visible = torch.arange(read_length, device=device)[None, None, :] <= positions[:, None, None]
        input_ids = torch.tensor([[job.generated[-1]] for job in rows], device=device)
        scores = self._forward(input_ids, slots, attention_mask=self._mask(visible), position_ids=positions[:, None])[:, -1]
        greedy = scores.argmax(dim=-1).tolist()
        updates, done = [], []
        for index, job in enumerate(rows):
            picker = job.picker
            token = greedy[index] if picker.plain_greedy else picker.pick(scores[index : index + 1], job.generated)
            job.generated.append(token)
            finished = self._finished(job)
            updates.append((job.handle, list(job.generated), finished))
            if finished:
                done.append(index)
        for index in reversed(done):
            self._remove_row(index)
        self.on_tokens(updates)

    def _finished(self, job: Job) -> bool:
        return job.generated[-1] in self.eos_ids or len(job.generated) >= job.handle.max_new_tokens

    def _fail_in_flight(self, error: Exception) -> None:
        jobs = [j for j in (self.solo, *self.rows, *self.prefilling) if j is not None]
        self.solo, self.rows, self.prefilling = None, [], []
        self.slots.release()
        self.failures += 1
        self.on_failure([j.handle for j in jobs], error)
