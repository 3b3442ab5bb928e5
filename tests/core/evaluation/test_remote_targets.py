"""Evaluations whose target is not registry weights: an external endpoint (a local HTTP server)
and a deployment (the fake replica on the tests' Redis), and judge benchmarks whose judge is one
of those. The runner is the same; the prediction cache keys a remote target by what it serves."""
from __future__ import annotations

import itertools
import json
import os
import re

import pytest

from tests.core.evaluation.fake_openai import FakeOpenAI, chat_reply
from tests.core.evaluation.helpers import CountingModel, model_spec, quiet, samples_of, write_rows
from tests.serving.fake_replica import FakeReplica, end_event
from workers.core.data.generators import CALCULATOR_TOOL
from workers.core.evaluation import clients
from workers.core.evaluation.judge import parse_rating
from workers.core.evaluation.runner import render_prompt, run_evaluation
from workers.core.evaluation.spec import EvaluateSpec
from workers.core.evaluation.statistics import bootstrap_mean_interval
from workers.core.evaluation.targets import remote_hash
from workers.core.specs import SpecError, build_spec

AGENT_ROWS = [
    {"question": "What is 23 * 17?", "answer": "#### 391"},
    {"question": "What is 1250 - 380?", "answer": "#### 870"},
    {"question": "What is 48 / 6 + 7?", "answer": "#### 15"},
    {"question": "What is 9 * 9?", "answer": "#### 81"},
]
CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "Name a primary colour."}], "reference": "Red, yellow or blue."},
    {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello!"},
                  {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "Paris."}]},
]
_deployments = itertools.count(9200)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(clients, "RETRY_PAUSE_S", 0.0)


def _agent(tmp_path):
    return {"name": "calc", "shape": "qa", "data_path": write_rows(tmp_path / "calc.jsonl", AGENT_ROWS), "chat": True,
            "tools": [CALCULATOR_TOOL], "scorer": {"paradigm": "generation", "extractor": "tool_call"}, "dimension": "agent"}


def _remote_spec(tmp_path, benchmarks, **target):
    return build_spec(EvaluateSpec, {"benchmarks": benchmarks, "cache_dir": str(tmp_path / "cache"), "batch_size": 2,
                                     "max_new_tokens": 16, **target})


def _calculator_agent(path, body):
    """Calls the calculator with the question's expression, except: the second question is
    answered in text, the fourth with a wrong call; after the tool's result, states it."""
    if body["messages"][-1]["role"] == "tool":
        return 200, chat_reply(f"The result is {json.loads(body['messages'][-1]['content'])['result']}.")
    question = body["messages"][-1]["content"].rsplit("What is ", 1)[1].split("?")[0]
    if question.startswith("1250"):
        return 200, chat_reply("1250 - 380 = 870. The answer is 870.")
    expression = "9 * 8" if question == "9 * 9" else question
    call = {"id": "c", "type": "function", "function": {"name": "calculator",
                                                        "arguments": json.dumps({"expression": expression})}}
    return 200, chat_reply(None, [call])


def test_an_agent_benchmark_on_an_allowlisted_endpoint_scores_its_calculator_calls_and_caches_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PUYU_EVAL_ENDPOINT_API_KEY", "sk-from-env")
    with FakeOpenAI(_calculator_agent) as server:
        monkeypatch.setenv("PUYU_EVAL_ENDPOINT_ALLOWLIST", server.base_url)
        spec = _remote_spec(tmp_path, [_agent(tmp_path)], target="endpoint", endpoint_base_url=server.base_url,
                            endpoint_model="agent-1")
        result = run_evaluation(spec, quiet(), api_key="sk-from-the-admin-row")
        samples = samples_of(spec, result, "calc")
        assert [s["extracted"] for s in samples] == ["391", "870", "15", "72"]
        assert [s["correct"] for s in samples] == [True, True, True, False]
        bench = result["benchmarks"]["calc"]
        assert (bench["score"], bench["n"], bench["metric"]) == (0.75, 4, "accuracy")
        assert (bench["tool_call_accuracy"], bench["argument_accuracy"]) == (0.75, 0.5)
        # Each call went back with its result as the OpenAI tool messages; the reply after it is the answer.
        (follow,) = [r for r in server.requests if r["body"]["messages"][-1].get("content") == '{"result": 391}']
        assert follow["body"]["messages"][-2]["tool_calls"][0]["function"] == {
            "name": "calculator", "arguments": json.dumps({"expression": "23 * 17"})}
        assert follow["body"]["messages"][-1]["role"] == "tool" and follow["body"]["tools"] == [CALCULATOR_TOOL]
        assert result["model_hash"] == remote_hash(("endpoint", server.base_url, "agent-1"))
        # The prompt stored is what was sent: the rendered prompt as one user message (the server
        # applies its own template), with the tools. (A batch is sent in parallel: any order.)
        content = render_prompt(spec.benchmarks[0], AGENT_ROWS[0])
        (first,) = [r for r in server.requests if r["body"]["messages"] == [{"role": "user", "content": content}]]
        assert samples[0]["prompt"] == json.dumps([{"role": "user", "content": content}], ensure_ascii=False)
        assert first["body"]["tools"] == [CALCULATOR_TOOL] and first["body"]["model"] == "agent-1"
        assert first["headers"]["Authorization"] == "Bearer sk-from-the-admin-row"
        assert len(server.requests) == 4 + 3  # the questions, then the three that called the calculator

        again = run_evaluation(spec, quiet())  # cached: no request, same result
        assert len(server.requests) == 7 and again["benchmarks"]["calc"]["cached"] == 4
        assert again["benchmarks"]["calc"]["score"] == bench["score"]
        # Another served revision is another model: nothing is reused. The key comes from the environment.
        newer = _remote_spec(tmp_path, [_agent(tmp_path)], target="endpoint", endpoint_base_url=server.base_url,
                             endpoint_model="agent-1", target_revision="2025-01-01")
        assert run_evaluation(newer, quiet())["benchmarks"]["calc"]["computed"] == 4
        assert len(server.requests) == 14 and server.requests[-1]["headers"]["Authorization"] == "Bearer sk-from-env"
    assert "sk-from" not in json.dumps(spec.__dict__)  # no secret in the spec


