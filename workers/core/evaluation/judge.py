"""LLM as judge: a judge model rates an answer (score mode) or picks the better of two (pairwise).

A judge is any callable `chat(messages) -> str` (clients.judge_function makes one of a
deployment or an endpoint; tests pass scripted functions). The prompts follow MT-Bench's
(FastChat's llm_judge prompts, Apache-2.0: "single-v1", "single-math-v1" with a reference, and
"pair-v2"), so a judge's habits learned there ("Rating: [[7]]", "[[A]]") apply.

Score mode (`judge_score`): a 1-10 rating with the judge's reason, asked `repeats` times (with a
temperature above 0 they differ): the mean, the spread (stdev, min, max) and every reason are
kept. An answer whose rating cannot be read is kept with its reason and no rating.

Pairwise mode (`pairwise_verdicts`): each round asks twice, with the answers in both positions,
to cancel the judge's position bias: a verdict that flips with the order (or is a win one way and
a tie the other) counts as a tie. Rounds are repeated `repeats` times; the verdict is the side
with more round wins ("tie" when even).
"""
from __future__ import annotations

import re
import statistics
import unicodedata
from collections.abc import Callable

Judge = Callable[[list[dict]], str]
# Part of the judgments' cache key: a changed prompt or parser re-judges instead of reusing.
PROMPT_VERSION = "mt-bench-1"
MAX_JUDGE_TEXT = 20_000  # of a judge's reply that is read (the rating is at the end)
MAX_REASON = 2_000  # characters of each reason kept
MAX_REPEATS = 10

_SYSTEM = "You are a helpful assistant."
_SCORE_INSTRUCTION = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question displayed below. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of the response. Begin your evaluation by "
    "providing a short explanation. Be as objective as possible. After providing your explanation, you must rate "
    "the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for example: "
    "\"Rating: [[5]]\"."
)
_SCORE_WITH_REFERENCE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question displayed below. Your evaluation should consider correctness and helpfulness. You will "
    "be given a reference answer and the assistant's answer. Begin your evaluation by comparing the assistant's "
    "answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. After "
    "providing your explanation, you must rate the response on a scale of 1 to 10 by strictly following this "
    "format: \"[[rating]]\", for example: \"Rating: [[5]]\"."
)
_PAIR_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. Begin your evaluation by "
    "comparing the two responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the length of "
    "the responses to influence your evaluation. Do not favor certain names of the assistants. Be as objective "
    "as possible. After providing your explanation, output your final verdict by strictly following this "
    "format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)


def _context_block(context: list[dict] | None) -> str:
    """Earlier turns of a multi-turn question, so the judge reads the last question in place."""
    if not context:
        return ""
    lines = "\n".join(f"{m.get('role', 'user')}: {m.get('content') or ''}" for m in context)
    return f"[The Start of the Conversation Before the Question]\n{lines}\n[The End of the Conversation]\n\n"


def score_messages(question: str, answer: str, *, reference: str | None = None, context: list[dict] | None = None
                   ) -> list[dict]:
    """The judge's prompt for one answer (MT-Bench single-v1; single-math-v1 with a reference)."""
    parts = [f"[Instruction]\n{_SCORE_WITH_REFERENCE if reference else _SCORE_INSTRUCTION}\n\n",
             _context_block(context), f"[Question]\n{question}\n\n"]
    if reference:
        parts.append(f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n")
    parts.append(f"[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": "".join(parts)}]


