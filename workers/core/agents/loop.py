"""The agent loop: ask the model, run the tools it calls, hand back the observations, until it
answers, its turns run out, or the deadline passes.

`chat(messages, tools=None, stop=None)` is any model client returning {"text", "tool_calls",
"usage"} (the studio passes one that calls a deployment over the serving protocol). A turn is one
model call. Every step is reported through `on_step` as it happens (and kept in the trace):

    {"index", "type": "model", "turn", "output", "thought", "tool_calls": [{"id", "name",
     "arguments"}], "duration_ms", "tokens": usage or None}
    {"index", "type": "tool", "turn", "call_id", "tool", "arguments", "observation",
     "status": "ok" | "error", "duration_ms"}
    {"index", "type": "final", "turn", "answer", "stopped", "duration_ms"}   (duration: the whole run)

A tool's error, a timeout, bad arguments and a malformed call are observations (never an
exception out of the loop); an exception from `on_step` is not caught, so a reporter's
JobCancelled stops the run. The model call runs in a helper thread bounded by the remaining
deadline, so a stuck client cannot hold the loop past it. `stopped` says why the run ended:
"answer", "max_turns", "deadline" or "model_error" (the client raised; its message is the answer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .protocols import PROTOCOLS, get_protocol
from .tools.base import ToolContext, ToolError, error, is_error, parse_arguments, run_in_thread

MAX_TURNS = 20
MAX_TRACE_TEXT = 16_000  # characters of a model output kept in a trace step
STOPS = ("answer", "max_turns", "deadline", "model_error")


@dataclass
class AgentResult:
    answer: str
    stopped: str  # one of STOPS
    turns: int  # model calls made
    trace: list[dict] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)  # the conversation as the model last saw it, plus the end

    def as_dict(self) -> dict:
        return {"answer": self.answer, "trace": self.trace, "turns": self.turns, "stopped": self.stopped}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TRACE_TEXT else text[:MAX_TRACE_TEXT] + "... [truncated]"


def _reply_fields(reply: Any) -> tuple[str, list | None, dict | None]:
    """(text, tool_calls, usage) of a client's reply: a dict, or an object with those attributes."""
    get = reply.get if isinstance(reply, dict) else (lambda key, default=None: getattr(reply, key, default))
    text, calls, usage = get("text", ""), get("tool_calls"), get("usage")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TypeError(f"the model client returned text of type {type(text).__name__}")
    return text, calls if isinstance(calls, list) else None, usage if isinstance(usage, dict) else None


def _shown(arguments: Any) -> Any:
    """Arguments as the trace shows them: the object when they parse, else what the model wrote."""
    try:
        return parse_arguments(arguments)
    except ToolError:
        return arguments


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def run_agent(chat: Callable[..., Any], tools: list, messages: list[dict], protocol: str = "native",
              max_turns: int = 5, deadline_s: float = 120.0, on_step: Callable[[dict], None] | None = None) -> AgentResult:
    """Run the agent on `messages` (OpenAI-shaped, ending with the user's message) with `tools`."""
    if not 1 <= int(max_turns) <= MAX_TURNS:
        raise ValueError(f"max_turns must be between 1 and {MAX_TURNS}, got {max_turns}")
    if not deadline_s > 0:
        raise ValueError(f"deadline_s must be positive, got {deadline_s}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    speaker = get_protocol(protocol)
    registry = {tool.name: tool for tool in tools}
    conversation = speaker.start(messages, tools)
    request = speaker.request(tools)
    started = time.monotonic()
    deadline = started + float(deadline_s)
    context = ToolContext(deadline=deadline)
    trace: list[dict] = []
    turn = 0

    def record(step: dict) -> None:
        step = {"index": len(trace), **step}
        trace.append(step)
        if on_step is not None:
            on_step(step)

    def finish(answer: str, stopped: str) -> AgentResult:
        record({"type": "final", "turn": turn, "answer": answer, "stopped": stopped,
                "duration_ms": _ms(time.monotonic() - started)})
        return AgentResult(answer, stopped, turn, trace, conversation)

    def out_of_time() -> AgentResult:
        return finish(f"Stopped: the agent reached its {float(deadline_s):g}-second deadline before a final answer.",
                      "deadline")

    while turn < max_turns:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return out_of_time()
        turn += 1
        sent = [dict(message) for message in conversation]
        asked = time.monotonic()
        try:
            finished, reply = run_in_thread(lambda: chat(sent, tools=request["tools"], stop=request["stop"]),
                                            remaining, "agent-model")
            if not finished:
                return out_of_time()
            text, tool_calls, usage = _reply_fields(reply)
        except Exception as exc:  # noqa: BLE001 - the trace so far is kept; the reason is the answer
            return finish(f"Stopped: the model call failed: {str(exc)[:500] or exc.__class__.__name__}", "model_error")
        decision = speaker.parse(text, tool_calls, tools)
        record({"type": "model", "turn": turn, "output": _clip(text), "thought": _clip(decision.thought),
                "tool_calls": [{"id": call.id, "name": call.name, "arguments": _shown(call.arguments)}
                               for call in decision.calls],
                "duration_ms": _ms(time.monotonic() - asked), "tokens": usage})
        if decision.final is not None:
            conversation.append({"role": "assistant", "content": decision.final if protocol == "native" else text})
            return finish(decision.final, "answer")
        observations = []
        for call in decision.calls:
            began = time.monotonic()
            if call.problem:
                observation = error(call.problem)
            else:
                observation = registry[call.name].run(call.arguments, context)
            observations.append(observation)
            record({"type": "tool", "turn": turn, "call_id": call.id, "tool": call.name, "arguments": _shown(call.arguments),
                    "observation": observation, "status": "error" if is_error(observation) else "ok",
                    "duration_ms": _ms(time.monotonic() - began)})
        speaker.add_turn(conversation, decision, observations)
    if time.monotonic() >= deadline:
        return out_of_time()
    return finish(f"Stopped: the agent used all {max_turns} of its turns without reaching a final answer.",
                  "max_turns")
