"""The `serve` core job: one replica of a deployment. It loads the model version into a backend,
then serves the deployment's Redis request stream (protocol.py) until its job is stopped.

Loop, per iteration (a few tens of milliseconds):
  claim up to the free capacity with XREADGROUP → submit to the engine; pump each request's
  engine events into its events stream, coalesced (~30 ms: one XADD per request per flush, not
  one per token); honour cancels (pubsub channel, and the cancel key checked at claim and
  periodically); fail requests past their deadline; every few seconds XCLAIM the pending
  requests of dead replicas (hash expired) and report metrics.
A heartbeat thread keeps the replica hash alive from the first moment (loading can outlast the
hash's TTL). On stop: no more claims, in-flight requests get drain_seconds to finish (then an
error), the hash is deleted and JobCancelled is raised.
"""
from __future__ import annotations

import json
import os
import queue
import socket
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field

from workers.core.paths import MODELS, readable
from workers.core.reporting import JobCancelled, announce_ready
from workers.core.specs import SpecError

from . import protocol
from .errors import InferenceError

ACTIVE_POLL_SECONDS = 0.005
KEEP_SAMPLES = 200  # recent requests kept for the ttft / tpot percentiles
KV_SAMPLE_SECONDS = 0.2  # KV use is sampled this often while requests run (the report keeps the peak)


@dataclass
class ReplicaSpec:
    deployment_id: int = 0
    replica_id: str = ""  # "" → host-pid-random
    redis_url: str = ""  # "" → the worker's REDIS_URL (the studio never stores the broker URL in params)
    model_dir: str = ""
    adapter_dir: str = ""  # a LoRA adapter folder served on model_dir (its base)
    merge_adapter: bool = False  # merge it into the base at load (faster) instead of peft on top
    served_name: str = ""
    version_label: str = ""
    backend: str = "builtin"
    chat_template: str = ""
    dtype: str = "auto"
    device: str = "auto"
    kv_cache_bytes: int = 0
    num_blocks: int = 0
    block_size: int = 32
    max_batch_tokens: int = 0
    max_new_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_concurrent: int = 16
    exclusive_lane: str = "copy"
    quantize: str = "none"
    threads: int = 0
    cuda_graphs: str = "auto"
    heartbeat_seconds: float = 2.0
    claim_idle_seconds: float = 5.0
    drain_seconds: float = 30.0
    metrics_every_seconds: float = 5.0
    coalesce_ms: int = 30

    def validate(self) -> None:
        if self.deployment_id < 1:
            raise SpecError("deployment_id", "must be a positive deployment id")
        if not self.model_dir:
            raise SpecError("model_dir", "is required (the model version's folder)")
        # A replica reads only registry versions (a bug in a service must not serve other files).
        readable("model_dir", self.model_dir, MODELS)
        if self.adapter_dir:
            readable("adapter_dir", self.adapter_dir, MODELS)
        if not 0.1 <= self.heartbeat_seconds <= protocol.REPLICA_TTL_SECONDS / 2:
            raise SpecError("heartbeat_seconds", f"must be between 0.1 and {protocol.REPLICA_TTL_SECONDS / 2}")
        for name in ("claim_idle_seconds", "drain_seconds", "metrics_every_seconds"):
            if getattr(self, name) < 0:
                raise SpecError(name, "must be >= 0")
        if not 1 <= self.coalesce_ms <= 1000:
            raise SpecError("coalesce_ms", "must be between 1 and 1000")
        self.engine_config().validate()

    def broker_url(self) -> str:
        """The spec's URL (command line, tests) or the worker's REDIS_URL, read at run time."""
        url = self.redis_url or os.environ.get("REDIS_URL", "")
        if not url:
            raise SpecError("redis_url", "is not set and the worker has no REDIS_URL in its environment")
        return url

    def engine_config(self):
        from .engine import EngineConfig

        return EngineConfig(
            dtype=self.dtype, device=self.device, kv_cache_bytes=self.kv_cache_bytes, num_blocks=self.num_blocks,
            block_size=self.block_size, max_batch_tokens=self.max_batch_tokens,
            max_new_tokens_cap=self.max_new_tokens_cap, default_max_tokens=self.default_max_tokens,
            max_concurrent=self.max_concurrent, exclusive_lane=self.exclusive_lane, quantize=self.quantize,
            chat_template=self.chat_template, threads=self.threads, cuda_graphs=self.cuda_graphs,
        )


