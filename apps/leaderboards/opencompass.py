"""Import an OpenCompass summary (summary_<time>.csv, written by its DefaultSummarizer): the
columns dataset, version (the prompt hash), metric, mode (gen, ppl, ...), then one column per
model; a value is a score as OpenCompass prints it (a percentage with two decimals) or "-"
where the model was not evaluated. Rows that are all "-" (category separators such as
"######## MathBench ########", datasets without results) carry nothing and are skipped.

Bounded before parsing (1 MB, 5,000 rows, 50 models); every error names its line and column;
a refused file stores nothing. Published numbers sit on the leaderboards beside ours, marked
"imported" (board.py matches a row's dataset to a benchmark by name).
"""
from __future__ import annotations

import csv
import io
import math

from django.db import transaction
from django.utils.translation import gettext

from apps.leaderboards.models import ImportedScore, ImportedSummary
from apps.leaderboards.services import RefusedInput

MAX_BYTES = 1024 * 1024
MAX_ROWS = 5000
MAX_MODELS = 50
HEADER = ("dataset", "version", "metric", "mode")
LIMITS = {"dataset": 200, "version": 40, "metric": 80, "mode": 20}
MISSING = "-"


def _refuse(line: int, column: int | None, reason: str):
    where = (gettext("line %(line)s, column %(column)s") % {"line": line, "column": column} if column else
             gettext("line %(line)s") % {"line": line})
    return RefusedInput("file", gettext("%(where)s: %(reason)s") % {"where": where, "reason": reason})


def _read(uploaded) -> str:
    size = getattr(uploaded, "size", None)
    if size is not None and size > MAX_BYTES:
        raise RefusedInput("file", gettext("is %(size)s bytes; an OpenCompass summary may be at most %(max)s")
                                           % {"size": format(size, ","), "max": format(MAX_BYTES, ",")})
    data = uploaded.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise RefusedInput("file", gettext("is larger than %(max)s bytes") % {"max": format(MAX_BYTES, ",")})
    if not data.strip():
        raise RefusedInput("file", gettext("is empty"))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise _refuse(line, None, gettext("is not UTF-8 text")) from None


def _header(row: list[str]) -> list[str]:
    cells = [c.strip() for c in row]
    for i, name in enumerate(HEADER):
        if i >= len(cells) or cells[i].lower() != name:
            got = cells[i] if i < len(cells) else "nothing"
            raise _refuse(1, i + 1, gettext("expected the column %(name)s (an OpenCompass summary starts with "
                                            "%(header)s, then one column per model), got %(got)s")
                                            % {"name": repr(name), "header": ', '.join(HEADER),
                                               "got": repr(got[:40])})
    models = cells[len(HEADER):]
    if not models:
        raise _refuse(1, None, gettext("names no model column after dataset, version, metric, mode"))
    if len(models) > MAX_MODELS:
        raise _refuse(1, None, gettext("names %(count)s models; at most %(max)s")
                                       % {"count": len(models), "max": MAX_MODELS})
    for i, name in enumerate(models, start=len(HEADER) + 1):
        if not name or len(name) > 200:
            raise _refuse(1, i, gettext("a model column needs a name of 1-200 characters"))
        if models.index(name) != i - len(HEADER) - 1:
            raise _refuse(1, i, gettext("names the model %(name)s twice") % {"name": repr(name[:40])})
    return models


def _value(text: str, line: int, column: int, model: str) -> float | None:
    text = text.strip()
    if text == MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise _refuse(line, column, gettext("%(text)s for %(model)s is neither a number nor '-'")
                                            % {"text": repr(text[:40]), "model": model[:40]}) from None
    if not math.isfinite(value):
        raise _refuse(line, column, gettext("%(text)s for %(model)s is not a finite number")
                                            % {"text": repr(text[:40]), "model": model[:40]})
    return value


def parse_summary(text: str) -> list[dict]:
    """The scores of a summary: [{dataset, version, metric, mode, model_name, value}]."""
    reader = csv.reader(io.StringIO(text, newline=""))
    scores, models, rows = [], None, 0
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if models is None:
                models = _header(row)
                continue
            rows += 1
            if rows > MAX_ROWS:
                raise _refuse(line, None, gettext("more than %(max)s rows") % {"max": format(MAX_ROWS, ",")})
            if len(row) != len(HEADER) + len(models):
                raise _refuse(line, None, gettext("has %(count)s columns; the header has %(expected)s")
                                                  % {"count": len(row), "expected": len(HEADER) + len(models)})
            fields = {name: row[i].strip() for i, name in enumerate(HEADER)}
            for i, name in enumerate(HEADER, start=1):
                if len(fields[name]) > LIMITS[name]:
                    raise _refuse(line, i, gettext("the %(name)s is longer than %(limit)s characters")
                                                   % {"name": name, "limit": LIMITS[name]})
            if not fields["dataset"]:
                raise _refuse(line, 1, gettext("names no dataset"))
            values = [_value(row[len(HEADER) + k], line, len(HEADER) + k + 1, model) for k, model in enumerate(models)]
            if all(v is None for v in values):
                continue  # a category separator or a dataset without results
            fields = {k: ("" if v == MISSING else v) for k, v in fields.items()}
            scores += [{**fields, "model_name": model, "value": value} for model, value in zip(models, values)]
    except csv.Error as exc:
        raise _refuse(reader.line_num, None, gettext("is not valid CSV (%(exc)s)") % {"exc": exc}) from None
    if models is None:
        raise RefusedInput("file", gettext("is empty"))
    if not scores:
        raise RefusedInput("file", gettext("holds no scores (every value is '-')"))
    return scores


def import_summary(user, uploaded_file) -> ImportedSummary:
    """Parse and store an uploaded summary (module doc); RefusedInput names the line and column."""
    scores = parse_summary(_read(uploaded_file))
    name = (getattr(uploaded_file, "name", "") or "summary.csv").rsplit("/", 1)[-1][:255]
    with transaction.atomic():
        summary = ImportedSummary.objects.create(owner=user, filename=name)
        ImportedScore.objects.bulk_create([ImportedScore(summary=summary, **score) for score in scores], batch_size=1000)
    return summary
