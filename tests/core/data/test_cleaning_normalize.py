"""Stage 1 of cleaning: NFKC, control characters, whitespace."""
import io
import json
import random

from workers.core.data.cleaning import CleaningSpec, run_cleaning
from workers.core.data.cleaning.normalize import _normalize_layout, nfkc, normalize_code, normalize_text
from workers.core.reporting import ConsoleReporter

ONLY_NORMALIZE = dict(quality=False, dedup_exact=False, dedup_near=False, pii=False, decontaminate=False)


def test_nfkc_turns_full_width_letters_digits_and_ligatures_into_plain_ones():
    assert normalize_text("ＡＢＣ　１２３ ﬁne") == "ABC 123 fine"


def test_chinese_full_width_sentence_punctuation_is_kept_while_full_width_letters_become_ascii():
    assert normalize_text("你好，世界！（ＡＩ１２３）：好吗？") == "你好，世界！（AI123）：好吗？"
    assert normalize_text("５０％的人用＠符号") == "50%的人用@符号"


def test_control_characters_and_invisible_marks_are_removed_but_tabs_and_newlines_stay():
    text = "a\x00b\x07c\u200bd\ufeffe\u00adf\tg\nh\x1bi"
    assert normalize_text(text) == "abcdef\tg\nhi"


def test_carriage_returns_and_unicode_line_separators_become_newlines():
    assert normalize_text("one\r\ntwo\rthree\u2028four") == "one\ntwo\nthree\nfour"


def test_spaces_inside_a_line_collapse_and_trailing_spaces_and_extra_blank_lines_go():
    text = "  \n\nThe   cat \u3000 sat.   \n\n\n\n\nNext\t \tline\u00a0\u00a0here.  \n"
    assert normalize_text(text) == "The cat sat.\n\nNext\tline here."


def test_leading_indentation_survives_so_code_blocks_in_answers_keep_their_shape():
    text = "Here:\n```python\ndef f(x):\n    if x:\n        return 1\n```"
    assert normalize_text(text) == text


def test_a_code_prompt_keeps_its_layout_and_only_loses_control_characters():
    prompt = 'def add(a,  b):\r\n    """Add   two\x0c numbers.  """\r\n'
    assert normalize_code(prompt) == 'def add(a,  b):\n    """Add   two numbers.  """\n'


def test_the_quick_check_agrees_with_the_full_rules_and_normalizing_twice_changes_nothing():
    rng = random.Random(3)
    alphabet = list("ab 中文，：\t\n\r") + ["  ", "\u3000", "\x00", "\u200b", "ﬁ", "\u2028", "\u1680", "\x85"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        once = normalize_text(text)
        assert once == _normalize_layout(nfkc(text)), repr(text)
        assert normalize_text(once) == once, repr(text)


def test_the_stage_rewrites_modified_records_in_place_keeps_the_others_byte_for_byte_and_drops_empty_ones(tmp_path):
    lines = [
        json.dumps({"text": "Already  clean?  No:  double spaces.", "meta": {"line": 1}}),
        '{"text": "Clean text stays exactly as it was written.", "meta": {"line": 2, "id": "x"}}',
        json.dumps({"text": " \u200b\x00 ", "meta": {"line": 3}}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = run_cleaning(src, tmp_path / "out.jsonl", "text", CleaningSpec(**ONLY_NORMALIZE),
                          ConsoleReporter(stream=io.StringIO()))
    out = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(out[0]) == {"text": "Already clean? No: double spaces.", "meta": {"line": 1}}
    assert out[1] == lines[1]
    assert len(out) == 2
    stage = report["stages"][0]
    assert (stage["name"], stage["modified_docs"], stage["drop_reasons"]) == ("normalize", 2, {"empty": 1})
    assert stage["examples"][0]["line"] == 3