@dataclass
class Active:
    """A request this replica claimed and is running."""

    entry_id: str
    request_id: str
    handle: object
    created: float
    deadline: float | None
    claimed_at: float  # wall clock
    text: str = ""  # coalesced, not yet sent
    tokens: int = 0  # in `text`, not yet sent
    sent_tokens: int = 0  # completion tokens sent so far (usage when the request ends in an error)
    last_flush: float = 0.0
    first_sent_at: float | None = None


@dataclass
class Counters:
    served: int = 0
    failed: int = 0
    ttft: list = field(default_factory=list)
    tpot: list = field(default_factory=list)


class Replica:
    def __init__(self, spec: ReplicaSpec, reporter) -> None:
        import redis

        self.spec = spec
        self.reporter = reporter
        self.id = spec.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # A consumer name per incarnation: a restarted replica (same id, same job) must not
        # inherit the pending entries of the process that died, or they would never be reclaimed.
        self.consumer = protocol.consumer_name(self.id, uuid.uuid4().hex[:8])
        self.redis = redis.Redis.from_url(spec.broker_url(), decode_responses=True, socket_timeout=None)
        self.stream = protocol.requests_stream(spec.deployment_id)
        self.key = protocol.replica_key(spec.deployment_id, self.id)
        self.index = protocol.replica_index(spec.deployment_id)
        self.active: dict[str, Active] = {}
        self.counters = Counters()
        self.backend = None
        self.state = "loading"
        self.metrics: dict = {}
        self.engine_config = spec.engine_config()
        self._stop_heartbeat = threading.Event()
        self._wake = threading.Event()  # an engine event the loop should pump now (_watch)
        self._metric_step = 0
        self._kv_peak = 0.0  # the highest KV use sampled since the last metrics report

    # ---------------------------------------------------------------- lifecycle

    def run(self) -> dict:
        from .backends import create_backend

        self._create_group()
        self._write_hash()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="replica-heartbeat", daemon=True)
        heartbeat.start()
        pubsub = None
        try:
            self.reporter.progress(0.0, f"Loading {self.spec.served_name or self.spec.model_dir}")
            self.backend = create_backend(
                self.spec.backend, self.engine_config, self.spec.model_dir,
                adapter_dir=self.spec.adapter_dir, merge_adapter=self.spec.merge_adapter,
            )
            self.backend.load()
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(protocol.cancel_channel(self.spec.deployment_id))
            self.state = "ready"
            self._write_hash()
            self.reporter.log(f"replica {self.id} ready: {self.backend.stats().get('kv_capacity_tokens')} KV tokens")
            announce_ready(self.reporter)
            self._serve(pubsub)
            self._drain(pubsub)
            raise JobCancelled("replica stopped on request")
        finally:
            self._stop_heartbeat.set()
            heartbeat.join(timeout=5)
            if pubsub is not None:
                pubsub.close()
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(self.key)
                pipe.srem(self.index, self.id)
                pipe.execute()
            if self.backend is not None:
                self.backend.close()

    def _create_group(self) -> None:
        import redis

        try:
            self.redis.xgroup_create(self.stream, protocol.REPLICA_GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _serve(self, pubsub) -> None:
        next_reclaim = next_metrics = next_cancel_scan = next_kv_sample = time.monotonic()
        while not self.reporter.should_stop():
            self._claim_new()
            self._iteration(pubsub)
            if hasattr(self.backend, "check"):  # a backend with a child process (vllm): raises once it died
                self.backend.check()
            now = time.monotonic()
            if now >= next_reclaim:
                self._reclaim_dead()
                next_reclaim = now + max(self.spec.heartbeat_seconds, 0.2)
            if now >= next_cancel_scan:
                self._scan_cancel_keys()
                next_cancel_scan = now + 0.5
            if self.active and now >= next_kv_sample:
                # Sampled between reports: a request shorter than the report interval would
                # otherwise fall between two reports and the chart would show no KV use at all.
                self._kv_peak = max(self._kv_peak, float(self.backend.stats().get("kv_cache_used", 0.0)))
                next_kv_sample = now + KV_SAMPLE_SECONDS
            if now >= next_metrics:
                self._report_metrics()
                next_metrics = now + max(self.spec.metrics_every_seconds, 0.5)

    def _drain(self, pubsub) -> None:
        self.state = "draining"
        self._write_hash()
        self.reporter.log(f"draining {len(self.active)} request(s) for up to {self.spec.drain_seconds} s")
        deadline = time.monotonic() + self.spec.drain_seconds
        while self.active and time.monotonic() < deadline:
            self._iteration(pubsub, block_s=0.02)
        for active in list(self.active.values()):
            active.handle.cancel()
            self._send_final(active, {"type": "error", "status": 503, "code": "replica_stopped",
                                      "message": "the replica serving this request was stopped; retry the request"})
        self._report_metrics()

    def _iteration(self, pubsub, block_s: float = 0.0) -> None:
        """Cancels, deadlines, and pumping engine events into the events streams."""
        while True:
            message = pubsub.get_message(timeout=0)
            if message is None:
                break
            if message.get("type") == "message":
                self._cancel(str(message["data"]))
        now = time.time()
        for active in list(self.active.values()):
            if active.deadline is not None and now > active.deadline:
                active.handle.cancel()
                self._send_final(active, {"type": "error", "status": 504, "code": "deadline_exceeded",
                                          "message": "the request passed its deadline before it finished"})
        self._pump()
        if block_s:
            time.sleep(block_s)

    # ---------------------------------------------------------------- claiming

    def _claim_new(self) -> None:
        free = self.spec.max_concurrent - len(self.active)
        if self.active:
            # Requests are running: look for new ones without blocking and come back to pump
            # tokens soon. (Redis enforces BLOCK timeouts only at its `hz` tick, 100 ms by
            # default, so `BLOCK 10` held the first tokens back ~100 ms.) A request's first
            # tokens and its end wake the wait at once (_watch): they go out without a poll's delay.
            self._wake.wait(ACTIVE_POLL_SECONDS)
            self._wake.clear()
            if free <= 0:
                return
            reply = self.redis.xreadgroup(protocol.REPLICA_GROUP, self.consumer, {self.stream: ">"}, count=free)
        else:
            # Idle: block; a new entry wakes the read at once.
            reply = self.redis.xreadgroup(protocol.REPLICA_GROUP, self.consumer, {self.stream: ">"}, count=free, block=100)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._start(entry_id, fields)

    def _start(self, entry_id: str, fields: dict | None) -> None:
        from .engine import request_from_payload

        if not fields or "request" not in fields:  # deleted meanwhile, or not ours to read
            self._ack(entry_id)
            return
        try:
            payload = protocol.decode(fields["request"])
            request_id = str(payload["id"])
        except (ValueError, KeyError, TypeError):
            self.reporter.log(f"dropping malformed request entry {entry_id}", "warning")
            self._ack(entry_id)
            return
        if request_id in self.active:  # delivered twice (reclaimed from ourselves): already running
            return
        now = time.time()
        deadline = payload.get("deadline")
        active = Active(entry_id, request_id, None, float(payload.get("created") or now),
                        float(deadline) if isinstance(deadline, (int, float)) else None, claimed_at=now)
        if self.redis.exists(protocol.cancel_key(request_id)):
            self._send_final(active, self._end_without_output(active, "cancelled"))
            return
        if active.deadline is not None and now > active.deadline:
            self._send_final(active, {"type": "error", "status": 504, "code": "deadline_exceeded",
                                      "message": "the request waited past its deadline before a replica took it"})
            return
        try:
            request = request_from_payload(payload, self.engine_config)
            active.handle = self.backend.submit(request)
            self._watch(active)
        except InferenceError as error:
            self._send_final(active, error.as_event())
            return
        except Exception as error:  # never let one request crash the replica
            self._send_final(active, {"type": "error", "status": 500, "code": "engine_error", "message": str(error)})
            return
        self.active[request_id] = active
        active.last_flush = time.monotonic()
        self._xadd(request_id, {"type": "start", "replica": self.id, "consumer": self.consumer,
                                "prompt_tokens": active.handle.prompt_tokens})

    def _watch(self, active: Active) -> None:
        """Wake the serving loop when the engine queues this request's first tokens or its end
        (later tokens are coalesced anyway: they wait for the poll). The backends' handles
        queue their events on a queue.Queue from the engine's thread and offer no callback, so
        the handle's `put` is wrapped; a handle without such a queue is simply polled."""
        events = getattr(active.handle, "queue", None)
        if not isinstance(events, queue.Queue):
            return
        put, wake = events.put, self._wake

        def put_and_wake(event, *args, **kwargs):
            put(event, *args, **kwargs)
            if active.first_sent_at is None or event.get("type") != "delta":
                wake.set()

        events.put = put_and_wake

    def _end_without_output(self, active: Active, reason: str) -> dict:
        return {"type": "end", "finish_reason": reason, "text": "", "tool_calls": None,
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "timing": {"queue_s": round(active.claimed_at - active.created, 4), "ttft_s": None,
                           "engine_ttft_s": None, "decode_s": 0.0}}

    # ---------------------------------------------------------------- dead replicas

    def _consumer_alive(self, consumer: str, cache: dict[str, bool]) -> bool:
        """Alive: its replica's hash exists, names this incarnation (a name from before
        incarnations counts while the hash names none), and was renewed within the dead time
        (protocol.dead_after: the hash's TTL shows its last beat on the Redis clock)."""
        if consumer not in cache:
            replica_id = protocol.replica_of_consumer(consumer)
            key = protocol.replica_key(self.spec.deployment_id, replica_id)
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.pttl(key)
                pipe.hmget(key, "consumer", "heartbeat_seconds")
                ttl_ms, (current, beat) = pipe.execute()
            cache[consumer] = (ttl_ms != -2 and (current or replica_id) == consumer
                               and not protocol.missed_beats(ttl_ms, beat))
        return cache[consumer]

    def _reclaim_dead(self) -> None:
        """XCLAIM the pending requests of dead consumers, then drop the dead consumers that hold
        nothing any more (their entries would otherwise count in XLEN forever: false 429s)."""
        free = self.spec.max_concurrent - len(self.active)
        idle_ms = int(self.spec.claim_idle_seconds * 1000)
        alive: dict[str, bool] = {}
        if free > 0:
            pending = self.redis.xpending_range(self.stream, protocol.REPLICA_GROUP, min="-", max="+", count=100, idle=idle_ms)
            for item in pending:
                consumer = item["consumer"]
                if consumer == self.consumer or self._consumer_alive(consumer, alive):
                    continue
                if free <= 0:
                    break
                claimed = self.redis.xclaim(self.stream, protocol.REPLICA_GROUP, self.consumer, idle_ms, [item["message_id"]])
                for entry_id, fields in claimed:
                    free -= 1
                    self._resume(entry_id, fields, consumer)
        for info in self.redis.xinfo_consumers(self.stream, protocol.REPLICA_GROUP):
            name = info["name"]
            if name != self.consumer and not info.get("pending") and not self._consumer_alive(name, alive):
                self.redis.xgroup_delconsumer(self.stream, protocol.REPLICA_GROUP, name)

    def _resume(self, entry_id: str, fields: dict | None, dead: str) -> None:
        """A dead replica's request: finished → just ack; partly streamed → 502; else run it."""
        try:
            request_id = str(protocol.decode(fields["request"])["id"])
        except (ValueError, KeyError, TypeError):
            self._ack(entry_id)
            return
        events = [protocol.decode(f["event"]) for _id, f in self.redis.xrange(protocol.events_stream(request_id))]
        kinds = [event.get("type") for event in events]
        if "end" in kinds or "error" in kinds:
            self._ack(entry_id)
        elif "delta" in kinds:
            self.reporter.log(f"request {request_id}: replica {dead} died mid-stream", "warning")
            active = Active(entry_id, request_id, None, time.time(), None, time.time())
            # What the dead replica made, from what it sent (the web counts it against the quota).
            active.sent_tokens = sum(int(e.get("tokens") or 0) for e in events if e.get("type") == "delta")
            prompt = next((int(e.get("prompt_tokens") or 0) for e in events if e.get("type") == "start"), 0)
            self._send_final(active, {"type": "error", "status": 502, "code": "replica_lost",
                                      "message": "the replica serving this request stopped mid-answer; retry the request"},
                             prompt_tokens=prompt)
        else:
            self.reporter.log(f"request {request_id}: rerunning it (replica {dead} died before answering)")
            self._start(entry_id, fields)

    # ---------------------------------------------------------------- events

    def _cancel(self, request_id: str) -> None:
        active = self.active.get(request_id)
        if active is not None:
            active.handle.cancel()

    def _scan_cancel_keys(self) -> None:
        if not self.active:
            return
        ids = list(self.active)
        with self.redis.pipeline(transaction=False) as pipe:
            for request_id in ids:
                pipe.exists(protocol.cancel_key(request_id))
            flags = pipe.execute()
        for request_id, flag in zip(ids, flags):
            if flag:
                self._cancel(request_id)

    def _pump(self) -> None:
        now = time.monotonic()
        window = self.spec.coalesce_ms / 1000
        for active in list(self.active.values()):
            final = None
            for event in active.handle.poll():
                if event["type"] == "delta":
                    active.text += event["text"]
                    active.tokens += event["tokens"]
                else:
                    final = event
            if final is not None:
                self._flush(active)
                self._send_final(active, final)
            elif active.tokens and (active.first_sent_at is None or now - active.last_flush >= window):
                # The first tokens go out at once (time to first token is what users feel);
                # later ones are coalesced into one XADD per window.
                self._flush(active)

    def _flush(self, active: Active) -> None:
        if not active.text and not active.tokens:
            return
        if active.first_sent_at is None and active.text:
            active.first_sent_at = time.time()
        self._xadd(active.request_id, {"type": "delta", "text": active.text, "tokens": active.tokens})
        active.sent_tokens += active.tokens
        active.text, active.tokens, active.last_flush = "", 0, time.monotonic()

    def _send_final(self, active: Active, event: dict, prompt_tokens: int | None = None) -> None:
        """Close the request with its one final event. Every final event carries `usage` (an
        error too: the tokens made until then), so the web counts them on every end path."""
        if event["type"] != "end" and "usage" not in event:
            if prompt_tokens is None:
                prompt_tokens = active.handle.prompt_tokens if active.handle is not None else 0
            completion = active.sent_tokens + active.tokens
            event = {**event, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                        "total_tokens": prompt_tokens + completion}}
        if event["type"] == "end":
            handle = active.handle
            first = active.first_sent_at
            timing = dict(event.get("timing") or {})
            timing["queue_s"] = round(active.claimed_at - active.created, 4)
            timing["ttft_s"] = round(first - active.created, 4) if first else None
            event = {**event, "timing": timing}
            if handle is not None:
                self.counters.served += 1
                if timing.get("engine_ttft_s") is not None:
                    self.counters.ttft.append(timing["engine_ttft_s"])
                completion = event["usage"]["completion_tokens"]
                if completion > 1 and timing.get("decode_s"):
                    self.counters.tpot.append(timing["decode_s"] / (completion - 1))
                del self.counters.ttft[:-KEEP_SAMPLES], self.counters.tpot[:-KEEP_SAMPLES]
        else:
            self.counters.failed += 1
        self._xadd(active.request_id, event)
        self.active.pop(active.request_id, None)
        self._ack(active.entry_id)

    def _xadd(self, request_id: str, event: dict) -> None:
        key = protocol.events_stream(request_id)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, {"event": protocol.encode(event)})
            pipe.expire(key, protocol.EVENT_TTL_SECONDS)
            pipe.execute()

    def _ack(self, entry_id: str) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, protocol.REPLICA_GROUP, entry_id)
            pipe.xdel(self.stream, entry_id)
            pipe.execute()

    # ---------------------------------------------------------------- health and metrics

    def _write_hash(self) -> None:
        fields = {
            "state": self.state,
            "consumer": self.consumer,
            "heartbeat_seconds": self.spec.heartbeat_seconds,
            "model": self.spec.served_name or self.spec.model_dir,
            "version": self.spec.version_label,
            "pid": os.getpid(),
            "started": getattr(self, "_started", None) or time.time(),
            "heartbeat": time.time(),
            "metrics": json.dumps(self.metrics),
        }
        self._started = fields["started"]
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.key, mapping=fields)
            pipe.expire(self.key, protocol.REPLICA_TTL_SECONDS)
            pipe.sadd(self.index, self.id)
            pipe.expire(self.index, protocol.REPLICA_INDEX_TTL_SECONDS)
            pipe.execute()

    def _heartbeat_loop(self) -> None:
        while not self._stop_heartbeat.wait(self.spec.heartbeat_seconds):
            try:
                self._write_hash()
            except Exception as error:  # Redis blips: the next beat retries (the TTL is 5 beats)
                self.reporter.log(f"heartbeat failed: {error}", "warning")

    def _report_metrics(self) -> None:
        stats = self.backend.stats() if self.backend is not None else {}
        ttft = statistics.median(self.counters.ttft) if self.counters.ttft else 0.0
        tpot = statistics.median(self.counters.tpot) if self.counters.tpot else 0.0
        self.metrics = {
            "running": stats.get("running", 0),
            "waiting": stats.get("waiting", 0),
            "ttft_p50_s": round(ttft, 4),
            "tpot_p50_s": round(tpot, 5),
            "tokens_per_s": stats.get("tokens_per_s", 0.0),
            "kv_cache_used": max(self._kv_peak, float(stats.get("kv_cache_used", 0.0))),
            "requests_total": stats.get("requests_total", 0),
            "tokens_total": stats.get("tokens_total", 0),
        }
        self._kv_peak = 0.0
        step = self._metric_step
        self._metric_step += 1
        for name, value in (
            ("running", self.metrics["running"]), ("waiting", self.metrics["waiting"]),
            ("ttft_p50_ms", ttft * 1000), ("tpot_ms", tpot * 1000),
            ("tokens_per_s", self.metrics["tokens_per_s"]), ("kv_cache_used", self.metrics["kv_cache_used"]),
        ):
            self.reporter.metric(name, step, float(value))
        self.reporter.progress(
            1.0, f"{self.state}: {self.counters.served} served, {self.counters.failed} failed, "
            f"{len(self.active)} running, {self.metrics['tokens_per_s']} tokens/s"
        )


def run_replica(spec: ReplicaSpec, reporter) -> dict:
    """Serve until the job is stopped (then JobCancelled, after draining)."""
    return Replica(spec, reporter).run()
