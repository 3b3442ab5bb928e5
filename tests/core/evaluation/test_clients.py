"""The remote clients: an OpenAI-compatible endpoint (a local HTTP server in a thread) and a
studio deployment over the serving protocol (the tests' embedded Redis and the scripted fake
replica of tests/serving/fake_replica.py)."""
from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.core.evaluation.fake_openai import FakeOpenAI, chat_reply, completion_reply
from tests.serving.fake_replica import FakeReplica, end_event
from workers.core.evaluation import clients
from workers.core.evaluation.clients import DeploymentClient, EndpointClient, RemoteError, Reply
from workers.core.evaluation.extract import extract
from workers.core.specs import SpecError

CALL = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"6 * 7\"}"}}
_deployments = itertools.count(9100)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(clients, "RETRY_PAUSE_S", 0.0)


def _allow(monkeypatch, *urls):
    monkeypatch.setenv("PUYU_EVAL_ENDPOINT_ALLOWLIST", ",".join(urls))


# ------------------------------------------------------------------------------------ endpoint


def test_the_endpoint_client_posts_chat_and_completions_with_the_key_and_streaming_off(monkeypatch):
    with FakeOpenAI() as server:
        _allow(monkeypatch, "https://elsewhere.example/v1", server.base_url + "/")  # a trailing slash is the same URL
        client = EndpointClient(server.base_url, "gpt-fake", api_key="sk-test-123", timeout_s=10)
        assert client.chat([{"role": "user", "content": "Hi"}], max_tokens=12).text == "Hello from chat"
        assert client.complete("Once upon", max_tokens=5, temperature=0.5).text == "Hello from completion"
    chat, completion = server.requests
    assert chat["path"] == "/v1/chat/completions" and completion["path"] == "/v1/completions"
    assert chat["headers"]["Authorization"] == "Bearer sk-test-123"
    assert chat["body"] == {"model": "gpt-fake", "max_tokens": 12, "temperature": 0.0, "stream": False,
                            "messages": [{"role": "user", "content": "Hi"}]}
    assert completion["body"] == {"model": "gpt-fake", "max_tokens": 5, "temperature": 0.5, "stream": False,
                                  "prompt": "Once upon"}


def test_tool_calls_come_back_as_tool_call_blocks_the_extractor_reads(monkeypatch):
    with FakeOpenAI(lambda path, body: (200, chat_reply(None, [CALL]))) as server:
        _allow(monkeypatch, server.base_url)
        tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
        reply = EndpointClient(server.base_url, "m").chat([{"role": "user", "content": "6*7?"}], tools=tools)
    assert server.requests[0]["body"]["tools"] == tools
    assert reply.text == "" and reply.finish_reason == "tool_calls"
    assert reply.output() == '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call>'
    assert extract("tool_call", reply.output()) == "42"
    assert Reply("The answer is 42.").output() == "The answer is 42."


@pytest.mark.parametrize("url, allowed, reason", [
    ("https://api.example.com/v1", "", "allowlist"),  # an empty allowlist allows nothing
    ("https://api.example.com/v1", "https://api.example.com/v2", "allowlist"),
    ("https://api.example.com/v1.evil", "https://api.example.com/v1", "allowlist"),  # no prefix matching
    ("https://user:secret@api.example.com/v1", "https://user:secret@api.example.com/v1", "user name or password"),
    ("ftp://api.example.com/v1", "ftp://api.example.com/v1", "http(s)"),
    ("file:///etc/passwd", "file:///etc/passwd", "http(s)"),
    ("https://api.example.com/v1?key=1", "https://api.example.com/v1?key=1", "query"),
    ("https://api.example.com/v1 ", "https://api.example.com/v1", "spaces"),
])
def test_an_endpoint_off_the_allowlist_or_not_a_plain_http_url_is_refused_naming_the_field(monkeypatch, url, allowed, reason):
    _allow(monkeypatch, allowed)
    with pytest.raises(SpecError) as error:
        EndpointClient(url, "m")
    assert error.value.field == "endpoint_base_url" and reason in error.value.reason
    assert "secret" not in str(error.value)
    with pytest.raises(SpecError) as error:
        EndpointClient(url, "m", field="judge_endpoint_base_url")
    assert error.value.field == "judge_endpoint_base_url"


