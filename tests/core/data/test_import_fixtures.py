"""Every source format imports from a small hand-made file into exactly the canonical records of
schema.py: alpaca, ShareGPT with tool calls, OpenAI messages, preference pairs in three styles,
multiple choice from a headerless CSV and from JSON Lines, qa, code, text from .txt paragraphs,
from a JSON field named by a column map, and from Parquet."""
import json

import pytest

from tests.core.data.fixtures.import_support import fixture
from workers.core.data import formats
from workers.core.data.schema import CANONICAL_FORMATS, record_text


def test_every_source_format_maps_to_a_canonical_format_of_the_schema():
    assert formats.SOURCE_FORMATS == ("text", "alpaca", "sharegpt", "messages", "preference", "multiple_choice", "qa",
                                      "code")
    assert set(formats.CANONICAL_OF) == set(formats.SOURCE_FORMATS)
    assert set(formats.CANONICAL_OF.values()) == set(CANONICAL_FORMATS)


def canonical(path, fmt=None, column_map=None, filename=None):
    rows = list(formats.iter_canonical(path, filename or path.name, fmt, column_map))
    assert [error for _, _, error in rows] == [None] * len(rows)
    return [record for _, record, _ in rows]


@pytest.mark.parametrize("name, container, fmt", [
    ("alpaca.json", "json", "alpaca"),
    ("sharegpt.jsonl", "jsonl", "sharegpt"),
    ("messages.jsonl", "jsonl", "messages"),
    ("preference.jsonl", "jsonl", "preference"),
    ("multiple_choice.csv", "csv", "multiple_choice"),
    ("multiple_choice.jsonl", "jsonl", "multiple_choice"),
    ("qa.jsonl", "jsonl", "qa"),
    ("code.jsonl", "jsonl", "code"),
    ("text.txt", "txt", "text"),
])
def test_each_hand_made_file_is_sniffed_as_its_format_and_validates_without_errors(name, container, fmt):
    found = formats.sniff(fixture(name), name)
    assert (found.container, found.format) == (container, fmt)
    assert 0 < len(found.sample) <= 5
    report = formats.validate(fixture(name), name)
    assert (report.format, report.canonical, report.errors, report.error_counts) == (fmt, formats.CANONICAL_OF[fmt], [], {})
    assert report.valid == report.total > 0


def test_alpaca_becomes_chat_with_input_appended_system_first_and_history_as_earlier_turns():
    first, second, third = canonical(fixture("alpaca.json"))
    assert first == {"messages": [{"role": "user", "content": "Translate to French.\n\nGood morning"},
                                  {"role": "assistant", "content": "Bonjour"}], "meta": {"line": 1}}
    assert second["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "What did I ask before?"},
        {"role": "assistant", "content": "You asked for the capital of France."},
    ]
    assert third["messages"][0] == {"role": "user", "content": "写一句问候语。"}
    assert third["meta"] == {"line": 3}  # "record 3" of the JSON array


