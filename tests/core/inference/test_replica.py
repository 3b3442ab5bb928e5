"""The replica loop against the session's real Redis: sharing a stream, taking over a dead
replica's requests, cancel through the channel, deadlines, bad requests and draining."""
from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from workers.core.inference import protocol
from workers.core.inference.replica import ReplicaSpec, run_replica
from workers.core.reporting import ConsoleReporter, JobCancelled
from workers.core.specs import build_spec


@pytest.fixture
def redis_client():
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def deployment_id():
    return int(uuid.uuid4().int % 1_000_000) + 1


class RunningReplica:
    def __init__(self, spec: ReplicaSpec):
        self.spec = spec
        self.reporter = ConsoleReporter()
        self.outcome: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.outcome.append(run_replica(self.spec, self.reporter))
        except BaseException as error:  # the test inspects how it ended
            self.outcome.append(error)

    def stop(self, timeout=30):
        self.reporter.stop_requested = True
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.outcome[0]


def replica(deployment_id, model_dir, replica_id, **overrides):
    params = dict(
        deployment_id=deployment_id, replica_id=replica_id, redis_url=os.environ["REDIS_URL"],
        model_dir=str(model_dir), device="cpu", num_blocks=64, block_size=16, max_batch_tokens=256,
        max_concurrent=4, threads=1, heartbeat_seconds=0.5, claim_idle_seconds=0.0, drain_seconds=5.0,
        metrics_every_seconds=0.5,
    )
    params.update(overrides)
    return RunningReplica(build_spec(ReplicaSpec, params))


def wait_ready(client, deployment_id, replica_id, timeout=60):
    key = protocol.replica_key(deployment_id, replica_id)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.hget(key, "state") == "ready":
            return
        time.sleep(0.05)
    raise AssertionError(f"replica {replica_id} not ready in {timeout} s")


def push(client, deployment_id, **fields):
    payload = {"id": uuid.uuid4().hex, "kind": "completion", "prompt": "ROMEO:", "max_tokens": 8,
               "temperature": 0.0, "stream": True, "created": time.time(), "deadline": time.time() + 120}
    payload.update(fields)
    client.xadd(protocol.requests_stream(deployment_id), {"request": protocol.encode(payload)})
    return payload["id"]


def events_of(client, request_id, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = [protocol.decode(f["event"]) for _id, f in client.xrange(protocol.events_stream(request_id))]
        if events and events[-1]["type"] in ("end", "error"):
            return events
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} did not close in {timeout} s")


def test_two_replicas_share_the_requests_of_a_deployment(redis_client, deployment_id, serve_model_dir):
    first = replica(deployment_id, serve_model_dir, "r1", max_concurrent=2)
    second = replica(deployment_id, serve_model_dir, "r2", max_concurrent=2)
    try:
        wait_ready(redis_client, deployment_id, "r1")
        wait_ready(redis_client, deployment_id, "r2")
        assert redis_client.smembers(protocol.replica_index(deployment_id)) == {"r1", "r2"}  # how clients find them
        ids = [push(redis_client, deployment_id, max_tokens=40) for _ in range(8)]
        runs = [events_of(redis_client, i) for i in ids]
    finally:
        assert isinstance(first.stop(), JobCancelled)
        assert isinstance(second.stop(), JobCancelled)
    for events in runs:
        assert [e["type"] for e in events][0] == "start"
        assert [e["type"] for e in events].count("end") == 1 and events[-1]["type"] == "end"
        assert "".join(e["text"] for e in events if e["type"] == "delta") == events[-1]["text"]
        assert events[-1]["usage"]["completion_tokens"] == 40
        assert set(events[-1]["timing"]) == {"queue_s", "ttft_s", "engine_ttft_s", "decode_s"}
    assert {events[0]["replica"] for events in runs} == {"r1", "r2"}
    assert redis_client.xlen(protocol.requests_stream(deployment_id)) == 0
    assert not redis_client.exists(protocol.replica_key(deployment_id, "r1"))
    assert not redis_client.smembers(protocol.replica_index(deployment_id))  # both left the index on stop


