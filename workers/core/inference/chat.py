"""Chat prompts: render OpenAI-shaped messages with the model version's chat template (or a named
template the deployment configures), with `tools` only when the template uses them.

Templates are jinja strings run by the tokenizer's `apply_chat_template` (transformers' sandboxed
jinja). The SmolLM2 GGUF template ignores `tools` (and adds a default system prompt): rendering
tools with it would silently drop them, so such requests are refused unless the deployment
names a tool-capable template, e.g. "chatml-tools"."""
from __future__ import annotations

import json
import re

from .errors import InvalidRequest

# ChatML with Hermes/Qwen2.5-style tools: the tool signatures go into the system turn and the
# model answers with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
CHATML_TOOLS_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message['content'] %}{{- '\\n' + message['content'] }}{%- endif %}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set fn = call['function'] if call.get('function') else call %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{%- if fn['arguments'] is string %}{{- fn['arguments'] }}{%- else %}{{- fn['arguments'] | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "chatml-tools": CHATML_TOOLS_TEMPLATE}
_USES_TOOLS = re.compile(r"\btools\b")
ROLES = ("system", "user", "assistant", "tool")


def resolve_template(tokenizer, configured: str = "") -> str | None:
    """The jinja template to use: a named one, a literal jinja string, or the model's own."""
    if configured:
        if configured in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[configured]
        if "{%" in configured or "{{" in configured:
            return configured
        raise InvalidRequest(
            "chat_template", f"unknown template name {configured!r} (named: {', '.join(NAMED_TEMPLATES)}; or a jinja string)"
        )
    return getattr(tokenizer, "chat_template", None) or None


def template_supports_tools(template: str | None) -> bool:
    return bool(template) and bool(_USES_TOOLS.search(template))


def normalise_messages(messages) -> list[dict]:
    """OpenAI messages → what templates expect: string content (text parts joined), tool-call
    arguments as objects. Errors name the message index and field."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages", "must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}]", "must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise InvalidRequest(f"messages[{i}].content[{j}]", "only text parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content", "must be a string or a list of text parts")
        item = {"role": role, "content": content}
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = [_call_for_template(call, i) for call in message["tool_calls"]]
        if role == "tool" and message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        out.append(item)
    return out


def _call_for_template(call, index: int) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"messages[{index}].tool_calls", "each call needs function.name")
    args = function.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            raise InvalidRequest(f"messages[{index}].tool_calls", "function.arguments is not valid JSON") from None
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": args}}


def validate_tools(tools) -> list[dict]:
    if not isinstance(tools, list) or not tools:
        raise InvalidRequest("tools", "must be a non-empty list")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise InvalidRequest(f"tools[{i}]", 'must be {"type": "function", "function": {"name": ..., ...}}')
    return tools


def select_tools(tools, tool_choice):
    """Apply tool_choice: "none" → no tools; a named function → only that one. "auto" and
    "required" pass all tools (no constrained decoding: "required" is a request, not a guarantee)."""
    if tools is None or tool_choice == "none":
        return None
    tools = validate_tools(tools)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise InvalidRequest("tool_choice", f"names function {name!r}, which is not among tools")
        return chosen
    if tool_choice not in (None, "auto", "required"):
        raise InvalidRequest("tool_choice", f'must be "auto", "none", "required" or a function, got {tool_choice!r}')
    return tools


def render_chat(tokenizer, template: str | None, messages, tools=None) -> str:
    """The prompt text for a chat, ending with the assistant turn's opening."""
    if not template:
        raise InvalidRequest("messages", "this model has no chat template: use /v1/completions or configure chat_template")
    if tools and not template_supports_tools(template):
        raise InvalidRequest("tools", "this model's chat template does not support tools")
    kwargs = {"tools": tools} if tools else {}
    messages = normalise_messages(messages)
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=False, **kwargs
        )
    except InvalidRequest:
        raise
    except Exception as error:  # a template error is about this request's messages (jinja raises many types)
        raise InvalidRequest("messages", f"the chat template could not render them: {error}") from None
