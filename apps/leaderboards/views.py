"""Leaderboards pages: the home page, a leaderboard per suite (sort, filters, export, radar,
compare two), the evaluate form and the run page (live progress per benchmark, then scores),
the per-sample drill-down, benchmarks and suites, the OpenCompass import and the arena ratings.

Everything is read through the services' visibility (apps/leaderboards/services.py): what a user
may not see is a 404. Model outputs and prompts are untrusted text: the templates only ever
autoescape them."""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.utils.translation import gettext, gettext_lazy, pgettext_lazy
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from apps.accounts.visibility import PermissionDenied, can_manage, visible_to
from apps.jobs.models import Job, JobStatus
from apps.jobs.snapshot import job_snapshot
from apps.leaderboards import board as boards
from apps.leaderboards import charts, contamination, services
from apps.leaderboards.forms import (
    BenchmarkForm, BoardFilterForm, EvaluateForm, ImportForm, SuiteForm, attach, benchmark_initial,
    visible_dataset_versions)
from apps.leaderboards.models import (
    DIMENSIONS,
    Benchmark, BenchmarkScore, BenchmarkVersion, EvaluationRun, ImportedSummary, SampleResult, Suite,
    SuiteVersion)

# A leaderboard row's kind of model (board.py: a version's kind, or how the run reached it).
BOARD_KINDS = {"base": pgettext_lazy("leaderboard row", "base"), "adapter": pgettext_lazy("leaderboard row", "adapter"),
               "merged": pgettext_lazy("leaderboard row", "merged"),
               "quantized": pgettext_lazy("leaderboard row", "quantized"),
               "deployment": pgettext_lazy("leaderboard row", "deployment"),
               "endpoint": pgettext_lazy("leaderboard row", "endpoint"),
               "imported": pgettext_lazy("leaderboard row", "imported")}
DIMENSION_LABELS = dict(DIMENSIONS)
SAMPLES_PAGE = 50
RUNS_PAGE = 100
# The service's argument names → the evaluate form's fields.
EVALUATE_FIELDS = {"model_version": "target", "alias": "target", "deployment": "target", "endpoint": "target",
                   "suite_version": "suite", "judge_deployment": "judge", "judge_endpoint": "judge"}
CONTAMINATION = {
    "clean": ("✓", gettext_lazy("Every training dataset in this version's lineage was decontaminated against this "
                                "benchmark's data.")),
    "contaminated": ("⚠", gettext_lazy("A training dataset in this version's lineage was not decontaminated against this "
                                       "benchmark's data: the score may be inflated by training on the test.")),
    "unknown": (pgettext_lazy("contamination", "unknown"),
                gettext_lazy("This version has no training lineage in the studio (imported, or trained elsewhere), so "
                             "contamination cannot be checked.")),
}
CONTAMINATION_STATES = {"clean": pgettext_lazy("contamination", "clean"),
                        "contaminated": pgettext_lazy("contamination", "contaminated"),
                        "unknown": pgettext_lazy("contamination", "unknown")}


# ---- lookups ------------------------------------------------------------------------------------

def _one(queryset, **lookup):
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404("No such object, or you may not see it.")
    return obj


def _run(user, run_id: int) -> EvaluationRun:
    runs = services.visible_runs(user).select_related("job", "job__owner", "suite_version__suite", "model_version__model",
                                                      "deployment", "endpoint")
    return _one(runs, pk=run_id)


def _suite(user, suite_id: int) -> Suite:
    return _one(services.visible_suites(user).select_related("owner"), pk=suite_id)


def _benchmark(user, benchmark_id: int) -> Benchmark:
    return _one(services.visible_benchmarks(user).select_related("owner"), pk=benchmark_id)


def _score(run: EvaluationRun, bv_id: int) -> BenchmarkScore:
    return _one(run.scores.select_related("benchmark_version__benchmark", "benchmark_version__dataset_version"),
                benchmark_version_id=bv_id)


def contamination_badge(state: str) -> dict:
    mark, why = CONTAMINATION.get(state or "unknown", CONTAMINATION["unknown"])
    state = state or "unknown"
    return {"state": state, "label": CONTAMINATION_STATES.get(state, state), "mark": mark, "why": why}