def _deployment_script(request):
    """The target deployment answers GSM8K-style; the judge deployment rates by answer length."""
    if request["kind"] == "completion":
        number = re.findall(r"What is (\d+) \+ (\d+)\?", request["prompt"])[-1]
        text = f" {number[0]} + {number[1]} = {int(number[0]) + int(number[1])}\n#### {int(number[0]) + int(number[1])}"
    elif request["messages"][0]["content"] == "You are a helpful assistant.":  # the judge's prompt
        answer = request["messages"][1]["content"].split("[The Start of Assistant's Answer]\n")[1].split("\n[The End")[0]
        text = f"Judged. Rating: [[{len(answer) % 10 + 1}]]"
    else:
        text = f"Answer to: {request['messages'][-1]['content']}"
    return [{"type": "start", "replica": "fake", "consumer": "fake", "prompt_tokens": 3}, end_event(text, 3, 5)]


def test_a_deployment_target_runs_generation_and_judge_benchmarks_with_a_deployment_judge(tmp_path, redis_server):
    target_id, judge_id = next(_deployments), next(_deployments)
    qa = {"name": "sums", "shape": "qa", "data_path": write_rows(tmp_path / "sums.jsonl", [
        {"question": "What is 2 + 3?", "answer": "#### 5"}, {"question": "What is 40 + 2?", "answer": "#### 42"}]),
        "scorer": {"paradigm": "generation", "extractor": "gsm8k"}, "dimension": "math"}
    chats = {"name": "chats", "shape": "chat", "data_path": write_rows(tmp_path / "chats.jsonl", CHAT_ROWS),
             "scorer": {"paradigm": "judge", "repeats": 2}, "dimension": "language"}
    spec = _remote_spec(tmp_path, [qa, chats], target="deployment", deployment_id=target_id, target_revision="v-abc123",
                        judge_deployment_id=judge_id, judge_revision="judge-v1")
    url = os.environ["REDIS_URL"]
    with FakeReplica(url, target_id, script=_deployment_script) as target, \
            FakeReplica(url, judge_id, script=_deployment_script) as judge:
        result = run_evaluation(spec, quiet())
        assert result["model_hash"] == remote_hash(("deployment", target_id, "v-abc123"))
        sums = samples_of(spec, result, "sums")
        assert [s["extracted"] for s in sums] == ["5", "42"] and result["benchmarks"]["sums"]["score"] == 1.0
        assert [r["kind"] for r in target.requests[:2]] == ["completion", "completion"]
        chats_out = samples_of(spec, result, "chats")
        # The conversation up to its last user message was sent; the judge saw question, answer, reference.
        sent = [r["messages"] for r in target.requests if r["kind"] == "chat"]
        assert sent == [CHAT_ROWS[0]["messages"], CHAT_ROWS[1]["messages"][:4]]
        assert [s["output"] for s in chats_out] == ["Answer to: Name a primary colour.",
                                                    "Answer to: What is the capital of France?"]
        assert [s["reference"] for s in chats_out] == ["Red, yellow or blue.", "Paris."]
        judged = [r["messages"][1]["content"] for r in judge.requests]
        assert len(judged) == 4  # two answers, two repeats each (answers are judged in parallel: any order)
        france = [j for j in judged if "[Question]\nWhat is the capital of France?" in j]
        assert len(france) == 2 and "Reference Answer]\nParis." in france[0]
        assert "user: Hello!" in france[0]  # the earlier turns are the question's context
        expected = [float(len(s["output"]) % 10 + 1) for s in chats_out]
        assert [s["judge_score"] for s in chats_out] == expected
        assert [s["judgment"]["ratings"] for s in chats_out] == [[e, e] for e in expected]
        bench = result["benchmarks"]["chats"]
        interval = bootstrap_mean_interval(expected)
        assert (bench["metric"], bench["score"], bench["ci_low"], bench["ci_high"], bench["rated"]) == \
               ("judge_score", interval.estimate, interval.low, interval.high, 2)

        again = run_evaluation(spec, quiet())
        assert len(target.requests) == 4 and len(judge.requests) == 4
        assert again["benchmarks"]["chats"]["score"] == bench["score"]


