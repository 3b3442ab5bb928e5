"""The leaderboards API: benchmarks, suites, evaluation runs with their per-sample rows,
leaderboards (JSON or CSV), comparisons, OpenCompass imports and the arena. Refusals are 422
with `detail` "field: reason"; what the caller may not see is 404; a teammate changing the
owner's object is 403; too many active jobs is 429."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.http import HttpResponse
from django.utils.translation import gettext
from ninja import File, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from apps.accounts.visibility import get_visible_or_404
from apps.datasets.models import DatasetVersion
from apps.jobs.api import JobOut
from apps.jobs.services import TooManyJobs
from apps.leaderboards import arena, board, opencompass, services
from apps.leaderboards.models import (
    Benchmark,
    BenchmarkScore,
    BenchmarkVersion,
    EvaluationRun,
    ExternalEndpoint,
    SampleResult,
    Suite,
    SuiteVersion,
)
from apps.registry.models import ModelAlias, ModelVersion
from workers.tasks.catalog import InvalidParams, public_value

router = Router(tags=["leaderboards"])
MAX_PAGE = 200


def _act(fn):
    try:
        return fn()
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except TooManyJobs as exc:
        raise HttpError(429, str(exc)) from None
    except InvalidParams as exc:
        raise HttpError(422, str(exc)) from None


def _page(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(limit, MAX_PAGE)), max(offset, 0)


# ---- schemas ---------------------------------------------------------------------------------

class BenchmarkVersionOut(Schema):
    id: int
    benchmark_id: int
    benchmark: str
    number: int
    dataset_version_id: int
    fewshot_version_id: int | None
    fewshot_rows: list[int]
    definition: dict[str, Any]
    version_hash: str
    metric: str
    created_by: str
    created_at: datetime

    @staticmethod
    def resolve_benchmark(obj: BenchmarkVersion) -> str:
        return obj.benchmark.name

    @staticmethod
    def resolve_definition(obj: BenchmarkVersion) -> dict:
        return public_value(obj.definition)

    @staticmethod
    def resolve_metric(obj: BenchmarkVersion) -> str:
        return services.metric_of(obj.definition)

    @staticmethod
    def resolve_created_by(obj: BenchmarkVersion) -> str:
        return obj.created_by.username


class BenchmarkOut(Schema):
    id: int
    name: str
    title: str
    description: str
    dimension: str
    owner: str
    builtin_key: str
    latest: BenchmarkVersionOut | None
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: Benchmark) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_latest(obj: Benchmark):
        return services.latest_version(obj)


class BenchmarkDetailOut(BenchmarkOut):
    versions: list[BenchmarkVersionOut]

    @staticmethod
    def resolve_versions(obj: Benchmark):
        return list(obj.versions.select_related("benchmark", "created_by").order_by("-number"))


class BenchmarkIn(Schema):
    name: str
    dataset_version_id: int
    shape: str
    template: str = ""
    answer_template: str = " {answer}"
    fewshot_version_id: int | None = None
    fewshot_rows: list[int] = []
    fewshot_separator: str = "\n\n"
    scorer: dict[str, Any]
    dimension: str = "knowledge"
    chat: bool = False
    tools: list[dict[str, Any]] = []
    chat_template: str = ""
    title: str = ""
    description: str = ""


class BenchmarkEditIn(Schema):
    """Only the fields given change (fewshot_version_id: null removes the few-shot rows)."""

    dataset_version_id: int | None = None
    shape: str | None = None
    template: str | None = None
    answer_template: str | None = None
    fewshot_version_id: int | None = None
    fewshot_rows: list[int] | None = None
    fewshot_separator: str | None = None
    scorer: dict[str, Any] | None = None
    dimension: str | None = None
    chat: bool | None = None
    tools: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    title: str | None = None
    description: str | None = None


class SuiteItemOut(Schema):
    benchmark_version_id: int
    benchmark: str
    number: int
    version_hash: str
    dimension: str
    metric: str
    weight: float


class SuiteVersionOut(Schema):
    id: int
    suite_id: int
    number: int
    items: list[SuiteItemOut]
    created_at: datetime

    @staticmethod
    def resolve_items(obj: SuiteVersion) -> list[dict]:
        return [{"benchmark_version_id": i.benchmark_version_id, "benchmark": i.benchmark_version.benchmark.name,
                 "number": i.benchmark_version.number, "version_hash": i.benchmark_version.version_hash,
                 "dimension": i.benchmark_version.benchmark.dimension,
                 "metric": services.metric_of(i.benchmark_version.definition), "weight": i.weight}
                for i in obj.items.select_related("benchmark_version__benchmark")]


class SuiteOut(Schema):
    id: int
    name: str
    description: str
    owner: str
    latest: SuiteVersionOut | None
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: Suite) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_latest(obj: Suite):
        return services.latest_suite_version(obj)


class SuiteDetailOut(SuiteOut):
    versions: list[SuiteVersionOut]

    @staticmethod
    def resolve_versions(obj: Suite):
        return list(obj.versions.order_by("-number"))


class SuiteItemIn(Schema):
    benchmark_version_id: int
    weight: float = 1.0


class SuiteIn(Schema):
    name: str
    description: str = ""
    items: list[SuiteItemIn]


class SuiteEditIn(Schema):
    items: list[SuiteItemIn]
    description: str | None = None


class ScoreOut(Schema):
    benchmark_version_id: int
    benchmark: str
    version_hash: str
    metric: str
    score: float
    ci_low: float | None
    ci_high: float | None
    n: int
    correct: int | None
    extra: dict[str, Any]

    @staticmethod
    def resolve_benchmark(obj: BenchmarkScore) -> str:
        return obj.benchmark_version.benchmark.name

    @staticmethod
    def resolve_version_hash(obj: BenchmarkScore) -> str:
        return obj.benchmark_version.version_hash


class RunOut(Schema):
    id: int
    job: JobOut
    suite_id: int
    suite_version_id: int
    target: str
    target_label: str
    model_version_id: int | None
    alias_name: str
    deployment_id: int | None
    endpoint_id: int | None
    settings: dict[str, Any]
    model_hash: str
    scores: list[ScoreOut]
    created_at: datetime

    @staticmethod
    def resolve_suite_id(obj: EvaluationRun) -> int:
        return obj.suite_version.suite_id

    @staticmethod
    def resolve_scores(obj: EvaluationRun):
        return list(obj.scores.select_related("benchmark_version__benchmark"))


class EvaluationIn(Schema):
    suite_version_id: int | None = None
    suite_id: int | None = None  # its latest version
    model_version_id: int | None = None
    alias_id: int | None = None
    deployment_id: int | None = None
    endpoint_id: int | None = None
    judge_deployment_id: int | None = None
    judge_endpoint_id: int | None = None
    max_samples: int = 0
    max_new_tokens: int = 256
    batch_size: int = 8
    queue: str = "gpu"


class SampleOut(Schema):
    benchmark_version_id: int
    index: int
    correct: bool | None
    prompt: str
    output: str
    extracted: str
    reference: str
    detail: dict[str, Any]

    @staticmethod
    def resolve_benchmark_version_id(obj: SampleResult) -> int:
        return obj.score.benchmark_version_id


class SamplePage(Schema):
    count: int
    items: list[SampleOut]


class ImportOut(Schema):
    id: int
    filename: str
    owner: str
    models: list[str]
    datasets: list[str]
    scores: int
    created_at: datetime


class VoteIn(Schema):
    model_a_id: int
    model_b_id: int
    outcome: str
    prompt: str = ""
    battle: str = ""


class VoteOut(Schema):
    id: int
    model_a_id: int
    model_b_id: int
    outcome: str
    prompt: str
    battle: str
    created_at: datetime


class RatingsOut(Schema):
    job_id: int | None
    created_at: datetime | None
    votes: int
    ratings: list[dict[str, Any]]
    win_rate: dict[str, dict[str, float | None]]


# ---- lookups ---------------------------------------------------------------------------------

def _benchmark(request, benchmark_id: int) -> Benchmark:
    return services._visible_or_404(services.visible_benchmarks(request.auth), pk=benchmark_id)


def _suite(request, suite_id: int) -> Suite:
    return services._visible_or_404(services.visible_suites(request.auth), pk=suite_id)


def _run(request, run_id: int) -> EvaluationRun:
    return services._visible_or_404(services.visible_runs(request.auth).select_related("endpoint"), pk=run_id)


def _dataset_version(request, version_id: int | None) -> DatasetVersion | None:
    if version_id is None:
        return None
    return get_visible_or_404(DatasetVersion.objects.select_related("dataset"), request.auth, "dataset__owner", pk=version_id)


def _benchmark_versions(request, items: list[SuiteItemIn]) -> list[tuple[BenchmarkVersion, float]]:
    if len(items) > services.MAX_SUITE_ITEMS:  # before one lookup per item
        raise HttpError(422, "items: " + gettext("at most %(max)s benchmarks, got %(count)s")
                                                 % {"max": services.MAX_SUITE_ITEMS, "count": len(items)})
    visible = services.visible_benchmark_versions(request.auth)
    return [(services._visible_or_404(visible, pk=item.benchmark_version_id), item.weight) for item in items]


def _object(model, pk: int | None):
    """The row with that id (the service checks that the caller may see it), or 404."""
    if pk is None:
        return None
    found = model.objects.filter(pk=pk).first()
    if found is None:
        raise HttpError(404, "Not Found")
    return found


# ---- benchmarks ------------------------------------------------------------------------------

@router.get("/benchmarks", response=list[BenchmarkOut])
def list_benchmarks(request, q: str = "", dimension: str = "", builtin: bool | None = None):
    """Your benchmarks, your teammates' and the built-ins."""
    benchmarks = services.visible_benchmarks(request.auth)
    if q:
        benchmarks = benchmarks.filter(name__icontains=q[:100])
    if dimension:
        benchmarks = benchmarks.filter(dimension=dimension)
    if builtin is not None:
        benchmarks = benchmarks.exclude(builtin_key="") if builtin else benchmarks.filter(builtin_key="")
    return list(benchmarks[:500])


