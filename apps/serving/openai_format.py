"""OpenAI wire format: request validation (into the replica protocol's request) and the shapes
of responses, stream chunks and errors. Pure functions; the views in openai_views.py do the I/O.

Errors follow OpenAI: {"error": {"message", "type", "param", "code"}} with the HTTP status the
official client maps to its exception classes (400, 401, 404, 429, 503, 504)."""
from __future__ import annotations

import json
import time

from django.http import JsonResponse
from django.utils.translation import gettext

ROLES = ("system", "developer", "user", "assistant", "tool")
# Accepted and ignored: they change nothing a single-choice, text-only server returns.
IGNORED_FIELDS = {"user", "metadata", "store", "parallel_tool_calls", "service_tier", "logit_bias", "stream_options",
                  "frequency_penalty", "presence_penalty", "echo", "suffix", "best_of", "n", "logprobs",
                  "top_logprobs", "response_format"}
CHAT_FIELDS = {"model", "messages", "tools", "tool_choice", "max_tokens", "max_completion_tokens", "temperature", "top_p",
               "top_k", "repetition_penalty", "stop", "seed", "stream"}
COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop",
                     "seed", "stream"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.retry_after = status, message, type, code, param, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(max(1, int(self.retry_after)))
        return response


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="invalid_value")


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, gettext("the request body is not valid JSON (%(exc)s)") % {"exc": exc},
                       code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, gettext("the request body must be a JSON object"), code="invalid_json")
    return body


def _number(body: dict, name: str, default, low, high, *, integer=False):
    value = body.get(name, default)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise invalid(name, (gettext("must be an integer, got %(value)s") if integer else
                             gettext("must be a number, got %(value)s")) % {"value": repr(value)})
    if not low <= value <= high:
        raise invalid(name, gettext("must be between %(low)s and %(high)s, got %(value)s")
                                    % {"low": low, "high": high, "value": value})
    return int(value) if integer else float(value)


def _text_content(content, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"{where}[{index}]", gettext("only text parts ({\"type\": \"text\", \"text\": …}) are "
                                                           "supported"))
            parts.append(part["text"])
        return "".join(parts)
    raise invalid(where, gettext("must be a string, a list of text parts, or null"))


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise invalid("messages", gettext("must be a non-empty list of {role, content} objects"))
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise invalid(where, gettext("must be an object with role and content"))
        role = message.get("role")
        if role not in ROLES:
            raise invalid(f"{where}.role", gettext("must be one of %(roles)s, got %(role)s")
                                                   % {"roles": ', '.join(ROLES), "role": repr(role)})
        # "developer" is OpenAI's newer name for the system turn; chat templates know "system".
        clean = {**message, "role": "system" if role == "developer" else role,
                 "content": _text_content(message.get("content"), f"{where}.content")}
        if clean["content"] is None and not (role == "assistant" and message.get("tool_calls")):
            raise invalid(f"{where}.content", gettext("is required (only an assistant message with tool_calls may "
                                                      "omit it)"))
        messages.append(clean)
    return messages


def _tools(body: dict):
    tools = body.get("tools")
    if tools is None:
        return None, None
    if not isinstance(tools, list):
        raise invalid("tools", gettext("must be a list of {type: function, function: {name, parameters}} objects"))
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str):
            raise invalid(f"tools[{index}]", gettext("must be {\"type\": \"function\", \"function\": {\"name\": …, "
                                                     "\"parameters\": …}}"))
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none", "required") and not (
            isinstance(choice, dict) and isinstance(choice.get("function"), dict)):
        raise invalid("tool_choice", gettext("must be auto, none, required or {\"type\": \"function\", "
                                             "\"function\": {\"name\": …}}"))
    return tools or None, choice


def _stop(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > 4 or not all(isinstance(s, str) and s for s in value):
        raise invalid("stop", gettext("must be a non-empty string or a list of at most 4 non-empty strings"))
    return value


def _unsupported(body: dict) -> None:
    if body.get("n", 1) not in (1, None):
        raise invalid("n", gettext("only n=1 is supported"))
    if body.get("logprobs") not in (None, False, 0):
        raise invalid("logprobs", gettext("log probabilities are not supported"))
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise invalid(name, gettext("is not supported; use repetition_penalty"))
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise invalid("response_format", gettext("only {\"type\": \"text\"} is supported"))


def parse_request(body: dict, kind: str, default_max_tokens: int) -> dict:
    """The replica protocol's request (without id/created/deadline), or ApiError naming the field."""
    allowed = CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS
    unknown = sorted(set(body) - allowed - IGNORED_FIELDS)
    if unknown:
        raise invalid(unknown[0], gettext("unknown parameter"))
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise invalid("model", gettext("is required: the deployment id shown by GET /v1/models"))
    _unsupported(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("stream", gettext("must be true or false"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("stream_options", gettext("must be an object like {\"include_usage\": true}"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request = {
        "kind": kind,
        "max_tokens": _number({"max_tokens": max_tokens}, "max_tokens", default_max_tokens, 1, 1_000_000, integer=True),
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "top_k": _number(body, "top_k", 0, 0, 1_000_000, integer=True),
        "repetition_penalty": _number(body, "repetition_penalty", 1.0, 0.01, 10.0),
        "stop": _stop(body.get("stop")),
        "seed": _number(body, "seed", None, -(2**63), 2**63 - 1, integer=True),
        "stream": stream,
    }
    if kind == "chat":
        request["messages"] = _messages(body.get("messages"))
        request["tools"], request["tool_choice"] = _tools(body)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise invalid("prompt", gettext("must be one string"))
        request["prompt"] = prompt
        request["tools"], request["tool_choice"] = None, None
    return request


def include_usage(body: dict) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


# ---- responses ---------------------------------------------------------------------------------

def finish_reason(end: dict) -> str:
    reason = end.get("finish_reason") or "stop"
    return "stop" if reason == "cancelled" else reason


def tool_call_deltas(tool_calls) -> list[dict]:
    return [{"index": i, "id": c.get("id"), "type": "function", "function": c.get("function")} for i, c in enumerate(tool_calls)]


class Shaper:
    """Builds the bodies of one response (chat or completion) with one id and creation time."""

    def __init__(self, kind: str, request_id: str, model: str) -> None:
        self.kind, self.model = kind, model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request_id
        self.created = int(time.time())

    def full(self, end: dict) -> dict:
        usage = end.get("usage") or {}
        if self.kind == "chat":
            message = {"role": "assistant", "content": end.get("text") or ("" if not end.get("tool_calls") else None)}
            if end.get("tool_calls"):
                message["tool_calls"] = end["tool_calls"]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(end)}
            return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                    "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": end.get("text") or "", "logprobs": None, "finish_reason": finish_reason(end)}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage}

    def chunk(self, *, text: str | None = None, role: bool = False, tool_calls=None, finish: str | None = None) -> dict:
        if self.kind == "chat":
            delta = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_call_deltas(tool_calls)
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        body = self.chunk()
        body["choices"] = []
        body["usage"] = usage
        return body


def sse(payload) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()
