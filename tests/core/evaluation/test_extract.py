"""Answer extraction on model outputs in the styles real models write, for real GSM8K and MMLU
questions (the excerpts in tests/fixtures/data/gsm8k and mmlu), including the outputs
OpenCompass's postprocessors score wrong (the "opencompass" field of a fixture row records what
they extract). Fixture: tests/fixtures/data/eval_outputs (see its SOURCE.txt)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from workers.core.evaluation import extract as ex
from workers.core.specs import SpecError

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "data"
OUTPUTS = DATA / "eval_outputs"
LETTERS = "ABCD"


def _rows(name):
    with open(OUTPUTS / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _gsm8k():
    with open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _mmlu():
    with open(DATA / "mmlu" / "test" / "virology_test.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _reference(source):
    """(reference answer, option texts) of a fixture row's source record ("file:record")."""
    path, record = source.rsplit(":", 1)
    index = int(record) - 1
    if path == "gsm8k/test.jsonl":
        answer = _gsm8k()[index]["answer"]
        return ex.gsm8k_answer(answer), None
    if path == "mmlu/test/virology_test.csv":
        row = _mmlu()[index]
        return LETTERS[int(row["answer"])], [row[f"choice{i}"] for i in range(4)]
    raise AssertionError(f"unknown source {source}")


def _extract(row):
    choices = _reference(row["source"])[1] if row.get("choices") else None
    return ex.extract(row["extractor"], row["output"], options=row.get("options", LETTERS),
                      choices=choices)


HAND_WRITTEN = _rows("outputs.jsonl")
SMOLLM2 = _rows("smollm2_135m_instruct.jsonl")


@pytest.mark.parametrize("row", HAND_WRITTEN, ids=[r["id"] for r in HAND_WRITTEN])
def test_each_model_output_gives_its_expected_answer(row):
    assert _extract(row) == row["expected"], row["why"]


@pytest.mark.parametrize("row", [r for r in HAND_WRITTEN if r["source"]],
                         ids=[r["id"] for r in HAND_WRITTEN if r["source"]])
def test_outputs_to_real_questions_are_scored_against_the_real_reference(row):
    reference, _ = _reference(row["source"])
    assert ex.answers_match(row["extractor"], _extract(row), reference) is row["correct"]


def test_the_fixture_holds_the_cases_opencompass_gets_wrong():
    # The rows where OpenCompass's postprocessor extracts something else than the answer the
    # output gives; each one is also an expected-answer case above.
    wrong = [r for r in HAND_WRITTEN if "opencompass" in r and r["opencompass"] != r["expected"]]
    assert len(wrong) >= 10
    assert {r["extractor"] for r in wrong} == {"final_number", "option"}


@pytest.mark.parametrize("row", SMOLLM2, ids=[f"{r['source']}" for r in SMOLLM2])
def test_real_smollm2_outputs_are_extracted_and_scored_as_the_fixture_records(row):
    # Greedy outputs of the starter model (SmolLM2-135M-Instruct): mostly wrong, often cut off
    # at the token limit. Extraction must not turn a wrong output into a right one.
    assert _extract(row) == row["expected"]
    reference, _ = _reference(row["source"])
    assert ex.answers_match(row["extractor"], _extract(row), reference) is row["correct"]


# --- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, canonical", [
    ("12", "12"), ("12.0", "12"), ("12.50", "12.5"), ("1,234", "1234"), ("$1,234.50", "1234.5"),
    ("-0.50", "-0.5"), ("+7", "7"), ("25%", "25"), ("3/4", "0.75"), ("1/3", "1/3"),
    ("６", "6"), ("−3", "-3"), ("18.", "18"),
    ("12 apples", None), ("1,2", None), ("", None), ("abc", None), ("1/0", None),
])
def test_normalize_number_gives_one_canonical_form(value, canonical):
    assert ex.normalize_number(value) == canonical


def test_numbers_compare_by_value_not_by_text():
    assert ex.numbers_equal("12.0", "12")
    assert ex.numbers_equal("$70,000", "70000")
    assert ex.numbers_equal("0.75", "3/4")
    assert not ex.numbers_equal("1/3", "0.33")  # no float rounding
    assert not ex.numbers_equal(None, "1")


def test_the_gsm8k_reference_answers_of_the_excerpt_all_extract():
    answers = [ex.gsm8k_answer(r["answer"]) for r in _gsm8k()]
    assert answers[:4] == ["18", "3", "70000", "540"]
    assert all(a is not None and re.fullmatch(r"-?\d+", a) for a in answers)