def pair_messages(question: str, answer_a: str, answer_b: str, *, reference: str | None = None,
                  context: list[dict] | None = None) -> list[dict]:
    """The judge's prompt for two answers in positions A and B (MT-Bench pair-v2)."""
    parts = [_context_block(context), f"[User Question]\n{question}\n\n"]
    if reference:
        parts.append(f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n")
    parts.append(f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
                 f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")
    return [{"role": "system", "content": _PAIR_SYSTEM}, {"role": "user", "content": "".join(parts)}]


# --- reading the judge's reply ------------------------------------------------------------------

_THINK_END = re.compile(r"</think\s*>", re.IGNORECASE)
_NUMBER = r"(\d{1,2}(?:\.\d+)?)"
# In order of trust; the last match of the first pattern that matches wins (a judge that
# restates the format in its explanation, "I must answer like [[5]]", then rates, is read right).
_RATING_PATTERNS = [
    re.compile(r"\[\[\s*" + _NUMBER + r"\s*(?:/\s*10\s*)?\]\]"),  # [[7]], [[7.5]], [[7/10]]
    re.compile(r"(?i:rating|score|评分|得分)\s*[:：]?\s*\**\s*\[?\s*" + _NUMBER + r"(?:\s*/\s*10)?\s*\]?"),  # Rating: 7, Rating: [7]
    re.compile(r"\[\s*" + _NUMBER + r"\s*\]"),  # [7]: MT-Bench's own backup
    re.compile(r"(?<![\d.])" + _NUMBER + r"\s*/\s*10(?![\d])"),  # 7/10
]
_VERDICT = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)


def _prepare(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError("a judge's reply must be a string")
    text = text[-MAX_JUDGE_TEXT:]
    ends = list(_THINK_END.finditer(text))
    if ends:
        text = text[ends[-1].end():]
    return unicodedata.normalize("NFKC", text).replace("*", "")


def parse_rating(text: str) -> float | None:
    """The 1-10 rating in a judge's reply ("Rating: [[7]]", "[[8.5]]", "Rating: 6/10",
    "评分：7"), or None when it holds none in range."""
    text = _prepare(text)
    for pattern in _RATING_PATTERNS:
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" ("[[C]]" or "[[tie]]") from a pairwise reply (the last verdict), or None."""
    found = _VERDICT.findall(_prepare(text))
    if not found:
        return None
    last = found[-1].upper()
    return "tie" if last in ("C", "TIE") else last


def _reason(text: str) -> str:
    text = _prepare(text).strip()
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 1] + "…"


def _check_repeats(repeats: int) -> None:
    if not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"repeats must be 1..{MAX_REPEATS}, got {repeats!r}")


# --- the two modes ------------------------------------------------------------------------------

def judge_score(judge: Judge, question: str, answer: str, *, reference: str | None = None,
                context: list[dict] | None = None, repeats: int = 1) -> dict:
    """Rate `answer` 1-10 `repeats` times: {"ratings": [float | None], "reasons": [str], "mean",
    "stdev", "min", "max" (over the readable ratings; None when there is none; stdev 0 for one),
    "rated": how many were readable}."""
    _check_repeats(repeats)
    messages = score_messages(question, answer, reference=reference, context=context)
    ratings, reasons = [], []
    for _ in range(repeats):
        reply = judge(messages)
        ratings.append(parse_rating(reply))
        reasons.append(_reason(reply))
    rated = [r for r in ratings if r is not None]
    return {"ratings": ratings, "reasons": reasons, "rated": len(rated),
            "mean": statistics.fmean(rated) if rated else None,
            "stdev": statistics.stdev(rated) if len(rated) > 1 else (0.0 if rated else None),
            "min": min(rated) if rated else None, "max": max(rated) if rated else None}


_SWAP = {"A": "B", "B": "A", "tie": "tie", None: None}


def pairwise_verdicts(judge: Judge, question: str, answer_a: str, answer_b: str, repeats: int = 1, *,
                      reference: str | None = None, context: list[dict] | None = None) -> dict:
    """Judge answer A against answer B in both orders, `repeats` rounds (module doc).

    {"verdict": "A" | "B" | "tie" | None (no round could be read), "wins_a", "wins_b", "ties",
     "unreadable", "score_a": (wins_a + ties / 2) / readable rounds (None without any),
     "rounds": [{"verdict", "ab": verdict with A first, "ba": verdict with B first (in A/B terms),
                 "reasons": [ab reason, ba reason]}]}"""
    _check_repeats(repeats)
    forward = pair_messages(question, answer_a, answer_b, reference=reference, context=context)
    backward = pair_messages(question, answer_b, answer_a, reference=reference, context=context)
    rounds = []
    for _ in range(repeats):
        reply_ab, reply_ba = judge(forward), judge(backward)
        ab, ba = parse_verdict(reply_ab), _SWAP[parse_verdict(reply_ba)]
        if ab is None or ba is None:
            verdict = None
        else:
            verdict = ab if ab == ba else "tie"  # flipped with the order: position bias, not preference
        rounds.append({"verdict": verdict, "ab": ab, "ba": ba, "reasons": [_reason(reply_ab), _reason(reply_ba)]})
    wins_a = sum(r["verdict"] == "A" for r in rounds)
    wins_b = sum(r["verdict"] == "B" for r in rounds)
    ties = sum(r["verdict"] == "tie" for r in rounds)
    readable = wins_a + wins_b + ties
    if not readable:
        verdict = None
    else:
        verdict = "A" if wins_a > wins_b else "B" if wins_b > wins_a else "tie"
    return {"verdict": verdict, "wins_a": wins_a, "wins_b": wins_b, "ties": ties, "unreadable": len(rounds) - readable,
            "score_a": (wins_a + ties / 2) / readable if readable else None, "rounds": rounds}
