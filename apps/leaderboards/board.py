"""Leaderboards, two-run comparisons and radar charts, computed from stored scores for what the
user may see.

A board is one suite version (a suite: its latest version). One row per evaluated target (a
model version, a deployment as served, an endpoint) = its latest SUCCEEDED run on that suite
version: queued, running, failed and cancelled runs never appear. Each score carries its 95%
interval, the benchmark's version hash and the contamination flag of the row's lineage.

Averages (per dimension and overall, naive and weighted by the suite's weights, through the
core's `dimension_averages`) are over scores where higher is better, on one 0-1 scale:
accuracy and pass@1 as they are, a judge's 1-10 score divided by 10. Bits per byte (perplexity,
lower is better) is never averaged with them: it is shown in its own column and left out of
every average, so a model cannot gain rank by being worse at language modelling. A row missing
a score has no average for that group (an average over fewer benchmarks would not compare).

Imported OpenCompass rows (opencompass.py) join a board where a summary's dataset name matches
a benchmark's name; their percentages become fractions for accuracy and pass@1 columns; they
are marked "imported" and have no intervals, hash or lineage.
"""
from __future__ import annotations

import csv
import io
import math
import re
from datetime import date, datetime

from django.db.models import Q
from django.http import Http404
from django.utils.translation import gettext

from apps.accounts.system import builtin_owner
from apps.accounts.visibility import teammate_ids, visible_to
from apps.jobs.models import JobStatus
from apps.leaderboards import contamination
from apps.leaderboards.models import (
    DIMENSIONS,
    EvaluationRun,
    ImportedScore,
    ImportedSummary,
    SampleResult,
    Suite,
    SuiteVersion,
)
from apps.leaderboards.services import (
    LOWER_IS_BETTER,
    RefusedInput,
    latest_suite_version,
    metric_of,
    visible_runs,
    visible_suite_versions,
)
from apps.studio.labels import choice_word
from workers.tasks import catalog

DIMENSION_ORDER = [d for d, _ in DIMENSIONS]
AVERAGE_SCALE = {"accuracy": 1.0, "pass@1": 1.0, "judge_score": 0.1}  # to one 0-1 scale; others are not averaged
PERCENT_METRICS = ("accuracy", "pass@1")  # OpenCompass prints these as percentages
SORTS = ("overall", "overall_weighted", "date", "size", "label")
MAX_RADAR_RUNS = 12
MAX_DIFFERING = 200
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ---- the board -------------------------------------------------------------------------------

def _suite_version(user, suite) -> SuiteVersion:
    if isinstance(suite, Suite):
        suite = latest_suite_version(suite)
    if not isinstance(suite, SuiteVersion):
        raise Http404("No such suite.")
    found = visible_suite_versions(user).filter(pk=suite.pk).first()
    if found is None:
        raise Http404("No such suite, or you may not see it.")
    return found


def _averages(entries: list[dict]) -> tuple[dict, float | None, float | None]:
    """({dimension: naive mean}, overall naive, overall weighted) of the averaged scores;
    `entries`: [{"dimension", "metric", "score" (None: missing), "weight"}]."""
    rows = [{"dimension": e["dimension"], "weight": e["weight"],
             "score": None if e["score"] is None else e["score"] * AVERAGE_SCALE[e["metric"]]}
            for e in entries if e["metric"] in AVERAGE_SCALE]
    per_dimension, overall = catalog.dimension_averages(rows)
    return {d: a["naive"] for d, a in per_dimension.items()}, overall["naive"], overall["weighted"]


def _visible_targets(user, runs):
    """Runs whose model version the user may see too (a teammate's run may target a version
    shared with a team the user is not in; the built-in models, such as the starter, everyone
    sees)."""
    if user.is_superuser:
        return runs
    return runs.filter(Q(model_version__isnull=True) | Q(model_version__model__owner__in=teammate_ids(user))
                       | builtin_owner("model_version__model__owner"))


