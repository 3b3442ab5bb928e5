"""The scripted stand-in for a model (the only place a stand-in is fine: the loop's own logic).
Each reply is a dict {"text", "tool_calls", "usage"}, or a callable taking the messages it is
sent (to answer from what the loop put in them). Every request is recorded."""
from __future__ import annotations

import json


class ScriptedModel:
    def __init__(self, *replies, repeat_last: bool = False):
        self.replies = list(replies)
        self.repeat_last = repeat_last
        self.requests: list[dict] = []

    def __call__(self, messages, tools=None, stop=None):
        self.requests.append({"messages": messages, "tools": tools, "stop": stop})
        index = len(self.requests) - 1
        if index >= len(self.replies):
            if not self.repeat_last:
                raise AssertionError(f"the script has no reply #{index + 1}")
            index = len(self.replies) - 1
        reply = self.replies[index]
        return reply(messages) if callable(reply) else reply


def call(name: str, arguments, call_id: str = "call_1") -> dict:
    """An OpenAI tool call as the serving engine returns it."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def reply(text: str = "", *calls, usage=None) -> dict:
    return {"text": text, "tool_calls": list(calls) or None,
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