def test_judging_a_local_model_caches_answers_and_judgments_apart(tiny, tmp_path, monkeypatch):
    _, model, tokenizer = tiny

    def judge_script(path, body):
        answer = body["messages"][1]["content"].split("[The Start of Assistant's Answer]\n")[1].split("\n[The End")[0]
        return 200, chat_reply(f"The answer has {len(answer)} characters. Rating: [[{len(answer) % 9 + 1}]]")

    chats = {"name": "chats", "shape": "chat", "data_path": write_rows(tmp_path / "chats.jsonl", CHAT_ROWS),
             "scorer": {"paradigm": "judge"}, "dimension": "language"}
    with FakeOpenAI(judge_script) as server:
        monkeypatch.setenv("PUYU_EVAL_ENDPOINT_ALLOWLIST", server.base_url)
        judge = {"judge_endpoint_base_url": server.base_url, "judge_endpoint_model": "judge-model"}
        spec = model_spec(tiny, tmp_path, [chats], **judge)
        result = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer, judge_api_key="sk-judge")
        samples = samples_of(spec, result, "chats")
        # A local model answers through its chat template.
        assert samples[1]["prompt"] == tokenizer.apply_chat_template(CHAT_ROWS[1]["messages"][:4], add_generation_prompt=True,
                                                                     tokenize=False)
        assert [s["judge_score"] for s in samples] == [parse_rating(s["judgment"]["reasons"][0]) for s in samples]
        assert all(s["judgment"]["reasons"][0].startswith("The answer has") for s in samples)
        assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-judge" and len(server.requests) == 2

        counter = CountingModel(model)
        try:
            cached = run_evaluation(spec, quiet(), model=model, tokenizer=tokenizer, judge_api_key="sk-judge")
            assert counter.calls == 0 and len(server.requests) == 2 and cached["benchmarks"]["chats"]["cached"] == 2
            # More repeats: a new judgment of the cached answers, no new answers.
            more = model_spec(tiny, tmp_path, [{**chats, "scorer": {"paradigm": "judge", "repeats": 3}}], **judge)
            rejudged = run_evaluation(more, quiet(), model=model, tokenizer=tokenizer, judge_api_key="sk-judge")
        finally:
            counter.close()
        assert counter.calls == 0 and len(server.requests) == 2 + 2 * 3
        assert rejudged["benchmarks"]["chats"]["benchmark_hash"] != result["benchmarks"]["chats"]["benchmark_hash"]
        assert [s["output"] for s in samples_of(more, rejudged, "chats")] == [s["output"] for s in samples]


def _chat_bench(tmp_path, **scorer):
    return {"name": "chats", "shape": "chat", "data_path": write_rows(tmp_path / "chats.jsonl", CHAT_ROWS),
            "scorer": {"paradigm": "judge", **scorer}}


def _mc_bench(tmp_path):
    return {"name": "mc", "shape": "multiple_choice", "data_path": write_rows(tmp_path / "mc.jsonl", [
        {"question": "q", "choices": ["a", "b"], "answer": "A"}]), "scorer": {"paradigm": "likelihood"}}