def score_text(score, low=None, high=None, metric: str = "") -> str:
    """62.5 [58.1, 66.7] for a rate (in percent), 1.234 for bits per byte (lower is better)."""
    if score is None:
        return "—"
    if metric == "bits_per_byte" or metric.startswith("judge"):
        return f"{score:.3f}"
    text = f"{100 * score:.1f}"
    if low is not None and high is not None:
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def parameters_text(count) -> str:
    """135M, 1.7B: a model's size as people say it."""
    if not count:
        return "—"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return str(count)


def _mean_text(value) -> str:
    if isinstance(value, dict):  # catalog.dimension_averages' {"naive", "weighted", ...}
        value = value.get("naive")
    return "—" if value is None else f"{100 * value:.1f}"


# ---- home ---------------------------------------------------------------------------------------

def home(request):
    suites = (services.visible_suites(request.user).select_related("owner")
              .annotate(version_count=Count("versions", distinct=True), updated=Max("versions__created_at")))
    runs = services.visible_runs(request.user)
    ranked = dict(runs.filter(job__status=JobStatus.SUCCEEDED).order_by().values_list("suite_version__suite")
                  .annotate(n=Count("id")))
    rows = []
    for suite in suites[:200]:
        latest = suite.versions.order_by("-number").first()
        rows.append({"suite": suite, "latest": latest, "benchmarks": latest.items.count() if latest else 0,
                     "runs": ranked.get(suite.pk, 0)})
    services.ensure_builtins()  # once per data dir: a job makes them (never a migration)
    preparing = Job.objects.filter(kind="benchmark_builtins", status__in=(JobStatus.QUEUED, JobStatus.RUNNING)).exists()
    return render(request, "leaderboards/home.html", {
        "rows": rows, "recent": runs.select_related("job", "suite_version__suite")[:10], "preparing": preparing,
        "benchmark_count": services.visible_benchmarks(request.user).count(),
    })


# ---- the leaderboard ----------------------------------------------------------------------------

SORT_COLUMNS = ("label", "size", "date", "overall", "overall_weighted")


def _board_args(request):
    form = BoardFilterForm(request.user, request.GET or None)
    if form.is_bound:
        form.is_valid()  # an invalid filter shows its error and is left out
    sort = request.GET.get("sort", "overall")[:60]
    descending = request.GET.get("order", "desc") != "asc"
    return form, {**form.filters(), "sort": sort, "descending": descending}


def _board(request, suite) -> tuple[BoardFilterForm, dict, dict]:
    """(filter form, the arguments used, the board); an unknown sort key falls back to overall."""
    form, args = _board_args(request)
    try:
        return form, args, boards.leaderboard(request.user, suite, **args)
    except services.RefusedInput as exc:
        if exc.field != "sort":
            raise
        messages.error(request, f"{exc.field}: {exc.reason}")
        args = {**args, "sort": "overall", "descending": True}
        return form, args, boards.leaderboard(request.user, suite, **args)


def _query(request, **changes) -> str:
    params = request.GET.copy()
    for key, value in changes.items():
        params.pop(key, None)
        if value is not None:
            params.setlist(key, value if isinstance(value, list) else [value])
    params.pop("page", None)
    return "?" + params.urlencode() if params else ""


def _sort_link(request, key: str, current: str, descending: bool) -> dict:
    active = key == current
    # A second click on the active column flips its order; a new column starts best-first
    # (highest score; for a name, A to Z).
    first = "asc" if key == "label" else "desc"
    order = ("asc" if descending else "desc") if active else first
    return {"url": _query(request, sort=key, order=order), "active": active, "arrow": ("▼" if descending else "▲") if active else ""}


def _decorate(data: dict) -> dict:
    """Rows with their cells in column order (templates cannot index a dict by a variable)."""
    benchmarks, dimensions = data["benchmarks"], data["dimensions"]
    for row in data["rows"]:
        scores = row.get("scores") or {}
        row["cells"] = []
        for bv in benchmarks:
            cell = scores.get(bv.pk)
            if cell:
                cell = {**cell, "bv_id": bv.pk, "shown": score_text(cell.get("score"), cell.get("ci_low"), cell.get("ci_high"),
                                                                  cell.get("metric", "")),
                        "badge": contamination_badge(cell.get("contamination"))}
            row["cells"].append(cell)
        row["dimension_cells"] = [_mean_text((row.get("dimensions") or {}).get(d)) for d in dimensions]
        row["size_shown"] = parameters_text(row.get("size"))
        row["kind_label"] = BOARD_KINDS.get(row.get("kind"), row.get("kind"))
        row["overall_shown"] = _mean_text(row.get("overall"))
        row["weighted_shown"] = _mean_text(row.get("overall_weighted"))
    return data