def test_a_dead_replicas_pending_requests_are_taken_over(redis_client, deployment_id, serve_model_dir):
    stream = protocol.requests_stream(deployment_id)
    redis_client.xgroup_create(stream, protocol.REPLICA_GROUP, id="0", mkstream=True)
    not_started = [push(redis_client, deployment_id) for _ in range(2)]
    half_done = push(redis_client, deployment_id)
    # "dead" claims all three, streams part of one answer, then vanishes (it never had a live hash)
    redis_client.xreadgroup(protocol.REPLICA_GROUP, "dead", {stream: ">"}, count=10)
    redis_client.xadd(protocol.events_stream(half_done), {"event": protocol.encode({"type": "start", "replica": "dead", "prompt_tokens": 3})})
    redis_client.xadd(protocol.events_stream(half_done), {"event": protocol.encode({"type": "delta", "text": "Hel", "tokens": 1})})
    survivor = replica(deployment_id, serve_model_dir, "alive")
    try:
        for request_id in not_started:
            events = events_of(redis_client, request_id)
            assert events[-1]["type"] == "end" and events[-1]["usage"]["completion_tokens"] == 8
            assert events[0]["replica"] == "alive"
        lost = events_of(redis_client, half_done)[-1]
        assert lost["type"] == "error" and lost["status"] == 502 and lost["code"] == "replica_lost"
        # what the dead replica made is reported, so the web can count it against the quota
        assert lost["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        assert redis_client.xlen(stream) == 0
        wait_until(lambda: "dead" not in consumers(redis_client, stream), "the dead consumer to be deleted")
    finally:
        survivor.stop()


def consumers(client, stream):
    return {info["name"]: info["pending"] for info in client.xinfo_consumers(stream, protocol.REPLICA_GROUP)}


def wait_until(condition, what, timeout=30):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_restarted_replica_reclaims_what_its_killed_incarnation_held(redis_client, deployment_id, serve_model_dir):
    """The same replica id (the job re-run after its worker was killed) reads as a new consumer, so
    the entries the killed process held are reclaimed instead of counting in XLEN forever."""
    stream = protocol.requests_stream(deployment_id)
    redis_client.xgroup_create(stream, protocol.REPLICA_GROUP, id="0", mkstream=True)
    held = [push(redis_client, deployment_id) for _ in range(2)]
    killed = protocol.consumer_name("again", "killed")
    redis_client.xreadgroup(protocol.REPLICA_GROUP, killed, {stream: ">"}, count=10)
    restarted = replica(deployment_id, serve_model_dir, "again")
    try:
        for request_id in held:
            assert events_of(redis_client, request_id)[-1]["type"] == "end"
        current = redis_client.hget(protocol.replica_key(deployment_id, "again"), "consumer")
        assert current.startswith("again#") and current != killed
        wait_until(lambda: killed not in consumers(redis_client, stream), "the killed incarnation's consumer to go")
        assert redis_client.xlen(stream) == 0
    finally:
        restarted.stop()


def test_a_replica_serves_only_model_folders_of_the_registry(serve_model_dir):
    from workers.core.specs import SpecError

    base = dict(deployment_id=1, replica_id="x", redis_url=os.environ["REDIS_URL"], device="cpu")
    build_spec(ReplicaSpec, {**base, "model_dir": str(serve_model_dir)})  # inside <data dir>/models: fine
    for field, value in (("model_dir", "/var/tmp"), ("model_dir", "/etc"),
                         ("model_dir", str(serve_model_dir) + "/../../../../secret_key"),
                         ("adapter_dir", "/etc/passwd")):
        params = {**base, "model_dir": str(serve_model_dir), field: value}
        with pytest.raises(SpecError) as refused:
            build_spec(ReplicaSpec, params)
        assert refused.value.field == field and "/etc" not in str(refused.value)


def test_a_cancel_on_the_channel_ends_the_request_as_cancelled(redis_client, deployment_id, serve_model_dir):
    worker = replica(deployment_id, serve_model_dir, "c1")
    try:
        wait_ready(redis_client, deployment_id, "c1")
        request_id = push(redis_client, deployment_id, max_tokens=240)
        deadline = time.time() + 30
        while not redis_client.xlen(protocol.events_stream(request_id)) and time.time() < deadline:
            time.sleep(0.01)
        redis_client.set(protocol.cancel_key(request_id), 1, ex=protocol.CANCEL_TTL_SECONDS)
        redis_client.publish(protocol.cancel_channel(deployment_id), request_id)
        final = events_of(redis_client, request_id)[-1]
        assert final["type"] == "end" and final["finish_reason"] == "cancelled"
        assert final["usage"]["completion_tokens"] < 240
        # a request cancelled before any replica took it is never run
        already = uuid.uuid4().hex
        redis_client.set(protocol.cancel_key(already), 1, ex=protocol.CANCEL_TTL_SECONDS)
        push(redis_client, deployment_id, id=already)
        never_run = events_of(redis_client, already)
        assert [e["type"] for e in never_run] == ["end"]
        assert never_run[0]["finish_reason"] == "cancelled" and never_run[0]["usage"]["completion_tokens"] == 0
    finally:
        worker.stop()


def test_requests_past_their_deadline_and_invalid_requests_get_clear_errors(redis_client, deployment_id, serve_model_dir):
    worker = replica(deployment_id, serve_model_dir, "d1")
    try:
        late = push(redis_client, deployment_id, deadline=time.time() - 1)
        too_long = push(redis_client, deployment_id, max_tokens=100000)
        empty = push(redis_client, deployment_id, kind="chat", messages=[])
        ok = push(redis_client, deployment_id)
        error = events_of(redis_client, late)[-1]
        assert (error["type"], error["status"], error["code"]) == ("error", 504, "deadline_exceeded")
        too_many = events_of(redis_client, too_long)[-1]
        assert too_many["status"] == 400 and "max_tokens" in too_many["message"]
        bad_chat = events_of(redis_client, empty)[-1]
        assert bad_chat["status"] == 400 and "messages" in bad_chat["message"]
        assert events_of(redis_client, ok)[-1]["type"] == "end"
        assert redis_client.hget(protocol.replica_key(deployment_id, "d1"), "state") == "ready"
    finally:
        worker.stop()


def test_a_stopped_replica_drains_reports_metrics_and_removes_its_hash(redis_client, deployment_id, serve_model_dir):
    worker = replica(deployment_id, serve_model_dir, "m1")
    wait_ready(redis_client, deployment_id, "m1")
    request_id = push(redis_client, deployment_id, max_tokens=30)
    events_of(redis_client, request_id)
    metrics_of = lambda: protocol.decode(redis_client.hget(protocol.replica_key(deployment_id, "m1"), "metrics"))
    wait_until(lambda: metrics_of().get("tokens_total") == 30, "a metrics tick after the request")
    metrics = metrics_of()
    assert metrics["requests_total"] == 1 and metrics["tokens_total"] == 30
    assert isinstance(worker.stop(), JobCancelled)
    assert not redis_client.exists(protocol.replica_key(deployment_id, "m1"))
    names = {name for name, _step, _value in worker.reporter.metrics}
    assert {"running", "waiting", "ttft_p50_ms", "tpot_ms", "tokens_per_s", "kv_cache_used"} <= names
