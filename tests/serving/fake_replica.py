"""A stand-in replica for the web side's unit tests ONLY: it speaks the Redis protocol of
workers/core/inference/protocol.py (consumer group, replica hash, per-request event streams,
cancel channel) with scripted answers, so the API can be tested without loading a model. The
end-to-end tests (tests/serving/test_end_to_end.py) use the real replica in a Celery worker."""
from __future__ import annotations

import json
import threading
import time

import redis

from workers.tasks import serving_protocol as protocol


class FakeReplica:
    """Answers each request with `script(request) -> list of events` (default: "Hello world").
    A script may return "hold" to keep the request running until it is cancelled."""

    def __init__(self, redis_url: str, deployment_id: int, replica_id: str = "fake", script=None, state: str = "ready",
                 reads: bool = True) -> None:
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.deployment_id, self.replica_id, self.state = deployment_id, replica_id, state
        self.script = script or (lambda request: default_answer(request))
        self.requests: list[dict] = []
        self.cancelled: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._listen, daemon=True)]
        if reads:  # reads=False: a replica that is ready but never takes a request (a busy one)
            self._threads.append(threading.Thread(target=self._serve, daemon=True))

    def __enter__(self):
        self.redis.hset(protocol.replica_key(self.deployment_id, self.replica_id), mapping={
            "state": self.state, "model": "fake", "version": "fake", "pid": 0, "started": time.time(), "heartbeat": time.time(),
            "metrics": json.dumps({"running": 1, "waiting": 0, "ttft_p50_s": 0.01, "tpot_p50_s": 0.002, "tokens_per_s": 50.0,
                                   "kv_cache_used": 0.25, "requests_total": 3, "tokens_total": 42})})
        self.redis.sadd(protocol.replica_index(self.deployment_id), self.replica_id)
        try:
            self.redis.xgroup_create(protocol.requests_stream(self.deployment_id), protocol.REPLICA_GROUP, id="0", mkstream=True)
        except redis.ResponseError:
            pass  # the group exists
        self._pubsub_ready = threading.Event()
        for thread in self._threads:
            thread.start()
        self._pubsub_ready.wait(5)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.redis.delete(protocol.replica_key(self.deployment_id, self.replica_id))
        self.redis.srem(protocol.replica_index(self.deployment_id), self.replica_id)

    def emit(self, request_id: str, event: dict) -> None:
        stream = protocol.events_stream(request_id)
        self.redis.xadd(stream, {"event": protocol.encode(event)})
        self.redis.expire(stream, protocol.EVENT_TTL_SECONDS)

    def _serve(self) -> None:
        stream = protocol.requests_stream(self.deployment_id)
        while not self._stop.is_set():
            answer = self.redis.xreadgroup(protocol.REPLICA_GROUP, self.replica_id, {stream: ">"}, count=1, block=100)
            for _, entries in answer or ():
                for entry_id, fields in entries:
                    request = protocol.decode(fields["request"])
                    self.requests.append(request)
                    threading.Thread(target=self._answer, args=(stream, entry_id, request), daemon=True).start()

    def _answer(self, stream: str, entry_id: str, request: dict) -> None:
        events = self.script(request)
        if events == "hold":
            self.emit(request["id"], {"type": "start", "replica": self.replica_id, "prompt_tokens": 3})
            self.emit(request["id"], {"type": "delta", "text": "partial", "tokens": 1})
            deadline = time.monotonic() + 30
            while request["id"] not in self.cancelled and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.02)
            events = [end_event("partial", 3, 1, finish="cancelled")]
        for event in events:
            self.emit(request["id"], event)
        self.redis.xack(stream, protocol.REPLICA_GROUP, entry_id)
        self.redis.xdel(stream, entry_id)

    def _listen(self) -> None:
        pubsub = self.redis.pubsub()
        pubsub.subscribe(protocol.cancel_channel(self.deployment_id))
        self._pubsub_ready.set()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message and message["type"] == "message":
                self.cancelled.append(message["data"])
        pubsub.close()


def end_event(text: str, prompt_tokens: int, completion_tokens: int, finish: str = "stop", tool_calls=None) -> dict:
    return {"type": "end", "finish_reason": finish, "text": text, "tool_calls": tool_calls,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "timing": {"queue_s": 0.001, "ttft_s": 0.01, "engine_ttft_s": 0.008, "decode_s": 0.02}}


def default_answer(request: dict) -> list[dict]:
    return [{"type": "start", "replica": "fake", "prompt_tokens": 5},
            {"type": "delta", "text": "Hello", "tokens": 1}, {"type": "delta", "text": " world", "tokens": 1},
            end_event("Hello world", 5, 2)]