def leaderboard(request, suite_id: int):
    suite = _suite(request.user, suite_id)
    form, args, data = _board(request, suite)
    data = _decorate(data)
    sort, descending = args["sort"], args["descending"]
    columns = {key: _sort_link(request, key, sort, descending) for key in SORT_COLUMNS}
    lower = set(data.get("lower_is_better") or ())
    bench_columns = [{"bv": bv, "lower_is_better": bv.pk in lower, **_sort_link(request, f"bench:{bv.pk}", sort, descending)}
                     for bv in data["benchmarks"]]
    dim_columns = [{"name": d, "label": DIMENSION_LABELS.get(d, d), **_sort_link(request, d, sort, descending)}
                   for d in data["dimensions"]]
    chosen_ids = _ids(request.GET.getlist("runs"))
    radar = None
    if chosen_ids:
        runs = list(services.visible_runs(request.user).filter(pk__in=chosen_ids[:boards.MAX_RADAR_RUNS]))
        try:
            radar = charts.radar_html(boards.radar(request.user, runs)) if runs else None
        except services.RefusedInput as exc:
            messages.error(request, f"{exc.field}: {exc.reason}")
    return render(request, "leaderboards/board.html", {
        "suite": suite, "suite_version": data["suite_version"], "board": data, "form": form, "columns": columns,
        "bench_columns": bench_columns, "dim_columns": dim_columns, "radar": radar, "chosen": chosen_ids,
        "export_query": _query(request, runs=None), "max_radar": boards.MAX_RADAR_RUNS,
        "filtered": any(args[k] for k in ("kind", "owner", "size_max", "since")),
    })


def leaderboard_export(request, suite_id: int, fmt: str):
    suite = _suite(request.user, suite_id)
    if fmt not in ("csv", "json"):
        raise Http404("Export as .csv or .json.")
    _, _, data = _board(request, suite)
    if fmt == "csv":
        response = HttpResponse(boards.leaderboard_csv(data), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="leaderboard-{suite.pk}.csv"'
        return response
    response = JsonResponse(boards.leaderboard_json(data), json_dumps_params={"ensure_ascii": False})
    response["Content-Disposition"] = f'attachment; filename="leaderboard-{suite.pk}.json"'
    return response


def _ids(values) -> list[int]:
    ids = []
    for raw in values:
        for part in str(raw).split(","):
            part = part.strip()
            if part.isdigit() and len(part) < 12 and int(part) not in ids:
                ids.append(int(part))
    return ids


def compare(request):
    ids = _ids([request.GET.get("a", ""), request.GET.get("b", "")] + request.GET.getlist("runs"))
    if len(ids) != 2:
        messages.error(request, gettext("runs: tick exactly two rows to compare"))
        suite = request.GET.get("suite", "")  # the board the form was on (never a URL from the request)
        return redirect("leaderboard", suite_id=int(suite)) if suite.isdigit() and len(suite) < 12 else redirect("leaderboards")
    run_a, run_b = _run(request.user, ids[0]), _run(request.user, ids[1])
    try:
        result = boards.compare(request.user, run_a, run_b)
    except services.RefusedInput as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
        return redirect("evaluation-run", run_id=run_a.pk)
    for item in result["benchmarks"]:
        for side in ("a", "b"):
            cell = item.get(side) or {}
            item[f"{side}_shown"] = score_text(cell.get("score"), cell.get("ci_low"), cell.get("ci_high"), cell.get("metric", ""))
        item["verdict"] = p_value_words(item.get("test"))
        item["test_detail"] = paired_test_detail(item.get("test"))
        item["more"] = item.get("differing_count", 0) > len(item.get("differing") or ())
    return render(request, "leaderboards/compare.html", {"a": run_a, "b": run_b, "result": result})


def p_value_words(test: dict | None) -> str:
    """A paired test's p-value as a sentence a reader can act on."""
    if not test or test.get("p_value") is None:
        return gettext("No test: the two runs share no scored samples of this benchmark.")
    p = float(test["p_value"])
    names = {"mcnemar": gettext("McNemar's exact test"), "paired_bootstrap": gettext("a paired bootstrap")}
    name = names.get(test.get("name"), test.get("name", gettext("the test")))
    if p < 0.001:
        return gettext("p < 0.001 (%(test)s): a clear difference; chance alone would almost never produce it.") % {"test": name}
    if p < 0.01:
        return gettext("p = %(p)s (%(test)s): a significant difference (at the 1%% level).") % {"p": f"{p:.3f}", "test": name}
    if p < 0.05:
        return (gettext("p = %(p)s (%(test)s): a significant difference at the 5%% level, though not a strong one.")
                % {"p": f"{p:.3f}", "test": name})
    return gettext("p = %(p)s (%(test)s): no significant difference; the gap could be chance.") % {"p": f"{p:.2f}", "test": name}


def paired_test_detail(test: dict | None) -> str:
    """What the test counted: the discordant pairs (McNemar) or the mean difference (bootstrap)."""
    if not test:
        return ""
    if test.get("name") == "mcnemar" and test.get("only_a") is not None:
        return (gettext("A right where B is wrong: %(only_a)s; B right where A is wrong: %(only_b)s.")
                % {"only_a": test["only_a"], "only_b": test["only_b"]})
    if test.get("name") == "paired_bootstrap" and test.get("difference") is not None:
        return (gettext("Mean difference A − B: %(difference)s, 95%% interval [%(low)s, %(high)s].")
                % {"difference": f"{test['difference']:+.4f}", "low": f"{test['low']:+.4f}", "high": f"{test['high']:+.4f}"})
    return test.get("reason", "")


# ---- evaluate and the run page ------------------------------------------------------------------

def _evaluate_initial(request) -> dict:
    initial = {}
    target = request.GET.get("target", "")
    if target[:2] in ("v:", "a:", "d:", "e:") and target[2:].isdigit():
        initial["target"] = target
    suite = request.GET.get("suite", "")
    if suite.isdigit():
        latest = services.visible_suite_versions(request.user).filter(suite_id=int(suite)).order_by("-number").first()
        initial["suite"] = str(latest.pk) if latest else None
    else:
        starter = services.builtin_suite()
        if starter is not None:
            initial["suite"] = str(starter.pk)
    return initial


def evaluate(request):
    form = EvaluateForm(request.user, request.POST or None, initial=_evaluate_initial(request))
    if request.method == "POST" and form.is_valid():
        try:
            run = services.submit_evaluation(request.user, **form.submit_kwargs())
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason, EVALUATE_FIELDS)
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, gettext('Evaluation of %(target_label)s on %(suite_version)s queued.') % {"target_label": run.target_label, "suite_version": run.suite_version})
            return redirect("evaluation-run", run_id=run.pk)
    return render(request, "leaderboards/evaluate.html", {"form": form}, status=422 if form.errors else 200)