@router.post("/benchmarks", response={201: BenchmarkDetailOut})
def create_benchmark(request, payload: BenchmarkIn):
    fields = payload.model_dump()
    data = _dataset_version(request, fields.pop("dataset_version_id"))
    fewshot = _dataset_version(request, fields.pop("fewshot_version_id"))
    version = _act(lambda: services.create_benchmark(request.auth, dataset_version=data, fewshot_version=fewshot, **fields))
    return Status(201, version.benchmark)


@router.get("/benchmarks/{benchmark_id}", response=BenchmarkDetailOut)
def get_benchmark(request, benchmark_id: int):
    return _benchmark(request, benchmark_id)


@router.put("/benchmarks/{benchmark_id}", response=BenchmarkDetailOut)
def edit_benchmark(request, benchmark_id: int, payload: BenchmarkEditIn):
    """A new version when the data, template, few-shot rows or scorer change (the version hash);
    otherwise the labels change in place. Fields left out keep their value."""
    benchmark = _benchmark(request, benchmark_id)
    fields = payload.model_dump(exclude_unset=True)
    if "dataset_version_id" in fields:
        fields["dataset_version"] = _dataset_version(request, fields.pop("dataset_version_id"))
        if fields["dataset_version"] is None:
            raise HttpError(422, "dataset_version_id: " + gettext("a benchmark needs a dataset version"))
    if "fewshot_version_id" in fields:
        fields["fewshot_version"] = _dataset_version(request, fields.pop("fewshot_version_id"))
        if fields["fewshot_version"] is None:
            fields.setdefault("fewshot_rows", [])
    fields = {k: v for k, v in fields.items() if v is not None or k == "fewshot_version"}
    _act(lambda: services.edit_benchmark(request.auth, benchmark, **fields))
    benchmark.refresh_from_db()
    return benchmark


