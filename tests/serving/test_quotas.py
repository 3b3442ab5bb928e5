"""Usage and quotas on every end path, against a scripted replica on the real Redis protocol:
concurrent requests cannot overshoot a key's daily quota (max_tokens is reserved atomically
before a request is admitted, then settled to the real count), and the tokens of a request that
failed, timed out, lost its replica or whose client went away are counted all the same. A
replica that stops beating fails its clients within seconds, not at the request timeout."""
import asyncio
import json
import threading
import time

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.utils import timezone

from apps.accounts.models import hash_token

from apps.serving import gateway
from apps.serving.models import ApiKey, UsageDay
from tests.serving.fake_replica import default_answer, end_event
from tests.serving.test_disconnect import call_then_disconnect
from workers.tasks import serving_protocol as protocol

CHAT = {"model": "owner/tiny-chat", "messages": [{"role": "user", "content": "Hi"}]}


def quota_counter(raw_key: str) -> int:
    """Today's tokens of the key in Redis: recorded usage + reservations in flight."""
    key = ApiKey.objects.get(key_hash=hash_token(raw_key))
    counter = gateway.quota_key(key.key_hash[:24], timezone.now().date().isoformat())
    return int(redis.Redis.from_url(settings.REDIS_URL).get(counter) or 0)


def usage_row() -> tuple[int, int, int]:
    row = UsageDay.objects.get()
    return row.requests, row.prompt_tokens, row.completion_tokens


async def asgi_post(path: str, body: dict, key: str) -> tuple[int, dict]:
    """POST through Django's ASGI handler as daphne drives it (each request in its own thread
    context: the test client would run their database calls one request at a time)."""
    messages: list[dict] = []
    requests = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays (Django cancels this when it answered)

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    await ASGIHandler()(scope, receive, send)
    status = next(m["status"] for m in messages if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"))


@pytest.mark.promise("keys and quotas hold under concurrency")
@pytest.mark.django_db(transaction=True)
def test_eight_concurrent_requests_against_a_quota_for_three_admit_exactly_three(deployment, replica, make_key, users,
                                                                                promise_figure):
    key = make_key(users["owner"], token_quota_per_day=30, rate_limit_per_minute=0)
    release = threading.Event()

    def slow_answer(request):  # hold every admitted request until all eight were decided
        release.wait(30)
        return default_answer(request)

    async def burst(fake):
        tasks = [asyncio.create_task(asgi_post("/v1/chat/completions", {**CHAT, "max_tokens": 10}, key)) for _ in range(8)]
        deadline = time.monotonic() + 30
        while sum(task.done() for task in tasks) + len(fake.requests) < 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        admitted_while_held = len(fake.requests)
        release.set()
        return admitted_while_held, await asyncio.wait_for(asyncio.gather(*tasks), 60)

    with replica(script=slow_answer) as fake:
        # asyncio.run, not async_to_sync: under async_to_sync every request's database calls
        # would run on this one thread, one request at a time (no concurrency left to test).
        admitted, responses = asyncio.run(burst(fake))
    statuses = sorted(status for status, _ in responses)
    assert admitted == 3 and statuses == [200] * 3 + [429] * 5, statuses
    assert all(body["error"]["code"] == "insufficient_quota" for status, body in responses if status == 429)
    assert usage_row() == (3, 15, 6)  # each used 5 + 2 of the 10 it reserved
    assert quota_counter(key) == 21  # reservations settled to the real count
    promise_figure("8 concurrent requests, quota for 3: 3 admitted, 5 refused")


def test_the_days_counter_starts_from_the_tokens_the_database_recorded(db, api, deployment, replica, make_key, users):
    """No counter in Redis yet (the day's first request, or Redis restarted): the admission reads
    the day's usage from the database to start it, and the quota counts it."""
    key = make_key(users["owner"], token_quota_per_day=20, rate_limit_per_minute=0)
    UsageDay.objects.create(key=ApiKey.objects.get(key_hash=hash_token(key)), deployment=deployment,
                            date=timezone.now().date(), requests=2, prompt_tokens=10, completion_tokens=4)
    with replica():
        refused = api.post("/v1/chat/completions", {**CHAT, "max_tokens": 10}, key)  # 14 recorded + 10 > 20
        admitted = api.post("/v1/chat/completions", {**CHAT, "max_tokens": 6}, key)  # 14 + 6 = 20
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "insufficient_quota")
    assert "6 of its 20 tokens" in refused.json()["error"]["message"]
    assert admitted.status_code == 200 and quota_counter(key) == 14 + 7  # settled to the 7 it used


