"""The agent loop (workers/core/agents/loop.py) with a scripted stand-in for the model, in both
protocols: it follows calls and observations, stops at max turns and at the deadline, and turns a
raising tool, bad arguments and malformed calls into observations the model reads next."""
from __future__ import annotations

import json
import time

import pytest

from tests.core.agents.scripted import ScriptedModel, call, reply
from workers.core.agents.loop import run_agent
from workers.core.agents.tools import Tool, ToolError, build_tools
from workers.core.reporting import JobCancelled

USER = [{"role": "user", "content": "What is 1234 * 5678?"}]


def boom_tool() -> Tool:
    def explode(arguments, context):
        raise RuntimeError("the disk is on fire")
    return Tool("boom", "Always fails", {"type": "object", "properties": {}}, explode)


def sleepy_tool(seconds: float) -> Tool:
    def sleep(arguments, context):
        time.sleep(seconds)
        return "woke up"
    return Tool("sleepy", "Sleeps", {"type": "object", "properties": {}}, sleep, timeout_s=30)


# ------------------------------------------------------------------------------------- native

def test_native_tool_calling_runs_the_call_and_returns_the_observation_by_call_id():
    model = ScriptedModel(reply("", call("calculator", {"expression": "1234 * 5678"}, "call_7")),
                          reply("1234 * 5678 = 7006652."))
    seen = []

    result = run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=4, deadline_s=30,
                       on_step=lambda step: seen.append((step["type"], len(model.requests))))

    assert (result.answer, result.stopped, result.turns) == ("1234 * 5678 = 7006652.", "answer", 2)
    first, second = model.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["calculator"]
    assert first["messages"] == USER
    assistant, tool_message = second["messages"][-2:]
    assert assistant["tool_calls"][0]["id"] == "call_7"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"expression": "1234 * 5678"}
    assert tool_message == {"role": "tool", "tool_call_id": "call_7", "name": "calculator",
                            "content": '{"result": 7006652}'}
    # Each step is reported as it happens: the tool's step before the second model call.
    assert seen == [("model", 1), ("tool", 1), ("model", 2), ("final", 2)]
    model_step, tool_step = result.trace[0], result.trace[1]
    assert model_step["tokens"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert model_step["tool_calls"] == [{"id": "call_7", "name": "calculator", "arguments": {"expression": "1234 * 5678"}}]
    assert (tool_step["tool"], tool_step["status"], tool_step["observation"]) == ("calculator", "ok", '{"result": 7006652}')
    assert all(isinstance(step["duration_ms"], int) for step in result.trace)
    assert [step["index"] for step in result.trace] == list(range(len(result.trace)))


def test_native_calls_left_in_the_text_are_parsed_with_the_engines_parser():
    text = 'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 ** 10"}}\n</tool_call>'
    model = ScriptedModel(reply(text), reply("It is 1024."))

    result = run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=3, deadline_s=30)

    assert result.answer == "It is 1024."
    assert model.requests[1]["messages"][-1]["content"] == '{"result": 1024}'
    assert model.requests[1]["messages"][-2]["content"] == "Let me compute."


def test_a_raising_tool_becomes_an_error_observation_and_the_loop_goes_on():
    model = ScriptedModel(reply("", call("boom", {})), reply("The tool failed, sorry."))

    result = run_agent(model, [boom_tool()], USER, "native", max_turns=3, deadline_s=30)

    assert result.stopped == "answer"
    observation = model.requests[1]["messages"][-1]["content"]
    assert observation == "error: boom failed: RuntimeError: the disk is on fire"
    assert result.trace[1]["status"] == "error"


def test_bad_arguments_and_an_unknown_tool_are_observations_not_runs():
    model = ScriptedModel(
        reply("", call("calculator", "{not json", "call_a"), call("calculator", {"expr": "1"}, "call_b"),
              call("rm_rf", {}, "call_c")),
        reply("ok"))

    result = run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=3, deadline_s=30)

    tools = {m["tool_call_id"]: m["content"] for m in model.requests[1]["messages"] if m["role"] == "tool"}
    assert tools["call_a"].startswith("error: bad arguments for calculator: arguments are not valid JSON")
    assert tools["call_b"] == ("error: bad arguments for calculator: expression: is required; "
                               "arguments: unknown argument 'expr' (allowed: expression)")
    assert tools["call_c"] == "error: unknown tool 'rm_rf'; the tools are: calculator"
    # The unparseable arguments go back as {} (a chat template refuses invalid JSON); the trace keeps them.
    sent = model.requests[1]["messages"][-4]["tool_calls"]
    assert sent[0]["function"]["arguments"] == "{}"
    assert result.trace[0]["tool_calls"][0]["arguments"] == "{not json"