def run_list(request):
    runs = services.visible_runs(request.user).select_related("job", "job__owner", "suite_version__suite", "model_version__model")
    page = Paginator(runs, RUNS_PAGE).get_page(request.GET.get("page"))
    return render(request, "leaderboards/run_list.html", {"page": page})


def _items(suite_version: SuiteVersion):
    return list(suite_version.items.select_related("benchmark_version__benchmark", "benchmark_version__dataset_version"))


def _spec_names(run: EvaluationRun, items) -> list[str]:
    """The name each suite item runs under in the job's spec (its metrics are "<name>/<metric>"):
    the run's settings map each name to its benchmark version."""
    by_version = {bv_id: name for name, bv_id in ((run.settings or {}).get("benchmarks") or {}).items()}
    return [by_version.get(item.benchmark_version_id, item.benchmark_version.benchmark.name) for item in items]


def _duration(seconds) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def benchmark_progress(run: EvaluationRun) -> list[dict]:
    """Per benchmark of the run: samples done of the total, the running accuracy with its 95%
    interval and an ETA, from the job's live metrics ("<name>/<metric>" at step = samples done)."""
    from workers.tasks import catalog

    job = run.job
    items = _items(run.suite_version)
    names = _spec_names(run, items)
    # Only the newest point of each metric (this runs every few seconds while a page is open).
    tops = job.metrics.order_by().values("name").annotate(top=Max("step"))
    newest = Q(pk__in=[])
    for top in tops:
        newest |= Q(name=top["name"], step=top["top"])
    latest: dict[str, tuple[int, float, str, tuple]] = {}
    for name, step, value in job.metrics.filter(newest).values_list("name", "step", "value"):
        bench, _, metric = name.rpartition("/")
        if bench:
            latest[bench] = (step, value, metric, ())
    stored = {s.benchmark_version_id: s for s in run.scores.all()}  # a finished run's final numbers
    limit = (run.settings or {}).get("max_samples") or 0
    rows, done_total = [], 0
    for item, name in zip(items, names):
        bv = item.benchmark_version
        total = bv.dataset_version.rows if not limit else min(limit, bv.dataset_version.rows)
        done, value, metric, interval = latest.get(name, (0, None, "", ()))
        if bv.pk in stored:
            score = stored[bv.pk]
            done, value, metric, total, interval = score.n, score.score, score.metric, score.n, (score.ci_low, score.ci_high)
        elif value is not None and metric in ("accuracy", "pass@1") and done:
            interval = catalog.wilson(round(value * done), done)
        done_total += done
        row = {"bv": bv, "name": name, "done": done, "total": total, "fraction": done / total if total else 0,
               "metric": metric, "shown": "—" if value is None else score_text(value, *(interval or (None, None)), metric),
               "eta": ""}
        rows.append(row)
    # One pace for the whole run (samples per second so far): each benchmark's ETA counts the
    # samples still to do before it finishes.
    elapsed = (timezone.now() - job.started_at).total_seconds() if job.started_at else 0
    pace = done_total / elapsed if elapsed > 0 and done_total else None
    remaining = 0
    for row in rows:
        remaining += max(0, row["total"] - row["done"])
        if job.is_finished:
            row["state"] = "done" if row["done"] >= row["total"] and row["total"] else job.status.lower()
        elif row["done"] >= row["total"] and row["total"]:
            row["state"] = "done"
        else:
            row["state"] = "running" if row["done"] else "waiting"
            if pace:
                row["eta"] = _duration(remaining / pace)
    for row in rows:
        label = PROGRESS_STATES.get(row["state"]) or JobStatus(row["state"].upper()).label
        row["state_label"] = label if row["state"] in PROGRESS_STATES else str(label).lower()
    return rows


