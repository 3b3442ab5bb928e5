"""A replica killed mid-stream (SIGKILL of its Celery worker, what the OOM killer does), with the
real stack: daphne, Redis, Celery workers running the inference core on a tiny model, the
official `openai` client. Each test starts its own stack (it kills a component).

Promises: with one replica, its clients get a clear error within seconds (the web watches the
replica's heartbeat; it does not wait for the request timeout) and the restarted replica (a new
consumer incarnation) reclaims what the killed one held, so the queue does not fill with dead
entries (no false 429); with two, every request is answered by the survivor or fails fast with
a clear error. Nothing hangs."""
import threading
import time

import openai
import pytest
import redis
from django.conf import settings

from apps.jobs.models import Job
from apps.serving.models import ApiKey
from tests.serving.test_end_to_end import (  # noqa: F401  (fixtures)
    client_for,
    deploy,
    register,
    stop_deployments_first,
    tiny_source,
    wait_ready,
)
from tests.stack import wait_for
from workers.tasks import serving_protocol as protocol

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BOUND_S = 10  # a client of a dead replica has its answer (an error) within this


def streaming_clients(client, count: int, max_tokens: int = 200):
    """Start `count` streamed chats in threads; returns (threads, results, first delta seen).
    A result: ("done", replica, finish_reason, ended) or ("error", exception, ended)."""
    results: dict[int, tuple] = {}
    streaming = threading.Event()

    def ask(index):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="owner/tiny-chat", messages=[{"role": "user", "content": f"Story {index}"}], max_tokens=max_tokens,
                stream=True)
            finish = None
            for chunk in raw.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    streaming.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            results[index] = ("done", raw.headers["X-Puyu-Replica"], finish, time.monotonic())
        except Exception as exc:  # recorded and asserted on by the test
            results[index] = ("error", exc, time.monotonic())

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results, streaming


def join_all(threads, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), f"a request still hangs {bound_s} s after the kill"


def assert_clear_error(exc) -> None:
    assert isinstance(exc, openai.APIError), repr(exc)
    assert "replica" in str(exc).lower() and "retry" in str(exc).lower(), exc


@pytest.mark.promise("replica killed mid-stream: clients fail fast (1 replica)")
def test_clients_of_a_killed_single_replica_fail_fast_and_the_restarted_one_leaves_no_false_429(
        stack, users, tiny_source, promise_figure):  # noqa: F811
    owner = users["owner"]
    stack.worker("serve0", "serve")
    stack.worker("serve1", "serve")  # idle: it takes the replica's job when it is re-queued
    stack.beat()  # the reaper re-queues the killed replica's job
    url = stack.web()
    deployment = deploy(owner, register(owner, tiny_source), max_queue=3)
    wait_ready(stack, deployment)
    client = client_for(url, ApiKey.issue(owner, "kill", rate_limit_per_minute=0)[1], timeout=120)

    threads, results, streaming = streaming_clients(client, 3)
    job = deployment.replica_set.get().job
    assert streaming.wait(120), stack.log("serve0") + stack.log("serve1")
    job.refresh_from_db()
    stack.kill(job.lease_owner.partition("@")[0])  # the worker running the one replica
    killed_at = time.monotonic()
    join_all(threads, BOUND_S)
    errors = [r for r in results.values() if r[0] == "error"]
    assert errors, "a request streaming from the killed replica ended without an error"
    for result in results.values():
        if result[0] == "error":
            assert_clear_error(result[1])
        else:
            assert result[2] in ("stop", "length")  # finished before the kill, not cut off silently
    slowest = max(r[-1] for r in results.values()) - killed_at
    promise_figure(f"{len(errors)} of 3 clients got a clear error {slowest:.1f} s after the kill (bound {BOUND_S} s)")

    # The same replica (its job re-run on another worker) must not inherit a dead consumer's
    # pending entries: they would count in the queue (XLEN) forever, 3 of max_queue 3 → 429.
    wait_for(lambda: Job.objects.get(pk=job.pk).attempts >= 2, 60, 0.25, "the replica's job to run again")
    wait_ready(stack, deployment)
    stream = protocol.requests_stream(deployment.pk)
    broker = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    wait_for(lambda: broker.xlen(stream) == 0, 30, 0.25, "the killed incarnation's entries to be reclaimed")
    consumers = {c["name"] for c in broker.xinfo_consumers(stream, protocol.REPLICA_GROUP)}
    assert len(consumers) <= 1, consumers  # the dead consumer was deleted
    replies = [client.chat.completions.create(model="owner/tiny-chat", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4) for _ in range(3)]
    assert all(reply.choices[0].finish_reason in ("stop", "length") for reply in replies)
    promise_figure("after the restart: queue empty, 3 requests answered (no false 429)")


@pytest.mark.promise("replica killed mid-stream: clients fail fast (2 replicas)")
def test_with_two_replicas_every_request_is_answered_by_the_survivor_or_fails_fast(stack, users, tiny_source,  # noqa: F811
                                                                                  promise_figure):
    owner = users["owner"]
    stack.worker("serve0", "serve")
    stack.worker("serve1", "serve")
    url = stack.web()
    deployment = deploy(owner, register(owner, tiny_source), replicas=2)
    wait_ready(stack, deployment, replicas=2)
    client = client_for(url, ApiKey.issue(owner, "kill", rate_limit_per_minute=0)[1], timeout=120)

    threads, results, streaming = streaming_clients(client, 8)
    assert streaming.wait(120), stack.log("serve0")
    victim = deployment.replica_set.select_related("job").get(job__lease_owner__startswith="serve0@").replica_id
    stack.kill("serve0")
    killed_at = time.monotonic()
    # Requests the victim had claimed but not started are re-run by the survivor once the
    # victim misses its beats; the others end at once. 60 s bounds it all on two busy cores.
    join_all(threads, 60)
    assert len(results) == 8
    failed = 0
    for result in results.values():
        if result[0] == "error":
            failed += 1
            assert_clear_error(result[1])  # it had streamed from the dead replica: a clear error
        else:
            _, replica, finish, _ = result
            assert finish in ("stop", "length"), result  # a complete answer, never a silent stop
    served = [r for r in results.values() if r[0] == "done"]
    assert served, "the survivor answered nothing"
    assert any(r[1] != victim for r in served)
    slowest = max(r[-1] for r in results.values()) - killed_at
    promise_figure(f"{len(served)} of 8 answered, {failed} clear errors; all ended {slowest:.1f} s after the kill")
