"""The OpenAI-compatible `/v1` endpoints in the studio's OpenAPI document (/api/docs). They are plain
async Django views (streaming, their own key auth, see openai_views.py), so ninja does not see them:
this describes what they accept, in the subset of OpenAI's schema the studio implements."""
from __future__ import annotations

MESSAGE = {
    "type": "object", "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": {"type": "string", "nullable": True},
        "tool_calls": {"type": "array", "items": {"type": "object"}, "description": "an assistant turn's calls"},
        "tool_call_id": {"type": "string", "description": "on a tool message: the call it answers"},
    },
}
SAMPLING = {
    "model": {"type": "string", "description": "a deployment's id as /v1/models lists it (owner/name)"},
    "max_tokens": {"type": "integer", "minimum": 1, "description": "new tokens at most (default: the deployment's)"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2, "default": 1.0},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
    "top_k": {"type": "integer", "minimum": 0},
    "seed": {"type": "integer", "nullable": True},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
    "stream": {"type": "boolean", "default": False, "description": "server-sent events, ending with data: [DONE]"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
}
ERRORS = {
    "400": {"description": "an invalid field (the message names it)"},
    "401": {"description": "missing or unknown API key"},
    "404": {"description": "no such deployment, or not one this key may call"},
    "429": {"description": "rate limit, token quota or the deployment's queue is full (Retry-After)"},
    "503": {"description": "no ready replica; the body says why (e.g. waiting for a free serve slot)"},
}
SECURITY = [{"OpenAIKey": []}]


def _post(summary: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"post": {
        "tags": ["openai-compatible"], "summary": summary, "description": description, "security": SECURITY,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "properties": {**SAMPLING, **properties}}}}},
        "responses": {"200": {"description": "a completion object, or an SSE stream of chunks when stream is true"}, **ERRORS},
    }}


def document_openai_paths(schema: dict) -> dict:
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["OpenAIKey"] = {
        "type": "http", "scheme": "bearer",
        "description": "an API key from Serving → API keys (not an API token); the official openai client sends it",
    }
    paths = schema.setdefault("paths", {})
    paths["/v1/models"] = {"get": {
        "tags": ["openai-compatible"], "summary": "List the deployments this key may call", "security": SECURITY,
        "responses": {"200": {"description": '{"object": "list", "data": [{"id": "owner/name", ...}]}'}, "401": ERRORS["401"]},
    }}
    paths["/v1/chat/completions"] = _post(
        "Chat with a deployed model",
        "OpenAI-compatible chat completions: the deployment's chat template, streaming, stop strings, "
        "native tool calling (tools / tool_choice → tool_calls), usage in the last chunk when asked.",
        {"messages": {"type": "array", "items": MESSAGE, "minItems": 1},
         "tools": {"type": "array", "items": {"type": "object"}, "description": "OpenAI function tools"},
         "tool_choice": {"description": '"auto", "none", "required" or {"type": "function", "function": {"name": ...}}'}},
        ["model", "messages"])
    paths["/v1/completions"] = _post(
        "Continue a prompt (no chat template)", "OpenAI-compatible text completions.",
        {"prompt": {"type": "string", "minLength": 1}}, ["model", "prompt"])
    return schema
