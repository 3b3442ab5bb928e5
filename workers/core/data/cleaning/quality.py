"""Stage 3: Gopher-style quality rules (Rae et al. 2021, "Scaling Language Models", appendix A),
with every threshold taken from the spec.

Words are the CJK-aware tokens of `text.tokens` (a Chinese character counts as a word), so the
per-word and n-gram rules mean the same thing for Chinese as for English. The English stop-word
rule is applied only to documents identified as English: there is no Chinese counterpart here,
because a Chinese stop-word rule (的/了/是 …) would drop classical Chinese such as Tang poetry and
short answers, which are wanted data. The rules run in the order below and the first one that
fails names the reason. The two statistical rules — the most frequent 2-gram and the stop words —
need at least STATISTICS_MIN_WORDS (50) words, Gopher's own minimum document length: in a
one-line instruction or answer, "the weather ... the weather" is already 25% of the characters
and "Translate: bonjour" has no stop word. A code record (HumanEval-style prompt) only gets the length rules: '#'
comments, digits and repeated lines are normal in code.
"""
from __future__ import annotations

from collections import Counter

from .text import tokens

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
STATISTICS_MIN_WORDS = 50

# rule id -> what it means (the report's drop_reasons are keyed by rule id)
RULES = {
    "too_short": "fewer characters than min_chars",
    "too_long": "more characters than max_chars",
    "hash_ratio": "'#' per word above max_symbol_ratio",
    "ellipsis_ratio": "'...' per word above max_symbol_ratio",
    "digit_ratio": "digits per non-space character above max_digit_ratio",
    "duplicate_lines": "fraction of repeated lines above max_duplicate_line_fraction",
    "top_2gram": "characters in the most frequent word 2-gram above max_top_ngram_fraction",
    "few_stop_words": "fewer distinct English stop words than require_stop_words",
}


def quality_issue(text: str, lang: str, fmt: str, spec, words: list[str] | None = None) -> tuple[str, str] | None:
    """(rule id, readable reason with the measured value) for the first rule the text fails.
    `words`: the text's tokens when the caller has them already."""
    n = len(text)
    if n < spec.min_chars:
        return "too_short", f"{n} characters < min_chars {spec.min_chars}"
    if n > spec.max_chars:
        return "too_long", f"{n} characters > max_chars {spec.max_chars}"
    if fmt == "code":
        return None
    if words is None:
        words = tokens(text)
    n_words = max(len(words), 1)
    hashes = text.count("#")
    if hashes and hashes / n_words > spec.max_symbol_ratio:
        return "hash_ratio", f"'#' per word {hashes / n_words:.2f} > {spec.max_symbol_ratio}"
    ellipses = text.count("...") + text.count("\u2026")
    if ellipses and ellipses / n_words > spec.max_symbol_ratio:
        return "ellipsis_ratio", f"'...' per word {ellipses / n_words:.2f} > {spec.max_symbol_ratio}"
    visible = n - text.count(" ") - text.count("\n") - text.count("\t")  # after normalize: all the spaces
    if visible > 0:
        digits = sum(map(text.count, "0123456789"))
        if digits / visible > spec.max_digit_ratio:
            return "digit_ratio", f"digit fraction {digits / visible:.2f} > {spec.max_digit_ratio}"
    if "\n" in text:
        lines = [line.strip() for line in text.split("\n")]
        lines = [line for line in lines if line]
        if len(lines) > 1:
            repeated = 1 - len(set(lines)) / len(lines)
            if repeated > spec.max_duplicate_line_fraction:
                return "duplicate_lines", (f"{repeated:.0%} of lines are repeats > "
                                           f"{spec.max_duplicate_line_fraction:.0%}")
    if len(words) < STATISTICS_MIN_WORDS:
        return None
    (first, second), count = Counter(zip(words, words[1:])).most_common(1)[0]
    if count > 1:
        fraction = count * (len(first) + len(second)) / sum(map(len, words))
        if fraction > spec.max_top_ngram_fraction:
            return "top_2gram", (f"2-gram '{first} {second}' x{count} covers {fraction:.0%} of the "
                                 f"characters > {spec.max_top_ngram_fraction:.0%}")
    if lang == "en" and spec.require_stop_words:
        found = STOP_WORDS.intersection(words)
        if len(found) < spec.require_stop_words:
            return "few_stop_words", (f"{len(found)} distinct English stop words < "
                                      f"{spec.require_stop_words}")
    return None