@router.get("/benchmark-versions/{version_id}", response=BenchmarkVersionOut)
def get_benchmark_version(request, version_id: int):
    return services._visible_or_404(services.visible_benchmark_versions(request.auth).select_related("created_by"),
                                    pk=version_id)


# ---- suites ----------------------------------------------------------------------------------

@router.get("/suites", response=list[SuiteOut])
def list_suites(request):
    return list(services.visible_suites(request.auth)[:500])


@router.post("/suites", response={201: SuiteDetailOut})
def create_suite(request, payload: SuiteIn):
    items = _benchmark_versions(request, payload.items)
    version = _act(lambda: services.create_suite(request.auth, name=payload.name, items=items,
                                                 description=payload.description))
    return Status(201, version.suite)


@router.get("/suites/{suite_id}", response=SuiteDetailOut)
def get_suite(request, suite_id: int):
    return _suite(request, suite_id)


@router.put("/suites/{suite_id}", response=SuiteDetailOut)
def edit_suite(request, suite_id: int, payload: SuiteEditIn):
    """A new suite version when the items or weights change."""
    suite = _suite(request, suite_id)
    items = _benchmark_versions(request, payload.items)
    _act(lambda: services.edit_suite(request.auth, suite, items, description=payload.description))
    suite.refresh_from_db()
    return suite