def run_scores(run: EvaluationRun, lineage=None) -> list[dict]:
    """The run's scores for a table: each with its shown text and contamination badge."""
    if lineage is None:
        lineage = contamination.training_lineage(run.model_version)
    rows = []
    for s in run.scores.select_related("benchmark_version__benchmark", "benchmark_version__dataset_version"):
        state = contamination.flag_from(lineage, s.benchmark_version.dataset_version.sha256)
        rows.append({"score": s, "shown": score_text(s.score, s.ci_low, s.ci_high, s.metric), "badge": contamination_badge(state),
                     "agent": agent_metrics_text(s.extra)})
    return rows


AGENT_METRICS = (("tool_call_accuracy", gettext_lazy("tool calls")), ("argument_accuracy", gettext_lazy("arguments")))
# A benchmark's state in a run's progress table (the CSS class is the state itself).
PROGRESS_STATES = {"done": pgettext_lazy("benchmark progress", "done"),
                   "running": pgettext_lazy("benchmark progress", "running"),
                   "waiting": pgettext_lazy("benchmark progress", "waiting")}


def agent_metrics_text(extra: dict) -> str:
    """An agent benchmark's other accuracies (workers/core/evaluation/tool_round.py) for the
    score's row: "tool calls 96.0 [90.2, 98.4] · arguments 71.0 [61.5, 78.9]"; "" otherwise."""
    parts = [f"{label} {score_text(extra[key], extra.get(f'{key}_low'), extra.get(f'{key}_high'))}"
             for key, label in AGENT_METRICS if isinstance((extra or {}).get(key), (int, float))]
    return " · ".join(parts)


def version_scores(user, versions, limit: int = 50) -> dict:
    """For a model card: the latest finished run per (version, suite) the user may see, with its
    scores, and the runs still queued or running. {"finished": [...], "active": [...]}"""
    runs = (services.visible_runs(user).filter(model_version__in=versions)
            .select_related("job", "suite_version__suite", "model_version__model").order_by("-created_at", "-id"))
    finished, active, seen, lineages = [], [], set(), {}
    for run in runs.filter(job__status=JobStatus.SUCCEEDED)[:500]:
        key = (run.model_version_id, run.suite_version.suite_id)
        if key in seen or len(finished) >= limit:
            continue
        seen.add(key)
        if run.model_version_id not in lineages:
            lineages[run.model_version_id] = contamination.training_lineage(run.model_version)
        finished.append({"run": run, "scores": run_scores(run, lineages[run.model_version_id])})
    active = list(runs.filter(job__status__in=(JobStatus.QUEUED, JobStatus.RUNNING))[:20])
    return {"finished": finished, "active": active}


