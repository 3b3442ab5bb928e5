"""The agent_turn job (workers/core/agents/job.py): its spec refuses bad input naming the field,
its runner streams one JSON log line per step, honours cancel, keeps the HTTP allowlist out of
the spec, indexes attached documents once, and by default talks to the deployment over the
serving protocol (here a scripted replica on the tests' Redis)."""
from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.core.agents.scripted import ScriptedModel, call, reply
from tests.serving.fake_replica import FakeReplica, end_event
from workers.core.agents.job import AgentTurnSpec, run_agent_turn
from workers.core.reporting import ConsoleReporter, JobCancelled
from workers.core.specs import SpecError, build_spec

DOCS = Path(__file__).resolve().parents[2] / "fixtures" / "data" / "agent_docs"
USER = [{"role": "user", "content": "What is 12 * 12?"}]
_deployments = itertools.count(9400)


def spec(**params) -> AgentTurnSpec:
    return build_spec(AgentTurnSpec, {"deployment_id": 7, "messages": USER, "tools": ["calculator"], **params})


def reporter() -> ConsoleReporter:
    return ConsoleReporter(stream=io.StringIO())


def steps(of: ConsoleReporter) -> list[dict]:
    return [json.loads(line)["agent_step"] for line in of.lines if line.startswith('{"agent_step"')]


