"""Every bad input gets a clear error that says what and where: a bad record is a RecordError
(line or record number, field, stable reason) and the other records still count; a bad file is
a DataFileError naming the file (and the line, when there is one)."""
import gzip
import json

import pytest

from workers.core.data import formats
from workers.core.data.formats import DataFileError, RecordError


def jsonl(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


def alpaca(i=0):
    return {"instruction": f"Say {i}.", "input": "", "output": f"{i}"}


def errors_of(path, fmt=None, column_map=None):
    report = formats.validate(path, path.name, fmt, column_map)
    return [(e.line, e.field, e.reason) for e in report.errors]


def test_invalid_json_on_line_7_is_reported_on_line_7_and_the_other_records_still_count(tmp_path):
    lines = [alpaca(i) for i in range(10)]
    lines[6] = '{"instruction": "broken", "output": '
    path = jsonl(tmp_path, "data.jsonl", lines)
    report = formats.validate(path, path.name)
    assert (report.format, report.total, report.valid) == ("alpaca", 10, 9)
    (error,) = report.errors
    assert (error.line, error.field, error.reason) == (7, "", "invalid JSON")
    assert "column" in error.detail and report.error_counts == {"invalid JSON": 1}
    assert str(error).startswith("line 7: invalid JSON")


@pytest.mark.parametrize("record, fmt, expected", [
    ({"instruction": "Hi"}, "alpaca", ("output", "missing field")),
    ({"instruction": 5, "output": "x"}, "alpaca", ("instruction", "not a string")),
    ({"instruction": "Hi", "output": "   "}, "alpaca", ("output", "empty text")),
    ({"instruction": "Hi", "output": "x", "history": [["only a question"]]}, "alpaca",
     ("history[0]", "not a [question, answer] pair")),
    ({"conversations": "hello"}, "sharegpt", ("conversations", "not a list")),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hey"}]}, "sharegpt",
     ("conversations[1].from", "unknown role 'bot'")),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{not json"}]},
     "sharegpt", ("conversations[1].value", "invalid tool call")),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, "sharegpt", ("conversations", "no assistant turn")),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "tools": "[{"},
     "sharegpt", ("tools", "invalid JSON")),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                   {"role": "system", "content": "late"}]}, "messages", ("messages[2]", "system message not first")),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ["x"]}]}, "messages",
     ("messages[1].content[0]", "unsupported content part")),
    ({"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}], "chosen": "a",
      "rejected": "b"}, "preference", ("prompt[1]", "prompt does not end with a user turn")),
    ({"prompt": "Hi", "chosen": "a"}, "preference", ("rejected", "missing field")),
    ({"prompt": "Hi", "chosen": {"role": "user", "content": "a"}, "rejected": "b"}, "preference",
     ("chosen", "not an assistant reply")),
    ({"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": "E"}, "multiple_choice",
     ("answer", "answer out of range")),
    ({"question": "2+2?", "choices": ["3", "4"], "answer": "maybe"}, "multiple_choice", ("answer", "invalid answer")),
    ({"question": "2+2?", "choices": ["4"], "answer": "A"}, "multiple_choice", ("choices", "wrong number of choices")),
    ({"question": "2+2?", "answer": ["4"]}, "qa", ("answer", "not a string")),
    ({"task_id": "t", "prompt": "def f(): pass", "test": "assert True", "entry_point": "not valid"}, "code",
     ("entry_point", "not a Python identifier")),
    ({"body": "no text here"}, "text", ("text", "missing field")),
    ('"just a string"', "text", ("", "not a JSON object")),
])
def test_a_bad_record_is_reported_with_its_line_field_and_reason(tmp_path, record, fmt, expected):
    path = jsonl(tmp_path, "data.jsonl", [record])
    assert errors_of(path, fmt) == [(1, *expected)]


def test_errors_name_the_files_own_columns_when_a_column_map_renames_them(tmp_path):
    path = jsonl(tmp_path, "data.jsonl", [{"prompt": "Hi"}])
    assert errors_of(path, "alpaca", {"instruction": "prompt", "output": "response"}) == [(1, "response", "missing field")]


