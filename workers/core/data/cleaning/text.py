"""Text helpers shared by the cleaning stages: the CJK-aware tokenizer and the text fields of a
canonical record.

Tokens: a run of letters/digits is one token, and every CJK character (Han, kana) is a token of
its own, because Chinese and Japanese do not separate words with spaces. Quality rules count
these tokens as "words" and decontamination builds its n-grams from them, so a 13-gram is 13
English words or 13 Chinese characters.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Callable

CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
TOKEN_RE = re.compile(f"[{CJK}]|[^\\W_{CJK}]+")
CJK_RE = re.compile(f"[{CJK}]")


def tokens(text: str) -> list[str]:
    """Lower-cased CJK-aware word tokens (punctuation and whitespace dropped)."""
    return TOKEN_RE.findall(text.lower())


def words_of(text: str) -> list[str]:
    """`tokens` of the NFKC form of `text` (what quality rules and decontamination count)."""
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return tokens(text)


def dedup_view(text: str) -> str:
    """The text that exact and near deduplication compare: NFKC (full-width and ASCII
    punctuation alike), lower-cased, whitespace runs collapsed to one space, so layout and
    width differences do not hide a duplicate."""
    if not text.isascii() and not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def map_text_fields(record: dict, fmt: str, fn: Callable[[str], str], *, tool_arguments: bool = False) -> bool:
    """Apply `fn` to every natural-language string of a canonical record, in place, where it
    lives (the structure never changes). Returns whether anything changed.

    Fields: text; message "content" (chat, preference); question and choices (multiple choice);
    question and answer (qa); prompt (code: tests and solutions are code, never touched).
    With `tool_arguments`, tool-call argument strings are included too (PII masking only)."""
    changed = False

    def sub(obj: dict, key: str) -> None:
        nonlocal changed
        value = obj.get(key)
        if isinstance(value, str):
            new = fn(value)
            if new != value:
                obj[key] = new
                changed = True

    def messages(items) -> None:
        for message in items or ():
            sub(message, "content")
            if tool_arguments:
                for call in message.get("tool_calls") or ():
                    function = call.get("function")
                    if isinstance(function, dict):
                        sub(function, "arguments")

    if fmt == "text":
        sub(record, "text")
    elif fmt == "chat":
        messages(record.get("messages"))
    elif fmt == "preference":
        for part in ("prompt", "chosen", "rejected"):
            messages(record.get(part))
    elif fmt == "multiple_choice":
        sub(record, "question")
        choices = record.get("choices") or []
        for i, choice in enumerate(choices):
            if isinstance(choice, str):
                new = fn(choice)
                if new != choice:
                    choices[i] = new
                    changed = True
    elif fmt == "qa":
        sub(record, "question")
        sub(record, "answer")
    elif fmt == "code":
        sub(record, "prompt")
    else:
        raise ValueError(f"unknown canonical format {fmt!r}")
    return changed
