"""Reading uploaded data files as a stream of raw records, whatever the container.

A container is how records are laid out in the file: JSON Lines, one JSON array, CSV (or TSV),
Parquet, or plain text. JSON Lines and JSON may be gzip-compressed (`x.jsonl.gz`). Text
containers must be UTF-8 (a UTF-8 byte order mark is accepted and skipped); anything else is a
`DataFileError` that names the file, the first bad byte's offset and its line.

Every reader yields `(line, raw, error)` triples: `raw` is a dict (a `{"text": ...}` dict for a
.txt document), or `error` is a `RecordError` for a record that cannot even be parsed (a JSON
Lines line that is not JSON). `line` is the 1-based line where the record starts in JSON Lines,
CSV and text files, the 1-based record index ("record N") in a JSON array, and the 1-based row
index in Parquet.

Nothing here loads a whole file: lines, CSV rows, JSON array items and Parquet batches are read
as they come (a JSON array is parsed item by item with `json.JSONDecoder.raw_decode`).
"""
from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

CONTAINERS = ("jsonl", "json", "csv", "parquet", "txt")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
              ".parquet": "parquet", ".txt": "txt"}
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
BINARY_PROBE_BYTES = 8192
CHUNK_BYTES = 1 << 20
FIRST_LINE_LIMIT = 64 << 20  # a longer first line is taken for JSON Lines without a check
SAMPLE_SIZE = 5
SAMPLE_MAX_CHARS = 2000  # strings in a sniffed sample are cut to this (ending with "…")

_csv_limit_raised = False