# ---- evaluations -----------------------------------------------------------------------------

@router.get("/evaluations", response=list[RunOut])
def list_evaluations(request, suite_id: int | None = None, model_version_id: int | None = None, status: str = "",
                     limit: int = 50, offset: int = 0):
    runs = services.visible_runs(request.auth)
    if suite_id is not None:
        runs = runs.filter(suite_version__suite_id=suite_id)
    if model_version_id is not None:
        runs = runs.filter(model_version_id=model_version_id)
    if status:
        runs = runs.filter(job__status=status.upper())
    limit, offset = _page(limit, offset)
    return list(runs[offset:offset + limit])


@router.post("/evaluations", response={200: RunOut, 201: RunOut})
def submit_evaluation(request, payload: EvaluationIn):
    """Queue a run: one target (model_version_id, alias_id, deployment_id or endpoint_id) on a
    suite version (or a suite's latest). The same request again answers 200 with the run that is
    queued, running or succeeded already."""
    if (payload.suite_version_id is None) == (payload.suite_id is None):
        raise HttpError(422, "suite_version_id: " + gettext("give suite_version_id or suite_id (its latest version)"))
    if payload.suite_id is not None:
        suite_version = services.latest_suite_version(_suite(request, payload.suite_id))
    else:
        suite_version = services._visible_or_404(services.visible_suite_versions(request.auth), pk=payload.suite_version_id)
    run = _act(lambda: services.submit_evaluation(
        request.auth, suite_version=suite_version, model_version=_object(ModelVersion, payload.model_version_id),
        alias=_object(ModelAlias, payload.alias_id), deployment=_deployment(payload.deployment_id),
        endpoint=_object(ExternalEndpoint, payload.endpoint_id), judge_deployment=_deployment(payload.judge_deployment_id),
        judge_endpoint=_object(ExternalEndpoint, payload.judge_endpoint_id), max_samples=payload.max_samples,
        max_new_tokens=payload.max_new_tokens, batch_size=payload.batch_size, queue=payload.queue))
    return Status(200 if run.reused else 201, run)


def _deployment(pk: int | None):
    from apps.serving.models import Deployment

    return _object(Deployment, pk)


@router.get("/evaluations/compare")
def compare(request, a: int, b: int):
    """Two finished runs side by side per shared benchmark version: both scores, the paired test
    (McNemar or paired bootstrap) and the samples on which they differ (at most 200 each)."""
    result = _act(lambda: board.compare(request.auth, _run(request, a), _run(request, b)))
    return {"a": result["run_a"].pk, "b": result["run_b"].pk, "benchmarks": [
        {"benchmark_version_id": item["benchmark_version"].pk, "benchmark": item["benchmark_version"].benchmark.name,
         "version_hash": item["benchmark_version"].version_hash, **{k: v for k, v in item.items() if k != "benchmark_version"}}
        for item in result["benchmarks"]]}


@router.get("/evaluations/radar")
def radar(request, runs: list[int] = Query(...)):
    """Per-dimension averages of finished runs (plotly-ready)."""
    if len(runs) > board.MAX_RADAR_RUNS:
        raise HttpError(422, "runs: " + gettext("choose 1 to %(max)s runs") % {"max": board.MAX_RADAR_RUNS})
    return _act(lambda: board.radar(request.auth, [_run(request, pk) for pk in runs]))


@router.get("/evaluations/{run_id}", response=RunOut)
def get_evaluation(request, run_id: int):
    return _run(request, run_id)