def test_a_redirect_is_not_followed(monkeypatch):
    def redirect(path, body):
        if path.endswith("/chat/completions"):
            return 302, b"", {"Location": "/v1/completions"}
        return 200, completion_reply("followed")

    with FakeOpenAI(redirect) as server:
        _allow(monkeypatch, server.base_url)
        with pytest.raises(RemoteError) as error:
            EndpointClient(server.base_url, "m").chat([{"role": "user", "content": "x"}])
    assert "redirect" in str(error.value) and [r["path"] for r in server.requests] == ["/v1/chat/completions"]


def test_a_response_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(clients, "MAX_RESPONSE_BYTES", 2000)
    with FakeOpenAI(lambda path, body: (200, completion_reply("x" * 5000))) as server:
        _allow(monkeypatch, server.base_url)
        with pytest.raises(RemoteError) as error:
            EndpointClient(server.base_url, "m").complete("p")
    assert "over" in str(error.value)


def test_transient_errors_are_retried_and_a_refusal_fails_at_once_with_the_servers_message(monkeypatch):
    answers = iter([(503, {"error": {"message": "overloaded"}}), (200, completion_reply("finally"))])
    with FakeOpenAI(lambda path, body: next(answers)) as server:
        _allow(monkeypatch, server.base_url)
        assert EndpointClient(server.base_url, "m").complete("p").text == "finally"
    assert len(server.requests) == 2
    with FakeOpenAI(lambda path, body: (400, {"error": {"message": "model 'm' does not exist"}})) as server:
        _allow(monkeypatch, server.base_url)
        with pytest.raises(RemoteError) as error:
            EndpointClient(server.base_url, "m", api_key="sk-secret").complete("p")
    assert len(server.requests) == 1 and error.value.status == 400
    assert "model 'm' does not exist" in str(error.value) and "sk-secret" not in str(error.value)


def test_a_slow_endpoint_times_out(monkeypatch):
    monkeypatch.setattr(clients, "RETRIES", 0)

    def slow(path, body):
        time.sleep(1.5)
        return 200, completion_reply("late")

    with FakeOpenAI(slow) as server:
        _allow(monkeypatch, server.base_url)
        started = time.monotonic()
        with pytest.raises(RemoteError) as error:
            EndpointClient(server.base_url, "m", timeout_s=0.3).complete("p")
    assert time.monotonic() - started < 1.4 and error.value.retryable


def test_a_batch_runs_in_parallel_and_keeps_its_order(monkeypatch):
    def echo(path, body):
        time.sleep(0.3)
        return 200, completion_reply(body["prompt"].upper())

    with FakeOpenAI(echo) as server:
        _allow(monkeypatch, server.base_url)
        started = time.monotonic()
        replies = EndpointClient(server.base_url, "m").send_many([clients.request(p) for p in ("a", "b", "c", "d")])
    assert [r.text for r in replies] == ["A", "B", "C", "D"] and time.monotonic() - started < 1.0


# ---------------------------------------------------------------------------------- deployment


def _answer(text, tool_calls=None):
    return lambda request: [{"type": "start", "replica": "fake", "consumer": "fake", "prompt_tokens": 3},
                            {"type": "delta", "text": text, "tokens": 1},
                            end_event(text, 3, 1, finish="tool_calls" if tool_calls else "stop", tool_calls=tool_calls)]


def test_the_deployment_client_speaks_the_serving_protocol(redis_server):
    import os

    deployment = next(_deployments)
    with FakeReplica(os.environ["REDIS_URL"], deployment, script=_answer("Hello")) as replica:
        client = DeploymentClient(deployment, timeout_s=10)  # the worker's REDIS_URL, as replicas read it
        try:
            assert client.chat([{"role": "user", "content": "Hi"}], max_tokens=7).text == "Hello"
            assert client.complete("Once", max_tokens=3).text == "Hello"
        finally:
            client.close()
    chat, completion = replica.requests
    assert chat["kind"] == "chat" and chat["messages"] == [{"role": "user", "content": "Hi"}]
    assert (chat["max_tokens"], chat["temperature"], chat["stream"], chat["tools"]) == (7, 0.0, False, None)
    assert chat["deadline"] - chat["created"] == pytest.approx(10)
    assert completion["kind"] == "completion" and completion["prompt"] == "Once"
    # What the replica's engine validates accepts it (workers/core/inference/engine.py).
    from workers.core.inference.engine import EngineConfig, request_from_payload

    assert request_from_payload(chat, EngineConfig()).messages == chat["messages"]
    assert request_from_payload(completion, EngineConfig()).prompt == "Once"


