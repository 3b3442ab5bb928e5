"""LLM as judge with scripted judges (deterministic callables): reading ratings and verdicts in
the ways judges write them, repeated ratings with their spread, and pairwise verdicts in both
orders so that a position-biased judge gives ties."""
from __future__ import annotations

import itertools
import statistics

import pytest

from workers.core.evaluation.judge import (
    judge_score,
    pair_messages,
    pairwise_verdicts,
    parse_rating,
    parse_verdict,
    score_messages,
)


@pytest.mark.parametrize("reply, rating", [
    ("The answer is correct and concise.\n\nRating: [[7]]", 7.0),
    ("Rating: [[8.5]]", 8.5),
    ("The response is helpful. **Rating: [[9]]**", 9.0),
    ("As required I answer like \"[[5]]\". The response misses the point. Rating: [[2]]", 2.0),  # the last one
    ("Rating: [[7/10]]", 7.0),
    ("Rating: 6", 6.0),
    ("Rating: [4]", 4.0),
    ("Overall I would give it 8/10.", 8.0),
    ("评分：７", 7.0),  # full-width digit
    ("<think>maybe [[3]]</think>The answer is right. Rating: [[10]]", 10.0),
    ("Rating: [[11]]", None),  # out of range
    ("Rating: [[0]]", None),
    ("I cannot rate this.", None),
])
def test_a_rating_is_read_as_judges_write_it(reply, rating):
    assert parse_rating(reply) == rating


@pytest.mark.parametrize("reply, verdict", [
    ("Assistant A is more accurate. [[A]]", "A"),
    ("[[B]]", "B"),
    ("Both are equally good. [[C]]", "tie"),
    ("[[tie]]", "tie"),
    ("The format asks for \"[[A]]\" or \"[[B]]\"; here B is better: [[B]]", "B"),
    ("A is better.", None),
])
def test_a_pairwise_verdict_is_read_from_the_last_double_bracket(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_the_prompts_carry_the_question_the_answers_and_the_reference():
    plain = score_messages("What is 2+2?", "4")
    assert plain[0]["role"] == "system" and "[Question]\nWhat is 2+2?" in plain[1]["content"]
    assert "Reference" not in plain[1]["content"] and "[[rating]]" in plain[1]["content"]
    with_reference = score_messages("What is 2+2?", "5", reference="4",
                                    context=[{"role": "user", "content": "Let's do sums."}])
    assert "[The Start of Reference Answer]\n4\n" in with_reference[1]["content"]
    assert "user: Let's do sums." in with_reference[1]["content"]
    pair = pair_messages("Q?", "first", "second")[1]["content"]
    assert pair.index("Assistant A's Answer]\nfirst") < pair.index("Assistant B's Answer]\nsecond")


def test_repeated_ratings_report_their_mean_spread_and_every_reason():
    replies = itertools.cycle(["Good but terse. Rating: [[6]]", "Correct. Rating: [[8]]", "Fine. Rating: [[7]]",
                               "I am unsure."])
    seen = []

    def judge(messages):
        seen.append(messages)
        return next(replies)

    result = judge_score(judge, "What is 2+2?", "4", repeats=4)
    assert result["ratings"] == [6.0, 8.0, 7.0, None] and result["rated"] == 3
    assert result["mean"] == 7.0 and result["stdev"] == pytest.approx(statistics.stdev([6, 8, 7]))
    assert (result["min"], result["max"]) == (6.0, 8.0)
    assert result["reasons"] == ["Good but terse. Rating: [[6]]", "Correct. Rating: [[8]]", "Fine. Rating: [[7]]",
                                 "I am unsure."]
    assert len(seen) == 4 and all(m == seen[0] for m in seen)  # the same prompt each time
    single = judge_score(lambda m: "Rating: [[5]]", "q", "a")
    assert (single["mean"], single["stdev"], single["rated"]) == (5.0, 0.0, 1)
    nothing = judge_score(lambda m: "no idea", "q", "a", repeats=2)
    assert (nothing["mean"], nothing["stdev"], nothing["rated"]) == (None, None, 0)
    with pytest.raises(ValueError):
        judge_score(judge, "q", "a", repeats=0)


def _answers_in(messages):
    text = messages[1]["content"]
    first = text.split("[The Start of Assistant A's Answer]\n", 1)[1].split("\n[The End", 1)[0]
    second = text.split("[The Start of Assistant B's Answer]\n", 1)[1].split("\n[The End", 1)[0]
    return first, second


def test_a_consistent_judge_gives_the_same_winner_in_both_orders():
    def prefers_the_longer(messages):
        first, second = _answers_in(messages)
        return "[[A]]" if len(first) > len(second) else "[[B]]" if len(second) > len(first) else "[[C]]"

    result = pairwise_verdicts(prefers_the_longer, "Explain rain.", "Water vapour condenses and falls.", "Clouds.",
                               repeats=2)
    assert result["verdict"] == "A" and (result["wins_a"], result["wins_b"], result["ties"]) == (2, 0, 0)
    assert result["score_a"] == 1.0 and [(r["ab"], r["ba"]) for r in result["rounds"]] == [("A", "A")] * 2
    reverse = pairwise_verdicts(prefers_the_longer, "Explain rain.", "Clouds.", "Water vapour condenses and falls.")
    assert reverse["verdict"] == "B" and reverse["score_a"] == 0.0
    even = pairwise_verdicts(prefers_the_longer, "q", "same", "same")
    assert even["verdict"] == "tie" and even["score_a"] == 0.5


def test_a_position_biased_judge_gives_ties_because_its_verdict_flips_with_the_order():
    calls = []

    def always_first(messages):
        calls.append(_answers_in(messages))
        return "Assistant A is better. [[A]]"

    result = pairwise_verdicts(always_first, "q", "answer one", "answer two", repeats=3)
    assert result["verdict"] == "tie" and (result["wins_a"], result["wins_b"], result["ties"]) == (0, 0, 3)
    assert [(r["ab"], r["ba"]) for r in result["rounds"]] == [("A", "B")] * 3
    assert calls == [("answer one", "answer two"), ("answer two", "answer one")] * 3  # both orders every round


def test_a_win_one_way_and_a_tie_the_other_is_a_tie_and_unreadable_rounds_are_left_out():
    script = iter(["[[A]]", "[[C]]",  # round 1: A wins with A first, tie when swapped -> tie
                   "[[A]]", "[[B]]",  # round 2: A both ways (B in position B is A) -> A
                   "[[A]]", "hmm"])  # round 3: the swapped reply has no verdict -> unreadable
    result = pairwise_verdicts(lambda m: next(script), "q", "a", "b", repeats=3)
    assert [r["verdict"] for r in result["rounds"]] == ["tie", "A", None]
    assert (result["wins_a"], result["ties"], result["unreadable"]) == (1, 1, 1)
    assert result["verdict"] == "A" and result["score_a"] == 0.75
    assert pairwise_verdicts(lambda m: "no verdict", "q", "a", "b")["verdict"] is None
