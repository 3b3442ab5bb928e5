"""How the loop and the model talk about tools: two protocols with one interface.

native  OpenAI tool calling: the request carries `tools` (rendered by the chat template; the
        serving engine parses the model's `<tool_call>` blocks into `tool_calls`,
        workers/core/inference/tools.py); each result goes back as a {"role": "tool",
        "tool_call_id"} message. A reply whose calls were not parsed upstream (a client that
        returns raw text) is parsed here with the engine's own parser.
react   ReAct as text (Lagent's ReAct format): a system prompt lists the tools with their
        schemas and the format; the model writes "Thought:", then "Action:" and "Action
        Input:" (a JSON object) or "Final Answer:"; the result comes back as "Observation: ...".
        Works with any chat model: no `tools` in the request, and observations go back as user
        messages (a mid-conversation system message is dropped by some chat templates, e.g.
        chatml-tools). Text after "Observation:" is the model imagining a result and is cut.

A reply that tries to act but cannot be understood (an unparseable call, an unknown tool, an
Action without a usable Action Input) becomes a call with a `problem`: it is not run, and the
problem, with the expected format, is the observation the model gets next.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from workers.core.inference.chat import template_supports_tools
from workers.core.inference.tools import OPEN_TAG, parse_tool_calls

from .tools.base import ToolError, parse_arguments

PROTOCOLS = ("native", "react")


def default_protocol(chat_template: str | None) -> str:
    """native where the deployment's chat template renders tools, else react."""
    return "native" if template_supports_tools(chat_template) else "react"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: Any  # the arguments as the model gave them (object or text)
    problem: str = ""  # set when the call cannot be run; the observation explains it


@dataclass
class Decision:
    text: str  # the model's output as kept in the conversation
    thought: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    final: str | None = None  # the answer, when this turn ends the run


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _names(tools) -> str:
    return ", ".join(tool.name for tool in tools)