def test_boxed_reads_the_last_box_with_nested_braces_and_refuses_an_unclosed_one():
    assert ex.boxed("first \\boxed{1} then \\boxed{\\frac{a}{b}+{c}}") == "\\frac{a}{b}+{c}"
    assert ex.boxed("\\fbox{7}") == "7"
    assert ex.boxed("\\boxed{12") is None
    assert ex.boxed("\\boxed{" * 3000 + "\\boxed{5}") == "5"  # unclosed boxes, one pass
    assert ex.answers_match("boxed", "\\frac{3}{4}", "0.75")
    assert ex.answers_match("boxed", "18 \\text{ dollars}", "18")


def test_a_markdown_heading_of_four_hashes_is_not_a_gsm8k_answer():
    output = ("#### Step 1: eggs left\n16 - 3 - 4 = 9\n"
              "#### Step 2: money\n9 × 2 = 18\nThe answer is 18.")
    assert ex.gsm8k_answer(output) is None
    assert ex.final_number(output) == "18"


def test_unicode_fractions_and_full_width_forms_read_as_numbers():
    assert ex.last_number("about ½ of them") == "0.5"
    assert ex.option_letter("答案是（Ｂ）") == "B"


PATHOLOGICAL = {
    # "answer" + 200 spaces took two minutes in the first version of the letter patterns
    # (adjacent \\s* around optional words backtrack polynomially): whitespace is collapsed
    # and matched possessively now.
    "answer then spaces": "answer" + " " * 20_000 + "x",
    "answer then blank lines": "answer" + " \n" * 10_000 + "x",
    "repeated markers": "The answer is " * 1_500,
    "unclosed boxes": "\\boxed{" * 3_000,
    "a 20,000-digit number": "1" * 20_000,
    "commas and digits": "1," * 10_000,
    "hashes": "#### " * 5_000,
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("output", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_pathological_outputs_are_extracted_in_bounded_time(output):
    for kind in ("last_number", "gsm8k", "boxed", "final_number", "option"):
        ex.extract(kind, output, choices=["x y", "answer is"])
    ex.extract("regex", output, pattern=r"answer (\w)")


def test_a_long_output_is_read_from_its_tail_only():
    filler = "The number 7 appears here. " * 2000  # ~54,000 characters
    assert ex.last_number(filler + "So the answer is 42.") == "42"
    assert len(ex.prepare(filler)) <= ex.MAX_INPUT_CHARS


# --- option letters -----------------------------------------------------------------------------


@pytest.mark.parametrize("output, letter", [
    ("The answer is (B).", "B"),
    ("(C)", "C"),
    ("D", "D"),
    ("B) Easier access to investigational drugs", "B"),
    ("the correct option is c.", "C"),
    ("Answer: [A]", "A"),
    ("答案是 C", "C"),
    ("正确答案为：D", "D"),
    ("所以选 B。", "B"),
    ("C是正确的", "C"),
    ("A is wrong, B is wrong, C is wrong, so D is correct.", "D"),
    ("I think A is right.", "A"),
    ("A virus cannot live alone.", None),
    ("I don't know.", None),
    ("Both B and C seem plausible.", None),
    ("", None),
])
def test_option_letter_prefers_explicit_statements_then_standalone_letters(output, letter):
    assert ex.option_letter(output) == letter


def test_option_letters_outside_the_options_never_count():
    assert ex.option_letter("The answer is F.", options="ABCDE") is None
    assert ex.option_letter("The answer is F.", options="ABCDEF") == "F"


def test_options_must_be_the_first_letters_of_the_alphabet():
    for bad in ("ABD", "A", "ABCDEFGHIJK", "abcd"):
        with pytest.raises(SpecError, match="options"):
            ex.option_letter("A", options=bad)


# --- a user's regex -----------------------------------------------------------------------------


def test_a_user_regex_returns_its_group_from_the_last_match():
    assert ex.regex_answer("Result: 4\nResult: 5", r"Result:\s*(\d+)") == "5"
    assert ex.regex_answer("yes then no", r"\b(?:yes|no)\b") == "no"
    assert ex.regex_answer("nothing", r"Result: (\d+)") is None
    assert ex.extract("regex", "label=positive", pattern=r"label=(\w+)") == "positive"


@pytest.mark.parametrize("pattern, message", [
    ("(a+)+$", "nests a repeat"),
    (r"(\w*)*x", "nests a repeat"),
    ("(a)(b)", "more than one capture group"),
    ("(unclosed", "not a valid regular expression"),
    ("x" * 400, "longer than 300"),
    ("", "non-empty"),
])
def test_a_dangerous_or_broken_user_regex_is_refused_with_the_field_named(pattern, message):
    with pytest.raises(SpecError, match=f"answer_pattern: .*{message}"):
        ex.compile_pattern(pattern)


def test_a_user_regex_sees_only_the_tail_of_an_output():
    output = "START 1 " + "x" * (ex.MAX_REGEX_INPUT_CHARS + 10) + " answer 9"
    assert ex.regex_answer(output, r"answer (\d)") == "9"
    assert ex.regex_answer(output, r"START (\d)") is None


@pytest.mark.timeout(20)
def test_a_user_regex_that_backtracks_for_ever_is_stopped_by_its_timeout(monkeypatch):
    monkeypatch.setattr(ex, "REGEX_TIMEOUT_S", 0.1)  # 1 s in use; the test need not wait that
    # Eight adjacent \w* before an anchor that fails: O(n^8) steps, past the static check.
    slow = r"\w*\w*\w*\w*\w*\w*\w*\w*[0-9]$"
    ex.compile_pattern(slow)  # passes the save-time checks
    with pytest.raises(SpecError, match=r"answer_pattern: took more than 0.1 s"):
        ex.regex_answer("a" * 3000 + "!", slow)


def test_extract_refuses_an_unknown_extractor_by_name():
    with pytest.raises(SpecError, match="extractor: must be one of"):
        ex.extract("guess", "A")
    with pytest.raises(SpecError, match="answer_pattern"):
        ex.extract("regex", "A")


# --- tool calls (agent benchmarks) --------------------------------------------------------------

TOOL_OUTPUTS = [
    ("qwen2.5 tagged call", '<tool_call>\n{"name": "calculator", "arguments": {"expression": "23 * 17"}}\n</tool_call>', "391"),
    ("hermes call after a preamble, keys reordered",
     'I will use the calculator for this.\n<tool_call>\n{"arguments": {"expression": "(1250 - 380) / 4"}, '
     '"name": "calculator"}\n</tool_call>', "217.5"),
    ("llama-3.1 json-only reply with parameters", '{"name": "calculator", "parameters": {"expression": "48 / 6 + 7"}}', "15"),
    ("openai-shaped json with string arguments",
     '{"type": "function", "function": {"name": "calculator", "arguments": "{\\"expression\\": \\"12*12\\"}"}}', "144"),
    ("a repeating fraction stays exact", '<tool_call>{"name": "calculator", "arguments": {"expression": "10 / 3"}}</tool_call>',
     "10/3"),
    ("answered in text", "To find the total, multiply 23 by 17: 23 × 17 = 391.\n\nThe answer is 391.", "391"),
    ("answered in text, the stated answer before a later number",
     "The answer is 18. That is 2 more than last week's 16.", "18"),
    ("answered in chinese text", "23乘以17等于391。答案是391。", "391"),
    ("malformed json in the call: no answer, not the 17 inside it",
     '<tool_call>\n{"name": "calculator", "arguments": {"expression": "23 * 17"}\n</tool_call>', None),
    ("malformed json-only reply", '{"name": "calculator", "arguments": {"expression": "23 * 17"', None),
    ("a tool the benchmark does not offer", '<tool_call>{"name": "search", "arguments": {"query": "23*17"}}</tool_call>', None),
    ("an expression that is not arithmetic",
     '<tool_call>{"name": "calculator", "arguments": {"expression": "__import__(\'os\').getcwd()"}}</tool_call>', None),
    ("a call without its expression", '<tool_call>{"name": "calculator", "arguments": {"expr": "2+2"}}</tool_call>', None),
    ("a reasoning model's draft call is ignored",
     '<think>maybe <tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call></think>\n'
     '<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}</tool_call>', "6"),
]


@pytest.mark.parametrize("output, expected", [(o, e) for _, o, e in TOOL_OUTPUTS], ids=[i for i, _, _ in TOOL_OUTPUTS])
def test_the_tool_call_extractor_evaluates_the_calculator_call_or_reads_a_text_answer(output, expected):
    assert ex.extract("tool_call", output) == expected
    if expected is not None:
        assert ex.answers_match("tool_call", ex.extract("tool_call", output), expected)


def test_the_tool_call_extractor_reads_only_the_benchmarks_tools():
    from workers.core.data.generators import CALCULATOR_TOOL

    search = {"type": "function", "function": {"name": "search", "parameters": {}}}
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "7 * 6"}}</tool_call>'
    assert ex.extract("tool_call", call, tools=[CALCULATOR_TOOL, search]) == "42"
    assert ex.extract("tool_call", call, tools=[search]) is None  # not a call of an offered tool
    assert ex.answers_match("tool_call", "42", "42.0") and not ex.answers_match("tool_call", None, "42")
    assert "tool_call" in ex.EXTRACTORS
