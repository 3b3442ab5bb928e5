"""Chat templates with tools, tool-call parsing, and the streaming hold-back while output may be
a tool call."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_models import CHAT_TEMPLATE
from workers.core.inference.chat import (
    render_chat,
    resolve_template,
    select_tools,
    template_supports_tools,
)
from workers.core.inference.engine import EngineRequest, RequestHandle
from workers.core.inference.errors import InvalidRequest
from workers.core.inference.sampling import SamplingParams
from workers.core.inference.tools import ToolCallHoldback, parse_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# The SmolLM2 GGUF template: a default system prompt, and no `tools` anywhere.
SMOLLM2_GGUF_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(serve_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(serve_model_dir, local_files_only=True)


def test_the_tool_template_renders_tool_signatures_and_past_calls(tokenizer):
    template = resolve_template(tokenizer)
    assert template_supports_tools(template)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    text = render_chat(tokenizer, template, messages, [WEATHER])
    assert "Be brief." in text and '"name": "get_weather"' in text and "<tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_tools_with_a_template_that_ignores_them_are_refused(tokenizer):
    for template in (SMOLLM2_GGUF_TEMPLATE, CHAT_TEMPLATE):
        assert not template_supports_tools(template)
        with pytest.raises(InvalidRequest, match="this model's chat template does not support tools"):
            render_chat(tokenizer, template, [{"role": "user", "content": "hi"}], [WEATHER])
    # without tools the same template renders (with its default system prompt)
    assert "SmolLM" in render_chat(tokenizer, SMOLLM2_GGUF_TEMPLATE, [{"role": "user", "content": "hi"}])


def test_a_named_template_or_jinja_can_be_configured_and_unknown_names_are_errors(tokenizer):
    assert template_supports_tools(resolve_template(tokenizer, "chatml-tools"))
    assert resolve_template(tokenizer, "{{ messages }}") == "{{ messages }}"
    with pytest.raises(InvalidRequest, match="unknown template name 'hermes'"):
        resolve_template(tokenizer, "hermes")


def test_bad_messages_and_tools_name_the_field():
    with pytest.raises(InvalidRequest, match=r"messages\[1\].role"):
        render_chat(None, CHAT_TEMPLATE, [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}])
    with pytest.raises(InvalidRequest, match=r"tools\[0\]"):
        select_tools([{"type": "function"}], "auto")
    with pytest.raises(InvalidRequest, match="tool_choice"):
        select_tools([WEATHER], {"type": "function", "function": {"name": "nope"}})
    assert select_tools([WEATHER], "none") is None


def test_hermes_tool_calls_are_parsed_into_openai_tool_calls():
    text = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
    content, calls = parse_tool_calls(text, [WEATHER])
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)


def test_plain_json_function_objects_are_parsed_and_other_json_is_content():
    _, calls = parse_tool_calls('{"name": "get_weather", "parameters": {"city": "Rome"}}', [WEATHER])
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    _, calls = parse_tool_calls('[{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Lima\\"}"}}]', [WEATHER])
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Lima"}
    assert parse_tool_calls('{"name": "rm_rf", "arguments": {}}', [WEATHER]) == ('{"name": "rm_rf", "arguments": {}}', [])
    assert parse_tool_calls('{"answer": 42}', [WEATHER])[1] == []
    assert parse_tool_calls("<tool_call>{not json</tool_call>", [WEATHER])[1] == []


def test_the_holdback_streams_text_until_a_tool_call_tag_and_holds_json():
    text = ToolCallHoldback()
    streamed = "".join(text.feed(piece) for piece in ["Sure", ", one moment <", "tool", "_call>{\"name\"", "..."])
    assert streamed == "Sure, one moment "
    held = ToolCallHoldback()
    assert held.feed(" {\"name\": \"get_") == "" and held.feed("weather\"}") == ""
    assert held.finish("plain answer after all") == "plain answer after all"


def _drive(engine, request, text, finished=True):
    """Feed tokens for `text` through the engine's own output path (a random model will not
    write a tool call by itself)."""
    prompt_ids, tools = engine.prepare(request)
    handle = RequestHandle(engine, request, prompt_ids, tools, max_new_tokens=64)
    engine.handles[handle.id] = handle
    tokens = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    for n in range(1, len(tokens) + 1):
        engine._post(engine._advance, handle, tokens[:n], finished and n == len(tokens))
    return handle


def test_an_engine_chat_with_tools_returns_tool_calls_and_streams_no_call_markup(engine):
    request = EngineRequest(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
                            sampling=SamplingParams(max_tokens=64, temperature=0.0))
    handle = _drive(engine, request, 'On it.<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    events = list(handle.events(timeout=30))
    final = events[-1]
    assert final["finish_reason"] == "tool_calls" and final["text"] == "On it."
    assert json.loads(final["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "On it."


def test_an_engine_chat_with_tools_that_answers_in_text_streams_it_all(engine):
    request = EngineRequest(messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER],
                            sampling=SamplingParams(max_tokens=64, temperature=0.0))
    handle = _drive(engine, request, "Hello there, friend.")
    events = list(handle.events(timeout=30))
    assert events[-1]["finish_reason"] == "length" and events[-1]["tool_calls"] is None
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "Hello there, friend." == events[-1]["text"]


def test_a_real_chat_request_with_tools_runs_on_the_tiny_model(engine):
    request = EngineRequest(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER],
                            sampling=SamplingParams(max_tokens=16, temperature=0.0))
    handle = engine.submit(request)
    assert "get_weather" in engine.tokenizer.decode(handle.prompt_ids)
    assert handle.result(60)["type"] == "end"