def _run_context(request, run: EvaluationRun) -> dict:
    job = run.job
    return {"run": run, "job": job, "progress": benchmark_progress(run),
            "scores": run_scores(run) if job.status == JobStatus.SUCCEEDED else [],
            "board_url": reverse("leaderboard", args=[run.suite_version.suite_id])}


def run_detail(request, run_id: int):
    run = _run(request.user, run_id)
    job = run.job
    others = []
    if job.status == JobStatus.SUCCEEDED:
        others = (services.visible_runs(request.user).filter(suite_version__suite=run.suite_version.suite_id,
                                                            job__status=JobStatus.SUCCEEDED)
                  .exclude(pk=run.pk).select_related("suite_version")[:100])
    return render(request, "leaderboards/run_detail.html", {
        **_run_context(request, run), "snapshot": job_snapshot(job), "can_manage": can_manage(request.user, job),
        "others": others, "items": _items(run.suite_version),
    })


def run_progress(request, run_id: int):
    run = _run(request.user, run_id)
    return render(request, "leaderboards/_run_progress.html", {**_run_context(request, run), "oob": True})


def sample_list(request, run_id: int, bv_id: int):
    run = _run(request.user, run_id)
    score = _score(run, bv_id)
    samples = score.samples.all()
    correct = request.GET.get("correct", "")
    if correct in ("1", "0"):
        samples = samples.filter(correct=correct == "1")
    page = Paginator(samples.only("index", "correct", "prompt", "output", "extracted", "reference"), SAMPLES_PAGE).get_page(request.GET.get("page"))
    counts = {"all": score.samples.count(), "right": score.samples.filter(correct=True).count(),
              "wrong": score.samples.filter(correct=False).count()}
    return render(request, "leaderboards/samples.html", {
        "run": run, "score": score, "bv": score.benchmark_version, "page": page, "correct": correct, "counts": counts,
        "shown": score_text(score.score, score.ci_low, score.ci_high, score.metric),
        "query": urlencode({"correct": correct}) if correct else "",
    })


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def option_rows(sample: SampleResult) -> list[dict]:
    """Each option's log-likelihood and normalised score (multiple choice), the chosen one marked."""
    detail = sample.detail or {}
    logprobs, scores = detail.get("option_logprobs") or [], detail.get("option_scores") or []
    if not isinstance(logprobs, list) or not isinstance(scores, list):
        return []
    best = max(range(len(scores)), key=lambda i: scores[i]) if scores else None
    return [{"letter": LETTERS[i] if i < len(LETTERS) else str(i), "logprob": lp,
             "score": scores[i] if i < len(scores) else None, "chosen": i == best,
             "reference": (LETTERS[i] if i < len(LETTERS) else "") == sample.reference}
            for i, lp in enumerate(logprobs[:len(LETTERS)])]