def test_a_native_call_that_cannot_be_read_is_answered_with_the_expected_format():
    broken = '<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>'
    model = ScriptedModel(reply(broken), reply("4"))

    result = run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=3, deadline_s=30)

    assistant, problem = model.requests[1]["messages"][-2:]
    assert assistant == {"role": "assistant", "content": broken}
    assert problem["role"] == "user"
    assert problem["content"].startswith("error: the tool call could not be read. Write it as <tool_call>")
    assert "calculator" in problem["content"]
    assert result.answer == "4"


def test_the_loop_stops_at_max_turns_with_a_clear_final_message():
    model = ScriptedModel(reply("", call("calculator", {"expression": "1 + 1"})), repeat_last=True)

    result = run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=3, deadline_s=30)

    assert (result.stopped, result.turns, len(model.requests)) == ("max_turns", 3, 3)
    assert result.answer == "Stopped: the agent used all 3 of its turns without reaching a final answer."
    assert [s["type"] for s in result.trace] == ["model", "tool"] * 3 + ["final"]
    assert result.trace[-1]["stopped"] == "max_turns"


def test_the_loop_stops_at_the_deadline_even_inside_a_slow_tool_or_model():
    model = ScriptedModel(reply("", call("sleepy", {})), repeat_last=True)
    started = time.monotonic()

    result = run_agent(model, [sleepy_tool(5)], USER, "native", max_turns=10, deadline_s=0.6)

    assert time.monotonic() - started < 2.0
    assert result.stopped == "deadline"
    assert result.answer == "Stopped: the agent reached its 0.6-second deadline before a final answer."
    assert result.trace[1]["observation"].startswith("error: sleepy did not finish within")

    def slow_model(messages):
        time.sleep(5)
        return reply("too late")
    started = time.monotonic()
    result = run_agent(ScriptedModel(slow_model), [], USER, "native", max_turns=2, deadline_s=0.5)
    assert (result.stopped, time.monotonic() - started < 2.0) == ("deadline", True)


def test_a_failing_model_client_ends_the_run_with_its_reason_and_keeps_the_trace():
    def unreachable(messages):
        raise ConnectionError("deployment 3 has no ready replica")
    model = ScriptedModel(reply("", call("calculator", {"expression": "2 + 2"})), unreachable)

    result = run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=3, deadline_s=30)

    assert result.stopped == "model_error"
    assert result.answer == "Stopped: the model call failed: deployment 3 has no ready replica"
    assert [s["type"] for s in result.trace] == ["model", "tool", "final"]


def test_an_exception_from_on_step_stops_the_run_so_a_cancel_takes_effect():
    model = ScriptedModel(reply("", call("calculator", {"expression": "2 + 2"})), repeat_last=True)

    def cancel_at_tool(step):
        if step["type"] == "tool":
            raise JobCancelled("stopped on request")

    with pytest.raises(JobCancelled):
        run_agent(model, build_tools(["calculator"]), USER, "native", max_turns=5, deadline_s=30, on_step=cancel_at_tool)
    assert len(model.requests) == 1


@pytest.mark.parametrize("bad, message", [
    ({"max_turns": 0}, "max_turns must be between 1 and 20"),
    ({"max_turns": 21}, "max_turns must be between 1 and 20"),
    ({"deadline_s": 0}, "deadline_s must be positive"),
    ({"protocol": "xml"}, "protocol must be one of native, react"),
])
def test_run_agent_refuses_out_of_range_settings(bad, message):
    settings = {"protocol": "native", "max_turns": 3, "deadline_s": 10, **bad}
    with pytest.raises(ValueError, match=message):
        run_agent(ScriptedModel(), [], USER, **settings)


# ------------------------------------------------------------------------------------- ReAct

def test_react_lists_the_tools_runs_the_action_and_feeds_back_the_observation():
    model = ScriptedModel(
        reply('Thought: I should multiply.\nAction: calculator\nAction Input: {"expression": "1234 * 5678"}\n'
              "Observation: 99\nThought: imagined\nFinal Answer: 99"),
        reply("Thought: The calculator says 7006652.\nFinal Answer: 7006652"))

    result = run_agent(model, build_tools(["calculator", "unit_converter"]), USER, "react", max_turns=4, deadline_s=30)

    assert (result.answer, result.stopped, result.turns) == ("7006652", "answer", 2)
    first = model.requests[0]
    assert first["tools"] is None and "Observation:" in first["stop"][-1]
    system = first["messages"][0]
    assert system["role"] == "system"
    assert "Action: the tool's name, one of [calculator, unit_converter]" in system["content"]
    assert '"expression"' in system["content"] and "Final Answer:" in system["content"]
    assert first["messages"][1:] == USER
    assistant, observation = model.requests[1]["messages"][-2:]
    # What the model imagined after "Observation:" is cut; the real result follows.
    assert assistant == {"role": "assistant", "content": 'Thought: I should multiply.\nAction: calculator\n'
                                                         'Action Input: {"expression": "1234 * 5678"}'}
    assert observation == {"role": "user", "content": 'Observation: {"result": 7006652}'}
    assert result.trace[0]["thought"] == "I should multiply."
    assert result.trace[1]["arguments"] == {"expression": "1234 * 5678"}


