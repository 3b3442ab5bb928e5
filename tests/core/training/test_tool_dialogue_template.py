"""Tool-call dialogues are trained with their calls in the text: on a ChatML model whose own
template ignores tools (SmolLM2's), the records are rendered with the serving engine's
chatml-tools template, so the model learns the calls it will be prompted for when served."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from workers.core.data.generators import tool_use_dialogues
from workers.core.data.tokenize import render_record
from workers.core.inference.chat import CHATML_TOOLS_TEMPLATE
from workers.core.training.templates import CHAT_TEMPLATES, template_for_records

DIALOGUES = tool_use_dialogues(4, seed=3)
PLAIN = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_base):
    return AutoTokenizer.from_pretrained(tiny_base)  # its own template: plain ChatML, no tools


def test_tool_dialogues_on_a_chatml_model_without_tools_are_rendered_with_chatml_tools(chatml_tokenizer):
    own = chatml_tokenizer.chat_template
    assert "<|im_start|>" in own and "tools" not in own
    template, note = template_for_records("", own, DIALOGUES)
    assert template == CHATML_TOOLS_TEMPLATE and "chatml-tools" in note
    rendered = render_record(DIALOGUES[0], "chat", chatml_tokenizer, chat_template=template)
    trained = "".join(s["text"] for s in rendered.segments if s["loss"])
    expression = DIALOGUES[0]["meta"]["expression"]
    # The call is what the model learns to write, the tool's result is context it reads.
    assert f'<tool_call>\n{{"name": "calculator", "arguments": {{"expression": "{expression}"}}}}\n</tool_call>' in trained
    assert "<tool_response>" in rendered.text and "<tool_response>" not in trained
    assert '"name": "calculator"' in rendered.text.split("<|im_end|>")[0]  # the tools block in the system turn


def test_records_without_tools_and_templates_that_render_tools_are_left_as_asked(chatml_tokenizer):
    assert template_for_records("", chatml_tokenizer.chat_template, PLAIN) == (None, None)
    assert template_for_records("", CHATML_TOOLS_TEMPLATE, DIALOGUES) == (None, None)
    assert template_for_records("chatml", chatml_tokenizer.chat_template, DIALOGUES) == (CHAT_TEMPLATES["chatml"], None)


def test_a_template_that_would_drop_the_calls_and_is_not_chatml_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="chatml-tools"):
        template_for_records("", CHAT_TEMPLATES["llama2"], DIALOGUES)
