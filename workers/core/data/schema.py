"""The canonical record of each dataset format: what a dataset version stores (one JSON object per
line, normalized at import) and what cleaning, statistics, tokenization and training read.

Every importer (Alpaca, ShareGPT, OpenAI messages, CSV multiple choice, …) converts into one of
these, so everything downstream handles seven shapes instead of every file format in the wild.

    text             {"text": str}
    chat             {"messages": [Message, ...], "tools": [ToolSpec, ...]?}          (SFT; from alpaca,
                     sharegpt or openai messages; "system" only first; at least one user and
                     one assistant turn; an assistant turn has "content" and/or "tool_calls")
    preference       {"prompt": [Message, ...], "chosen": [Message, ...], "rejected": [Message, ...]}
                     (chosen/rejected: the assistant continuation(s) after the prompt)
    multiple_choice  {"question": str, "choices": [str, ...] (2–26), "answer": "A".."Z", "subject": str?}
    qa               {"question": str, "answer": str}        (GSM8K style: the answer may hold reasoning)
    code             {"task_id": str, "prompt": str, "tests": str, "entry_point": str,
                      "canonical_solution": str?}             (HumanEval style)

    Message   {"role": "system"|"user"|"assistant"|"tool", "content": str,
               "tool_calls": [{"type": "function", "function": {"name": str, "arguments": str (JSON)}}]?,
               "name": str? (tool name on a tool message)}
    ToolSpec  {"type": "function", "function": {"name": str, "description": str?, "parameters": dict?}}

Every canonical record may also carry "meta": dict (source line number, original id, …).
"""
from __future__ import annotations

CANONICAL_FORMATS = ("text", "chat", "preference", "multiple_choice", "qa", "code")
ROLES = ("system", "user", "assistant", "tool")


def record_text(record: dict, fmt: str) -> str:
    """The natural-language text of a canonical record, for language identification, quality
    rules, deduplication, PII masking and length statistics."""
    if fmt == "text":
        return record["text"]
    if fmt == "chat":
        return "\n".join(m.get("content") or "" for m in record["messages"])
    if fmt == "preference":
        parts = record["prompt"] + record["chosen"] + record["rejected"]
        return "\n".join(m.get("content") or "" for m in parts)
    if fmt == "multiple_choice":
        return "\n".join([record["question"], *record["choices"]])
    if fmt == "qa":
        return f"{record['question']}\n{record['answer']}"
    if fmt == "code":
        return record["prompt"]
    raise ValueError(f"unknown canonical format {fmt!r}")