def _run_rows(user, version: SuiteVersion, columns: list[dict]) -> list[dict]:
    runs = (_visible_targets(user, visible_runs(user)).filter(suite_version=version, job__status=JobStatus.SUCCEEDED)
            .select_related("model_version__model__owner", "deployment", "endpoint").prefetch_related("scores")
            .order_by("-job__finished_at", "-id"))
    rows, seen, lineages = [], set(), {}
    for run in runs:
        key = (run.target, run.model_version_id, run.deployment_id, run.endpoint_id)
        if key in seen:
            continue  # an older run of the same target
        seen.add(key)
        version_row = run.model_version
        if version_row is not None and version_row.pk not in lineages:
            lineages[version_row.pk] = contamination.training_lineage(version_row)
        lineage = lineages.get(getattr(version_row, "pk", None), [])
        stored = {s.benchmark_version_id: s for s in run.scores.all()}
        scores = {}
        for column in columns:
            score = stored.get(column["id"])
            if score is not None:
                scores[column["id"]] = {"score": score.score, "ci_low": score.ci_low, "ci_high": score.ci_high,
                                        "metric": score.metric, "n": score.n, "hash": column["hash"],
                                        "contamination": contamination.flag_from(lineage, column["data_hash"])}
        rows.append({"run": run, "model_version": version_row, "label": run.target_label, "target": run.target,
                     "alias": run.alias_name, "kind": version_row.kind if version_row else run.target,
                     "owner": version_row.model.owner.username if version_row else run.job.owner.username,
                     "size": version_row.parameter_count if version_row and version_row.parameter_count else None,
                     "date": run.job.finished_at, "scores": scores, "imported": False, "summary_id": None})
    return rows


# OpenCompass dataset abbreviations whose studio benchmark has another name.
OPENCOMPASS_NAMES = {"openaihumaneval": "humaneval"}


def _name_key(name: str) -> str:
    key = re.sub(r"[^0-9a-z]", "", name.lower())
    return OPENCOMPASS_NAMES.get(key, key)


def _imported_rows(user, columns: list[dict]) -> list[dict]:
    by_name = {}
    for column in columns:
        by_name.setdefault(_name_key(column["name"]), column)
    scores = (ImportedScore.objects.filter(summary__in=visible_to(ImportedSummary.objects.all(), user), value__isnull=False)
              .select_related("summary__owner").order_by("summary_id", "id"))
    rows: dict[tuple[int, str], dict] = {}
    for imported in scores:
        column = by_name.get(_name_key(imported.dataset))
        if column is None:
            continue
        key = (imported.summary_id, imported.model_name)
        row = rows.setdefault(key, {
            "run": None, "model_version": None, "label": imported.model_name, "target": "imported", "alias": "",
            "kind": "imported", "owner": imported.summary.owner.username, "size": None,
            "date": imported.summary.created_at, "scores": {}, "imported": True, "summary_id": imported.summary_id})
        previous = row["scores"].get(column["id"])
        preferred = column["metric"].lower() in imported.metric.lower()
        if previous is not None and (previous["preferred"] or not preferred):
            continue  # keep the metric that matches the column (OpenCompass lists several per dataset)
        value = imported.value / 100 if column["metric"] in PERCENT_METRICS else imported.value
        row["scores"][column["id"]] = {"score": value, "ci_low": None, "ci_high": None, "metric": column["metric"],
                                       "n": None, "hash": "", "contamination": contamination.UNKNOWN,
                                       "imported_metric": imported.metric, "preferred": preferred}
    for row in rows.values():
        for entry in row["scores"].values():
            entry.pop("preferred")
    return list(rows.values())


def _as_date(value) -> date | None:
    if value is None:
        return None
    return value.date() if isinstance(value, datetime) else value


def _keep(row: dict, kind, owner, size_max, since) -> bool:
    if kind and row["kind"] != kind:
        return False
    if owner and row["owner"] != owner:
        return False
    if size_max is not None and (row["size"] is None or row["size"] > size_max):
        return False
    if since is not None and (row["date"] is None or _as_date(row["date"]) < _as_date(since)):
        return False
    return True


def _sort_key(sort: str, columns: list[dict]):
    """A function row -> comparable value (None when the row has none), or RefusedInput."""
    if sort in ("overall", "overall_weighted", "size", "label"):
        return lambda row: row[sort].lower() if sort == "label" else row[sort]
    if sort == "date":
        return lambda row: row["date"].timestamp() if isinstance(row["date"], datetime) else None
    if sort in DIMENSION_ORDER:
        return lambda row: row["dimensions"].get(sort)
    ident = sort.removeprefix("bench:")
    if ident.isdigit() and any(c["id"] == int(ident) for c in columns):
        return lambda row: (row["scores"].get(int(ident)) or {}).get("score")
    raise RefusedInput("sort", gettext("must be one of %(sorts)s, a dimension, or bench:<benchmark version id> of "
                                       "this suite, got %(sort)s")
                                       % {"sorts": ', '.join(SORTS), "sort": repr(sort[:40])})


