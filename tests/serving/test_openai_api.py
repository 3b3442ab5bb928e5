"""The OpenAI-compatible API against a scripted replica on the real Redis protocol: answers,
streams, usage, errors in OpenAI's format, limits (429 with Retry-After), 503/504, cancel."""
import time

import pytest
import redis
from django.conf import settings

from apps.serving.models import UsageDay
from tests.serving.conftest import sse_events
from tests.serving.fake_replica import end_event
from apps.serving import gateway
from workers.tasks import serving_protocol as protocol

CHAT = {"model": "owner/tiny-chat", "messages": [{"role": "user", "content": "Hi"}]}


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code, error
    if param:
        assert error["param"] == param, error
    return error


def test_a_chat_completion_answers_in_openai_shape_with_usage_and_records_it(db, api, deployment, replica, make_key, users):
    key = make_key(users["owner"])
    with replica() as fake:
        response = api.post("/v1/chat/completions", CHAT, key)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "owner/tiny-chat"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert fake.requests[0]["messages"] == CHAT["messages"] and fake.requests[0]["kind"] == "chat"
    usage = UsageDay.objects.get(deployment=deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (1, 5, 2)


def test_a_bare_name_reaches_the_callers_own_deployment(db, api, deployment, replica, make_key, users):
    with replica():
        response = api.post("/v1/chat/completions", {**CHAT, "model": "tiny-chat"}, make_key(users["owner"]))
    assert response.status_code == 200 and response.json()["model"] == "owner/tiny-chat"


def test_a_streamed_chat_sends_role_deltas_finish_usage_and_done(db, api, deployment, replica, make_key, users):
    with replica():
        response = api.post("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                            make_key(users["owner"]))
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello world"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)


def test_tool_calls_from_the_replica_come_back_as_openai_tool_calls(db, api, deployment, replica, make_key, users):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    script = lambda request: [{"type": "start", "replica": "fake", "prompt_tokens": 9}, end_event("", 9, 12, "tool_calls", [call])]
    key = make_key(users["owner"])
    with replica(script) as fake:
        plain = api.post("/v1/chat/completions", {**CHAT, "tools": tools, "tool_choice": "auto"}, key)
        streamed = api.post("/v1/chat/completions", {**CHAT, "tools": tools, "stream": True}, key)
    assert fake.requests[0]["tools"] == tools and fake.requests[0]["tool_choice"] == "auto"
    choice = plain.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["tool_calls"] == [call]
    deltas = [c["choices"][0]["delta"] for c in sse_events(streamed)[:-1] if c["choices"]]
    assert any(d.get("tool_calls", [{}])[0].get("function") == call["function"] for d in deltas)


def test_a_completion_answers_in_text_completion_shape(db, api, deployment, replica, make_key, users):
    with replica() as fake:
        response = api.post("/v1/completions", {"model": "owner/tiny-chat", "prompt": "Once", "max_tokens": 4, "stop": "\n"},
                            make_key(users["owner"]))
    body = response.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "Hello world"
    assert body["usage"]["total_tokens"] == 7
    assert fake.requests[0]["prompt"] == "Once" and fake.requests[0]["stop"] == ["\n"] and fake.requests[0]["max_tokens"] == 4


def test_models_lists_what_the_keys_user_may_see(db, api, deployment, make_key, users):
    for name, expected in (("owner", ["owner/tiny-chat"]), ("teammate", ["owner/tiny-chat"]), ("outsider", [])):
        response = api.get("/v1/models", make_key(users[name]))
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["data"]] == expected, name


def test_the_outsiders_key_cannot_call_a_private_deployment_and_the_teammates_can(db, api, deployment, replica, make_key, users):
    with replica():
        assert_openai_error(api.post("/v1/chat/completions", CHAT, make_key(users["outsider"])), 404, "model_not_found", "model")
        assert api.post("/v1/chat/completions", CHAT, make_key(users["teammate"])).status_code == 200


def test_a_bare_model_name_is_the_callers_own_deployment_and_a_full_name_finds_a_teammates(db, api, deployment, replica,
                                                                                        make_key, users):
    owner, teammate = make_key(users["owner"]), make_key(users["teammate"])
    with replica():
        for model in ("tiny-chat", "owner/tiny-chat"):
            response = api.post("/v1/chat/completions", {**CHAT, "model": model}, owner)
            assert response.status_code == 200 and response.json()["model"] == "owner/tiny-chat", model
        assert api.post("/v1/chat/completions", CHAT, teammate).status_code == 200
        for model in ("tiny-chat", "teammate/tiny-chat"):  # the teammate has no deployment of that name
            assert_openai_error(api.post("/v1/chat/completions", {**CHAT, "model": model}, teammate), 404,
                                "model_not_found", "model")


@pytest.mark.parametrize("header", [None, "Bearer sk-puyu-not-a-real-key", "Bearer puyu_an-account-token", "Basic abc"])
def test_missing_or_wrong_keys_get_401_in_openai_format(db, api, deployment, header):
    kwargs = {"headers": {"Authorization": header}} if header else {}
    from asgiref.sync import async_to_sync

    response = async_to_sync(api.client.get)("/v1/models", **kwargs)
    assert_openai_error(response, 401, "invalid_api_key")


def test_a_revoked_key_is_refused(db, api, deployment, make_key, users):
    from apps.serving.models import ApiKey

    raw = make_key(users["owner"])
    assert api.get("/v1/models", raw).status_code == 200
    ApiKey.objects.get(user=users["owner"]).revoke()
    error = assert_openai_error(api.get("/v1/models", raw), 401, "invalid_api_key")
    assert "revoked" in error["message"]
    assert_openai_error(api.post("/v1/chat/completions", CHAT, raw), 401, "invalid_api_key")


@pytest.mark.parametrize("change, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0]"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_p": "high"}, "top_p"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"tools": [{"type": "function"}]}, "tools[0]"),
    ({"frobnicate": True}, "frobnicate"),
    ({"model": ""}, "model"),
])
def test_invalid_requests_get_400_naming_the_parameter(db, api, deployment, make_key, users, change, param):
    response = api.post("/v1/chat/completions", {**CHAT, **change}, make_key(users["owner"]))
    error = assert_openai_error(response, 400, param=param)
    assert error["message"].startswith(param)


