"""Excerpts of the public data sets (tests/fixtures/data, the first records of each real file)
are detected as the right format and import cleanly: every source format has at least one real
file here."""
import json

import pytest

from tests.core.data.fixtures.import_support import excerpt, head_json_array, read_jsonl
from workers.core.data import formats

# (file in tests/fixtures/data, container, detected format, records in the excerpt)
REAL_FILES = [
    ("llamafactory_demo/alpaca_en_demo.json", "json", "alpaca", 160),
    ("llamafactory_demo/alpaca_zh_demo.json", "json", "alpaca", 40),
    ("llamafactory_demo/identity.json", "json", "alpaca", 91),
    ("alpaca_seed/seed_tasks.jsonl", "jsonl", "alpaca", 20),
    ("belle/zh_seed_tasks.json", "jsonl", "alpaca", 20),  # JSON Lines despite the .json name
    ("llamafactory_demo/glaive_toolcall_en_demo.json", "json", "sharegpt", 12),
    ("llamafactory_demo/kto_en_demo.json", "json", "messages", 8),
    ("llamafactory_demo/dpo_en_demo.json", "json", "preference", 24),
    ("llamafactory_demo/dpo_zh_demo.json", "json", "preference", 8),
    ("mmlu/dev/abstract_algebra_dev.csv", "csv", "multiple_choice", 5),  # after the header
    ("mmlu/test/virology_test.csv", "csv", "multiple_choice", 19),
    ("gsm8k/test.jsonl", "jsonl", "qa", 20),
    ("humaneval/HumanEval.jsonl.gz", "jsonl", "code", 5),
    ("llamafactory_demo/c4_demo.jsonl", "jsonl", "text", 8),
    ("llamafactory_demo/wiki_demo.txt", "txt", "text", 3),
    ("tinyshakespeare/input.txt", "txt", "text", 73),  # 400 lines: a record per paragraph (blank-line separated)
    ("wikitext2/test.txt", "txt", "text", 33),  # 100 lines, 33 paragraphs
    ("tang_poetry_zh/poetry.txt", "txt", "text", 200),  # no blank lines: a record per line
]


@pytest.mark.parametrize("relative, container, fmt, n", REAL_FILES, ids=[r[0] for r in REAL_FILES])
def test_each_public_file_is_detected_as_its_format(relative, container, fmt, n):
    path = excerpt(relative)
    found = formats.sniff(path, path.name)
    assert (found.container, found.format) == (container, fmt)
    assert len(found.sample) == min(5, n)  # the first records, as the upload page shows them


@pytest.mark.parametrize("relative, container, fmt, n", REAL_FILES, ids=[r[0] for r in REAL_FILES])
def test_each_public_excerpt_imports_every_record_without_an_invalid_one(relative, container, fmt, n, tmp_path):
    sample = excerpt(relative)
    report = formats.validate(sample, sample.name)
    assert report.error_counts == {}, report.errors[:3]
    assert (report.container, report.format, report.canonical) == (container, fmt, formats.CANONICAL_OF[fmt])
    assert report.total == report.valid == n
    written = formats.write_normalized(sample, sample.name, fmt, tmp_path / "out" / "data.jsonl")
    assert written.rows == report.valid and written.excluded_lines == []
    records = read_jsonl(tmp_path / "out" / "data.jsonl")
    assert len(records) == written.rows and all(r["meta"]["line"] >= 1 for r in records)


def test_mmlu_answers_given_as_zero_based_indexes_become_letters():
    path = excerpt("mmlu/dev/abstract_algebra_dev.csv")
    first = next(record for _, record, _ in formats.iter_canonical(path, path.name, None))
    assert first["question"].startswith("Find all c in Z_3")
    assert (first["choices"], first["answer"], first["meta"]) == (["0", "1", "2", "3"], "B", {"line": 2})


def test_humaneval_records_carry_tests_and_entry_points():
    path = excerpt("humaneval/HumanEval.jsonl.gz")
    _, first, _ = next(formats.iter_canonical(path, path.name, "code"))
    assert first["task_id"] == "HumanEval/0" and first["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in first["tests"] and first["canonical_solution"]


def test_glaive_function_calls_become_tool_calls_and_tools_are_parsed(tmp_path):
    sample = head_json_array(excerpt("llamafactory_demo/glaive_toolcall_en_demo.json"), 5, tmp_path / "glaive.json")
    _, first, _ = next(formats.iter_canonical(sample, sample.name, None))
    call = first["messages"][3]
    assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] == "search_recipes"
    assert json.loads(call["tool_calls"][0]["function"]["arguments"]) == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert first["messages"][4]["role"] == "tool" and first["messages"][4]["name"] == "search_recipes"
    assert first["tools"][0]["function"]["name"] == "search_recipes"


def test_two_glaive_zh_records_whose_observation_follows_no_function_call_are_reported_by_record():
    # the excerpt keeps records 1-10 of the real file, then its records 198 and 294, the two bad ones
    path = excerpt("llamafactory_demo/glaive_toolcall_zh_demo.json")
    report = formats.validate(path, path.name)
    assert (report.total, report.valid) == (12, 10)
    assert [(e.line, e.field, e.reason) for e in report.errors] == [
        (11, "conversations[2]", "tool result without a tool call"),
        (12, "conversations[2]", "tool result without a tool call"),
    ]


def test_dpo_prompts_end_with_the_user_turn_and_keep_a_system_turn(tmp_path):
    sample = excerpt("llamafactory_demo/dpo_en_demo.json")
    records = [record for _, record, _ in formats.iter_canonical(sample, sample.name, None)]
    assert len(records) == 24
    assert all(r["prompt"][-1]["role"] == "user" for r in records)
    assert all(r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant" for r in records)
    assert any(r["prompt"][0]["role"] == "system" for r in records)


def test_kto_labels_are_kept_in_meta():
    sample = excerpt("llamafactory_demo/kto_en_demo.json")
    labels = [record["meta"]["label"] for _, record, _ in formats.iter_canonical(sample, sample.name, None)]
    raw = [record["label"] for record in json.loads(sample.read_text(encoding="utf-8"))]
    assert labels == raw and set(labels) <= {True, False} and len(labels) == 8


def test_belle_eval_set_needs_a_column_map_and_then_reports_its_empty_answers():
    sample = excerpt("belle/eval_set.json")
    found = formats.sniff(sample, sample.name)
    assert (found.container, found.format, found.fields) == ("jsonl", None, ["question", "std_answer", "class"])
    with pytest.raises(formats.DataFileError, match="cannot tell the format"):
        formats.validate(sample, sample.name)
    report = formats.validate(sample, sample.name, "qa", {"answer": "std_answer"})
    assert report.total == 20 and report.valid < 20
    assert set(report.error_counts) == {"empty text"}
    assert all(e.field == "std_answer" for e in report.errors)


def test_the_tang_poetry_file_is_one_record_per_line():
    path = excerpt("tang_poetry_zh/poetry.txt")
    report = formats.validate(path, path.name)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert (report.format, report.total, report.valid) == ("text", len(lines), len(lines)) == ("text", 200, 200)