def leaderboard(user, suite, *, kind=None, owner=None, size_max=None, since=None, sort="overall",
                descending=True) -> dict:
    """The board of `suite` (a Suite: its latest version; or a SuiteVersion) for `user` (module
    doc), filtered and sorted; rows with no value for the sort key come last."""
    version = _suite_version(user, suite)
    items = list(version.items.select_related("benchmark_version__benchmark", "benchmark_version__dataset_version"))
    benchmarks = [item.benchmark_version for item in items]
    columns = [{"id": bv.pk, "name": bv.benchmark.name, "hash": bv.version_hash, "data_hash": bv.dataset_version.sha256,
                "dimension": bv.benchmark.dimension, "metric": metric_of(bv.definition), "weight": item.weight}
               for bv, item in zip(benchmarks, items)]
    key = _sort_key(sort or "overall", columns)
    rows = _run_rows(user, version, columns) + _imported_rows(user, columns)
    for row in rows:
        entries = [{"dimension": c["dimension"], "metric": c["metric"], "weight": c["weight"],
                    "score": (row["scores"].get(c["id"]) or {}).get("score")} for c in columns]
        row["dimensions"], row["overall"], row["overall_weighted"] = _averages(entries)
    rows = [row for row in rows if _keep(row, kind, owner, size_max, since)]
    present = [row for row in rows if key(row) is not None]
    present.sort(key=key, reverse=bool(descending))
    averaged = [c for c in columns if c["metric"] in AVERAGE_SCALE]
    dimensions = [d for d in DIMENSION_ORDER if any(c["dimension"] == d for c in averaged)]
    return {"suite_version": version, "benchmarks": benchmarks, "columns": columns, "dimensions": dimensions,
            "lower_is_better": [c["id"] for c in columns if c["metric"] in LOWER_IS_BETTER],
            "rows": present + [row for row in rows if key(row) is None]}


# ---- exports ---------------------------------------------------------------------------------

def _cell(value):
    """A CSV cell that a spreadsheet will not run as a formula (a model name like "=cmd|...")."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return "" if value is None else value


def _iso(value) -> str | None:
    return value.isoformat() if isinstance(value, (date, datetime)) else None


def leaderboard_json(board: dict) -> dict:
    """The board as plain JSON: ids instead of rows, dates as ISO 8601, hashes in full."""
    version = board["suite_version"]
    return {
        "suite": {"id": version.suite_id, "name": version.suite.name, "version": version.number, "version_id": version.pk},
        "benchmarks": [{"id": c["id"], "name": c["name"], "hash": c["hash"], "dimension": c["dimension"],
                        "metric": c["metric"], "weight": c["weight"], "lower_is_better": c["id"] in board["lower_is_better"],
                        "averaged": c["metric"] in AVERAGE_SCALE} for c in board["columns"]],
        "dimensions": board["dimensions"],
        "rows": [{"run_id": row["run"].pk if row["run"] else None,
                  "model_version_id": row["model_version"].pk if row["model_version"] else None,
                  "label": row["label"], "target": row["target"], "alias": row["alias"], "kind": row["kind"],
                  "owner": row["owner"], "size": row["size"], "date": _iso(row["date"]), "imported": row["imported"],
                  "summary_id": row["summary_id"], "scores": {str(k): v for k, v in row["scores"].items()},
                  "dimensions": row["dimensions"], "overall": row["overall"], "overall_weighted": row["overall_weighted"]}
                 for row in board["rows"]],
    }


def leaderboard_csv(board: dict) -> str:
    """One line per row: the row's facts, its averages, then per benchmark the score, its
    interval and contamination flag (the header names each benchmark with its short hash)."""
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["label", "target", "kind", "owner", "size", "date", "imported", "overall", "overall_weighted"]
    header += [f"dimension {d}" for d in board["dimensions"]]
    for c in board["columns"]:
        name = f"{c['name']} [{c['hash'][:12]}] {c['metric']}"
        header += [name, f"{name} ci_low", f"{name} ci_high", f"{name} contamination"]
    writer.writerow([_cell(h) for h in header])
    for row in board["rows"]:
        line = [row["label"], row["target"], row["kind"], row["owner"], row["size"], _iso(row["date"]),
                "yes" if row["imported"] else "no", row["overall"], row["overall_weighted"]]
        line += [row["dimensions"].get(d) for d in board["dimensions"]]
        for c in board["columns"]:
            score = row["scores"].get(c["id"]) or {}
            line += [score.get("score"), score.get("ci_low"), score.get("ci_high"), score.get("contamination")]
        writer.writerow([_cell(v) for v in line])
    return out.getvalue()


# ---- comparing two runs ----------------------------------------------------------------------

def _finished_run(user, run, field: str) -> EvaluationRun:
    found = visible_runs(user).filter(pk=getattr(run, "pk", None)).first()
    if found is None:
        raise Http404("No such evaluation, or you may not see it.")
    if found.job.status != JobStatus.SUCCEEDED:
        raise RefusedInput(field, gettext("run %(run)s is %(status)s; compare finished runs")
                                          % {"run": found.pk, "status": choice_word(found.job, "status").lower()})
    return found


def _sample_value(correct, detail: dict) -> float | None:
    """A sample's score: 1/0 for right/wrong, its bits per byte (perplexity), its judge score."""
    if correct is not None:
        return float(correct)
    if detail.get("bytes"):
        return detail["nll"] / (math.log(2) * detail["bytes"])
    score = detail.get("judge_score")
    return float(score) if isinstance(score, (int, float)) else None


