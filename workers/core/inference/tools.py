"""Tool calls in model output: parse them into OpenAI `tool_calls`, and hold back streamed
content while it may still be a tool call.

Formats understood: Hermes/Qwen `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (one
or more), and a bare JSON function object or list of them (`{"name", "arguments"|"parameters"}`
or OpenAI's `{"type": "function", "function": {...}}`). Only names among the request's tools
count as calls, so a model that merely prints JSON does not produce a phantom call."""
from __future__ import annotations

import json
import re
import uuid

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tool_names(tools: list | None) -> set[str]:
    names = set()
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def parse_tool_calls(text: str, tools: list | None) -> tuple[str, list[dict]]:
    """(content outside the calls, OpenAI tool_calls). No calls → (text, [])."""
    names = tool_names(tools)
    if OPEN_TAG in text:
        calls = [c for c in (_call_from_json(m.group(1), names) for m in _TAGGED.finditer(text)) if c]
        if calls:
            content = text[: text.index(OPEN_TAG)] + _TAGGED.sub("", text[text.index(OPEN_TAG) :])
            return content.strip(), [_openai_call(name, args) for name, args in calls]
        return text, []
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            value = json.loads(stripped)
        except ValueError:
            return text, []
        items = value if isinstance(value, list) else [value]
        calls = [_call_from_obj(item, names) for item in items]
        if items and all(calls):
            return "", [_openai_call(name, args) for name, args in calls]
    return text, []


def _call_from_json(raw: str, names: set[str]):
    try:
        return _call_from_obj(json.loads(raw), names)
    except ValueError:
        return None


def _call_from_obj(obj, names: set[str]):
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(name, str) or name not in names:
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return name, args


def _openai_call(name: str, args: dict) -> dict:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }


class ToolCallHoldback:
    """Filters streamed content when tools are on: output that starts like JSON is held to the
    end (it may be a bare function object); otherwise text streams until `<tool_call>` appears
    (a trailing partial tag is held back), and nothing after the tag is streamed."""

    def __init__(self) -> None:
        self.buffer = ""
        self.released = 0
        self.mode = "undecided"  # undecided | json | text

    def feed(self, delta: str) -> str:
        self.buffer += delta
        if self.mode == "undecided":
            head = self.buffer.lstrip()
            if not head:
                return ""
            if head[0] in "{[":
                self.mode = "json"
            else:
                self.mode = "text"
        if self.mode == "json":
            return ""
        tag_at = self.buffer.find(OPEN_TAG)
        if tag_at >= 0:
            safe = tag_at
        else:
            safe = len(self.buffer)
            for k in range(min(len(OPEN_TAG) - 1, len(self.buffer)), 0, -1):
                if OPEN_TAG.startswith(self.buffer[-k:]):
                    safe = len(self.buffer) - k
                    break
        safe = max(safe, self.released)
        out = self.buffer[self.released : safe]
        self.released = safe
        return out

    def finish(self, content: str) -> str:
        """The rest of `content` (the final text without tool calls) not yet released."""
        return content[self.released :] if content.startswith(self.buffer[: self.released]) else ""
