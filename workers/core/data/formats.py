"""Importing a user's data file: find its container and source format (`sniff`), check every
record (`validate`), and write the canonical records of schema.py as a dataset version
(`write_normalized`), then measure it (`dataset_stats`).

Source formats and what they become:

    text             .txt (see below), or JSON Lines / JSON / CSV / Parquet with a "text" field
    alpaca           {instruction, input?, output, system?, history? [[q, a], ...]} → chat; the user
                     turn is instruction + "\\n\\n" + input when input is non-empty. Self-instruct
                     seed tasks ({instruction, instances: [{input, output}]}) are read the same way.
    sharegpt         {conversations: [{from, value}], system?, tools?} → chat. from: human, gpt,
                     system (first only), function_call (value: JSON {"name", "arguments"} or a list
                     of them → an assistant message with "content": "" and tool_calls whose
                     arguments are a JSON string), observation (→ role "tool", named after the call
                     it answers). tools: a JSON string or a list.
    messages         {messages: [{role, content, tool_calls?, name?}], tools?} (OpenAI) → chat.
                     content may be null (assistant with tool_calls) or a list of text parts.
                     A KTO "label" (true/false) is kept in meta.
    preference       {prompt, chosen, rejected, system?} with prompt a string (one user turn) or
                     messages, chosen/rejected a string (one assistant turn), a message or
                     messages; or LLaMA-Factory's {conversations, chosen: {from, value},
                     rejected: {...}} → {"prompt": [...], "chosen": [...], "rejected": [...]}.
    multiple_choice  {question, choices: [...] | A, B, C, ... columns | choice0, choice1, ...,
                     answer: letter or 0-based index (int or digits), subject?}; a CSV without a
                     header is read as question, A, B, ..., answer (MMLU); C-Eval's
                     id,question,A..D,answer,explanation and CMMLU's ",Question,A..D,Answer"
                     (any field spelled with other capitals is read as that field) too. ARC:
                     {question: {stem, choices: [{text, label}]}, answerKey} (or its Hugging Face
                     copy's {question, choices: {text: [...], label: [...]}, answerKey}): choices
                     ordered by label ("A".."E" or "1".."4"), the answerKey's label as a letter.
    qa               {question, answer} (GSM8K)
    code             {task_id, prompt, test (→ "tests"), entry_point, canonical_solution?} (HumanEval);
                     MBPP {task_id, text, code, test_list, test_setup_code?} → prompt: a docstring
                     of the text and the first assert (bigcode's), tests: the setup and `def
                     check(candidate):` running the asserts, entry_point: the function of `code`
                     they call, canonical_solution: code.

Every chat (alpaca, sharegpt, messages) has at least one user and one assistant turn, a system
turn only first, a user turn first after it, an assistant turn last, and tool results only after
a tool call; a preference prompt ends with a user (or tool) turn and each reply starts with an
assistant turn. Fields a format does not read are ignored (BELLE's "class", the seed tasks' "name").

Containers: .jsonl/.ndjson, .json (an array of records, or JSON Lines), either gzipped (.gz);
.csv/.tsv, whose first row is a header when it looks like one (readers.looks_like_header) and
otherwise is read as question, A, B, ..., answer (multiple_choice), question, answer (qa) or
column1, column2, ...; .parquet; .txt. A .txt file with paragraph breaks (blank lines) gives one
text record per paragraph; without any blank line between text lines, one record per non-empty
line (wiki_demo.txt, a poem line per line).

Records are numbered by the line they start on (JSON Lines, CSV, .txt), by their 1-based index
in a JSON array ("record N") and by their 1-based row in Parquet; that number is the `line` of a
RecordError and the "meta": {"line": N} of a written record (with the source's "id", if any).
A column map renames source fields to the file's columns, e.g. {"instruction": "prompt",
"output": "response"}; errors then name the file's columns.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from workers.core.data import readers
from workers.core.data.normalize import (LETTERS, SOURCE_FIELDS, Columns, Invalid, case_aliases, check_column_map,
                                         detect_format, known_field_names, normalize)
from workers.core.data.readers import DataFileError, RecordError
from workers.core.data.stats import dataset_stats

SOURCE_FORMATS = ("text", "alpaca", "sharegpt", "messages", "preference", "multiple_choice", "qa", "code")
CANONICAL_OF = {"text": "text", "alpaca": "chat", "sharegpt": "chat", "messages": "chat", "preference": "preference",
                "multiple_choice": "multiple_choice", "qa": "qa", "code": "code"}
SNIFF_SCAN_RECORDS = 200  # records read at most to find the sample (when the first ones are broken)

__all__ = ["SOURCE_FORMATS", "CANONICAL_OF", "DataFileError", "RecordError", "Sniff", "Report", "WriteResult",
           "sniff", "validate", "iter_canonical", "write_normalized", "dataset_stats",
           "SOURCE_FIELDS"]  # SOURCE_FIELDS: the fields a column map may rename, per format


@dataclass
class Sniff:
    container: str  # "jsonl" | "json" | "csv" | "parquet" | "txt"
    format: str | None  # the detected source format, None when the fields say nothing
    fields: list[str]
    sample: list  # the first (up to 5) parseable raw records; strings over 2,000 chars are cut


@dataclass
class Report:
    container: str
    format: str
    canonical: str
    total: int
    valid: int
    errors: list[RecordError]  # the first max_errors
    error_counts: dict[str, int]  # reason → records, over all records
    fields: list[str]


@dataclass
class WriteResult:
    rows: int
    excluded_lines: list[int]
    sha256: str  # of the normalized bytes: the content hash of a version
    size_bytes: int


# ---------------------------------------------------------------------------------------------


def _default_columns(fmt: str | None):
    """Names for the columns of a CSV without a header row."""
    def names(n: int) -> list[str]:
        if fmt in (None, "multiple_choice") and 4 <= n <= 28:
            return ["question", *LETTERS[: n - 2], "answer"]
        if fmt == "qa" and n == 2:
            return ["question", "answer"]
        if fmt == "text" and n == 1:
            return ["text"]
        return [f"column{i}" for i in range(1, n + 1)]
    return names


def _raw_records(path: Path, filename: str, opened: readers.Opened, fmt: str | None, column_map):
    container = opened.container
    if container == "jsonl":
        return readers.iter_jsonl(path, filename, opened)
    if container == "json":
        return readers.iter_json_array(path, filename, opened)
    if container == "txt":
        return readers.iter_txt(path, filename, opened)
    if container == "parquet":
        return readers.iter_parquet(path, filename, opened)
    return readers.iter_csv(path, filename, opened, known_field_names(column_map), _default_columns(fmt))


def _sniff(path: Path, filename: str, opened: readers.Opened, fmt: str | None, column_map) -> Sniff:
    sample: list = []
    fields: dict[str, None] = {}
    records = _raw_records(path, filename, opened, fmt, column_map)
    try:
        for seen, (_, raw, _) in enumerate(records, start=1):
            if raw is not None:
                sample.append(raw)
                fields.update(dict.fromkeys(raw))
            if len(sample) >= readers.SAMPLE_SIZE or seen >= SNIFF_SCAN_RECORDS:
                break
    finally:
        records.close()
    if opened.container == "parquet":
        fields = dict.fromkeys(readers.parquet_columns(path, filename)[0])
    elif opened.container == "csv" and opened.header_columns:
        fields = dict.fromkeys(opened.header_columns)
    names = list(fields)
    aliased = Columns(case_aliases(names, column_map))
    detected = "text" if opened.container == "txt" else detect_format(aliased.inverse(names))
    return Sniff(opened.container, detected, names, [readers.json_safe(r) for r in sample])


def sniff(path: Path, filename: str) -> Sniff:
    """The container, the detected source format, the field names and a sample of `path`, an
    upload whose original name is `filename`. Decodes the whole file once, so that a file that
    is not UTF-8 is refused here, naming the first bad byte. Raises DataFileError."""
    path = Path(path)
    opened = readers.probe(path, filename)
    readers.check_utf8(path, filename, opened)
    return _sniff(path, filename, opened, None, None)


def _resolve(path: Path, filename: str, fmt: str | None, column_map
             ) -> tuple[readers.Opened, str, list[str], dict[str, str] | None]:
    """The opened file, its format, its fields and the column map to read it with: the user's,
    plus the fields the file spells with other capitals (normalize.case_aliases)."""
    if fmt is not None and fmt not in SOURCE_FORMATS:
        raise DataFileError(filename, f"unknown format {fmt!r} (expected one of: {', '.join(SOURCE_FORMATS)})")
    if column_map is not None and not isinstance(column_map, dict):
        raise DataFileError(filename, "column_map must map field names to column names")
    opened = readers.probe(path, filename)
    if opened.container == "txt":
        if fmt not in (None, "text"):
            raise DataFileError(filename, f"a .txt file can only be imported as text, not {fmt}")
        if column_map:
            raise DataFileError(filename, "a column map does not apply to a .txt file (each paragraph is a record)")
    found = _sniff(path, filename, opened, fmt, column_map)
    fmt = fmt or found.format
    if fmt is None:
        raise DataFileError(filename, f"cannot tell the format from the fields ({', '.join(found.fields) or 'none'}); "
                                      f"choose one of: {', '.join(SOURCE_FORMATS)} (and map its fields to your columns)")
    problem = check_column_map(fmt, column_map)
    if problem:
        raise DataFileError(filename, problem)
    if opened.container in ("csv", "parquet") and column_map:
        for name, column in column_map.items():
            if column not in found.fields:
                raise DataFileError(filename, f"column_map: column {column!r} (for {name}) is not in the file "
                                              f"(columns: {', '.join(found.fields)})")
    return opened, fmt, found.fields, case_aliases(found.fields, column_map, SOURCE_FIELDS[fmt])


def _canonical(path: Path, filename: str, opened: readers.Opened, fmt: str, column_map):
    """(line, record, error, encoded JSON line) for every record."""
    cols = Columns(column_map)
    for line, raw, error in _raw_records(path, filename, opened, fmt, column_map):
        if error is not None:
            yield line, None, error, None
            continue
        try:
            record = normalize(fmt, raw, cols, line)
            data = (json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        except Invalid as exc:
            yield line, None, RecordError(line, exc.field, exc.reason, exc.detail), None
            continue
        except UnicodeEncodeError:
            yield line, None, RecordError(line, "", "invalid Unicode", "a lone surrogate such as \\ud800"), None
            continue
        except (TypeError, ValueError) as exc:  # Parquet values JSON has no type for; NaN
            yield line, None, RecordError(line, "", "not JSON-serializable", str(exc)[:200]), None
            continue
        yield line, record, None, data


def validate(path: Path, filename: str, fmt: str | None = None, column_map: dict[str, str] | None = None, *,
             max_errors: int = 100) -> Report:
    """Check every record of the file as `fmt` (None: detected). Streams the file. Raises
    DataFileError for a problem with the whole file (unknown format, unusable column map,
    empty, binary, not UTF-8, not a JSON array...)."""
    path = Path(path)
    opened, fmt, fields, column_map = _resolve(path, filename, fmt, column_map)
    report = Report(opened.container, fmt, CANONICAL_OF[fmt], 0, 0, [], {}, fields)
    for _, record, error, _ in _canonical(path, filename, opened, fmt, column_map):
        report.total += 1
        if error is None:
            report.valid += 1
            continue
        report.error_counts[error.reason] = report.error_counts.get(error.reason, 0) + 1
        if len(report.errors) < max_errors:
            report.errors.append(error)
    return report


def iter_canonical(path: Path, filename: str, fmt: str | None, column_map: dict[str, str] | None = None
                   ) -> Iterator[tuple[int, dict | None, RecordError | None]]:
    """(line, canonical record with "meta", None) or (line, None, RecordError) for every record."""
    path = Path(path)
    opened, fmt, _, column_map = _resolve(path, filename, fmt, column_map)
    for line, record, error, _ in _canonical(path, filename, opened, fmt, column_map):
        yield line, record, error


def _refusal(filename: str, container: str, error: RecordError) -> DataFileError:
    where = f"field {error.field!r}: " if error.field else ""
    reason = (f"{where}{error.reason}" + (f" ({error.detail})" if error.detail else "")
              + "; fix the record or import with invalid records excluded")
    if container == "json":
        return DataFileError(filename, f"record {error.line}, {reason}")
    return DataFileError(filename, reason, line=error.line)


def write_normalized(path: Path, filename: str, fmt: str | None, out_path: Path,
                     column_map: dict[str, str] | None = None, *, exclude_invalid: bool = False) -> WriteResult:
    """Write the canonical records as UTF-8 JSON Lines (sorted keys, one record a line) to a
    temporary sibling of `out_path`, then rename it into place, so `out_path` is either complete
    or untouched. An invalid record is a DataFileError (nothing written) unless
    `exclude_invalid`, which leaves it out and lists its line. A file with no valid record at
    all is always refused."""
    path, out_path = Path(path), Path(out_path)
    opened, fmt, _, column_map = _resolve(path, filename, fmt, column_map)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    rows = size = 0
    excluded: list[int] = []
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for _, _, error, data in _canonical(path, filename, opened, fmt, column_map):
                if error is not None:
                    if not exclude_invalid:
                        raise _refusal(filename, opened.container, error)
                    excluded.append(error.line)
                    continue
                out.write(data)
                digest.update(data)
                rows += 1
                size += len(data)
            if rows == 0:
                raise DataFileError(filename, f"no valid record (all {len(excluded)} records are invalid)")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, out_path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return WriteResult(rows=rows, excluded_lines=excluded, sha256=digest.hexdigest(), size_bytes=size)