def _side(sample: SampleResult, value) -> dict:
    return {"output": sample.output, "extracted": sample.extracted, "correct": sample.correct, "value": value}


def _compare_scores(score_a, score_b) -> dict:
    a = {i: (c, d) for i, c, d in SampleResult.objects.filter(score=score_a).values_list("index", "correct", "detail")}
    b = {i: (c, d) for i, c, d in SampleResult.objects.filter(score=score_b).values_list("index", "correct", "detail")}
    indices = sorted(set(a) & set(b))
    values = {i: (_sample_value(*a[i]), _sample_value(*b[i])) for i in indices}
    paired = [i for i in indices if None not in values[i]]
    binary = all(a[i][0] is not None and b[i][0] is not None for i in indices)
    if not paired:
        test = {"name": "none", "p_value": None, "reason": "no paired samples with a score"}
        differing = []
    elif binary:
        test = {"name": "mcnemar", **catalog.mcnemar([a[i][0] for i in paired], [b[i][0] for i in paired])}
        differing = [i for i in paired if a[i][0] != b[i][0]]
    else:
        test = {"name": "paired_bootstrap", **catalog.paired_bootstrap([values[i][0] for i in paired],
                                                                       [values[i][1] for i in paired])}
        differing = sorted((i for i in paired if values[i][0] != values[i][1]),
                           key=lambda i: -abs(values[i][0] - values[i][1]))
    shown = differing[:MAX_DIFFERING]
    rows_a = {s.index: s for s in SampleResult.objects.filter(score=score_a, index__in=shown)}
    rows_b = {s.index: s for s in SampleResult.objects.filter(score=score_b, index__in=shown)}
    return {"n": len(paired), "test": test, "differing_count": len(differing),
            "differing": [{"index": i, "prompt": rows_a[i].prompt, "reference": rows_a[i].reference,
                           "a": _side(rows_a[i], values[i][0]), "b": _side(rows_b[i], values[i][1])} for i in shown]}


def _summary(score) -> dict:
    return {"score": score.score, "ci_low": score.ci_low, "ci_high": score.ci_high, "metric": score.metric, "n": score.n,
            "correct": score.correct}


def compare(user, run_a, run_b) -> dict:
    """Per benchmark version both runs scored: both scores, a paired test (McNemar on right/wrong
    samples, a paired bootstrap of the mean difference for continuous ones) and the samples on
    which the two differ (at most 200, the largest differences first for continuous scores)."""
    run_a, run_b = _finished_run(user, run_a, "a"), _finished_run(user, run_b, "b")
    scores_b = {s.benchmark_version_id: s for s in run_b.scores.all()}
    benchmarks = []
    for score_a in run_a.scores.select_related("benchmark_version__benchmark").order_by("benchmark_version_id"):
        score_b = scores_b.get(score_a.benchmark_version_id)
        if score_b is None:
            continue
        benchmarks.append({"benchmark_version": score_a.benchmark_version, "a": _summary(score_a), "b": _summary(score_b),
                           **_compare_scores(score_a, score_b)})
    return {"run_a": run_a, "run_b": run_b, "benchmarks": benchmarks}


# ---- radar -----------------------------------------------------------------------------------

def radar(user, runs) -> dict:
    """Per-dimension averages of finished runs, ready for a plotly polar chart: {"dimensions":
    [...], "series": [{"label", "run_id", "values"}]} (None where a run has no such dimension)."""
    runs = list(runs)
    if not runs or len(runs) > MAX_RADAR_RUNS:
        raise RefusedInput("runs", gettext("choose 1 to %(max)s runs") % {"max": MAX_RADAR_RUNS})
    found = [_finished_run(user, run, "runs") for run in runs]
    series, dimensions = [], set()
    for run in found:
        weights = dict(run.suite_version.items.values_list("benchmark_version_id", "weight"))
        entries = [{"dimension": s.benchmark_version.benchmark.dimension, "metric": s.metric, "score": s.score,
                    "weight": weights.get(s.benchmark_version_id, 1.0)}
                   for s in run.scores.select_related("benchmark_version__benchmark")]
        per_dimension, _, _ = _averages(entries)
        dimensions |= set(per_dimension)
        series.append({"label": run.target_label, "run_id": run.pk, "values": per_dimension})
    ordered = [d for d in DIMENSION_ORDER if d in dimensions]
    for entry in series:
        entry["values"] = [entry["values"].get(d) for d in ordered]
    return {"dimensions": ordered, "series": series}