def test_only_the_first_errors_are_listed_but_every_error_is_counted(tmp_path):
    path = jsonl(tmp_path, "data.jsonl", ["not json"] * 150 + [{"instruction": "Hi"}] * 30 + [alpaca()] * 5)
    report = formats.validate(path, path.name, "alpaca", max_errors=100)
    assert (report.total, report.valid, len(report.errors)) == (185, 5, 100)
    assert report.error_counts == {"invalid JSON": 150, "missing field": 30}


def test_json_array_errors_are_numbered_by_record(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([alpaca(1), {"instruction": "x"}, "a string"], indent=2), encoding="utf-8")
    assert errors_of(path) == [(2, "output", "missing field"), (3, "", "not a JSON object")]


def test_a_json_array_with_a_syntax_error_is_a_file_error_naming_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(DataFileError) as caught:
        formats.validate(path, "data.json", "alpaca")
    assert (caught.value.file, caught.value.line) == ("data.json", 3)
    assert str(caught.value).startswith("data.json, line 3: invalid JSON: Expecting ',' delimiter")


def test_a_csv_row_with_the_wrong_number_of_columns_is_a_record_error(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text("question,A,B,answer\nWhich?,x,y,A\nShort row,x,A\nOut of range?,x,y,C\n", encoding="utf-8")
    assert errors_of(path) == [(3, "", "wrong number of columns"), (4, "answer", "answer out of range")]


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file (0 bytes)"),
    (b"  \n\n \n", "empty file (only whitespace)"),
    (b"[]", "empty file (an empty JSON array: no records)"),
])
def test_empty_files_are_refused_by_sniff_and_validate(tmp_path, content, reason):
    path = tmp_path / "data.json"
    path.write_bytes(content)
    for call in (lambda: formats.sniff(path, "data.json"), lambda: formats.validate(path, "data.json", "qa")):
        with pytest.raises(DataFileError) as caught:
            call()
        assert str(caught.value) == f"data.json: {reason}"


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "model.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(DataFileError, match=r"^model.jsonl: binary file \(NUL byte at byte offset 8\)"):
        formats.sniff(path, "model.jsonl")


@pytest.mark.parametrize("encoding, text, offset, byte", [
    ("gbk", "第一行\n", 44, 0xB5),
    ("latin-1", "café\n", 47, 0xE9),
])
def test_a_gbk_or_latin_1_file_is_refused_naming_the_line_and_byte_offset(tmp_path, encoding, text, offset, byte):
    head = '{"text": "ok"}\n{"text": "ok too"}\n'  # 15 + 19 bytes, then 10 before the bad text
    path = tmp_path / "data.jsonl"
    path.write_bytes(head.encode() + ('{"text": "' + text.rstrip() + '"}\n').encode(encoding))
    for call in (lambda: formats.sniff(path, "data.jsonl"), lambda: formats.validate(path, "data.jsonl", "text")):
        with pytest.raises(DataFileError) as caught:
            call()
        error = caught.value
        assert (error.file, error.line) == ("data.jsonl", 3)
        assert f"not valid UTF-8: byte 0x{byte:02X} at byte offset {offset}" in error.reason
        assert "save the file as UTF-8" in error.reason


def test_an_encoding_error_far_into_a_file_is_found_by_sniff_and_by_validate(tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"line\n" * 3000 + "naïve\n".encode("latin-1"))
    with pytest.raises(DataFileError, match="line 3001: not valid UTF-8"):
        formats.sniff(path, "data.txt")
    with pytest.raises(DataFileError, match="line 3001: not valid UTF-8"):
        formats.validate(path, "data.txt")


def test_an_encoding_error_inside_a_gzipped_json_array_names_its_line(tmp_path):
    path = tmp_path / "data.json.gz"
    path.write_bytes(gzip.compress(b'[\n{"text": "a"},\n{"text": "caf\xe9"}\n]\n'))
    with pytest.raises(DataFileError, match=r"data.json.gz, line 3: not valid UTF-8: byte 0xE9 at byte offset 30"):
        formats.validate(path, "data.json.gz", "text")


