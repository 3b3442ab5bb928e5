"""Writing a dataset version: canonical JSON Lines with sorted keys, written to a temporary
sibling and renamed, so a refused write leaves nothing behind; the same input always gives the
same bytes and sha256; excluded records are listed by line. Reading streams."""
import hashlib
import json

import pytest

from tests.core.data.fixtures.import_support import fixture, read_jsonl
from workers.core.data import formats, readers
from workers.core.data.formats import DataFileError


def alpaca_lines(tmp_path, bad_lines=(), n=8, name="data.jsonl"):
    path = tmp_path / name
    rows = []
    for line in range(1, n + 1):
        record = {"instruction": f"问题 {line}", "output": f"answer {line}"}
        if line in bad_lines:
            del record["output"]
        rows.append(json.dumps(record, ensure_ascii=False))
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_the_written_file_is_sorted_key_json_lines_with_meta_and_its_hash_and_size_are_reported(tmp_path):
    path = alpaca_lines(tmp_path)
    out = tmp_path / "versions" / "v1.jsonl"
    result = formats.write_normalized(path, path.name, "alpaca", out)
    data = out.read_bytes()
    assert (result.rows, result.excluded_lines, result.size_bytes) == (8, [], len(data))
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    first = data.splitlines()[0].decode("utf-8")
    assert first == json.dumps({"messages": [{"role": "user", "content": "问题 1"},
                                             {"role": "assistant", "content": "answer 1"}],
                                "meta": {"line": 1}}, ensure_ascii=False, sort_keys=True)
    assert "问题" in first  # UTF-8, not \u escapes


def test_the_same_input_always_gives_the_same_bytes_and_sha256(tmp_path):
    path = fixture("sharegpt.jsonl")
    one = formats.write_normalized(path, path.name, "sharegpt", tmp_path / "a.jsonl")
    two = formats.write_normalized(path, path.name, None, tmp_path / "b.jsonl")
    assert one.sha256 == two.sha256
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_an_invalid_record_refuses_the_write_naming_line_and_field_and_leaves_nothing_behind(tmp_path):
    path = alpaca_lines(tmp_path, bad_lines=(3,))
    out = tmp_path / "versions" / "v1.jsonl"
    with pytest.raises(DataFileError) as caught:
        formats.write_normalized(path, path.name, "alpaca", out)
    assert (caught.value.file, caught.value.line) == ("data.jsonl", 3)
    assert "field 'output': missing field" in caught.value.reason
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temporary file left either


def test_a_refused_write_leaves_an_existing_version_untouched(tmp_path):
    out = tmp_path / "v1.jsonl"
    out.write_text("previous\n")
    path = alpaca_lines(tmp_path, bad_lines=(8,))
    with pytest.raises(DataFileError):
        formats.write_normalized(path, path.name, "alpaca", out)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "v1.jsonl"]


def test_a_refused_record_in_a_json_array_is_named_by_record_number(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]), encoding="utf-8")
    with pytest.raises(DataFileError, match=r"^data.json: record 2, field 'output': missing field"):
        formats.write_normalized(path, path.name, "alpaca", tmp_path / "out.jsonl")


def test_excluding_invalid_records_writes_the_others_and_lists_the_excluded_lines(tmp_path):
    path = alpaca_lines(tmp_path, bad_lines=(3, 7))
    out = tmp_path / "v1.jsonl"
    result = formats.write_normalized(path, path.name, "alpaca", out, exclude_invalid=True)
    assert (result.rows, result.excluded_lines) == (6, [3, 7])
    assert [r["meta"]["line"] for r in read_jsonl(out)] == [1, 2, 4, 5, 6, 8]


def test_a_file_with_no_valid_record_is_refused_even_when_excluding(tmp_path):
    path = alpaca_lines(tmp_path, bad_lines=(1, 2), n=2)
    with pytest.raises(DataFileError, match="no valid record"):
        formats.write_normalized(path, path.name, "alpaca", tmp_path / "v1.jsonl", exclude_invalid=True)
    assert not (tmp_path / "v1.jsonl").exists()


def test_iter_canonical_gives_every_record_with_either_a_record_or_an_error(tmp_path):
    path = alpaca_lines(tmp_path, bad_lines=(2,), n=3)
    rows = list(formats.iter_canonical(path, path.name, "alpaca"))
    assert [(line, record is not None, error is not None) for line, record, error in rows] == [
        (1, True, False), (2, False, True), (3, True, False)]
    assert rows[1][2] == formats.RecordError(2, "output", "missing field")


def test_a_json_array_is_parsed_across_read_chunks_including_split_multibyte_characters(tmp_path, monkeypatch):
    records = [{"instruction": f"第{i}个问题 “quoted” \\ \n", "output": "答" * (i % 5 + 1)} for i in range(40)]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    monkeypatch.setattr(readers, "CHUNK_BYTES", 7)
    got = [record for _, record, _ in formats.iter_canonical(path, path.name, "alpaca")]
    assert [r["messages"][0]["content"] for r in got] == [r["instruction"] for r in records]
    assert [r["meta"]["line"] for r in got] == list(range(1, 41))


def test_records_stream_out_before_the_rest_of_the_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_BYTES", 64)
    path = tmp_path / "data.json"
    good = json.dumps({"question": "q", "answer": "a"})
    path.write_text("[" + ",\n".join([good] * 10) + ",\n{broken", encoding="utf-8")
    rows = formats.iter_canonical(path, path.name, "qa")
    assert next(rows)[1]["question"] == "q"  # the syntax error at the end is not reached yet
    with pytest.raises(DataFileError, match="line 11: invalid JSON"):
        list(rows)


MEASURE = """
import resource, sys
from pathlib import Path
from workers.core.data import formats
path = Path(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = formats.validate(path, path.name)
print(report.total, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_validating_a_100k_line_file_streams_instead_of_loading_it(tmp_path):
    """Loading these 100,000 records at once costs about 45 MB; streaming them, almost nothing."""
    import os
    import subprocess
    import sys

    from tests.core.data.fixtures.import_support import REPO

    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"question": "What is {i} + {i}?", "answer": "{2 * i}"}}\n' for i in range(100_000)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, env=env,
                         cwd=REPO, check=True, timeout=120).stdout.split()
    total, growth_kb = int(out[0]), int(out[1])
    assert total == 100_000
    assert growth_kb < 10_000