def test_sharegpt_function_calls_become_tool_calls_with_json_string_arguments_and_observations_tool_turns():
    tools, plain = canonical(fixture("sharegpt.jsonl"))
    assert tools["messages"] == [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": '{"temp_c": 18}', "name": "get_weather"},
        {"role": "assistant", "content": "It is 18 °C in Paris."},
    ]
    assert json.loads(tools["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert tools["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    assert tools["meta"] == {"line": 1, "id": "tool-1"}
    assert [m["role"] for m in plain["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert "tools" not in plain  # an empty tools list is left out


def test_openai_messages_keep_tool_calls_serialize_dict_arguments_and_join_text_parts():
    calls, parts = canonical(fixture("messages.jsonl"))
    assert calls["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]}
    assert calls["messages"][2] == {"role": "tool", "content": "4", "name": "calculator"}
    assert calls["tools"][0]["function"]["name"] == "calculator"
    assert parts["messages"][1] == {"role": "user", "content": "Capital of Italy?"}


def test_preference_pairs_from_plain_strings_messages_and_llamafactory_style_share_one_shape():
    plain, messages, llamafactory = canonical(fixture("preference.jsonl"))
    assert plain == {"prompt": [{"role": "user", "content": "Name a prime number."}],
                     "chosen": [{"role": "assistant", "content": "7"}],
                     "rejected": [{"role": "assistant", "content": "8"}], "meta": {"line": 1}}
    assert messages["prompt"] == [{"role": "system", "content": "Be polite."},
                                  {"role": "user", "content": "Can you help me?"}]
    assert messages["chosen"] == [{"role": "assistant", "content": "Of course, gladly."}]
    assert messages["rejected"] == [{"role": "assistant", "content": "No."}]
    assert [m["role"] for m in llamafactory["prompt"]] == ["user", "assistant", "user"]
    assert llamafactory["rejected"] == [{"role": "assistant", "content": "No."}]


def test_a_headerless_csv_is_read_as_question_choices_answer_like_mmlu():
    found = formats.sniff(fixture("multiple_choice.csv"), "multiple_choice.csv")
    assert found.fields == ["question", "A", "B", "C", "D", "answer"]
    first, second, third = canonical(fixture("multiple_choice.csv"))
    assert first == {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "6"], "answer": "B", "meta": {"line": 1}}
    assert second["question"] == "Which is a prime, of these?" and second["answer"] == "C"
    assert third["meta"] == {"line": 3}


def test_multiple_choice_json_takes_a_choices_list_and_a_zero_based_index_answer():
    first, second = canonical(fixture("multiple_choice.jsonl"))
    assert first == {"question": "Which planet is largest?", "choices": ["Mars", "Jupiter", "Venus"], "answer": "B",
                     "subject": "astronomy", "meta": {"line": 1}}
    assert second["choices"] == ["True", "False"] and second["answer"] == "A"


def test_qa_and_code_records_keep_their_fields_and_code_tests_come_from_test():
    assert canonical(fixture("qa.jsonl"))[1] == {"question": "一个班有20个学生，走了5个，还剩几个？",
                                                  "answer": "20 - 5 = 15\n#### 15", "meta": {"line": 2}}
    (code,) = canonical(fixture("code.jsonl"))
    assert code == {"task_id": "Tiny/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n',
                    "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n", "entry_point": "add",
                    "canonical_solution": "    return a + b\n", "meta": {"line": 1}}
    assert record_text(code, "code") == code["prompt"]


def test_a_txt_file_with_blank_lines_gives_one_record_per_paragraph_numbered_by_its_first_line():
    assert canonical(fixture("text.txt")) == [
        {"text": "First paragraph, line one.\nline two of the first paragraph.", "meta": {"line": 1}},
        {"text": "Second paragraph.", "meta": {"line": 4}},
        {"text": "Third paragraph, after a whitespace-only line.", "meta": {"line": 7}},
    ]


def test_a_txt_file_without_blank_lines_gives_one_record_per_line(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("寒随穷律变，春逐鸟声开。\n初风飘带柳，晚雪间花梅。\n", encoding="utf-8")
    assert [r["text"] for r in canonical(path)] == ["寒随穷律变，春逐鸟声开。", "初风飘带柳，晚雪间花梅。"]


def test_a_column_map_names_the_text_field_and_the_original_id_is_kept_in_meta():
    found = formats.sniff(fixture("text_content.jsonl"), "text_content.jsonl")
    assert found.format is None and found.fields == ["content", "id"]
    records = canonical(fixture("text_content.jsonl"), "text", {"text": "content"})
    assert records == [{"text": "A short document.", "meta": {"line": 1, "id": 17}},
                       {"text": "Another one.", "meta": {"line": 2}}]


def test_a_column_map_renames_alpaca_fields_and_detection_follows_it(tmp_path):
    path = tmp_path / "renamed.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi.", "response": "Hi!"}) + "\n", encoding="utf-8")
    report = formats.validate(path, path.name, None, {"instruction": "prompt", "output": "response"})
    assert (report.format, report.valid) == ("alpaca", 1)
    (record,) = canonical(path, "alpaca", {"instruction": "prompt", "output": "response"})
    assert record["messages"][1] == {"role": "assistant", "content": "Hi!"}


def test_parquet_files_are_read_row_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"question": ["1 + 1?", "2 + 2?"], "answer": ["2", "4"]}), path)
    found = formats.sniff(path, "qa.parquet")
    assert (found.container, found.format, found.fields) == ("parquet", "qa", ["question", "answer"])
    assert canonical(path)[1] == {"question": "2 + 2?", "answer": "4", "meta": {"line": 2}}


def test_a_gzipped_json_lines_file_and_a_json_array_in_a_jsonl_file_are_both_read(tmp_path):
    import gzip

    gz = tmp_path / "qa.jsonl.gz"
    gz.write_bytes(gzip.compress(fixture("qa.jsonl").read_bytes()))
    assert formats.sniff(gz, gz.name).container == "jsonl"
    assert len(canonical(gz)) == 2
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([{"question": "q", "answer": "a"}]), encoding="utf-8")
    assert formats.sniff(array, array.name).container == "json"
    assert canonical(array) == [{"question": "q", "answer": "a", "meta": {"line": 1}}]


def test_a_tsv_file_is_read_with_tabs(tmp_path):
    path = tmp_path / "qa.tsv"
    path.write_text("question\tanswer\nWhy, really?\tBecause, that's why.\n", encoding="utf-8")
    found = formats.sniff(path, path.name)
    assert (found.container, found.format) == ("csv", "qa")
    assert canonical(path) == [{"question": "Why, really?", "answer": "Because, that's why.", "meta": {"line": 2}}]