def weather_tool(host: str = "api.example.com") -> dict:
    return {"name": "weather", "description": "Weather", "method": "GET", "url": f"https://{host}/w/{{city}}",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.parametrize("change, field, reason", [
    ({"deployment_id": 0}, "deployment_id", "must name a deployment"),
    ({"messages": []}, "messages", "must hold the conversation"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "must end with the user's message"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages[0].extra", "unknown field"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "must be one of system, user"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": "x" * 32_001}]}, "messages[0].content", "is longer than 32,000"),
    ({"messages": [{"role": "user", "content": "x"}] * 201}, "messages", "more than 200 messages"),
    ({"tools": ["calculator", "shell"]}, "tools[1]", "unknown tool 'shell'"),
    ({"tools": ["calculator", "calculator"]}, "tools[1]", "repeats 'calculator'"),
    ({"protocol": "xml"}, "protocol", "must be one of native, react"),
    ({"max_turns": 21}, "max_turns", "must be between 1 and 20"),
    ({"deadline_s": 601}, "deadline_s", "must be between 1 and 600"),
    ({"tools": ["document_search"]}, "documents", "document_search needs at least one attached document"),
    ({"documents": ["/etc/passwd"], "tools": ["document_search"]}, "documents[0]", "must lie inside the data dir's uploads/"),
    ({"index_dir": "/tmp/../etc", "tools": ["calculator"]}, "index_dir", "must not contain a '..' step"),
    ({"http_tools": [{**weather_tool(), "name": "calculator"}]}, "http_tools[0].name", "already a tool's name"),
    ({"http_tools": [{**weather_tool(), "url": "ftp://x/{city}"}]}, "http_tools[0].url", "must start with http"),
    ({"http_tools": [weather_tool()] * 9}, "http_tools", "more than 8 tools"),
])
def test_the_spec_refuses_bad_input_naming_the_field(change, field, reason):
    with pytest.raises(SpecError) as caught:
        spec(**change)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_documents_must_be_searchable_files_with_one_name_each(tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("hello")
    with pytest.raises(SpecError, match=r"^tools: attached documents need the document_search tool$"):
        spec(documents=[str(notes)])
    with pytest.raises(SpecError, match=r"^document_names: must give one name per document"):
        spec(documents=[str(notes)], document_names=["a", "b"], tools=["document_search"])
    (tmp_path / "run.sh").write_text("echo")
    with pytest.raises(SpecError, match=r"^documents\[0\]: must be a \.txt, \.md, \.markdown, \.pdf file$"):
        spec(documents=[str(tmp_path / "run.sh")], tools=["document_search"])


def test_a_turn_streams_one_json_line_per_step_and_returns_the_answer():
    model = ScriptedModel(reply("", call("calculator", {"expression": "12 * 12"})), reply("12 * 12 = 144"))
    log = reporter()

    result = run_agent_turn(spec(), log, chat=model)

    assert set(result) == {"answer", "trace", "turns", "stopped"}
    assert (result["answer"], result["turns"], result["stopped"]) == ("12 * 12 = 144", 2, "answer")
    assert steps(log) == result["trace"]
    assert [s["type"] for s in steps(log)] == ["model", "tool", "model", "final"]
    assert log.fractions[-1] == 1.0 and all(0 <= f <= 1 for f in log.fractions)


def test_the_loop_goes_on_while_a_step_is_written_and_every_step_is_written_before_the_turn_returns():
    second_call = threading.Event()

    def answer(messages):
        second_call.set()
        return reply("12 * 12 = 144")

    class SlowWriter(ConsoleReporter):
        """Its first write waits until the model was asked again (a write the loop waited for
        would wait out the 10 s: the second call could not come)."""
        waited: list[bool] = []

        def log(self, message, level="info"):
            if not self.waited:
                self.waited.append(second_call.wait(10))
            super().log(message, level)

    log = SlowWriter(stream=io.StringIO())
    result = run_agent_turn(spec(), log, chat=ScriptedModel(reply("", call("calculator", {"expression": "12 * 12"})), answer))

    assert log.waited == [True]
    assert steps(log) == result["trace"] and [s["type"] for s in steps(log)] == ["model", "tool", "model", "final"]


def test_a_reporter_that_cannot_write_a_step_fails_the_turn():
    class Broken(ConsoleReporter):
        def log(self, message, level="info"):
            raise RuntimeError("the log table is gone")

    model = ScriptedModel(reply("", call("calculator", {"expression": "1 + 1"})), reply("2"))
    with pytest.raises(RuntimeError, match="the log table is gone"):
        run_agent_turn(spec(), Broken(stream=io.StringIO()), chat=model)


def test_a_cancel_stops_the_turn_between_steps():
    model = ScriptedModel(reply("", call("calculator", {"expression": "1 + 1"})), repeat_last=True)
    log = reporter()
    log.stop_requested = True

    with pytest.raises(JobCancelled):
        run_agent_turn(spec(max_turns=5), log, chat=model)
    assert len(model.requests) == 1 and len(steps(log)) == 1


def test_http_tools_need_their_host_on_the_administrators_allowlist(monkeypatch):
    turn = spec(http_tools=[weather_tool()])
    with pytest.raises(SpecError, match=r"http_tools\[0\]\.url: the host api\.example\.com:443 is not on"):
        run_agent_turn(turn, reporter(), chat=ScriptedModel(reply("hi")), http_allowlist=[])
    monkeypatch.setenv("PUYU_AGENT_HTTP_ALLOWLIST", "api.example.com")
    model = ScriptedModel(reply("hi"))
    assert run_agent_turn(turn, reporter(), chat=model)["answer"] == "hi"
    assert [t["function"]["name"] for t in model.requests[0]["tools"]] == ["calculator", "weather"]


def test_attached_documents_are_indexed_once_and_searched_with_citations(tmp_path):
    index_dir = tmp_path / "index"
    uploads = [shutil.copy(DOCS / name, tmp_path / name) for name in ("bicycle_care.txt", "tea_handbook.md")]
    turn = spec(tools=["document_search"], protocol="react", index_dir=str(index_dir), documents=[str(p) for p in uploads],
                document_names=["Bike care", "Tea handbook"],
                messages=[{"role": "user", "content": "How often should I oil my bike chain?"}])
    script = lambda: ScriptedModel(  # noqa: E731
        reply('Thought: look it up\nAction: document_search\nAction Input: {"query": "lubricate chain how often"}'),
        reply("Thought: found it\nFinal Answer: Every 300 km [Bike care, chunk 2]."))

    first, log = script(), reporter()
    result = run_agent_turn(turn, log, chat=first)

    observation = first.requests[1]["messages"][-1]["content"]
    assert observation.startswith("Observation: [1] Bike care, chunk 2, characters ")
    assert "every 300 kilometres" in observation
    assert result["answer"] == "Every 300 km [Bike care, chunk 2]."
    assert any(line.startswith("document index built: ") for line in log.lines)
    again = reporter()
    run_agent_turn(turn, again, chat=script())
    assert any(line.startswith("document index reused: ") for line in again.lines)


def test_by_default_the_turn_calls_the_deployment_over_the_serving_protocol(redis_server):
    deployment = next(_deployments)

    def script(request):
        start = {"type": "start", "replica": "fake", "consumer": "fake", "prompt_tokens": 3}
        if request["messages"][-1]["role"] == "user":
            calls = [call("calculator", {"expression": "12 * 12"}, "call_42")]
            return [start, end_event("", 20, 9, finish="tool_calls", tool_calls=calls)]
        return [start, end_event(f"It is {json.loads(request['messages'][-1]['content'])['result']}.", 30, 4)]

    with FakeReplica(os.environ["REDIS_URL"], deployment, script=script) as replica:
        result = run_agent_turn(spec(deployment_id=deployment, max_tokens=64, temperature=0.5), reporter())

    assert (result["answer"], result["stopped"], result["turns"]) == ("It is 144.", "answer", 2)
    first, second = replica.requests
    assert first["kind"] == "chat" and first["tools"][0]["function"]["name"] == "calculator"
    assert (first["max_tokens"], first["temperature"]) == (64, 0.5)
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_42", "name": "calculator",
                                      "content": '{"result": 144}'}
    assert result["trace"][1]["observation"] == '{"result": 144}'