class DataFileError(ValueError):
    """A problem with the whole file (unreadable, wrong encoding, not the container it claims,
    or a record refused by `write_normalized`). str(e) is "FILE: REASON" or
    "FILE, line N: REASON"."""

    def __init__(self, file: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        super().__init__(f"{file}, line {line}: {reason}" if line is not None else f"{file}: {reason}")


@dataclass
class RecordError:
    """One record that cannot be imported. `line` is the 1-based line of the record in JSON
    Lines, CSV and text files, "record N" (its 1-based index) in a JSON array and the 1-based row
    in Parquet. `field` is the file's own field name, with a path inside it when the problem is
    nested ("conversations[3].from"); "" when the record as a whole is bad (invalid JSON).
    `reason` is short and stable, so errors can be counted per reason ("missing field",
    "not a string", "invalid JSON", "unknown role 'bot'"...); `detail` says more where it helps."""

    line: int
    field: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field '{self.field}'" if self.field else "")
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def _encoding_error(file: str, offset: int, line: int, byte: int) -> DataFileError:
    return DataFileError(file, f"not valid UTF-8: byte 0x{byte:02X} at byte offset {offset} cannot be decoded; "
                               "only UTF-8 (with or without a byte order mark) is accepted: save the file as UTF-8",
                         line=line)


# ---------------------------------------------------------------------------------------------
# Opening and probing


@dataclass
class Opened:
    """What probing the start of a file found out."""

    container: str
    gzipped: bool
    bom: bool
    header_columns: list[str] = field(default_factory=list)  # filled by the CSV reader


def _ext(filename: str) -> tuple[str, bool]:
    name = filename.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return os.path.splitext(name)[1], gz


def open_bytes(path: Path, gzipped: bool):
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _check_head(file: str, head: bytes, total_empty: bool) -> bool:
    """Refuse empty, binary and non-UTF-8-family files from their first bytes; return whether a
    UTF-8 byte order mark starts the file."""
    if total_empty:
        raise DataFileError(file, "empty file (0 bytes)")
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            raise DataFileError(file, f"{name} encoded (byte order mark {bom.hex(' ').upper()}); only UTF-8 "
                                      "(with or without a byte order mark) is accepted: save the file as UTF-8")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise DataFileError(file, f"binary file (NUL byte at byte offset {nul}); expected UTF-8 text "
                                  "(JSON Lines, JSON, CSV or plain text) or Parquet")
    return head.startswith(codecs.BOM_UTF8)


def probe(path: Path, filename: str) -> Opened:
    """Find the container from the name's extension and the first bytes."""
    path = Path(path)
    ext, gz_name = _ext(filename)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not magic:
        raise DataFileError(filename, "empty file (0 bytes)")
    gzipped = magic.startswith(GZIP_MAGIC)
    if gz_name and not gzipped:
        raise DataFileError(filename, "named .gz but not gzip-compressed")
    if magic == PARQUET_MAGIC or ext == ".parquet":
        if gzipped or magic != PARQUET_MAGIC:
            raise DataFileError(filename, "not a Parquet file (it does not start with PAR1)")
        return Opened("parquet", False, False)
    if ext not in EXTENSIONS:
        shown = ext or "no extension"
        raise DataFileError(filename, f"unsupported file type ({shown}); expected .jsonl, .json, .csv, .tsv, "
                                      ".parquet or .txt (JSON Lines and JSON may be .gz)")
    container = EXTENSIONS[ext]
    if gzipped and container not in ("jsonl", "json"):
        raise DataFileError(filename, "only JSON Lines and JSON files may be gzip-compressed")
    try:
        with open_bytes(path, gzipped) as fh:
            head = fh.read(BINARY_PROBE_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(filename, f"cannot decompress: {exc}") from None
    bom = _check_head(filename, head, total_empty=not head)
    if container in ("jsonl", "json"):
        container = _json_or_jsonl(path, filename, gzipped, bom, strict_first_line=container == "json")
    return Opened(container, gzipped, bom)


def _json_or_jsonl(path: Path, filename: str, gzipped: bool, bom: bool, strict_first_line: bool) -> str:
    """A .json file may hold JSON Lines (BELLE's do) and a .jsonl file a JSON array: the first
    non-blank character decides. In a .json file a '{' first line must be a whole JSON object
    (else it is one pretty-printed object, which is not a list of records); in a .jsonl file a
    broken first line is just an invalid record."""
    with open_bytes(path, gzipped) as fh:
        offset = 3 if bom else 0
        fh.read(offset)
        number = 0
        while True:
            raw = fh.readline(FIRST_LINE_LIMIT)
            if not raw:
                break
            number += 1
            if len(raw) >= FIRST_LINE_LIMIT:
                return "json" if raw.lstrip().startswith(b"[") else "jsonl"
            text = _decode_line(filename, raw, offset, number)
            offset += len(raw)
            stripped = text.strip()
            if not stripped:
                continue
            if stripped.startswith("["):
                return "json"
            if stripped.startswith("{") and strict_first_line:
                try:
                    json.loads(stripped)
                except ValueError:
                    raise DataFileError(filename, "expected a JSON array of records ([{...}, ...]) or JSON Lines "
                                                  "(one object per line); the file starts with '{' but its first "
                                                  "line is not a whole JSON object", line=number) from None
            return "jsonl"  # the JSON Lines reader reports a line that is not an object
    raise DataFileError(filename, "empty file (only whitespace)")


def _decode_line(file: str, raw: bytes, offset: int, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _encoding_error(file, offset + exc.start, line, raw[exc.start]) from None


def _read(fh, size: int, filename: str) -> bytes:
    try:
        return fh.read(size)
    except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip stream
        raise DataFileError(filename, f"cannot read the file ({exc})") from None


def check_utf8(path: Path, filename: str, opened: Opened) -> None:
    """Decode the whole file (streaming) so that a bad byte anywhere is found at upload time."""
    if opened.container == "parquet":
        return
    with open_bytes(path, opened.gzipped) as fh:
        check_utf8_chunks(iter(lambda: _read(fh, CHUNK_BYTES, filename), b""), filename)


def check_utf8_chunks(chunks: Iterable[bytes], filename: str) -> None:
    """DataFileError (with line and byte offset) at the first byte that is not UTF-8; streaming, so
    the web side can refuse an upload from its chunks before it stores anything."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    consumed = 0
    lines = 1
    for chunk in itertools.chain((c for c in chunks if c), [b""]):  # b"": the final flush
        pending = decoder.getstate()[0]
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            data = pending + chunk
            bad_line = lines - pending.count(b"\n") + data[:exc.start].count(b"\n")
            raise _encoding_error(filename, consumed - len(pending) + exc.start, bad_line,
                                  data[exc.start] if exc.start < len(data) else 0) from None
        consumed += len(chunk)
        lines += chunk.count(b"\n")


# ---------------------------------------------------------------------------------------------
# Line-based containers


def _lines(path: Path, filename: str, opened: Opened) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its end) for every line."""
    number = 0
    try:
        with open_bytes(path, opened.gzipped) as fh:
            offset = 0
            if opened.bom:
                fh.read(3)
                offset = 3
            for number, raw in enumerate(fh, start=1):
                yield number, _decode_line(filename, raw, offset, number)
                offset += len(raw)
    except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip stream
        raise DataFileError(filename, f"cannot read the file ({exc})", line=number + 1) from None


def iter_jsonl(path: Path, filename: str, opened: Opened):
    seen = 0
    for number, text in _lines(path, filename, opened):
        stripped = text.strip()
        if not stripped:
            continue
        seen += 1
        try:
            value = json.loads(stripped)
        except ValueError as exc:
            yield number, None, RecordError(number, "", "invalid JSON", _json_detail(exc))
            continue
        if not isinstance(value, dict):
            yield number, None, RecordError(number, "", "not a JSON object", f"found {_json_type(value)}")
            continue
        yield number, value, None
    if not seen:
        raise DataFileError(filename, "empty file (only whitespace)")


def _json_detail(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    return str(exc)


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _document_lines(path: Path, filename: str, opened: Opened) -> bool:
    """Whether a .txt file has paragraph breaks: a blank line between two non-blank ones."""
    saw_text = gap = False
    for _, text in _lines(path, filename, opened):
        if text.strip():
            if gap:
                return True
            saw_text = True
        elif saw_text:
            gap = True
    return False


def iter_txt(path: Path, filename: str, opened: Opened):
    """Documents of a .txt file. A file with paragraph breaks (blank, i.e. whitespace-only, lines
    between text) gives one document per paragraph; a file without any gives one document per
    non-empty line (LLaMA-Factory's wiki_demo.txt, one poem line per line corpora). Each document
    is its lines joined with "\\n", stripped; its line is the line it starts on."""
    paragraphs = _document_lines(path, filename, opened)
    seen = 0
    start = 0
    buf: list[str] = []
    for number, text in _lines(path, filename, opened):
        body = text.rstrip("\r\n")
        if not body.strip():
            if buf:
                seen += 1
                yield start, {"text": "\n".join(buf).strip()}, None
                buf = []
            continue
        if not paragraphs:
            seen += 1
            yield number, {"text": body.strip()}, None
            continue
        if not buf:
            start = number
        buf.append(body)
    if buf:
        seen += 1
        yield start, {"text": "\n".join(buf).strip()}, None
    if not seen:
        raise DataFileError(filename, "empty file (only whitespace)")


# ---------------------------------------------------------------------------------------------
# JSON array


def iter_json_array(path: Path, filename: str, opened: Opened):
    """Items of a top-level JSON array, parsed one at a time. A syntax error is a whole-file
    problem (parsing cannot resume after it) and names the text line."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    with open_bytes(path, opened.gzipped) as fh:
        if opened.bom:
            fh.read(3)
        state = {"buf": "", "pos": 0, "line": 1, "eof": False, "consumed": 0, "lines": 1}
        incremental = codecs.getincrementaldecoder("utf-8")("strict")

        def more(at_least: int = CHUNK_BYTES) -> bool:
            if state["eof"]:
                return False
            chunk = _read(fh, max(CHUNK_BYTES, at_least), filename)
            pending = incremental.getstate()[0]
            try:
                text = incremental.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = pending + chunk
                bad_line = state["lines"] - pending.count(b"\n") + data[:exc.start].count(b"\n")
                offset = (3 if opened.bom else 0) + state["consumed"] - len(pending) + exc.start
                raise _encoding_error(filename, offset, bad_line, data[exc.start]) from None
            state["consumed"] += len(chunk)
            state["lines"] += chunk.count(b"\n")
            if not chunk:
                state["eof"] = True
            # drop what was parsed already, counting its lines
            pos = state["pos"]
            state["line"] += state["buf"].count("\n", 0, pos)
            state["buf"] = state["buf"][pos:] + text
            state["pos"] = 0
            return bool(chunk)

        def skip_ws() -> str:
            while True:
                buf, pos = state["buf"], state["pos"]
                while pos < len(buf) and buf[pos] in ws:
                    pos += 1
                state["pos"] = pos
                if pos < len(buf):
                    return buf[pos]
                if not more():
                    return ""

        def line_at(pos: int) -> int:
            return state["line"] + state["buf"].count("\n", 0, pos)

        def fail(msg: str, pos: int):
            raise DataFileError(filename, f"invalid JSON: {msg}", line=line_at(pos))

        first = skip_ws()
        if first == "":
            raise DataFileError(filename, "empty file (only whitespace)")
        if first != "[":
            fail("expected a JSON array of records ([{...}, ...]) or JSON Lines", state["pos"])
        state["pos"] += 1
        index = 0
        while True:
            nxt = skip_ws()
            if nxt == "]" and index == 0:
                state["pos"] += 1
                break
            if nxt == "":
                fail("the array is not closed (the file ends inside it)", state["pos"])
            while True:
                buf, pos = state["buf"], state["pos"]
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as exc:
                    truncated = exc.msg.startswith("Unterminated string") or exc.pos >= len(buf) - 8
                    if truncated and not state["eof"]:
                        more(len(buf))  # the item goes on in the next chunk: read at least as much again
                        continue
                    fail(f"{exc.msg} (in record {index + 1})", exc.pos)
                if end >= len(buf) and not state["eof"] and not isinstance(value, (dict, list, str)):
                    more()  # a bare number may go on in the next chunk
                    continue
                break
            index += 1
            state["pos"] = end
            if isinstance(value, dict):
                yield index, value, None
            else:
                yield index, None, RecordError(index, "", "not a JSON object", f"found {_json_type(value)}")
            sep = skip_ws()
            if sep == ",":
                state["pos"] += 1
                continue
            if sep == "]":
                state["pos"] += 1
                break
            if sep == "":
                fail("the array is not closed (the file ends inside it)", state["pos"])
            fail(f"expected ',' or ']' after record {index}", state["pos"])
        if skip_ws() != "":
            fail("extra data after the closing ']'", state["pos"])
        if index == 0:
            raise DataFileError(filename, "empty file (an empty JSON array: no records)")


# ---------------------------------------------------------------------------------------------
# CSV


def _raise_csv_limit() -> None:
    global _csv_limit_raised
    if not _csv_limit_raised:  # the default (128 KiB a field) is too small for long answers
        csv.field_size_limit(max(csv.field_size_limit(), 64 << 20))
        _csv_limit_raised = True


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def looks_like_header(row: list[str], known: set[str]) -> bool:
    """A first CSV row is a header when its cells are distinct and either at least half of them
    are field names we know (or columns the column map names) or all of them look like column
    names (letters, digits, underscores: "prompt", "choice_1"). MMLU's headerless rows start with
    a question, so they are data."""
    cells = [c.strip() for c in row]
    if not cells or len(set(cells)) != len(cells):
        return False
    hits = sum(1 for c in cells if c in known or c.lower() in known)
    return 2 * hits >= len(cells) or all(_IDENTIFIER.fullmatch(c) for c in cells)


def iter_csv(path: Path, filename: str, opened: Opened, known: set[str], default_columns):
    """Rows of a CSV (comma) or TSV (tab) file as dicts. The first row is the header when it
    looks like one (`looks_like_header`); otherwise `default_columns(n)` names the n columns."""
    _raise_csv_limit()
    delimiter = "\t" if _ext(filename)[0] == ".tsv" else ","
    numbered = _lines(path, filename, opened)
    reader = csv.reader((text for _, text in numbered), delimiter=delimiter)
    columns: list[str] | None = None
    seen = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataFileError(filename, f"not valid CSV: {exc}", line=reader.line_num) from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if columns is None:
            if looks_like_header(row, known):
                columns = [c.strip() for c in row]
                opened.header_columns = columns
                continue
            columns = list(default_columns(len(row)))
            opened.header_columns = []
        seen += 1
        if len(row) != len(columns):
            yield start, None, RecordError(start, "", "wrong number of columns",
                                           f"expected {len(columns)}, found {len(row)}")
            continue
        yield start, dict(zip(columns, row)), None
    if not seen:
        raise DataFileError(filename, "empty file (no rows)" if columns else "empty file (only whitespace)")


# ---------------------------------------------------------------------------------------------
# Parquet


def parquet_columns(path: Path, filename: str) -> tuple[list[str], int]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataFileError(filename, f"not a readable Parquet file ({exc})") from None
    return list(meta.schema_arrow.names), meta.metadata.num_rows


def iter_parquet(path: Path, filename: str, opened: Opened):
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataFileError(filename, f"not a readable Parquet file ({exc})") from None
    if pf.metadata.num_rows == 0:
        raise DataFileError(filename, "empty file (no rows)")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                row += 1
                yield row, record, None
    except OSError as exc:
        raise DataFileError(filename, f"not a readable Parquet file ({exc})", line=row + 1) from None


# ---------------------------------------------------------------------------------------------


def json_safe(value, limit: int = SAMPLE_MAX_CHARS):
    """A sample value that json.dumps accepts, with long strings cut."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, dict):
        return {str(k): json_safe(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, limit) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


__all__ = ["CONTAINERS", "DataFileError", "RecordError", "Opened", "probe", "check_utf8", "iter_jsonl",
           "iter_json_array", "iter_csv", "iter_parquet", "iter_txt", "looks_like_header", "parquet_columns",
           "json_safe"]