def test_react_keeps_the_users_system_prompt_before_the_tool_instructions():
    model = ScriptedModel(reply("Final Answer: hi"))
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}]

    run_agent(model, build_tools(["calculator"]), messages, "react", max_turns=1, deadline_s=30)

    system = model.requests[0]["messages"][0]["content"]
    assert system.startswith("You are terse.\n\nYou are an assistant that can use tools.")
    assert [m["role"] for m in model.requests[0]["messages"]] == ["system", "user"]


def test_react_accepts_a_plain_input_for_a_one_string_tool_and_a_fenced_json_input():
    model = ScriptedModel(
        reply("Thought: add\nAction: calculator\nAction Input: 2 + 3"),
        reply('Action: `calculator`\nAction Input: ```json\n{"expression": "7 * 6"}\n```'),
        reply("Final Answer: 5 and 42"))

    result = run_agent(model, build_tools(["calculator"]), USER, "react", max_turns=4, deadline_s=30)

    assert [s["observation"] for s in result.trace if s["type"] == "tool"] == ['{"result": 5}', '{"result": 42}']
    assert result.answer == "5 and 42"


@pytest.mark.parametrize("output, problem", [
    ('Thought: x\nAction: calculator\nAction Input: {"expression": ', "the Action Input for calculator is not a JSON object"),
    ("Thought: x\nAction: calculator", "the Action Input for calculator is missing"),
    ('Thought: x\nAction: shell\nAction Input: {"cmd": "ls"}', "unknown tool 'shell'"),
    ("Thought: x\nAction:\nAction Input: {}", "the Action line names no tool"),
])
def test_a_malformed_react_action_becomes_an_observation_with_the_expected_format(output, problem):
    model = ScriptedModel(reply(output), reply("Final Answer: done"))

    result = run_agent(model, build_tools(["calculator", "unit_converter"]), USER, "react", max_turns=3, deadline_s=30)

    observation = model.requests[1]["messages"][-1]["content"]
    assert observation.startswith(f"Observation: error: {problem}. Reply in this format:")
    assert "Action: one of [calculator, unit_converter]" in observation and "Final Answer: ..." in observation
    assert result.trace[1]["status"] == "error" and result.answer == "done"


def test_react_takes_a_reply_without_any_action_as_the_answer():
    model = ScriptedModel(reply("Paris is the capital of France."))

    result = run_agent(model, build_tools(["calculator"]), USER, "react", max_turns=3, deadline_s=30)

    assert (result.answer, result.stopped, result.turns) == ("Paris is the capital of France.", "answer", 1)


def test_react_raising_tool_and_max_turns():
    model = ScriptedModel(reply("Thought: try\nAction: boom\nAction Input: {}"), repeat_last=True)

    result = run_agent(model, [boom_tool()], USER, "react", max_turns=2, deadline_s=30)

    assert result.stopped == "max_turns" and result.turns == 2
    assert model.requests[1]["messages"][-1]["content"] == ("Observation: error: boom failed: RuntimeError: "
                                                            "the disk is on fire")


def test_react_turns_a_native_history_into_text_it_can_read():
    history = [{"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "", "tool_calls": [call("calculator", {"expression": "2+2"})]},
               {"role": "tool", "tool_call_id": "call_1", "content": '{"result": 4}'},
               {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    model = ScriptedModel(reply("Final Answer: 6"))

    run_agent(model, build_tools(["calculator"]), history, "react", max_turns=1, deadline_s=30)

    sent = model.requests[0]["messages"]
    assert sent[2] == {"role": "assistant", "content": 'Action: calculator\nAction Input: {"expression": "2+2"}'}
    assert sent[3] == {"role": "user", "content": 'Observation: {"result": 4}'}


def test_a_tool_error_raised_as_tool_error_reads_as_its_message():
    def refuse(arguments, context):
        raise ToolError("the quota is spent")
    tool = Tool("quota", "q", {"type": "object", "properties": {}}, refuse)
    model = ScriptedModel(reply("Action: quota\nAction Input: {}"), reply("Final Answer: no"))

    run_agent(model, [tool], USER, "react", max_turns=2, deadline_s=30)

    assert model.requests[1]["messages"][-1]["content"] == "Observation: error: the quota is spent"