def _public(value):
    """A detail value (a sandbox's result, a judge's reason) with server folders replaced."""
    from workers.tasks import catalog

    if isinstance(value, dict):
        return {k: _public(v) for k, v in catalog.public_value(value).items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return catalog.public_text(catalog.public_value(value)) if isinstance(value, str) else value


def sample_detail(request, run_id: int, bv_id: int, index: int):
    run = _run(request.user, run_id)
    score = _score(run, bv_id)
    sample = _one(score.samples.all(), index=index)
    shown = {k: _public(v) for k, v in (sample.detail or {}).items() if k not in ("option_logprobs", "option_scores")}
    return render(request, "leaderboards/sample_detail.html", {
        "run": run, "score": score, "bv": score.benchmark_version, "sample": sample, "options": option_rows(sample),
        "detail": shown, "previous": score.samples.filter(index__lt=index).order_by("-index").values_list("index", flat=True).first(),
        "next": score.samples.filter(index__gt=index).order_by("index").values_list("index", flat=True).first(),
    })


# ---- benchmarks ---------------------------------------------------------------------------------

def benchmark_list(request):
    benchmarks = (services.visible_benchmarks(request.user).select_related("owner")
                  .annotate(version_count=Count("versions", distinct=True), updated=Max("versions__created_at")))
    return render(request, "leaderboards/benchmark_list.html", {"benchmarks": benchmarks[:500]})


def benchmark_detail(request, benchmark_id: int):
    benchmark = _benchmark(request.user, benchmark_id)
    versions = list(benchmark.versions.select_related("dataset_version__dataset", "fewshot_version__dataset", "created_by")
                    .annotate(score_count=Count("scores")))
    used = [v.dataset_version_id for v in versions] + [v.fewshot_version_id for v in versions if v.fewshot_version_id]
    # Built-ins' data belongs to the system user: link a dataset version only where its page opens.
    visible_data = set(visible_dataset_versions(request.user).filter(pk__in=used).values_list("pk", flat=True))
    suites = services.visible_suites(request.user).filter(versions__items__benchmark_version__benchmark=benchmark).distinct()
    return render(request, "leaderboards/benchmark_detail.html", {
        "benchmark": benchmark, "versions": versions, "visible_data": visible_data, "suites": suites,
        "can_manage": can_manage(request.user, benchmark),
    })


def benchmark_new(request):
    initial = {}
    source = request.GET.get("from", "")
    if source.isdigit():  # "new from this one": a copy of a version the user may see
        version = services.visible_benchmark_versions(request.user).select_related("benchmark").filter(pk=int(source)).first()
        if version is not None:
            initial = benchmark_initial(version)
    form = BenchmarkForm(request.user, request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.create_benchmark(request.user, name=form.cleaned_data["name"], **form.service_kwargs())
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            messages.success(request, gettext('Benchmark %(version)s saved (hash %(short_hash)s).') % {"version": version, "short_hash": version.short_hash})
            return redirect("benchmark-detail", benchmark_id=version.benchmark_id)
    return render(request, "leaderboards/benchmark_form.html", {"form": form, "benchmark": None},
                  status=422 if form.errors else 200)


def benchmark_edit(request, benchmark_id: int):
    benchmark = _benchmark(request.user, benchmark_id)
    if not can_manage(request.user, benchmark):
        if request.method == "POST":
            return HttpResponse(gettext("only the benchmark's owner or staff can change it"), status=403,
                                content_type="text/plain; charset=utf-8")
        messages.error(request, gettext("Only the benchmark's owner can change it; make your own from it instead."))
        return redirect("benchmark-detail", benchmark_id=benchmark.pk)
    latest = benchmark.versions.order_by("-number").first()
    form = BenchmarkForm(request.user, request.POST or None, initial=benchmark_initial(latest) if latest else {}, creating=False)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.edit_benchmark(request.user, benchmark, **form.service_kwargs())
        except PermissionDenied as exc:
            return HttpResponse(str(exc), status=403, content_type="text/plain; charset=utf-8")
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            if latest is not None and version.pk == latest.pk:
                messages.success(request, gettext('Nothing that changes the version hash changed: %(version)s stays current.') % {"version": version})
            else:
                messages.success(request, gettext('Saved as %(version)s (hash %(short_hash)s); older scores keep their version.') % {"version": version, "short_hash": version.short_hash})
            return redirect("benchmark-detail", benchmark_id=benchmark.pk)
    return render(request, "leaderboards/benchmark_form.html", {"form": form, "benchmark": benchmark, "latest": latest},
                  status=422 if form.errors else 200)


# ---- suites -------------------------------------------------------------------------------------

def _offered_versions(user, keep=()):
    """The latest version of every visible benchmark, plus the versions a suite already holds."""
    visible = services.visible_benchmark_versions(user)
    tops = {r["benchmark"]: r["top"] for r in visible.order_by().values("benchmark").annotate(top=Max("number"))}
    ids = {pk for pk, benchmark, number in visible.values_list("pk", "benchmark_id", "number") if tops.get(benchmark) == number}
    ids |= {bv.pk for bv in keep}
    return BenchmarkVersion.objects.filter(pk__in=ids).select_related("benchmark").order_by("benchmark__name", "-number")


def suite_list(request):
    suites = (services.visible_suites(request.user).select_related("owner")
              .annotate(version_count=Count("versions", distinct=True), updated=Max("versions__created_at")))
    return render(request, "leaderboards/suite_list.html", {"suites": suites[:500]})


def suite_detail(request, suite_id: int):
    suite = _suite(request.user, suite_id)
    versions = list(suite.versions.select_related("created_by").prefetch_related("items__benchmark_version__benchmark"))
    return render(request, "leaderboards/suite_detail.html", {
        "suite": suite, "versions": versions, "can_manage": can_manage(request.user, suite),
        "runs": services.visible_runs(request.user).filter(suite_version__suite=suite).select_related("job", "suite_version")[:20],
    })


def suite_new(request):
    offered = _offered_versions(request.user)
    form = SuiteForm(request.user, offered, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.create_suite(request.user, name=form.cleaned_data["name"], items=form.items(),
                                            description=form.cleaned_data["description"])
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            messages.success(request, gettext('Suite %(version)s saved.') % {"version": version})
            return redirect("suite-detail", suite_id=version.suite_id)
    return render(request, "leaderboards/suite_form.html", {"form": form, "suite": None}, status=422 if form.errors else 200)


def suite_edit(request, suite_id: int):
    suite = _suite(request.user, suite_id)
    if not can_manage(request.user, suite):
        if request.method == "POST":
            return HttpResponse(gettext("only the suite's owner or staff can change it"), status=403,
                                content_type="text/plain; charset=utf-8")
        messages.error(request, gettext("Only the suite's owner can change it."))
        return redirect("suite-detail", suite_id=suite.pk)
    latest = suite.versions.order_by("-number").first()
    current = list(latest.items.select_related("benchmark_version__benchmark")) if latest else []
    offered = _offered_versions(request.user, keep=[i.benchmark_version for i in current])
    initial = {"description": suite.description, **{f"w_{i.benchmark_version_id}": i.weight for i in current}}
    form = SuiteForm(request.user, offered, request.POST or None, initial=initial, creating=False)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.edit_suite(request.user, suite, form.items())
        except PermissionDenied as exc:
            return HttpResponse(str(exc), status=403, content_type="text/plain; charset=utf-8")
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            messages.success(request, gettext('Suite saved as %(version)s.') % {"version": version})
            return redirect("suite-detail", suite_id=suite.pk)
    return render(request, "leaderboards/suite_form.html", {"form": form, "suite": suite, "latest": latest},
                  status=422 if form.errors else 200)


# ---- OpenCompass import -------------------------------------------------------------------------

def _visible_imports(user):
    return visible_to(ImportedSummary.objects.select_related("owner"), user)


def import_summary(request):
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        from apps.leaderboards import opencompass

        try:
            summary = opencompass.import_summary(request.user, form.cleaned_data["summary"])
        except services.RefusedInput as exc:
            form.add_error("summary", f"{exc.field}: {exc.reason}")
        else:
            messages.success(request, gettext('Imported %(count)s scores from %(filename)s.') % {"count": summary.scores.count(), "filename": summary.filename})
            return redirect("import-detail", summary_id=summary.pk)
    imports = _visible_imports(request.user).annotate(score_count=Count("scores"))[:50]
    return render(request, "leaderboards/import.html", {"form": form, "imports": imports}, status=422 if form.errors else 200)


def import_detail(request, summary_id: int):
    summary = _one(_visible_imports(request.user), pk=summary_id)
    scores = list(summary.scores.all()[:5000])
    models = sorted({s.model_name for s in scores})
    table: dict[tuple, dict] = {}
    for s in scores:
        row = table.setdefault((s.dataset, s.version, s.metric, s.mode), {"dataset": s.dataset, "version": s.version,
                                                                          "metric": s.metric, "mode": s.mode, "values": {}})
        row["values"][s.model_name] = s.value
    rows = [{**row, "cells": [row["values"].get(m) for m in models]} for row in table.values()]
    return render(request, "leaderboards/import_detail.html", {"summary": summary, "models": models, "rows": rows})


# ---- arena --------------------------------------------------------------------------------------

def arena(request):
    from apps.leaderboards import arena as arenas

    snapshot = arenas.latest_ratings(request.user)
    shown = arenas.visible_ratings(request.user, snapshot) if snapshot is not None else None
    heatmap = charts.win_rate_html(shown["ratings"], shown["win_rate"]) if shown and shown["ratings"] else None
    pending = (Job.objects.filter(owner=request.user, kind="arena_ratings", status__in=(JobStatus.QUEUED, JobStatus.RUNNING))
               .order_by("-id").first())
    return render(request, "leaderboards/arena.html", {
        "ratings": shown, "heatmap": heatmap, "pending": pending, "my_votes": arenas.my_votes(request.user).count(),
        "rated_votes": arenas.rated_votes(request.user).count(),
    })


@require_POST
def arena_recompute(request):
    from apps.leaderboards import arena as arenas

    try:
        job = arenas.start_ratings(request.user)
    except services.RefusedInput as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
    else:
        messages.success(request, gettext('Ratings job #%(pk)s queued: the table updates when it finishes.') % {"pk": job.pk})
    return redirect("arena")