def test_a_request_refused_for_no_ready_replica_or_a_full_queue_keeps_none_of_the_quota(db, api, deployment, replica,
                                                                                      make_key, users):
    """The reservation is taken and given back in the one admission script: nothing stays reserved."""
    key = make_key(users["owner"], token_quota_per_day=1000, rate_limit_per_minute=0)
    ask = {**CHAT, "max_tokens": 10}
    with replica(state="loading"):
        loading = api.post("/v1/chat/completions", ask, key)
    deployment.max_queue = 1
    deployment.save()
    with replica(reads=False):  # nobody reads: the one entry below fills the queue
        redis.Redis.from_url(settings.REDIS_URL).xadd(protocol.requests_stream(deployment.pk), {"request": "{}"})
        full = api.post("/v1/chat/completions", ask, key)
    assert (loading.status_code, loading.json()["error"]["code"]) == (503, "no_ready_replica")
    assert (full.status_code, full.json()["error"]["code"]) == (429, "queue_full")
    assert quota_counter(key) == 0 and not UsageDay.objects.exists()


@pytest.mark.promise("keys and quotas hold under concurrency")
@pytest.mark.django_db(transaction=True)
def test_a_streaming_client_that_disconnects_is_still_counted(deployment, replica, make_key, users):
    key = make_key(users["owner"])
    streamed = lambda sent: any(m["type"] == "http.response.body" and b"partial" in m.get("body", b"") for m in sent)
    with replica(script=lambda request: "hold") as fake:
        async_to_sync(call_then_disconnect)({**CHAT, "stream": True}, key, streamed)
        assert fake.cancelled == [fake.requests[0]["id"]]
    # the replica's final event (after the cancel) says 3 prompt + 1 completion tokens
    assert usage_row() == (1, 3, 1)
    assert quota_counter(key) == 4


def test_a_request_that_times_out_is_counted(db, api, deployment, replica, make_key, users):
    deployment.request_timeout_s = 1
    deployment.save()
    key = make_key(users["owner"])
    with replica(script=lambda request: "hold"):
        response = api.post("/v1/chat/completions", CHAT, key)
    assert response.status_code == 504
    assert usage_row() == (1, 3, 1)


def test_an_error_from_the_replica_counts_the_tokens_it_made(db, api, deployment, replica, make_key, users):
    script = lambda request: [{"type": "start", "replica": "fake", "prompt_tokens": 5},
                              {"type": "delta", "text": "Hel", "tokens": 2},
                              {"type": "error", "status": 500, "code": "engine_error", "message": "boom",
                               "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}]
    key = make_key(users["owner"], token_quota_per_day=1000)
    with replica(script=script):
        response = api.post("/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 50}, key)
    assert response.status_code == 200  # streamed: the error arrives as the last SSE event
    assert b"boom" in b"".join(response.chunks)
    assert usage_row() == (1, 5, 3)
    assert quota_counter(key) == 8


def dies_mid_answer(holder, how):
    """A script: start, stream a token, then look dead to the web (`how`) and never end."""
    def script(request):
        fake = holder[0]
        fake.emit(request["id"], {"type": "start", "replica": fake.replica_id, "consumer": "r#1", "prompt_tokens": 3})
        fake.emit(request["id"], {"type": "delta", "text": "partial", "tokens": 1})
        how(fake)
        deadline = time.monotonic() + 20
        while request["id"] not in fake.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
        return []
    return script


def expire_hash(fake):
    fake.redis.delete(protocol.replica_key(fake.deployment_id, fake.replica_id))


def restarted_under_the_same_id(fake):
    fake.redis.hset(protocol.replica_key(fake.deployment_id, fake.replica_id), "consumer", "r#2")


@pytest.mark.parametrize("how", [expire_hash, restarted_under_the_same_id])
def test_a_client_whose_replica_stops_beating_gets_502_at_once_and_is_counted(db, api, deployment, replica, make_key, users, how):
    key = make_key(users["owner"])
    holder = []
    with replica(script=dies_mid_answer(holder, how)) as fake:
        holder.append(fake)
        response = api.post("/v1/chat/completions", CHAT, key)  # the deployment's timeout is 120 s
    assert response.status_code == 502 and response.json()["error"]["code"] == "replica_lost"
    assert "retry" in response.json()["error"]["message"]
    assert usage_row() == (1, 3, 1)


def test_a_waiting_request_fails_fast_when_no_replica_is_alive_any_more(db, api, deployment, replica, make_key, users):
    key = make_key(users["owner"])
    stream = protocol.requests_stream(deployment.pk)
    with replica(reads=False) as fake:  # ready, never takes the request, then dies
        threading.Timer(0.3, expire_hash, args=(fake,)).start()
        response = api.post("/v1/chat/completions", CHAT, key)  # the queue timeout is 30 s
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_live_replica"
    assert redis.Redis.from_url(settings.REDIS_URL).xlen(stream) == 0  # it left the queue
    assert not UsageDay.objects.exists() and quota_counter(key) == 0  # never ran: nothing counted