@pytest.mark.parametrize("change, field", [
    (lambda t: {"target": "cloud"}, "target"),
    (lambda t: {"target": "deployment", "target_revision": "v1"}, "deployment_id"),
    (lambda t: {"target": "deployment", "deployment_id": 3}, "target_revision"),
    (lambda t: {"target": "deployment", "deployment_id": 3, "target_revision": "has space"}, "target_revision"),
    (lambda t: {"target": "deployment", "deployment_id": 3, "target_revision": "v1", "model_dir": "/x"}, "model_dir"),
    (lambda t: {"deployment_id": 3}, "deployment_id"),  # a model target with a deployment field
    (lambda t: {"target": "endpoint", "endpoint_base_url": "https://api.example.com/v1", "endpoint_model": "m"},
     "endpoint_base_url"),  # not on the (empty) allowlist
    (lambda t: {"target": "endpoint", "endpoint_base_url": "https://ok.example/v1"}, "endpoint_model"),
    (lambda t: {"target": "deployment", "deployment_id": 3, "target_revision": "v1", "benchmarks": [_mc_bench(t)]},
     "benchmarks[0].scorer.paradigm"),
    (lambda t: {"target": "deployment", "deployment_id": 3, "target_revision": "v1",
                "benchmarks": [{**_agent(t), "chat_template": "chatml-tools"}]}, "benchmarks[0].chat_template"),
    (lambda t: {"benchmarks": [_chat_bench(t)]}, "judge_deployment_id"),  # a judge benchmark without a judge
    (lambda t: {"judge_deployment_id": 2, "judge_endpoint_base_url": "https://ok.example/v1"}, "judge_deployment_id"),
    (lambda t: {"judge_endpoint_base_url": "https://bad.example/v1", "judge_endpoint_model": "j"}, "judge_endpoint_base_url"),
    (lambda t: {"judge_deployment_id": 2, "benchmarks": [_chat_bench(t, repeats=11)]}, "benchmarks[0].scorer.repeats"),
    (lambda t: {"judge_deployment_id": 2, "benchmarks": [_chat_bench(t, temperature=3)]}, "benchmarks[0].scorer.temperature"),
    (lambda t: {"judge_deployment_id": 2, "benchmarks": [{**_chat_bench(t), "chat": False}]}, "benchmarks[0].chat"),
    (lambda t: {"judge_deployment_id": 2, "benchmarks": [{**_chat_bench(t), "template": "{question}"}]},
     "benchmarks[0].template"),
    (lambda t: {"benchmarks": [{**_agent(t), "tools": [CALCULATOR_TOOL] * 9}]}, "benchmarks[0].tools"),
    (lambda t: {"benchmarks": [{**_agent(t), "tools": [{**CALCULATOR_TOOL, "function": {
        **CALCULATOR_TOOL["function"], "description": "x" * 17000}}]}]}, "benchmarks[0].tools"),
    (lambda t: {"benchmarks": [{**_agent(t), "tools": [CALCULATOR_TOOL, CALCULATOR_TOOL]}]}, "benchmarks[0].tools"),
    (lambda t: {"benchmarks": [{**_agent(t), "tools": [{"name": "calculator"}]}]}, "benchmarks[0].tools[0]"),
    (lambda t: {"benchmarks": [{**_agent(t), "chat": False}]}, "benchmarks[0].tools"),
    (lambda t: {"benchmarks": [{**_agent(t), "chat": "yes"}]}, "benchmarks[0].chat"),
    (lambda t: {"benchmarks": [{**_agent(t), "chat_template": "llama3"}]}, "benchmarks[0].chat_template"),
    (lambda t: {"benchmarks": [{"name": "code", "shape": "code", "data_path": write_rows(t / "c.jsonl", []),
                                "chat": True, "scorer": {"paradigm": "code"}}]}, "benchmarks[0].chat"),
])
def test_a_bad_target_judge_or_chat_setting_is_refused_with_the_field_named(tiny, tmp_path, monkeypatch, change, field):
    monkeypatch.setenv("PUYU_EVAL_ENDPOINT_ALLOWLIST", "https://ok.example/v1")
    params = {"model_dir": str(tiny[0]), "cache_dir": str(tmp_path / "c"), "benchmarks": [_agent(tmp_path)]}
    params.update(change(tmp_path))
    if params.get("target") in ("deployment", "endpoint") and "model_dir" not in change(tmp_path):
        params.pop("model_dir")
    with pytest.raises(SpecError) as error:
        build_spec(EvaluateSpec, params)
    assert error.value.field == field


def test_a_chat_row_needs_a_user_message(tmp_path, redis_server):
    rows = [{"messages": [{"role": "assistant", "content": "I speak first."}]}]
    spec = _remote_spec(tmp_path, [{**_chat_bench(tmp_path), "data_path": write_rows(tmp_path / "bad.jsonl", rows)}],
                        target="deployment", deployment_id=next(_deployments), target_revision="v", judge_deployment_id=1)
    with pytest.raises(SpecError) as error:
        run_evaluation(spec, quiet())
    assert error.value.field == "benchmarks[0].data_path line 1.messages" and "user" in error.value.reason
