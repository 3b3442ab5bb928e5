"""Stage 3 of cleaning: Gopher-style quality rules, each with its own threshold."""
import io
import json

import pytest

from workers.core.data.cleaning import CleaningSpec, run_cleaning
from workers.core.data.cleaning.quality import RULES, quality_issue
from workers.core.reporting import ConsoleReporter

GOOD = "The cat sat on the mat and looked at the birds in the garden with great interest."
TARGETED = {
    "too_short": "Too short.",
    "hash_ratio": "# Title ## Section # tags # everywhere # in # this # text of the world and that",
    "ellipsis_ratio": "Well... the thing is... that we have... no idea... of it... and so on...",
    "digit_ratio": "The codes 1234567890 1234567890 and 9876543210 are the key to the door.",
    "duplicate_lines": "the cat sat with the dog\nthe cat sat with the dog\nthe cat sat with the dog\nand the end of it",
    "top_2gram": "buy now " * 20 + "and the rest of this page is about shoes that you may like to have with you",
    "few_stop_words": ("Quick brown foxes jump over lazy dogs while cats sleep soundly nearby. " * 5).strip(),
}


@pytest.mark.parametrize("rule", sorted(TARGETED))
def test_each_rule_drops_the_document_it_targets_with_a_readable_reason(rule):
    found = quality_issue(TARGETED[rule], "en", "text", CleaningSpec())
    assert found is not None and found[0] == rule
    assert any(ch.isdigit() for ch in found[1]), found[1]  # the reason shows the measured value


def test_a_good_english_paragraph_passes_every_rule():
    assert quality_issue(GOOD, "en", "text", CleaningSpec()) is None


def test_too_long_uses_max_chars():
    assert quality_issue(GOOD, "en", "text", CleaningSpec(max_chars=40))[0] == "too_long"


def test_every_threshold_is_taken_from_the_spec():
    relaxed = CleaningSpec(min_chars=1, max_symbol_ratio=1.0, max_digit_ratio=1.0, max_duplicate_line_fraction=1.0,
                           max_top_ngram_fraction=1.0, require_stop_words=0)
    for text in TARGETED.values():
        assert quality_issue(text, "en", "text", relaxed) is None, text


def test_the_stop_word_rule_is_for_english_only_so_chinese_and_classical_poetry_pass():
    poem = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    modern = "今天天气很好，我们一起去公园散步吧。这个城市的历史非常悠久。"
    assert quality_issue(poem, "zh", "text", CleaningSpec()) is None
    assert quality_issue(modern, "zh", "text", CleaningSpec()) is None
    assert quality_issue(TARGETED["few_stop_words"], "de", "text", CleaningSpec()) is None


def test_chinese_characters_count_as_words_for_the_per_word_rules():
    text = "这是一个很长的中文句子，里面有很多很多的汉字和一个井号#。"
    assert quality_issue(text, "zh", "text", CleaningSpec()) is None  # 1 '#' per ~25 words


def test_short_instructions_and_answers_skip_the_two_statistical_rules():
    for text in ["Translate into French: good morning, my friend.",
                 "What is the weather like? The weather is fine and the sun is out today."]:
        assert quality_issue(text, "en", "text", CleaningSpec()) is None
    assert quality_issue(TARGETED["few_stop_words"][:71], "en", "text", CleaningSpec()) is None


def test_a_code_prompt_only_gets_the_length_rules():
    prompt = 'def f(x):\n    # comment\n    # comment\n    """Return 1234567890."""\n'
    assert quality_issue(prompt, "en", "code", CleaningSpec()) is None
    assert quality_issue("def f():", "en", "code", CleaningSpec())[0] == "too_short"


def test_the_stage_reports_one_drop_reason_per_targeted_document_and_keeps_the_good_one(tmp_path):
    src = tmp_path / "in.jsonl"
    texts = [GOOD, *TARGETED.values()]
    src.write_text("".join(json.dumps({"text": t, "meta": {"line": i}}) + "\n" for i, t in enumerate(texts, 1)))
    spec = CleaningSpec(dedup_exact=False, dedup_near=False, pii=False, decontaminate=False)
    report = run_cleaning(src, tmp_path / "out.jsonl", "text", spec, ConsoleReporter(stream=io.StringIO()))
    stage = report["stages"][2]
    assert stage["name"] == "quality"
    assert stage["drop_reasons"] == dict.fromkeys(TARGETED, 1)
    assert set(stage["drop_reasons"]) <= set(RULES)
    assert len(stage["examples"]) == 5 and stage["examples"][0] == {
        "line": 2, "reason": "10 characters < min_chars 20", "text": "Too short."}
    assert [json.loads(line)["text"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [GOOD]
