"""The Playground in a real browser against the real stack: daphne (pages, the conversation's
websocket and the streams it relays), one serve worker with two slots hosting two tiny
deployments, the agent worker (queue "agent") and the cpu worker that imports the feedback
dataset. A user starts a chat, watches the answer stream in and stops it mid-answer, edits the
message (a branch) and switches between the branches, regenerates and marks the better answer,
runs a calculator tool call and reads its trace, votes in the arena (names revealed after the
vote), and exports the preference as a dataset version.

The two models: a random tiny Llama that never ends an answer by itself (so one can be stopped
mid-answer), and tests/fixtures/tool_model.py's tiny model taught to answer one prompt with a
calculator call (a random model never calls a tool). They serve different versions, which the
arena needs.

PUYU_SCREENSHOTS=1 writes static/screenshots/playground-*.png."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from apps.datasets.models import DatasetVersion
from apps.leaderboards.models import ArenaVote
from apps.playground.models import Conversation, Message, Preference
from puyu_site.launcher import serve_worker_command
from tests.browser.test_job_pages import log_in, screenshot
from tests.serving.test_end_to_end import deploy, register, stop_deployments_first, wait_ready  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

SMALL = {"num_blocks": 64}  # 2,048 KV tokens: a tiny replica takes a few MiB
CONTEXT = 2048
PROMPT = "What is 12345 * 6789?"
CALL = {"name": "calculator", "arguments": {"expression": "12345 * 6789"}}
STREAM_TOKENS = 1800  # the stopped answer's limit: far more than it writes before the click
ANSWER_S = 90_000


def endless_model(root):
    """A random tiny Llama whose special tokens (end of text, end of turn) can never win: its
    output layer is scaled up (the likeliest token leads by a wide margin) and their rows are
    zero (logit 0, far below it). Context CONTEXT tokens."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer

    folder = build_tiny_llama(root / "endless", tokenizer_dir=train_tokenizer(root / "endless-tokenizer"),
                              max_position_embeddings=CONTEXT)
    special = AutoTokenizer.from_pretrained(folder, local_files_only=True).all_special_ids
    weights = load_file(folder / "model.safetensors")
    head = weights["lm_head.weight"] * 50
    head[special] = 0
    weights["lm_head.weight"] = head.contiguous()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def calculator_model(root, monkeypatch):
    """tests/fixtures/tool_model.py's model, taught PROMPT → a calculator call, with the prompt as
    the agent sends it (the user's message and the calculator's schema; no system prompt) and
    room for the arena's 512-token answers."""
    from tests.fixtures import tiny_models, tool_model
    from workers.core.agents.tools import calculator_tool

    build = tiny_models.build_tiny_tool_chat_llama
    monkeypatch.setattr(tool_model, "MESSAGES", [{"role": "user", "content": PROMPT}])
    monkeypatch.setattr(tool_model, "TOOLS", [calculator_tool().spec()])
    monkeypatch.setattr(tool_model, "ANSWER", "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call>")
    monkeypatch.setattr(tiny_models, "build_tiny_tool_chat_llama",
                        lambda *args, **kwargs: build(*args, **{**kwargs, "max_position_embeddings": CONTEXT}))
    return tool_model.build_tool_model(root / "calculator")


def body_length(selector: str) -> str:
    """A page expression: the text length of the last element matching `selector` (0 if none)."""
    return f"(Array.from(document.querySelectorAll({selector!r})).pop()?.textContent.length || 0)"


def new_chat(page, url, deployment, *, max_tokens: int, tools=()):
    page.goto(url + "/playground/")
    page.select_option("#id_deployment", str(deployment.pk))
    page.fill("#new-chat-form #id_temperature", "0")
    page.fill("#new-chat-form #id_max_tokens", str(max_tokens))
    for tool in tools:
        page.check(f"#new-chat-form input[name=tools][value={tool}]")
    page.click("#new-chat-submit")
    expect(page).to_have_url(re.compile(r"/playground/c/\d+/$"))
    expect(page.locator("#thread-empty")).to_be_visible()