def test_a_deployment_batch_is_queued_at_once_and_tool_calls_come_back_in_the_text(redis_server):
    import os

    deployment = next(_deployments)
    with FakeReplica(os.environ["REDIS_URL"], deployment, script=_answer("", tool_calls=[CALL])) as replica:
        client = DeploymentClient(deployment, timeout_s=10)
        replies = client.send_many([clients.request([{"role": "user", "content": f"q{i}"}], tools=[{"type": "function",
                                    "function": {"name": "calculator"}}]) for i in range(3)])
        client.close()
    assert [extract("tool_call", r.output()) for r in replies] == ["42"] * 3
    assert sorted(r["messages"][0]["content"] for r in replica.requests) == ["q0", "q1", "q2"]
    assert all(r["tools"][0]["function"]["name"] == "calculator" for r in replica.requests)


def test_a_replica_error_fails_the_request_and_a_lost_replica_is_retried(redis_server, monkeypatch):
    import os

    deployment = next(_deployments)
    refusal = lambda request: [{"type": "error", "status": 400, "code": "invalid_request",  # noqa: E731
                                "message": "prompt: has 9000 tokens; this model's context is 8192 tokens"}]
    with FakeReplica(os.environ["REDIS_URL"], deployment, script=refusal) as replica:
        with pytest.raises(RemoteError) as error:
            DeploymentClient(deployment, timeout_s=10).complete("p")
    assert error.value.status == 400 and "8192 tokens" in str(error.value) and len(replica.requests) == 1

    deployment = next(_deployments)
    attempts = iter([[{"type": "error", "status": 502, "code": "replica_lost", "message": "lost"}], _answer("ok")(None)])
    with FakeReplica(os.environ["REDIS_URL"], deployment, script=lambda request: next(attempts)) as replica:
        assert DeploymentClient(deployment, timeout_s=10).complete("p").text == "ok"
    assert len(replica.requests) == 2


def test_no_ready_replica_and_a_request_past_its_deadline_fail_clearly_and_the_late_one_is_cancelled(redis_server, monkeypatch):
    import os

    monkeypatch.setattr(clients, "RETRIES", 0)
    deployment = next(_deployments)
    with FakeReplica(os.environ["REDIS_URL"], deployment, state="loading"):
        with pytest.raises(RemoteError) as error:
            DeploymentClient(deployment, timeout_s=1).complete("p")
    assert error.value.status == 503 and "no replica" in str(error.value)

    deployment = next(_deployments)
    with FakeReplica(os.environ["REDIS_URL"], deployment, script=lambda request: "hold") as replica:
        with pytest.raises(RemoteError) as error:
            DeploymentClient(deployment, timeout_s=1).complete("p")
        deadline = time.monotonic() + 5
        while not replica.cancelled and time.monotonic() < deadline:
            time.sleep(0.02)
    assert error.value.status == 504 and replica.cancelled == [replica.requests[0]["id"]]


def test_the_client_finds_replicas_through_the_deployments_index_and_forgets_one_that_died_there(redis_server):
    """No SCAN of the broker's keyspace: the replicas' set names them; a member whose hash expired
    (a replica killed before it could leave the set) is dropped by the first reader."""
    import os

    import redis

    from workers.core.inference import protocol

    deployment = next(_deployments)
    broker = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    broker.sadd(protocol.replica_index(deployment), "killed")  # its hash is gone
    with FakeReplica(os.environ["REDIS_URL"], deployment, replica_id="alive", script=_answer("Hi")):
        client = DeploymentClient(deployment, timeout_s=5)
        try:
            assert client.complete("p", max_tokens=2).text == "Hi"
        finally:
            client.close()
        assert broker.smembers(protocol.replica_index(deployment)) == {"alive"}
    assert broker.smembers(protocol.replica_index(deployment)) == set()


def test_a_deployment_client_without_a_broker_url_says_so(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(RemoteError) as error:
        DeploymentClient(1)
    assert "REDIS_URL" in str(error.value)


def test_the_judge_function_is_a_chat_callable_on_either_client(monkeypatch):
    with FakeOpenAI(lambda path, body: (200, chat_reply(f"Rating: [[{len(body['messages'])}]]"))) as server:
        _allow(monkeypatch, server.base_url)
        judge = clients.judge_function(EndpointClient(server.base_url, "judge"), temperature=0.7)
        assert judge([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "Rating: [[2]]"
    assert server.requests[0]["body"]["temperature"] == 0.7
    assert json.dumps(server.requests[0]["body"]["messages"]).count("role") == 2