@router.get("/evaluations/{run_id}/samples", response=SamplePage)
def list_samples(request, run_id: int, benchmark_version: int | None = None, correct: bool | None = None,
                 offset: int = 0, limit: int = 50):
    """The per-sample rows: the prompt as sent, raw output, extracted answer, reference, right or
    not, and the paradigm's details (each option's log-likelihood, ...)."""
    run = _run(request, run_id)
    samples = SampleResult.objects.filter(score__run=run).select_related("score").order_by("score__benchmark_version_id", "index")
    if benchmark_version is not None:
        samples = samples.filter(score__benchmark_version_id=benchmark_version)
    if correct is not None:
        samples = samples.filter(correct=correct)
    limit, offset = _page(limit, offset)
    return {"count": samples.count(), "items": list(samples[offset:offset + limit])}


# ---- leaderboards ----------------------------------------------------------------------------

@router.post("/leaderboards/import", response={201: ImportOut})
def import_opencompass(request, file: File[UploadedFile]):
    """An OpenCompass summary_*.csv (dataset, version, metric, mode, then one column per model);
    its rows show on the leaderboards marked "imported"."""
    summary = _act(lambda: opencompass.import_summary(request.auth, file))
    scores = list(summary.scores.values_list("model_name", "dataset"))
    return Status(201, {"id": summary.pk, "filename": summary.filename, "owner": request.auth.username,
                        "models": sorted({m for m, _ in scores}), "datasets": sorted({d for _, d in scores}),
                        "scores": len(scores), "created_at": summary.created_at})


@router.get("/leaderboards/{suite_id}")
def get_leaderboard(request, suite_id: int, format: str = "json", version: int | None = None, kind: str = "",
                    owner: str = "", size_max: int | None = None, since: date | None = None, sort: str = "overall",
                    descending: bool = True):
    """The suite's leaderboard (its latest version, or `version`): one row per evaluated model
    with per-benchmark scores, 95% intervals, hashes and contamination flags, per-dimension and
    overall averages; `format=csv` downloads it."""
    if format not in ("json", "csv"):
        raise HttpError(422, "format: " + gettext("must be json or csv"))
    suite = _suite(request, suite_id)
    target = suite if version is None else suite.versions.filter(number=version).first()
    if target is None:
        raise HttpError(404, gettext("%(suite)s has no version %(version)s")
                                     % {"suite": suite.name, "version": version})
    table = _act(lambda: board.leaderboard(request.auth, target, kind=kind or None, owner=owner or None,
                                           size_max=size_max, since=since, sort=sort, descending=descending))
    if format == "csv":
        response = HttpResponse(board.leaderboard_csv(table), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="leaderboard-{suite.pk}-v{table["suite_version"].number}.csv"'
        return response
    return board.leaderboard_json(table)


# ---- arena -----------------------------------------------------------------------------------

@router.get("/arena/votes", response=list[VoteOut])
def list_votes(request, limit: int = 50, offset: int = 0):
    """Your own votes, newest first."""
    limit, offset = _page(limit, offset)
    return list(arena.my_votes(request.auth)[offset:offset + limit])


@router.post("/arena/votes", response={201: VoteOut})
def vote(request, payload: VoteIn):
    vote = _act(lambda: arena.record_vote(request.auth, model_a=_object(ModelVersion, payload.model_a_id),
                                          model_b=_object(ModelVersion, payload.model_b_id), outcome=payload.outcome,
                                          prompt=payload.prompt, battle=payload.battle))
    return Status(201, vote)


@router.get("/arena/ratings", response=RatingsOut)
def ratings(request):
    """The latest ratings (Bradley–Terry with 95% bootstrap intervals) of the versions you may see."""
    snapshot = arena.latest_ratings(request.auth)
    if snapshot is None:
        return {"job_id": None, "created_at": None, "votes": 0, "ratings": [], "win_rate": {}}
    return arena.visible_ratings(request.auth, snapshot)


@router.post("/arena/ratings", response={201: JobOut})
def recompute_ratings(request):
    """Queue the ratings job (ratings are computed by a job, never in a request)."""
    return Status(201, _act(lambda: arena.start_ratings(request.auth)))
