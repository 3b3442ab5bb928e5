"""Rendering records the way the trainer sees them: loss only on what the assistant says."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.tiny_models import EOS_TOKEN, train_tokenizer
from workers.core.data.generators import tool_use_dialogues
from workers.core.data.tokenize import IGNORE_INDEX, render_chat, render_preference, render_record

# Meta's Llama-2 chat template, verbatim apart from line breaks: no generation prompt, the system
# prompt folded into the first user turn, and the assistant turn written as ' ' + content + ' ' + eos.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# A Qwen2.5-like ChatML template that renders tools, tool calls and tool results.
TOOL_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\n<tools>' }}{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Not prefix-stable: the header counts the messages, so no prefix render is a prefix of the whole.
COUNTING_TEMPLATE = (
    "{{ '<|im_start|>system\\n' + (messages | length | string) + ' messages<|im_end|>\\n' }}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ASSISTANT = ["Good morrow, friend.", "The king is in his counting-house.", "Farewell, and be merry!"]
THREE_TURNS = [
    {"role": "system", "content": "You speak like a Shakespeare character."},
    {"role": "user", "content": "Hello there."},
    {"role": "assistant", "content": ASSISTANT[0]},
    {"role": "user", "content": "Where is the king?"},
    {"role": "assistant", "content": ASSISTANT[1]},
    {"role": "user", "content": "Goodbye then."},
    {"role": "assistant", "content": ASSISTANT[2]},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(train_tokenizer(tmp_path_factory.mktemp("tok")), local_files_only=True)


def loss_runs(tokenizer, rendered) -> list[str]:
    """The decoded text of each contiguous run of label-bearing tokens."""
    runs, current = [], []
    for token, label in zip(rendered.input_ids, rendered.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def label_text(tokenizer, rendered) -> str:
    return tokenizer.decode([t for t, label in zip(rendered.input_ids, rendered.labels) if label != IGNORE_INDEX])


def test_the_loss_covers_exactly_the_three_assistant_turns_with_the_chatml_template(tokenizer):
    rendered = render_record({"messages": THREE_TURNS}, "chat", tokenizer)

    assert loss_runs(tokenizer, rendered) == [c + EOS_TOKEN for c in ASSISTANT]
    assert label_text(tokenizer, rendered) == "".join(c + EOS_TOKEN for c in ASSISTANT)
    assert rendered.input_ids == tokenizer.apply_chat_template(THREE_TURNS, tokenize=True, return_dict=False)
    assert [s["text"] for s in rendered.segments if s["loss"]] == [c + EOS_TOKEN for c in ASSISTANT]
    assert "".join(s["text"] for s in rendered.segments) == rendered.text
    assert rendered.text == tokenizer.apply_chat_template(THREE_TURNS, tokenize=False)
    assert rendered.warnings == [] and not rendered.truncated


def test_the_loss_covers_exactly_the_three_assistant_turns_with_a_llama2_template_string(tokenizer):
    rendered = render_record({"messages": THREE_TURNS}, "chat", tokenizer, chat_template=LLAMA2_TEMPLATE)

    assert "[INST] <<SYS>>" in rendered.text  # the template given, not the tokenizer's ChatML
    assert loss_runs(tokenizer, rendered) == [f" {c} {EOS_TOKEN}" for c in ASSISTANT]
    assert label_text(tokenizer, rendered) == "".join(f" {c} {EOS_TOKEN}" for c in ASSISTANT)
    assert rendered.input_ids == tokenizer.apply_chat_template(
        THREE_TURNS, chat_template=LLAMA2_TEMPLATE, tokenize=True, return_dict=False)
    assert rendered.warnings == []


def test_a_template_that_is_not_prefix_stable_still_masks_the_assistant_turns_with_a_warning(tokenizer):
    rendered = render_record({"messages": THREE_TURNS}, "chat", tokenizer, chat_template=COUNTING_TEMPLATE)

    assert loss_runs(tokenizer, rendered) == [c + EOS_TOKEN for c in ASSISTANT]
    assert len(rendered.warnings) == 3 and "not prefix-stable" in rendered.warnings[0]


def test_a_text_record_has_loss_on_every_token_and_ends_with_eos(tokenizer):
    rendered = render_record({"text": "To be, or not to be: that is the question."}, "text", tokenizer)

    assert rendered.labels == rendered.input_ids
    assert rendered.input_ids[-1] == tokenizer.eos_token_id
    assert rendered.segments == [{"text": "To be, or not to be: that is the question." + EOS_TOKEN, "loss": True}]


def test_a_tool_call_chat_renders_the_tools_and_keeps_tool_results_out_of_the_loss(tokenizer):
    record = next(r for r in tool_use_dialogues(20, seed=3) if len(r["messages"]) == 4)  # no greeting
    call = json.loads(record["messages"][1]["tool_calls"][0]["function"]["arguments"])
    observation = record["messages"][2]["content"]

    rendered = render_record(record, "chat", tokenizer, chat_template=TOOL_TEMPLATE)

    assert '"name": "calculator"' in rendered.text and "<tools>" in rendered.text  # tools were passed
    assert loss_runs(tokenizer, rendered) == [
        '<tool_call>\n{"name": "calculator", "arguments": ' + json.dumps(call) + "}\n</tool_call>" + EOS_TOKEN,
        record["messages"][3]["content"] + EOS_TOKEN,
    ]
    tool_segment = next(s for s in rendered.segments if observation in s["text"])
    assert tool_segment["loss"] is False
    assert not any("<tools>" in s["text"] for s in rendered.segments if s["loss"])


def test_a_qa_record_is_a_user_question_and_an_assistant_answer_with_loss_on_the_answer(tokenizer):
    rendered = render_record({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}, "qa", tokenizer)

    assert rendered.text.startswith("<|im_start|>user\nWhat is 2 + 3?")
    assert loss_runs(tokenizer, rendered) == ["2 + 3 = 5\n#### 5" + EOS_TOKEN]


def test_a_preference_pair_shares_the_prompt_and_trains_only_on_each_continuation(tokenizer):
    record = {
        "prompt": THREE_TURNS[:4],  # includes an earlier assistant turn: context, not loss
        "chosen": [{"role": "assistant", "content": "In his counting-house."}],
        "rejected": [{"role": "assistant", "content": "I know not."}],
    }
    chosen, rejected = render_preference(record, tokenizer)

    assert loss_runs(tokenizer, chosen) == ["In his counting-house." + EOS_TOKEN]
    assert loss_runs(tokenizer, rejected) == ["I know not." + EOS_TOKEN]
    prompt_len = len(tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True,
                                                   tokenize=True, return_dict=False))
    assert chosen.input_ids[:prompt_len] == rejected.input_ids[:prompt_len]
    assert render_record(record, "preference", tokenizer).input_ids == chosen.input_ids


def test_mode_last_trains_only_the_final_turn_and_mode_all_trains_everything(tokenizer):
    last = render_chat(THREE_TURNS, tokenizer, mode="last")
    everything = render_chat(THREE_TURNS, tokenizer, mode="all")

    assert loss_runs(tokenizer, last) == [ASSISTANT[2] + EOS_TOKEN]
    assert everything.labels == everything.input_ids


def test_max_length_truncates_the_tail_and_says_so(tokenizer):
    full = render_record({"messages": THREE_TURNS}, "chat", tokenizer)
    cut = render_record({"messages": THREE_TURNS}, "chat", tokenizer, max_length=40)

    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:40] and cut.labels == full.labels[:40]
    assert full.text.startswith(cut.text) and "".join(s["text"] for s in cut.segments) == cut.text


def test_a_chat_record_without_an_assistant_turn_is_refused(tokenizer):
    with pytest.raises(ValueError, match="no assistant turn"):
        render_record({"messages": [{"role": "user", "content": "Hi"}]}, "chat", tokenizer)
    with pytest.raises(ValueError, match="cannot render"):
        render_record({"question": "q", "choices": ["a", "b"], "answer": "A"}, "multiple_choice", tokenizer)