def test_a_body_that_is_not_json_gets_400(db, api, make_key, users):
    from asgiref.sync import async_to_sync

    response = async_to_sync(api.client.post)("/v1/chat/completions", data=b"{nope", content_type="application/json",
                                              headers={"Authorization": f"Bearer {make_key(users['owner'])}"})
    assert_openai_error(response, 400, "invalid_json")


def test_an_error_event_from_the_replica_becomes_that_http_error(db, api, deployment, replica, make_key, users):
    script = lambda request: [{"type": "error", "status": 400, "code": "tools_unsupported",
                               "message": "this model's chat template does not support tools"}]
    with replica(script):
        for stream in (False, True):
            error = assert_openai_error(api.post("/v1/chat/completions", {**CHAT, "stream": stream}, make_key(users["owner"])),
                                        400, "tools_unsupported")
            assert "does not support tools" in error["message"]


@pytest.mark.parametrize("second", [0.5, 59.5])  # at the start and at the very end of a minute
def test_the_rate_limit_answers_429_with_retry_after(db, api, deployment, replica, make_key, users, monkeypatch, second):
    # The windows are whole minutes: pin the clock, so the test never straddles a minute's edge.
    minute_start = (int(time.time() // 60) + 1) * 60
    monkeypatch.setattr(gateway, "clock", lambda: minute_start + second)
    key = make_key(users["owner"], rate_limit_per_minute=2)
    with replica():
        assert [api.post("/v1/chat/completions", CHAT, key).status_code for _ in range(2)] == [200, 200]
        response = api.post("/v1/chat/completions", CHAT, key)
    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert int(response["Retry-After"]) == int(60 - second) + 1  # until the next minute


def test_a_used_up_token_quota_answers_429_until_midnight(db, api, deployment, replica, make_key, users):
    key = make_key(users["owner"], token_quota_per_day=20)
    ask = {**CHAT, "max_tokens": 10}  # each reserves 10 and uses 7 (5 prompt + 2 completion)
    with replica():
        assert [api.post("/v1/chat/completions", ask, key).status_code for _ in range(2)] == [200, 200]
        response = api.post("/v1/chat/completions", ask, key)  # 14 used + 10 reserved > 20
    error = assert_openai_error(response, 429, "insufficient_quota")
    assert error["type"] == "insufficient_quota" and 1 <= int(response["Retry-After"]) <= 86401
    assert "6 of its 20 tokens" in error["message"]
    assert UsageDay.objects.get().total_tokens == 14


def test_a_full_queue_answers_429_with_retry_after(db, api, deployment, replica, make_key, users):
    deployment.max_queue = 2
    deployment.save()
    stream = protocol.requests_stream(deployment.pk)
    with replica(reads=False):  # nobody reads: entries pile up
        client = redis.Redis.from_url(settings.REDIS_URL)
        for _ in range(2):
            client.xadd(stream, {"request": "{}"})
        response = api.post("/v1/chat/completions", CHAT, make_key(users["owner"]))
    assert_openai_error(response, 429, "queue_full")
    assert response["Retry-After"] == "1"


def test_no_ready_replica_answers_503(db, api, deployment, replica, make_key, users):
    with replica(state="loading"):
        response = api.post("/v1/chat/completions", CHAT, make_key(users["owner"]))
    assert_openai_error(response, 503, "no_ready_replica")
    assert response["Retry-After"]


def test_a_request_no_replica_starts_times_out_with_504_and_leaves_the_queue(db, api, deployment, replica, make_key, users, settings):
    settings.SERVING_QUEUE_TIMEOUT_SECONDS = 0.5
    stream = protocol.requests_stream(deployment.pk)
    with replica(reads=False):  # ready, but busy: never takes the request
        client = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
        response = api.post("/v1/chat/completions", CHAT, make_key(users["owner"]))
    error = assert_openai_error(response, 504, "queue_timeout")
    assert "cancelled" in error["message"]
    assert client.xlen(stream) == 0


def test_a_request_past_the_deployment_timeout_gets_504_and_is_cancelled(db, api, deployment, replica, make_key, users):
    deployment.request_timeout_s = 1
    deployment.save()
    with replica(script=lambda request: "hold") as fake:
        started = time.monotonic()
        response = api.post("/v1/chat/completions", CHAT, make_key(users["owner"]))
        assert_openai_error(response, 504, "timeout")
        wait = time.monotonic() + 5
        while not fake.cancelled and time.monotonic() < wait:
            time.sleep(0.05)
    assert fake.cancelled == [fake.requests[0]["id"]]
    assert time.monotonic() - started < 30  # it ended: no hang
