"""Named chat templates a spec may ask for (`chat_template: chatml`), for models whose own
template is missing or unsuitable. A value that is not a name here is used as a Jinja template.
"chatml-tools" is the serving engine's own (workers/core/inference/chat.py): a model trained on
tool-call dialogues with it is served with the same prompt it learned."""
from __future__ import annotations

from workers.core.inference.chat import CHATML_TOOLS_TEMPLATE

CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "chatml-tools": CHATML_TOOLS_TEMPLATE,
    "llama2": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system %}{{ bos_token + '[INST] <<SYS>>\n' + system + '\n<</SYS>>\n\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "zephyr": (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}


def resolve_chat_template(value: str) -> str | None:
    """None (the tokenizer's own), the named template, or `value` itself as a Jinja template."""
    if not value:
        return None
    return CHAT_TEMPLATES.get(value, value)


def uses_tools(record: dict) -> bool:
    """Whether a chat record shows tools or tool calls (what a template may silently drop)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    return bool(record.get("tools")) or any(
        isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages or [])


def template_for_records(value: str, own_template: str | None, records: list[dict]) -> tuple[str | None, str | None]:
    """(template to train with, a note for the log) for chat records: `value` resolved, except
    that records with tool calls on a ChatML model whose own template ignores tools (SmolLM2's)
    are rendered with chatml-tools, as the evaluation and serving code render them, instead of
    training on assistant turns whose tool calls vanished. Any other template that drops tools
    is refused: ValueError naming the fix."""
    from workers.core.inference.chat import template_supports_tools

    resolved = resolve_chat_template(value)
    if resolved or not any(uses_tools(r) for r in records[:1000]):
        return resolved, None
    if template_supports_tools(own_template):
        return None, None
    if own_template and "<|im_start|>" in own_template:
        return CHAT_TEMPLATES["chatml-tools"], ("the records have tool calls and the model's chat template ignores "
                                                "tools: rendering them with chatml-tools (the serving engine's)")
    raise ValueError("the records have tool calls and the model's chat template drops them: set chat_template "
                     "to one that renders tools (chatml-tools)")
