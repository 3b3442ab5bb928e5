"""The vllm backend's relay without vLLM: the official openai client streams scripted SSE bodies
(vLLM's chunk shapes, with its token_ids) through a mock transport, and the handle must yield the
same protocol events the builtin engine's handles yield. Also what is checked before a request
is sent, and how the server's command line is planned."""
from __future__ import annotations

import asyncio
import json

import pytest

from workers.core.inference.chat import CHATML_TOOLS_TEMPLATE
from workers.core.inference.engine import EngineConfig, EngineRequest
from workers.core.inference.errors import BackendUnavailable, InvalidRequest
from workers.core.inference.sampling import SamplingParams
from workers.core.inference.vllm_backend import VllmRelay, build_body, parse_metrics
from workers.core.inference.vllm_server import plan_server, tool_parser_for, vllm_python

SMOLLM2_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def sse(*chunks) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def chat_chunk(content=None, token_ids=(), finish=None, tool_calls=None, **extra):
    delta = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "token_ids": list(token_ids)}], **extra}


def usage_chunk(prompt, completion, kind="chat.completion.chunk"):
    return {"id": "x", "object": kind, "created": 1, "model": "m", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


class Scripted:
    """A relay whose HTTP requests go to `handler` (an httpx2 mock transport)."""

    def __init__(self, handler):
        import httpx2

        self.requests = []

        def record(request):
            self.requests.append(json.loads(request.content))
            return handler(request)

        self.relay = VllmRelay("http://vllm.test", "served", http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(record)))
        self.relay.start()

    def run(self, kind="chat", body=None):
        body = body or {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        handle = self.relay.submit(body, kind, request_id="r1")
        return handle, list(handle.events(timeout=10))


@pytest.fixture
def scripted():
    made = []

    def make(handler):
        made.append(Scripted(handler))
        return made[-1]

    yield make
    for relay in made:
        relay.relay.close()


def streamed(body: bytes, status=200):
    import httpx2

    return lambda request: httpx2.Response(status, headers={"content-type": "text/event-stream"}, content=body)


def test_a_streamed_chat_becomes_deltas_with_token_counts_and_one_end_with_usage(scripted):
    body = sse(chat_chunk("", prompt_token_ids=[1, 2, 3]),  # vLLM's first chunk: the role, no token
               chat_chunk("Hel", [10]), chat_chunk("lo there", [11, 12]), chat_chunk("", [2], finish="stop"),
               usage_chunk(3, 4))
    relay = scripted(streamed(body))
    handle, events = relay.run()

    assert [e["type"] for e in events] == ["delta", "delta", "delta", "end"]
    assert [(e["text"], e["tokens"]) for e in events[:-1]] == [("Hel", 1), ("lo there", 2), ("", 1)]
    end = events[-1]
    assert end["finish_reason"] == "stop" and end["text"] == "Hello there" and end["tool_calls"] is None
    assert end["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert set(end["timing"]) == {"engine_ttft_s", "decode_s"} and end["timing"]["engine_ttft_s"] >= 0
    assert handle.token_ids == [10, 11, 12, 2] and handle.prompt_tokens == 3
    sent = relay.requests[0]
    assert sent["stream"] is True and sent["model"] == "served" and sent["return_token_ids"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_streamed_tool_call_fragments_are_joined_into_one_openai_tool_call(scripted):
    first = {"index": 0, "id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    body = sse(chat_chunk(None, [5, 6], tool_calls=[first]),
               chat_chunk(None, [7], tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
               chat_chunk(None, [8], tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
               chat_chunk(None, [2], finish="tool_calls"), usage_chunk(20, 5))
    _handle, events = scripted(streamed(body)).run()

    end = events[-1]
    assert end["type"] == "end" and end["finish_reason"] == "tool_calls" and end["text"] == ""
    assert end["tool_calls"] == [{"id": "call_7", "type": "function",
                                  "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    # tokens count even where the parser holds the text back
    assert sum(e["tokens"] for e in events if e["type"] == "delta") == 5 == end["usage"]["completion_tokens"]


def test_a_completion_stream_reads_text_and_the_prompt_length_from_its_choices(scripted):
    def chunk(text, ids, finish=None, **choice):
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "token_ids": ids, **choice}]}

    body = sse(chunk(" upon", [99], prompt_token_ids=[1, 2]), chunk(" a", [98], finish="length"))
    handle, events = scripted(streamed(body)).run("completion", {"prompt": [1, 2], "max_tokens": 2})

    assert events[-1]["finish_reason"] == "length" and events[-1]["text"] == " upon a"
    # no usage chunk came: the usage is what the stream showed
    assert events[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_a_request_vllm_refuses_ends_with_a_400_error_carrying_vllms_message(scripted):
    import httpx2

    refusal = {"error": {"message": "This model's maximum context length is 512 tokens.", "type": "BadRequestError",
                         "param": None, "code": 400}}
    _handle, events = scripted(lambda request: httpx2.Response(400, json=refusal)).run()

    [error] = events
    assert error["type"] == "error" and error["status"] == 400 and error["code"] == "invalid_request"
    assert "maximum context length is 512" in error["message"]
    assert error["usage"]["completion_tokens"] == 0


def test_an_error_inside_the_stream_ends_the_request_with_an_engine_error_and_the_tokens_made(scripted):
    body = (f"data: {json.dumps(chat_chunk('Hi', [4], prompt_token_ids=[1]))}\n\n"
            f"data: {json.dumps({'error': {'message': 'engine core died', 'code': 500}})}\n\n").encode()
    _handle, events = scripted(streamed(body)).run()

    assert [e["type"] for e in events] == ["delta", "error"]
    assert events[-1]["status"] == 500 and "engine core died" in events[-1]["message"]
    assert events[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def test_a_stream_cut_without_a_finish_reason_is_an_error_not_a_silent_end(scripted):
    body = f"data: {json.dumps(chat_chunk('Hi', [4]))}\n\n".encode()  # no finish, no [DONE]
    _handle, events = scripted(streamed(body)).run()

    assert events[-1]["type"] == "error" and events[-1]["code"] == "engine_failure"
    assert "without finishing" in events[-1]["message"]


def test_cancel_closes_the_http_response_and_ends_the_request_cancelled(scripted):
    import httpx2

    closed = asyncio.Event()
    sent = []

    async def endless():
        try:
            for i in range(10_000):
                sent.append(i)
                yield f"data: {json.dumps(chat_chunk('tok ', [i]))}\n\n".encode()
                await asyncio.sleep(0.01)
        finally:  # the client closing the response ends this generator: what vLLM sees as a disconnect
            closed.set()

    relay = scripted(lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=endless()))
    handle = relay.relay.submit({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}, "chat", "r1")
    events = []
    for event in handle.events(timeout=10):
        events.append(event)
        if len(events) == 3:
            handle.cancel()

    assert events[-1]["type"] == "end" and events[-1]["finish_reason"] == "cancelled"
    assert events[-1]["usage"]["completion_tokens"] == sum(e["tokens"] for e in events if e["type"] == "delta")
    assert closed.is_set() and len(sent) < 200
    assert relay.relay.handles == {}


def test_close_ends_running_requests_with_an_error(scripted):
    import httpx2

    async def slow():
        yield f"data: {json.dumps(chat_chunk('a', [1]))}\n\n".encode()
        await asyncio.sleep(60)

    relay = scripted(lambda request: httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=slow()))
    handle = relay.relay.submit({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}, "chat", "r1")
    assert next(handle.events(timeout=10))["type"] == "delta"
    relay.relay.close()

    final = handle.result(timeout=5)
    assert final["type"] == "error" and "shutting down" in final["message"]


def chat(messages=None, **fields):
    return EngineRequest(messages=messages or [{"role": "user", "content": "Hi"}],
                         sampling=SamplingParams(max_tokens=16, temperature=0.0, stop=["\n\n"], seed=3), **fields)


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def test_sampling_fields_go_to_vllm_with_its_own_top_k_and_repetition_penalty():
    kind, body = build_body(chat(), SMOLLM2_TEMPLATE, None)

    assert kind == "chat" and body["messages"] == [{"role": "user", "content": "Hi"}]
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (16, 0.0, ["\n\n"], 3)
    assert body["extra_body"] == {"top_k": 0, "repetition_penalty": 1.0}


def test_tools_are_refused_when_the_template_has_no_vllm_tool_parser_as_the_builtin_engine_refuses_them():
    with pytest.raises(InvalidRequest, match="does not support tools"):
        build_body(chat(tools=TOOLS), SMOLLM2_TEMPLATE, None)
    with pytest.raises(InvalidRequest, match="no chat template"):
        build_body(chat(), None, None)
    with pytest.raises(InvalidRequest, match="need a chat request"):
        build_body(EngineRequest(prompt="x", tools=TOOLS), SMOLLM2_TEMPLATE, "hermes")


def test_tool_choice_is_applied_before_sending_a_named_function_keeps_only_that_tool():
    _kind, body = build_body(chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}}),
                             CHATML_TOOLS_TEMPLATE, "hermes")
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"] and body["tool_choice"] == "auto"
    _kind, body = build_body(chat(tools=TOOLS, tool_choice="none"), CHATML_TOOLS_TEMPLATE, "hermes")
    assert "tools" not in body


def test_an_earlier_tool_call_goes_back_to_vllm_with_json_string_arguments():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    _kind, body = build_body(chat(messages, tools=TOOLS), CHATML_TOOLS_TEMPLATE, "hermes")

    assert body["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


def test_the_tool_call_parser_is_chosen_by_the_templates_tool_call_format():
    assert tool_parser_for(CHATML_TOOLS_TEMPLATE) == "hermes"
    assert tool_parser_for(SMOLLM2_TEMPLATE) is None  # renders no tools
    assert tool_parser_for("{% if tools %}{{ tools | tojson }}{% endif %}<|python_tag|>") == "llama3_json"
    assert tool_parser_for("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]") == "mistral"
    assert tool_parser_for("{% if tools %}{{ tools }}{% endif %} no known call format") is None


def write_model(folder, **config):
    folder.mkdir()
    base = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
            "hidden_size": 576, "max_position_embeddings": 8192, "dtype": "float32"}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    (folder / "chat_template.jinja").write_text(SMOLLM2_TEMPLATE)
    return folder


def test_the_servers_kv_cache_and_context_are_bounded_by_the_engines_kv_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")
    model = write_model(tmp_path / "smol")
    plan = plan_server(EngineConfig(kv_cache_bytes=64 * 1024**2, max_concurrent=8), model, "smol", tmp_path, device="cpu")
    args = {flag: plan.args[i + 1] for i, flag in enumerate(plan.args[:-1]) if flag.startswith("--")}

    # 30 layers x 3 KV heads x 64 x 2 (K and V) x 4 bytes = 46,080 bytes a token: 1,456 tokens, 90% in 16s
    assert args["--kv-cache-memory-bytes"] == str(64 * 1024**2)
    assert plan.max_model_len == 1296 and args["--max-model-len"] == "1296"
    assert args["--model"] == str(model) and args["--served-model-name"] == "smol" and args["--max-num-seqs"] == "8"
    assert args["--host"] == "127.0.0.1"
    assert "--enable-auto-tool-choice" not in plan.args and plan.tool_parser is None
    assert "VLLM_CPU_KVCACHE_SPACE" not in plan.env and plan.env["HF_HUB_OFFLINE"] == "1"


def test_the_cpu_default_budget_applies_and_a_named_tool_template_turns_on_the_hermes_parser(tmp_path):
    model = write_model(tmp_path / "smol", max_position_embeddings=2048)
    plan = plan_server(EngineConfig(chat_template="chatml-tools"), model, "smol", tmp_path, device="cpu")

    assert "--kv-cache-memory-bytes" in plan.args and plan.max_model_len == 2048  # 256 MiB holds more than 2,048
    template = plan.args[plan.args.index("--chat-template") + 1]
    assert open(template).read() == CHATML_TOOLS_TEMPLATE
    assert plan.args[plan.args.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in plan.args


def test_a_gpu_without_a_budget_leaves_the_kv_cache_to_vllms_memory_bound(tmp_path):
    plan = plan_server(EngineConfig(cuda_graphs="off"), write_model(tmp_path / "smol"), "smol", tmp_path, device="cuda:1")
    assert "--kv-cache-memory-bytes" not in plan.args and plan.max_model_len == 8192
    assert "--enforce-eager" in plan.args and plan.env["CUDA_VISIBLE_DEVICES"] == "1"


def test_builtin_only_options_and_tiny_budgets_are_refused_before_anything_starts(tmp_path):
    model = write_model(tmp_path / "smol")
    with pytest.raises(BackendUnavailable, match="quantize"):
        plan_server(EngineConfig(quantize="int8-dynamic"), model, "smol", tmp_path, device="cpu")
    with pytest.raises(BackendUnavailable, match="holds only"):
        plan_server(EngineConfig(kv_cache_bytes=1024 * 1024), model, "smol", tmp_path, device="cpu")


def test_a_missing_vllm_environment_says_to_run_make_vllm(tmp_path, monkeypatch):
    from workers.core.inference.backends import create_backend

    monkeypatch.setenv("PUYU_VLLM_PYTHON", str(tmp_path / "nowhere" / "python"))
    with pytest.raises(BackendUnavailable, match="run `make vllm`") as raised:
        create_backend("vllm", EngineConfig(), write_model(tmp_path / "smol"))
    assert str(tmp_path / "nowhere" / "python") in str(raised.value) and raised.value.status == 503


def test_without_the_variable_the_interpreter_is_the_repositorys_venv_vllm(monkeypatch):
    from workers.core.inference.vllm_server import DEFAULT_PYTHON, REPO

    monkeypatch.delenv("PUYU_VLLM_PYTHON", raising=False)
    assert DEFAULT_PYTHON == REPO / ".venv-vllm" / "bin" / "python" and (REPO / "manage.py").exists()
    if DEFAULT_PYTHON.exists():
        assert vllm_python() == DEFAULT_PYTHON
    else:
        with pytest.raises(BackendUnavailable, match=str(DEFAULT_PYTHON)):
            vllm_python()


def test_running_waiting_and_kv_figures_are_read_from_vllms_prometheus_text():
    text = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smol"} 3.0
vllm:num_requests_running{engine="1",model_name="smol"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smol"} 2.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="smol"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="128",engine="0",num_gpu_blocks="91",cache_dtype="auto"} 1.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="smol"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="smol"} 4.0
"""
    assert parse_metrics(text) == {"running": 4, "waiting": 2, "kv_cache_used": 0.25, "kv_capacity_tokens": 11648}