class NativeProtocol:
    name = "native"

    def start(self, messages: list[dict], tools) -> list[dict]:
        return [dict(message) for message in messages]

    def request(self, tools) -> dict:
        return {"tools": [tool.spec() for tool in tools] or None, "stop": None}

    def parse(self, text: str, tool_calls, tools) -> Decision:
        known = {tool.name for tool in tools}
        specs = [tool.spec() for tool in tools]
        calls = list(tool_calls or [])
        if not calls and text and known:
            text, calls = parse_tool_calls(text, specs)
        if not calls:
            if OPEN_TAG in (text or ""):
                return Decision(text, calls=[ToolCall(_new_id(), "", text, self._format_problem(tools))])
            return Decision(text, final=(text or "").strip())
        decision = Decision(text or "")
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                decision.calls.append(ToolCall(_new_id(), "", call, self._format_problem(tools)))
                continue
            name, arguments = function["name"], function.get("arguments", {})
            call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else _new_id()
            problem = "" if name in known else f"unknown tool {name!r}; the tools are: {_names(tools)}"
            decision.calls.append(ToolCall(call_id, name, arguments, problem))
        return decision

    @staticmethod
    def _format_problem(tools) -> str:
        return ("the tool call could not be read. Write it as <tool_call>{\"name\": <one of: "
                f"{_names(tools)}>, \"arguments\": {{...}}}}</tool_call>")

    def add_turn(self, conversation: list[dict], decision: Decision, observations: list[str]) -> None:
        pairs = list(zip(decision.calls, observations))
        named = [(call, obs) for call, obs in pairs if call.name]  # answered by id, even an unknown tool
        unreadable = [obs for call, obs in pairs if not call.name]
        if named:
            conversation.append({"role": "assistant", "content": decision.text, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": _arguments_json(call.arguments)}}
                for call, _ in named]})
            conversation.extend({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": obs}
                                for call, obs in named)
        if unreadable:
            # No call id to answer: the model's text stays as it wrote it, the problem follows as a
            # user turn (the only role every chat template renders after an assistant turn).
            if not named:
                conversation.append({"role": "assistant", "content": decision.text})
            conversation.append({"role": "user", "content": "\n".join(unreadable)})


def _arguments_json(arguments: Any) -> str:
    """Arguments as the JSON text an assistant message carries; what was not a JSON object is
    sent as {} (the chat template would refuse it; the observation told the model what was wrong)."""
    try:
        return json.dumps(parse_arguments(arguments), ensure_ascii=False)
    except (ToolError, TypeError, ValueError):
        return "{}"


# ------------------------------------------------------------------------------------- ReAct

REACT_PROMPT = """You are an assistant that can use tools. The tools are:
{tool_descriptions}

To use a tool, reply in exactly this format and then stop:
Thought: think about what you need to do next
Action: the tool's name, one of [{tool_names}]
Action Input: the tool's arguments as one JSON object, e.g. {example}

The tool's result then comes back to you as:
Observation: the result

When you know the answer, or need no tool, reply in this format:
Thought: how you reached the answer
Final Answer: the answer for the user

Begin!"""

_OBSERVATION = re.compile(r"^[ \t]*(?:Observation|Response)\s*:", re.MULTILINE)
_ACTION = re.compile(r"^[ \t]*Action\s*:[ \t]*(.*)$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"^[ \t]*Action\s*Input\s*:[ \t]*", re.MULTILINE)
_FINAL = re.compile(r"^[ \t]*Final\s*Answer\s*:[ \t]*", re.MULTILINE)
_THOUGHT = re.compile(r"^[ \t]*Thought\s*:[ \t]*", re.MULTILINE)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def _example(tool) -> str:
    properties = tool.parameters.get("properties", {})
    required = tool.parameters.get("required", list(properties)[:1])
    example = {}
    for name in required:
        kind = properties.get(name, {}).get("type", "string")
        example[name] = {"string": "...", "integer": 1, "number": 1.5, "boolean": True}.get(kind, "...")
    return json.dumps(example)


def _single_string_parameter(tool) -> str | None:
    """The name of a tool's only required argument when it is a string: "Action Input: 2 + 3"
    then means {"expression": "2 + 3"} (Lagent passes such plain inputs as they are)."""
    required = tool.parameters.get("required", [])
    if len(required) == 1 and tool.parameters.get("properties", {}).get(required[0], {}).get("type") == "string":
        return required[0]
    return None


class ReActProtocol:
    name = "react"

    def system_prompt(self, tools) -> str:
        descriptions = "\n".join(
            f"- {tool.name}: {tool.description.rstrip('.')}. Arguments (JSON schema): "
            f"{json.dumps(tool.parameters, ensure_ascii=False)}"
            for tool in tools) or "(none)"
        example = _example(tools[0]) if tools else "{}"
        return REACT_PROMPT.format(tool_descriptions=descriptions, tool_names=_names(tools), example=example)

    def start(self, messages: list[dict], tools) -> list[dict]:
        prompt = self.system_prompt(tools)
        conversation = []
        for message in messages:
            role, content = message.get("role"), message.get("content") or ""
            if role == "assistant" and message.get("tool_calls"):  # history from a native run, as ReAct text
                lines = [content] if content else []
                for call in message["tool_calls"]:
                    function = call.get("function", {}) if isinstance(call, dict) else {}
                    lines.append(f"Action: {function.get('name', '')}\nAction Input: "
                                 f"{_arguments_json(function.get('arguments', {}))}")
                conversation.append({"role": "assistant", "content": "\n".join(lines)})
            elif role == "tool":
                conversation.append({"role": "user", "content": f"Observation: {content}"})
            else:
                conversation.append({"role": role, "content": content})
        if conversation and conversation[0]["role"] == "system":
            conversation[0] = {"role": "system", "content": f"{conversation[0]['content']}\n\n{prompt}"}
        else:
            conversation.insert(0, {"role": "system", "content": prompt})
        return conversation

    def request(self, tools) -> dict:
        return {"tools": None, "stop": ["Observation:"]}  # the model would only imagine the result

    def parse(self, text: str, tool_calls, tools) -> Decision:
        text = text or ""
        imagined = _OBSERVATION.search(text)
        if imagined:
            text = text[:imagined.start()]
        text = text.rstrip()
        action, final = _ACTION.search(text), _FINAL.search(text)
        thought_end = min(m.start() for m in (action, final) if m) if (action or final) else len(text)
        thought_match = _THOUGHT.search(text, 0, thought_end)
        thought = text[thought_match.end() if thought_match else 0:thought_end].strip()
        if final and (not action or final.start() < action.start()):
            return Decision(text, thought, final=text[final.end():].strip())
        if not action:
            # No Action at all: a plain reply (any chat model writes those) is the answer.
            return Decision(text, thought, final=thought or text.strip())
        name = action.group(1).strip().strip("`'\"[]() ")
        known = {tool.name: tool for tool in tools}
        call_id = _new_id()
        if name not in known:
            return Decision(text, thought, calls=[ToolCall(call_id, name, "", self._problem(
                f"unknown tool {name!r}" if name else "the Action line names no tool", tools))])
        input_match = _ACTION_INPUT.search(text, action.end())
        raw = text[input_match.end():].strip() if input_match else ""
        arguments, problem = self._arguments(raw, known[name], input_match is not None)
        return Decision(text, thought, calls=[ToolCall(call_id, name, arguments if not problem else raw,
                                                       self._problem(problem, tools) if problem else "")])

    def _arguments(self, raw: str, tool, present: bool) -> tuple[dict, str]:
        if not present or not raw:
            if not tool.parameters.get("required"):
                return {}, ""
            return {}, f"the Action Input for {tool.name} is missing"
        raw = _FENCE.sub("", raw).strip()
        if raw.startswith("{"):
            try:
                value, _end = json.JSONDecoder().raw_decode(raw)
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, dict):
                return value, ""
        single = _single_string_parameter(tool)
        if single and not raw.startswith("{"):
            return {single: raw.strip().strip('"')}, ""
        return {}, f"the Action Input for {tool.name} is not a JSON object"

    @staticmethod
    def _problem(problem: str, tools) -> str:
        return (f"{problem}. Reply in this format:\nThought: ...\nAction: one of [{_names(tools)}]\n"
                "Action Input: {\"argument\": \"value\"}\nor, when you know the answer:\nThought: ...\nFinal Answer: ...")

    def add_turn(self, conversation: list[dict], decision: Decision, observations: list[str]) -> None:
        conversation.append({"role": "assistant", "content": decision.text})
        conversation.append({"role": "user", "content": "\n".join(f"Observation: {obs}" for obs in observations)})


def get_protocol(name: str):
    if name == "native":
        return NativeProtocol()
    if name == "react":
        return ReActProtocol()
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
