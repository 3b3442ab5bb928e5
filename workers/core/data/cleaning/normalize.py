"""Stage 1: Unicode NFKC, control characters, whitespace.

Prose fields: NFKC, except the full-width punctuation of Chinese text (，！？：；（）～), which
NFKC would turn into ASCII and so teach a model to write "," inside Chinese sentences
(full-width letters and digits still become ASCII: ＡＢＣ１２３ -> ABC123); CR/LF and U+2028/2029
become "\\n"; control and invisible format characters are removed (tab and newline kept); inside
a line, runs of spaces collapse to one space (a run holding a tab becomes one tab); trailing
spaces go; three or more line breaks become two; the ends are stripped. Leading indentation is
kept, so code blocks and lists inside chat answers survive. The prompt of a code record is
code: it only loses control characters and gets "\\n" line ends (no NFKC, which could change
identifiers, and no whitespace changes).
"""
from __future__ import annotations

import re
import unicodedata

# C0/C1 controls except \t \n, soft hyphen, zero-width space, word joiner, BOM, lone surrogates
# (which cannot be written as UTF-8). ZWJ/ZWNJ stay: emoji sequences and some scripts need them.
# Chinese sentence punctuation that NFKC would map to ASCII; kept as written
_CJK_PUNCT = re.compile("([\uff01\uff08\uff09\uff0c\uff1a\uff1b\uff1f\uff5e]+)")
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff\ud800-\udfff]")
_LINE_BREAK = re.compile("\r\n?|[\u2028\u2029]")
_TRAILING = re.compile(r"[^\S\n]+(?=\n|\Z)")
_INNER = re.compile(r"(?<=\S)(?:[^\S\n]{2,}|[^\S\n \t])")
_BLANK_LINES = re.compile(r"\n{3,}")
# What normalize_text changes after NFKC, checked with one character-class scan and a few
# substring tests (a single regex with these alternatives costs ~5x more on clean text).
_SUSPECT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff\ud800-\udfff\r\u2028\u2029\u1680]")
_SUSPECT_PAIRS = ("  ", " \t", "\t ", "\t\t", " \n", "\t\n", "\n\n\n")


def _clean(text: str) -> bool:
    return not (not text or text[0].isspace() or text[-1].isspace() or _SUSPECT.search(text)
                or any(pair in text for pair in _SUSPECT_PAIRS))


def _collapse(match: re.Match) -> str:
    return "\t" if "\t" in match.group() else " "


def normalize_text(text: str) -> str:
    """NFKC + control characters + whitespace, for prose."""
    if not text.isascii():
        text = nfkc(text)
    return text if _clean(text) else _normalize_layout(text)


def nfkc(text: str) -> str:
    """NFKC that keeps Chinese full-width sentence punctuation."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    if not _CJK_PUNCT.search(text):
        return unicodedata.normalize("NFKC", text)
    parts = _CJK_PUNCT.split(text)  # odd items: the punctuation runs
    return "".join(part if i % 2 else unicodedata.normalize("NFKC", part) for i, part in enumerate(parts))


def _normalize_layout(text: str) -> str:
    if "\r" in text or not text.isascii():
        text = _LINE_BREAK.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("", text)
    text = _INNER.sub(_collapse, text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


def normalize_code(text: str) -> str:
    """Code keeps its layout: only line ends and control characters change."""
    if "\r" in text or not text.isascii():
        text = _LINE_BREAK.sub("\n", text)
    return _CONTROL.sub("", text)