def test_a_utf16_file_is_refused_with_its_encoding_named(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes("question,answer\n1+1?,2\n".encode("utf-16"))
    with pytest.raises(DataFileError, match="UTF-16 encoded .* only UTF-8"):
        formats.sniff(path, "data.csv")


@pytest.mark.parametrize("name, content", [
    ("data.jsonl", '{"question": "1+1?", "answer": "2"}\n'),
    ("data.csv", "question,answer\n1+1?,2\n"),
    ("data.json", '[{"question": "1+1?", "answer": "2"}]'),
])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + content.encode())
    found = formats.sniff(path, name)
    assert (found.format, found.fields) == ("qa", ["question", "answer"])
    (row,) = list(formats.iter_canonical(path, name, None))
    assert row == (1 if name != "data.csv" else 2, {"question": "1+1?", "answer": "2", "meta": {"line": row[0]}}, None)


def test_an_unknown_format_an_unusable_column_map_and_an_unsupported_file_type_are_file_errors(tmp_path):
    path = jsonl(tmp_path, "data.jsonl", [alpaca()])
    with pytest.raises(DataFileError, match="unknown format 'dolly'"):
        formats.validate(path, path.name, "dolly")
    with pytest.raises(DataFileError, match="column_map: unknown field 'answer' for alpaca"):
        formats.validate(path, path.name, "alpaca", {"answer": "output"})
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("q,a\nwhy?,because\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="column_map: column 'answer_text' .* is not in the file"):
        formats.validate(csv_path, csv_path.name, "qa", {"question": "q", "answer": "answer_text"})
    assert formats.validate(csv_path, csv_path.name, "qa", {"question": "q", "answer": "a"}).valid == 1
    xlsx = tmp_path / "sheet.xlsx"
    xlsx.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataFileError, match=r"^sheet.xlsx: unsupported file type \(.xlsx\)"):
        formats.sniff(xlsx, xlsx.name)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="a .txt file can only be imported as text"):
        formats.validate(txt, txt.name, "alpaca")


def test_a_file_whose_fields_match_no_format_asks_for_one(tmp_path):
    path = jsonl(tmp_path, "data.jsonl", [{"foo": 1, "bar": 2}])
    assert formats.sniff(path, path.name).format is None
    with pytest.raises(DataFileError, match=r"cannot tell the format from the fields \(foo, bar\); choose one of: text"):
        formats.validate(path, path.name)


def test_a_json_file_holding_one_pretty_printed_object_is_refused_clearly(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [alpaca()]}, indent=2), encoding="utf-8")
    with pytest.raises(DataFileError, match="line 1: expected a JSON array of records"):
        formats.sniff(path, path.name)


def test_the_record_error_and_data_file_error_shapes_are_stable():
    assert RecordError(7, "", "invalid JSON") == RecordError(line=7, field="", reason="invalid JSON", detail="")
    error = DataFileError("a.jsonl", "empty file (0 bytes)")
    assert (str(error), error.file, error.line, error.reason) == ("a.jsonl: empty file (0 bytes)", "a.jsonl", None,
                                                                   "empty file (0 bytes)")
    assert str(DataFileError("a.jsonl", "bad", line=3)) == "a.jsonl, line 3: bad"
    assert isinstance(error, ValueError)


def test_a_damaged_or_fake_parquet_file_is_refused(tmp_path):
    fake = tmp_path / "data.parquet"
    fake.write_text('{"text": "not parquet"}\n')
    with pytest.raises(DataFileError, match=r"^data.parquet: not a Parquet file"):
        formats.sniff(fake, fake.name)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1" + b"\x00" * 20)
    with pytest.raises(DataFileError, match=r"^damaged.parquet: not a readable Parquet file"):
        formats.validate(damaged, damaged.name, "text")


def test_a_truncated_gzip_file_is_refused_as_unreadable(tmp_path):
    data = gzip.compress(b"".join(json.dumps({"text": f"row {i} " * 20}).encode() + b"\n" for i in range(2000)))
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"^data.jsonl.gz(, line \d+)?: cannot read the file"):
        formats.validate(path, path.name, "text")


def test_invalid_json_on_the_first_line_of_a_jsonl_file_is_a_record_error_not_a_file_error(tmp_path):
    path = jsonl(tmp_path, "data.jsonl", ['{"instruction": "a", ', alpaca(1)])
    assert errors_of(path, "alpaca") == [(1, "", "invalid JSON")]