def send(page, text: str):
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def test_a_user_streams_stops_branches_runs_a_tool_votes_and_exports_feedback(stack, users, page, tmp_path, monkeypatch):
    owner = users["owner"]
    chat_source, calc_source = endless_model(tmp_path), calculator_model(tmp_path, monkeypatch)
    stack.env["PUYU_PLAYGROUND_AGENT_MAX_TURNS"] = "2"  # the tiny model may call the tool again: stop there
    stack._spawn("serve0", serve_worker_command("serve0", 2), {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    stack.worker("agent0", "agent")
    stack.worker("cpu0", "cpu")
    url = stack.web()
    chat_deployment = deploy(owner, register(owner, chat_source, name="tiny"), name="tiny-chat", engine=SMALL)
    calc_deployment = deploy(owner, register(owner, calc_source, name="calc"), name="calc", engine=SMALL)
    log_in(page, url, "owner")
    page.goto(url + "/playground/")
    expect(page.locator("#conversations-empty")).to_contain_text("No conversations yet")
    expect(page.locator("#serve-slots")).to_contain_text("slots")
    wait_ready(stack, chat_deployment)
    wait_ready(stack, calc_deployment)

    # Tokens stream in (the text grows while the answer is written); Stop ends it mid-answer.
    new_chat(page, url, chat_deployment, max_tokens=STREAM_TOKENS)
    screenshot(page, "playground-new-chat.png")
    send(page, "Hello there")
    answer_text = "#thread article.msg.assistant .msg-body"
    page.wait_for_function(f"{body_length(answer_text)} > 0", timeout=ANSWER_S)
    seen = page.evaluate(body_length(answer_text))
    page.wait_for_function(f"{body_length(answer_text)} > {seen}")
    page.click("#stop-button")
    expect(page.locator("#thread article.msg.assistant.status-stopped")).to_have_count(1)
    expect(page.locator("#stop-button")).to_be_hidden()
    expect(page.locator("#conversation-title")).to_have_text("Hello there")  # named after the first message
    conversation = Conversation.objects.get(deployment=chat_deployment)
    stopped = Message.objects.get(conversation=conversation, role="assistant")
    assert stopped.status == "stopped" and stopped.content
    assert (stopped.usage or {}).get("completion_tokens", 0) < STREAM_TOKENS
    assert page.js_errors == []

    # Shorter answers from now on; edit the message and resend it: a second branch.
    page.click("#settings-panel summary")
    page.fill("#settings-form #id_max_tokens", "12")
    page.click("#settings-submit")
    expect(page.locator(".flash.success")).to_contain_text("Settings saved")
    page.click("#thread article.msg.user button[data-action=edit]")
    page.fill("#thread .edit-input", "Hello again")
    page.click("#thread .save-edit")
    user_message = page.locator("#thread article.msg.user")
    expect(user_message.locator(".sibling-position")).to_have_text("2/2", timeout=ANSWER_S)
    expect(user_message.locator(".msg-body")).to_have_text("Hello again")
    expect(page.locator("#thread article.msg.assistant.status-done")).to_have_count(1)
    user_message.locator(".sibling-prev").click()  # the first branch, with its stopped answer
    expect(user_message.locator(".msg-body")).to_have_text("Hello there")
    expect(page.locator("#thread article.msg.assistant.status-stopped")).to_have_count(1)
    user_message.locator(".sibling-next").click()
    expect(user_message.locator(".msg-body")).to_have_text("Hello again")

    # Regenerate: a sibling answer; mark it the better one and give it a thumbs up.
    page.click("#thread article.msg.assistant .regenerate-button")
    answer = page.locator("#thread article.msg.assistant")
    expect(answer.locator(".sibling-position")).to_have_text("2/2", timeout=ANSWER_S)
    expect(answer).to_have_attribute("data-status", "done")
    answer.locator(".prefer-button").click()
    expect(answer.locator(".prefer-button")).to_have_text("✓ better")
    answer.locator(".thumb-up").click()
    expect(answer.locator(".thumb-up")).to_have_attribute("aria-pressed", "true")
    screenshot(page, "playground-chat.png")
    assert Preference.objects.filter(user=owner).count() == 1
    assert page.js_errors == []

    # A tool call: the agent runs on its worker, the trace shows the call and the observation.
    new_chat(page, url, calc_deployment, max_tokens=64, tools=["calculator"])
    send(page, PROMPT)
    trace = page.locator("#thread article.msg.assistant details.trace")
    expect(trace.locator(".step-tool-name").first).to_have_text("calculator", timeout=ANSWER_S)
    expect(trace.locator(".step-arguments").first).to_contain_text("12345 * 6789")
    expect(trace.locator(".step-observation").first).to_contain_text("83810205")
    expect(page.locator("#thread article.msg.assistant")).to_have_attribute("data-status", "done", timeout=ANSWER_S)
    expect(trace.locator(".step-duration").first).to_contain_text(" ms")
    screenshot(page, "playground-trace.png")
    tool_reply = Message.objects.get(conversation__deployment=calc_deployment, role="assistant")
    assert any(step["type"] == "tool" and step["tool"] == "calculator" for step in tool_reply.trace)
    assert tool_reply.job.status == "SUCCEEDED"
    assert page.js_errors == []

    # The arena: two anonymous answers side by side; the vote reveals who answered.
    page.goto(url + "/playground/arena/")
    page.fill("#id_content", "Tell me a story")
    page.click("#battle-submit")
    expect(page).to_have_url(re.compile(r"/playground/arena/\d+/$"))
    expect(page.locator("#columns section.column")).to_have_count(2)
    expect(page.locator("#vote-a")).to_be_enabled(timeout=ANSWER_S)
    expect(page.locator("#columns")).not_to_contain_text("owner/tiny-chat")
    expect(page.locator("#columns")).not_to_contain_text("owner/calc")
    screenshot(page, "playground-arena.png")
    page.click("#vote-a")
    expect(page.locator("#vote-result")).to_contain_text("A is better")
    expect(page.locator("#columns .revealed-name")).to_have_count(2)
    expect(page.locator("#columns")).to_contain_text("owner/tiny-chat")
    assert ArenaVote.objects.get(voter=owner).outcome == "a"
    page.click("#vote-result a")
    expect(page).to_have_url(url + "/leaderboards/arena/")
    assert page.js_errors == []

    # Feedback: the preference exported as a dataset version, linked when its job is done.
    page.goto(url + "/playground/feedback/")
    expect(page.locator("#preferences tbody tr")).to_have_count(1)
    page.check("#export-form input[name=kind][value=preference]")
    page.fill("#id_dataset_name", "chat-preferences")
    page.click("#export-submit")
    expect(page.locator("#export-table .export-version")).to_be_visible(timeout=ANSWER_S)
    screenshot(page, "playground-feedback.png")
    version = DatasetVersion.objects.get(dataset__name="chat-preferences")
    assert version.source == "feedback" and version.rows == 1
    page.click("#export-table .export-version")
    expect(page).to_have_url(re.compile(rf"/datasets/versions/{version.pk}/$"))
    page.goto(url + "/playground/")
    expect(page.locator("#conversation-table tbody tr")).to_have_count(2)
    screenshot(page, "playground-home.png")
    assert page.js_errors == []
