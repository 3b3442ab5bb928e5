"""The only place that changes the leaderboards: benchmarks and suites as versioned rows,
evaluation runs as jobs, and the built-in benchmarks' job.

- A benchmark version is a dataset version + the core's definition (checked by the core through
  the task catalog) + its version hash. Editing makes a new version only when the hash changes
  (the name, title, description and dimension are labels: they change in place).
- A run's parameters are built from ids the caller may see: the model version's folder, each
  benchmark's dataset version file, and one prediction cache shared by every run
  (EVALUATION_DIR/cache), so a re-run, a resumed run or a re-scored benchmark reuses the model's
  outputs. The same request twice is one run (`request_key`).
- Built-ins belong to a system user, are readable by every signed-in user, and only staff may
  change them (they are not the user's own, and staff manage everything).

Refusals raise RefusedInput(field, reason) and store nothing; what the caller may not see is
Http404; a teammate changing someone else's object is PermissionDenied.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import urllib.parse
import uuid
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.http import Http404
from django.utils.translation import gettext

from apps.accounts.system import SYSTEM_USERNAME, builtin_owner, system_user  # noqa: F401  (re-exported for the tests and views)
from apps.accounts.visibility import PermissionDenied, get_visible_or_404, require_manager, visible_to
from apps.datasets.models import Dataset, DatasetVersion, DatasetVersionUse
from apps.jobs import services as jobs
from apps.jobs.models import Job, JobStatus
from apps.leaderboards.models import (
    Benchmark,
    BenchmarkVersion,
    EvaluationRun,
    ExternalEndpoint,
    RunTarget,
    Suite,
    SuiteItem,
    SuiteVersion,
)
from apps.registry.models import ModelAlias, ModelVersion, VersionKind, VersionUse
from apps.studio.labels import choice_word
from workers.tasks import catalog

__all__ = ["RefusedInput", "PermissionDenied", "visible_benchmarks", "visible_suites", "visible_runs", "create_benchmark",
           "edit_benchmark", "create_suite", "edit_suite", "submit_evaluation", "builtin_suite", "ensure_builtins"]

STARTER_SUITE = "starter"
AGENT_SUITE = "agent"
# The built-in suites' descriptions (stored in English; the pages show them translated, labels.py).
BUILTIN_SUITES = {STARTER_SUITE: "Every built-in benchmark, each at weight 1.",
                  AGENT_SUITE: "The built-in agent benchmarks (calculator tool use)."}
MAX_SUITE_ITEMS = 64
MAX_FEWSHOT = 32
MAX_DESCRIPTION = 20_000
MAX_WEIGHT = 1e6
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
REUSABLE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
# The fields a few-shot row keeps (what the template and the answer template can show).
FEWSHOT_FIELDS = {"multiple_choice": ("question", "choices", "answer", "subject"), "qa": ("question", "answer")}
# What each paradigm's score is, and which metrics are better when lower (never averaged with accuracies).
PARADIGM_METRICS = {"likelihood": "accuracy", "generation": "accuracy", "code": "pass@1",
                    "perplexity": "bits_per_byte", "judge": "judge_score"}
LOWER_IS_BETTER = ("bits_per_byte",)
_SUITE_NAME = re.compile(r"^\w[\w .\-]{0,63}$")


class RefusedInput(jobs.InvalidParams):
    """A refused input; `.field` names it and `.reason` says why. Nothing was stored."""


class _Keep:
    """An edit argument left out: the latest version's value stays."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


# ---- the system user and who sees what --------------------------------------------------------

def _visible_with_builtins(queryset, user, prefix: str = ""):
    # Every listing already includes the built-ins (visible_to); kept as the one place this
    # module says so.
    return visible_to(queryset, user, f"{prefix}owner")


def visible_benchmarks(user):
    """Own, teammates' and the built-ins (readable by every signed-in user)."""
    return _visible_with_builtins(Benchmark.objects.select_related("owner"), user)


def visible_suites(user):
    return _visible_with_builtins(Suite.objects.select_related("owner"), user)


def visible_runs(user):
    return visible_to(EvaluationRun.objects.select_related("job", "job__owner", "suite_version__suite", "model_version__model"),
                      user, "job__owner")


def visible_benchmark_versions(user):
    return _visible_with_builtins(BenchmarkVersion.objects.select_related("benchmark", "dataset_version"), user,
                                  "benchmark__")


def visible_suite_versions(user):
    return _visible_with_builtins(SuiteVersion.objects.select_related("suite"), user, "suite__")


def _visible_or_404(queryset, **lookup):
    found = queryset.filter(**lookup).first()
    if found is None:
        raise Http404("No such object, or you may not see it.")
    return found


def latest_version(benchmark: Benchmark) -> BenchmarkVersion | None:
    return benchmark.versions.order_by("-number").first()


def metric_of(definition: dict) -> str:
    return PARADIGM_METRICS.get((definition.get("scorer") or {}).get("paradigm"), "score")


# ---- benchmarks ------------------------------------------------------------------------------

def _text(field: str, value, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise RefusedInput(field, gettext("must be text of at most %(limit)s characters")
                                          % {"limit": format(limit, ",")})
    return value.strip()


def _check(raw: dict, dataset_version: DatasetVersion) -> dict:
    try:
        return catalog.check_benchmark(raw, dataset_version.path)
    except catalog.InvalidParams as exc:
        raise RefusedInput(exc.field, exc.reason) from None


def _fewshot_rows(version: DatasetVersion | None, indices, shape: str) -> list[dict]:
    """The few-shot rows, copied by index (0 = the version's first row) from `version`: fixed
    rows, never re-sampled; only the fields a prompt can show are kept."""
    indices = list(indices or ())
    if version is None:
        if indices:
            raise RefusedInput("fewshot_version", gettext("choose the dataset version the few-shot rows come from"))
        return []
    if not indices:
        raise RefusedInput("fewshot_rows", gettext("name at least one row of %(version)s (or choose no few-shot "
                                                   "version)") % {"version": version})
    if len(indices) > MAX_FEWSHOT:
        raise RefusedInput("fewshot_rows", gettext("at most %(max)s rows, got %(count)s")
                                                   % {"max": MAX_FEWSHOT, "count": len(indices)})
    for i, index in enumerate(indices):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < version.rows:
            raise RefusedInput(f"fewshot_rows[{i}]", gettext("must be a row number from 0 to %(last)s, got "
                                                             "%(index)s")
                                                             % {"last": version.rows - 1,
                                                                "index": format(repr(index), ".40")})
    if len(set(indices)) != len(indices):
        raise RefusedInput("fewshot_rows", gettext("names a row twice"))
    if shape not in FEWSHOT_FIELDS:
        raise RefusedInput("fewshot_version", gettext("a %(shape)s benchmark has no few-shot rows")
                                                      % {"shape": shape})
    if version.canonical != shape:
        raise RefusedInput("fewshot_version",
                           gettext("%(version)s holds %(canonical)s records; a %(shape)s benchmark needs %(shape)s "
                                   "rows") % {"version": version, "canonical": version.canonical, "shape": shape})
    wanted, last = set(indices), max(indices)
    found: dict[int, dict] = {}
    try:
        with open(version.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh):
                if number in wanted:
                    record = json.loads(line)
                    found[number] = {k: record[k] for k in FEWSHOT_FIELDS[shape] if k in record}
                if number >= last:
                    break
    except (OSError, ValueError):
        raise RefusedInput("fewshot_version", gettext("the rows of %(version)s cannot be read")
                                                      % {"version": version}) from None
    missing = [i for i in indices if i not in found]
    if missing:
        raise RefusedInput("fewshot_rows", gettext("%(version)s has no row %(missing)s")
                                                   % {"version": version, "missing": missing[0]})
    return [found[i] for i in indices]


def _definition(*, name: str, dataset_version: DatasetVersion, shape, template, answer_template, fewshot_version,
                fewshot_rows, fewshot_separator, scorer, dimension, chat, tools, chat_template) -> dict:
    """The definition as the core completes it (defaults filled in), with its few-shot rows."""
    raw = {"name": name, "shape": shape, "answer_template": answer_template, "fewshot_separator": fewshot_separator,
           "scorer": scorer, "dimension": dimension}
    if template:  # empty: the core's default template for the shape
        raw["template"] = template
    if chat:
        raw["chat"] = chat
    if tools:
        raw["tools"] = tools
    if chat_template:
        raw["chat_template"] = chat_template
    checked = _check(raw, dataset_version)
    if dataset_version.canonical != checked["shape"]:
        raise RefusedInput("dataset_version", gettext("%(dataset_version)s holds %(canonical)s records; a %(shape)s "
                                                      "benchmark needs a %(shape)s version")
                                                      % {"dataset_version": dataset_version,
                                                         "canonical": dataset_version.canonical,
                                                         "shape": checked['shape']})
    rows = _fewshot_rows(fewshot_version, fewshot_rows, checked["shape"])
    if rows:
        checked = _check({**raw, "fewshot": rows}, dataset_version)
    return checked


def _visible_dataset(user, version: DatasetVersion | None, field: str) -> DatasetVersion | None:
    if version is None:
        return None
    if not isinstance(version, DatasetVersion):
        raise RefusedInput(field, gettext("must be a dataset version"))
    return get_visible_or_404(DatasetVersion.objects.select_related("dataset"), user, "dataset__owner", pk=version.pk)


def _add_version(benchmark: Benchmark, user, dataset_version, fewshot_version, fewshot_rows, definition) -> BenchmarkVersion:
    number = (benchmark.versions.aggregate(m=Max("number"))["m"] or 0) + 1
    return BenchmarkVersion.objects.create(
        benchmark=benchmark, number=number, dataset_version=dataset_version, fewshot_version=fewshot_version,
        fewshot_rows=list(fewshot_rows or ()) if fewshot_version else [], definition=definition,
        version_hash=catalog.benchmark_hash(definition, dataset_version.sha256), created_by=user)


def create_benchmark(user, *, name, dataset_version, shape, template="", answer_template=" {answer}", fewshot_version=None,
                     fewshot_rows=(), fewshot_separator="\n\n", scorer: dict, dimension, chat=False, tools=None,
                     chat_template="", title="", description="") -> BenchmarkVersion:
    name = name.strip() if isinstance(name, str) else name
    title, description = _text("title", title, 200), _text("description", description, MAX_DESCRIPTION)
    dataset_version = _visible_dataset(user, dataset_version, "dataset_version")
    if dataset_version is None:
        raise RefusedInput("dataset_version", gettext("choose the dataset version the benchmark is made of"))
    fewshot_version = _visible_dataset(user, fewshot_version, "fewshot_version")
    definition = _definition(name=name, dataset_version=dataset_version, shape=shape, template=template,
                             answer_template=answer_template, fewshot_version=fewshot_version, fewshot_rows=fewshot_rows,
                             fewshot_separator=fewshot_separator, scorer=scorer, dimension=dimension, chat=chat,
                             tools=tools, chat_template=chat_template)
    try:
        with transaction.atomic():
            if Benchmark.objects.filter(owner=user, name=definition["name"]).exists():
                raise RefusedInput("name", gettext("you already have a benchmark named %(name)s; edit it instead")
                                                   % {"name": repr(definition['name'])})
            benchmark = Benchmark.objects.create(owner=user, name=definition["name"], title=title, description=description,
                                                 dimension=definition["dimension"])
            return _add_version(benchmark, user, dataset_version, fewshot_version, fewshot_rows, definition)
    except IntegrityError:  # created at the same moment by another request
        raise RefusedInput("name", gettext("you already have a benchmark named %(name)s; edit it instead")
                                           % {"name": repr(definition['name'])}) from None


def edit_benchmark(user, benchmark: Benchmark, *, dataset_version=KEEP, shape=KEEP, template=KEEP, answer_template=KEEP,
                   fewshot_version=KEEP, fewshot_rows=KEEP, fewshot_separator=KEEP, scorer=KEEP, dimension=KEEP,
                   chat=KEEP, tools=KEEP, chat_template=KEEP, title=KEEP, description=KEEP) -> BenchmarkVersion:
    """A new version when the version hash changes (data, template, few-shot rows, scorer); else
    the latest, with the labels (title, description, dimension) updated in place. A field left
    out keeps the latest version's value."""
    benchmark = _visible_or_404(visible_benchmarks(user), pk=benchmark.pk)
    require_manager(user, benchmark, "benchmark")
    latest = latest_version(benchmark)
    current = latest.definition

    def keep(value, old):
        return old if value is KEEP else value

    title = _text("title", keep(title, benchmark.title), 200)
    description = _text("description", keep(description, benchmark.description), MAX_DESCRIPTION)
    dataset_version = keep(dataset_version, latest.dataset_version)
    if dataset_version != latest.dataset_version:
        dataset_version = _visible_dataset(user, dataset_version, "dataset_version")
    fewshot_version = keep(fewshot_version, latest.fewshot_version)
    if fewshot_version is not None and fewshot_version != latest.fewshot_version:
        fewshot_version = _visible_dataset(user, fewshot_version, "fewshot_version")
    fewshot_rows = keep(fewshot_rows, latest.fewshot_rows)
    definition = _definition(
        name=benchmark.name, dataset_version=dataset_version, shape=keep(shape, current["shape"]),
        template=keep(template, current["template"]), answer_template=keep(answer_template, current["answer_template"]),
        fewshot_version=fewshot_version, fewshot_rows=fewshot_rows if fewshot_version else (),
        fewshot_separator=keep(fewshot_separator, current["fewshot_separator"]), scorer=keep(scorer, current["scorer"]),
        dimension=keep(dimension, benchmark.dimension), chat=keep(chat, current.get("chat", False)),
        tools=keep(tools, current.get("tools") or []), chat_template=keep(chat_template, current.get("chat_template", "")))
    with transaction.atomic():
        benchmark = Benchmark.objects.select_for_update().get(pk=benchmark.pk)
        Benchmark.objects.filter(pk=benchmark.pk).update(title=title, description=description,
                                                         dimension=definition["dimension"])
        latest = latest_version(benchmark)
        if catalog.benchmark_hash(definition, dataset_version.sha256) == latest.version_hash:
            return latest
        return _add_version(benchmark, user, dataset_version, fewshot_version, fewshot_rows, definition)


# ---- suites ----------------------------------------------------------------------------------

def _suite_items(user, items) -> list[tuple[BenchmarkVersion, float]]:
    if not isinstance(items, (list, tuple)) or not items:
        raise RefusedInput("items", gettext("list at least one benchmark version with its weight"))
    if len(items) > MAX_SUITE_ITEMS:
        raise RefusedInput("items", gettext("at most %(max)s benchmarks, got %(count)s")
                                            % {"max": MAX_SUITE_ITEMS, "count": len(items)})
    visible = visible_benchmark_versions(user)
    checked, seen = [], set()
    for i, item in enumerate(items):
        try:
            version, weight = item
        except (TypeError, ValueError):
            raise RefusedInput(f"items[{i}]", gettext("must be a (benchmark version, weight) pair")) from None
        if not isinstance(version, BenchmarkVersion):
            raise RefusedInput(f"items[{i}]", gettext("must name a benchmark version"))
        version = _visible_or_404(visible, pk=version.pk)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or not 0 < weight <= MAX_WEIGHT:
            raise RefusedInput(f"items[{i}].weight", gettext("must be a number above 0 and at most %(max)s, got "
                                                             "%(weight)s")
                                                             % {"max": format(MAX_WEIGHT, "g"),
                                                                "weight": format(repr(weight), ".40")})
        if version.pk in seen:
            raise RefusedInput(f"items[{i}]", gettext("lists %(version)s twice") % {"version": version})
        seen.add(version.pk)
        checked.append((version, float(weight)))
    return checked


def _add_suite_version(suite: Suite, user, items) -> SuiteVersion:
    number = (suite.versions.aggregate(m=Max("number"))["m"] or 0) + 1
    version = SuiteVersion.objects.create(suite=suite, number=number, created_by=user)
    SuiteItem.objects.bulk_create([SuiteItem(suite_version=version, benchmark_version=bv, weight=w) for bv, w in items])
    return version


def _same_items(version: SuiteVersion | None, items) -> bool:
    if version is None:
        return False
    return sorted((i.benchmark_version_id, i.weight) for i in version.items.all()) == sorted((bv.pk, w) for bv, w in items)


def create_suite(user, *, name, items, description="") -> SuiteVersion:
    name = name.strip() if isinstance(name, str) else ""
    if not _SUITE_NAME.match(name):
        raise RefusedInput("name", gettext("must be 1-64 letters, digits, spaces, '.', '-' or '_'"))
    description = _text("description", description, MAX_DESCRIPTION)
    items = _suite_items(user, items)
    try:
        with transaction.atomic():
            if Suite.objects.filter(owner=user, name=name).exists():
                raise RefusedInput("name", gettext("you already have a suite named %(name)s; edit it instead")
                                                   % {"name": repr(name)})
            suite = Suite.objects.create(owner=user, name=name, description=description)
            return _add_suite_version(suite, user, items)
    except IntegrityError:
        raise RefusedInput("name", gettext("you already have a suite named %(name)s; edit it instead")
                                           % {"name": repr(name)}) from None


def edit_suite(user, suite: Suite, items, description=None) -> SuiteVersion:
    """A new suite version when the items or weights change; else the latest."""
    suite = _visible_or_404(visible_suites(user), pk=suite.pk)
    require_manager(user, suite, "suite")
    items = _suite_items(user, items)
    with transaction.atomic():
        suite = Suite.objects.select_for_update().get(pk=suite.pk)
        if description is not None:
            Suite.objects.filter(pk=suite.pk).update(description=_text("description", description, MAX_DESCRIPTION))
        latest = suite.versions.order_by("-number").first()
        if _same_items(latest, items):
            return latest
        return _add_suite_version(suite, user, items)


def latest_suite_version(suite: Suite) -> SuiteVersion | None:
    return suite.versions.order_by("-number").first()


def builtin_suite() -> SuiteVersion | None:
    """The latest version of the system's "starter" suite (every built-in at weight 1)."""
    return (SuiteVersion.objects.filter(builtin_owner("suite__owner"), suite__name=STARTER_SUITE)
            .select_related("suite").order_by("-number").first())


# ---- evaluation runs -------------------------------------------------------------------------

def _normalised_url(url: str) -> str:
    parts = urllib.parse.urlsplit((url or "").strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def endpoint_allowed(endpoint: ExternalEndpoint) -> bool:
    return _normalised_url(endpoint.base_url) in {_normalised_url(u) for u in settings.EVAL_ENDPOINT_ALLOWLIST if u}


def _endpoint(endpoint, field: str) -> ExternalEndpoint:
    found = ExternalEndpoint.objects.filter(pk=getattr(endpoint, "pk", None)).first()
    if found is None:
        raise Http404("No such endpoint.")
    if not found.enabled:
        raise RefusedInput(field, gettext("%(endpoint)s is disabled by the administrator") % {"endpoint": found})
    if not endpoint_allowed(found):
        raise RefusedInput(field, gettext("%(endpoint)s's base URL is not on the allowlist of evaluation endpoints "
                                          "(PUYU_EVAL_ENDPOINT_ALLOWLIST)") % {"endpoint": found})
    return found


def _served(user, deployment, field: str):
    """(deployment, the version it serves now) of a deployment the user may see and that runs."""
    from apps.serving.models import Deployment
    from apps.serving.services import resolve_version

    deployment = get_visible_or_404(Deployment.objects.select_related("owner", "model"), user,
                                    pk=getattr(deployment, "pk", None))
    if not deployment.is_active:
        raise RefusedInput(field, gettext("%(deployment)s is %(state)s; start it first")
                                  % {"deployment": deployment, "state": choice_word(deployment, "state")})
    version = resolve_version(deployment)
    if version is None:
        raise RefusedInput(field, gettext("%(deployment)s serves no version now (its alias points nowhere)")
                                          % {"deployment": deployment})
    return deployment, version


def _local_model(version: ModelVersion, field: str) -> dict:
    """The spec fields that load `version`'s weights: its folder, or for a LoRA adapter its base's
    folder plus the adapter's (applied unmerged, as it was trained)."""
    if not version.path.is_dir():
        raise RefusedInput(field, gettext("the files of %(version)s are missing from the model store")
                                          % {"version": version})
    if version.kind != VersionKind.ADAPTER:
        return {"model_dir": str(version.path)}
    base = version.parent
    if base is None or base.kind == VersionKind.ADAPTER or not base.path.is_dir():
        raise RefusedInput(field, gettext("%(version)s is an adapter whose base model is not in the store; evaluate "
                                          "a merged version or a deployment that serves it") % {"version": version})
    return {"model_dir": str(base.path), "adapter_dir": str(version.path)}


class _Target:
    """What a run evaluates, resolved: the spec fields, the row fields and the request identity."""

    def __init__(self, kind, params, identity, label, version=None, alias_name="", deployment=None, endpoint=None):
        self.kind, self.params, self.identity, self.label = kind, params, identity, label
        self.version, self.alias_name, self.deployment, self.endpoint = version, alias_name, deployment, endpoint


def _resolve_target(user, *, model_version, alias, deployment, endpoint) -> _Target:
    given = [name for name, value in (("model_version", model_version), ("alias", alias), ("deployment", deployment),
                                      ("endpoint", endpoint)) if value is not None]
    if len(given) != 1:
        raise RefusedInput("target", gettext("choose exactly one target: a model version, an alias, a deployment or "
                                             "an endpoint"))
    if model_version is not None:
        version = get_visible_or_404(ModelVersion.objects.select_related("model", "parent"), user, "model__owner",
                                     pk=getattr(model_version, "pk", None))
        return _Target(RunTarget.MODEL, _local_model(version, "model_version"), ["model", version.pk], str(version), version)
    if alias is not None:
        alias = get_visible_or_404(ModelAlias.objects.select_related("version__model", "model"), user, "model__owner",
                                   pk=getattr(alias, "pk", None))
        version = alias.version
        return _Target(RunTarget.MODEL, _local_model(version, "alias"), ["model", version.pk], str(version), version,
                       alias_name=alias.name)
    if deployment is not None:
        deployment, version = _served(user, deployment, "deployment")
        return _Target(RunTarget.DEPLOYMENT, {"deployment_id": deployment.pk, "target_revision": str(version.uid)},
                       ["deployment", deployment.pk, str(version.uid)], f"{deployment.served_name} (serving {version})",
                       version, deployment=deployment)
    endpoint = _endpoint(endpoint, "endpoint")
    return _Target(RunTarget.ENDPOINT, {"endpoint_base_url": endpoint.base_url, "endpoint_model": endpoint.model_name},
                   ["endpoint", endpoint.pk, _normalised_url(endpoint.base_url), endpoint.model_name],
                   f"{endpoint.name} ({endpoint.model_name})"[:200], endpoint=endpoint)


def _resolve_judge(user, judge_deployment, judge_endpoint) -> tuple[dict, list, dict]:
    """(spec fields, request identity, run settings) of the judge, if one is named."""
    if judge_deployment is not None and judge_endpoint is not None:
        raise RefusedInput("judge", gettext("name one judge: a deployment or an endpoint"))
    if judge_deployment is not None:
        deployment, version = _served(user, judge_deployment, "judge_deployment")
        return ({"judge_deployment_id": deployment.pk, "judge_revision": str(version.uid)},
                ["deployment", deployment.pk, str(version.uid)], {"judge_deployment_id": deployment.pk})
    if judge_endpoint is not None:
        endpoint = _endpoint(judge_endpoint, "judge_endpoint")
        return ({"judge_endpoint_base_url": endpoint.base_url, "judge_endpoint_model": endpoint.model_name},
                ["endpoint", endpoint.pk], {"judge_endpoint_id": endpoint.pk})
    return {}, [], {}


def _spec_benchmarks(user, suite_version: SuiteVersion) -> tuple[list[dict], dict[str, int], list[DatasetVersion]]:
    """The spec's benchmark definitions (names unique in the spec), the name -> benchmark
    version id map the record uses, and the dataset versions the run reads."""
    items = list(suite_version.items.select_related("benchmark_version__benchmark", "benchmark_version__dataset_version"))
    visible = set(visible_benchmarks(user).values_list("pk", flat=True))
    definitions, names, datasets = [], {}, []
    for item in items:
        bv = item.benchmark_version
        if bv.benchmark_id not in visible:
            raise Http404("No such object, or you may not see it.")
        name = bv.benchmark.name
        for candidate in (name, f"{name[:50]}.v{bv.number}", f"{name[:40]}.{bv.pk}"):
            if candidate not in names:
                name = candidate
                break
        data = bv.dataset_version
        if not data.path.is_file():
            raise RefusedInput("suite_version", gettext("the data of %(benchmark)s (%(data)s) is missing from the data "
                                                        "dir") % {"benchmark": bv, "data": data})
        names[name] = bv.pk
        definitions.append({**bv.definition, "name": name, "dimension": bv.benchmark.dimension, "data_path": str(data.path)})
        if data not in datasets:
            datasets.append(data)
    if not definitions:
        raise RefusedInput("suite_version", gettext("%(suite_version)s lists no benchmarks")
                                                    % {"suite_version": suite_version})
    return definitions, names, datasets


def request_key(identity: list, suite_version: SuiteVersion, max_samples: int, max_new_tokens: int, judge: list) -> str:
    """What makes two requests the same run: the target, the suite version and the settings
    that change the scores (not the batch size or the queue)."""
    material = {"target": identity, "suite_version": suite_version.pk, "max_samples": max_samples,
                "max_new_tokens": max_new_tokens, "judge": judge}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def submit_evaluation(user, *, suite_version, model_version=None, alias=None, deployment=None, endpoint=None,
                      max_samples=0, max_new_tokens=256, batch_size=8, queue="gpu", judge_deployment=None,
                      judge_endpoint=None, retry_of: Job | None = None) -> EvaluationRun:
    """Queue one evaluation run (module doc); the same request twice returns the run that is
    queued, running or succeeded already (its `reused` attribute says which happened)."""
    if not isinstance(suite_version, SuiteVersion):
        raise RefusedInput("suite_version", gettext("choose the suite version to evaluate on"))
    suite_version = _visible_or_404(visible_suite_versions(user), pk=suite_version.pk)
    for field, value in (("max_samples", max_samples), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RefusedInput(field, gettext("must be a whole number, got %(value)s")
                                              % {"value": format(repr(value), ".40")})
    target = _resolve_target(user, model_version=model_version, alias=alias, deployment=deployment, endpoint=endpoint)
    judge_params, judge_identity, judge_settings = _resolve_judge(user, judge_deployment, judge_endpoint)
    definitions, names, datasets = _spec_benchmarks(user, suite_version)
    params = {"target": target.kind, **target.params, **judge_params, "benchmarks": definitions,
              "cache_dir": str(settings.EVALUATION_DIR / "cache"), "max_samples": max_samples,
              "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    key = request_key(target.identity, suite_version, max_samples, max_new_tokens, judge_identity)
    run_settings = {"max_samples": max_samples, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                    "generator": "engine", "benchmarks": names, **judge_settings}
    with transaction.atomic():
        # Two identical requests at once: the second waits here, then finds the first.
        SuiteVersion.objects.select_for_update().filter(pk=suite_version.pk).first()
        if retry_of is None:
            existing = (visible_runs(user).filter(request_key=key, job__status__in=REUSABLE)
                        .order_by("-created_at", "-id").first())
            if existing is not None:
                existing.reused = True
                return existing
        try:
            job = jobs.submit_job(user, "evaluate", params, queue=queue, retry_of=retry_of,
                                  title=f"Evaluate {target.label} on {suite_version}")
        except jobs.TooManyJobs:
            raise
        except jobs.InvalidParams as exc:
            raise RefusedInput(exc.field, exc.reason) from None
        run = EvaluationRun.objects.create(
            job=job, suite_version=suite_version, target=target.kind, model_version=target.version,
            alias_name=target.alias_name, deployment=target.deployment, endpoint=target.endpoint,
            target_label=target.label[:200], settings=run_settings, request_key=key)
        if target.version is not None:
            VersionUse.objects.create(version=target.version, job=job, role="evaluate")
            if target.version.kind == VersionKind.ADAPTER and target.version.parent_id:  # its base is read too
                VersionUse.objects.create(version_id=target.version.parent_id, job=job, role="evaluate-base")
        for data in datasets:
            DatasetVersionUse.objects.create(version=data, job=job, role="benchmark")
    run.reused = False
    return run


def retry_evaluation(job: Job, user) -> Job:
    """RETRY_HANDLERS["evaluate"]: the same target, suite version and settings as a new run."""
    run = EvaluationRun.objects.select_related("suite_version", "model_version", "deployment", "endpoint").get(job=job)
    target = {RunTarget.MODEL: {"model_version": run.model_version}, RunTarget.DEPLOYMENT: {"deployment": run.deployment},
              RunTarget.ENDPOINT: {"endpoint": run.endpoint}}[run.target]
    if None in target.values():
        raise RefusedInput("target", gettext("the run's target is gone; start a new evaluation"))
    judge = {}
    if run.settings.get("judge_deployment_id"):
        from apps.serving.models import Deployment

        judge["judge_deployment"] = Deployment.objects.filter(pk=run.settings["judge_deployment_id"]).first()
    if run.settings.get("judge_endpoint_id"):
        judge["judge_endpoint"] = ExternalEndpoint.objects.filter(pk=run.settings["judge_endpoint_id"]).first()
    new = submit_evaluation(user, suite_version=run.suite_version, **target, **judge, queue=job.queue, retry_of=job,
                            **{k: run.settings.get(k, d) for k, d in (("max_samples", 0), ("max_new_tokens", 256),
                                                                       ("batch_size", 8))})
    return new.job


def run_secrets(job: Job) -> dict:
    """The API keys a run passes to the core at run time (never stored in the job's params):
    {"api_key": ..., "judge_api_key": ...}, only those that are set."""
    run = EvaluationRun.objects.select_related("endpoint").filter(job=job).first()
    if run is None:
        return {}
    secrets = {}
    if run.target == RunTarget.ENDPOINT and run.endpoint is not None and run.endpoint.api_key:
        secrets["api_key"] = run.endpoint.api_key
    judge = run.settings.get("judge_endpoint_id")
    if judge:
        key = ExternalEndpoint.objects.filter(pk=judge).values_list("api_key", flat=True).first()
        if key:
            secrets["judge_api_key"] = key
    return secrets


# ---- built-in benchmarks ---------------------------------------------------------------------

def ensure_builtins() -> Job | None:
    """Queue the benchmark_builtins job for the built-in sets not made yet in this data dir;
    nothing when they all exist or such a job is queued or running. The dataset version uids are
    chosen here: the job's output paths are built from them, the record registers them."""
    with transaction.atomic():
        system = system_user()
        get_user_model().objects.select_for_update().filter(pk=system.pk).first()
        if Job.objects.filter(kind="benchmark_builtins", status__in=ACTIVE).exists():
            return None
        made = set(Benchmark.objects.filter(owner=system).exclude(builtin_key="").values_list("builtin_key", flat=True))
        missing = [name for name in catalog.builtin_benchmark_sets() if name not in made]
        if not missing:
            return None
        outputs = {name: str(settings.DATASET_STORE_DIR / f"{uuid.uuid4()}.jsonl") for name in missing}
        return jobs.submit_job(system, "benchmark_builtins", {"outputs": outputs}, title="Built-in benchmarks")


def record_builtins(job: Job, result: dict) -> dict:
    """In the job's SUCCEEDED transaction: a dataset, a dataset version and a benchmark per set,
    and the "starter" suite with every built-in at weight 1. Idempotent."""
    system = system_user()
    for name, info in (result.get("sets") or {}).items():
        uid = uuid.UUID(Path(job.params["outputs"][name]).stem)
        dataset, _ = Dataset.objects.get_or_create(owner=system, name=name, defaults={"description": info["description"]})
        version = DatasetVersion.objects.filter(uid=uid).first()
        if version is None:
            number = (dataset.versions.aggregate(m=Max("number"))["m"] or 0) + 1
            version = DatasetVersion.objects.create(
                uid=uid, dataset=dataset, number=number, source="builtin", source_detail=f"built-in set {name}",
                source_format=info["canonical"], canonical=info["canonical"], sha256=info["sha256"], rows=info["rows"],
                size_bytes=info["size_bytes"], stats=info.get("stats") or {}, created_by=system)
        if Benchmark.objects.filter(owner=system, builtin_key=name).exists():
            continue
        definition = _check(info["definition"], version)
        benchmark = Benchmark.objects.create(owner=system, name=name, title=info["title"][:200],
                                             description=info["description"], dimension=definition["dimension"],
                                             builtin_key=name)
        _add_version(benchmark, system, version, None, (), definition)
    builtins = Benchmark.objects.filter(owner=system).exclude(builtin_key="").order_by("name")
    items = [(latest_version(b), 1.0) for b in builtins]
    suite, _ = Suite.objects.get_or_create(owner=system, name=STARTER_SUITE,
                                           defaults={"description": BUILTIN_SUITES[STARTER_SUITE]})
    if items and not _same_items(latest_suite_version(suite), items):
        _add_suite_version(suite, system, items)
    # The agent benchmarks alone: what the Quick start evaluates base and fine-tuned on, in minutes.
    agent_items = [(version, weight) for version, weight in items if version.benchmark.dimension == "agent"]
    if agent_items:
        agent, _ = Suite.objects.get_or_create(owner=system, name=AGENT_SUITE,
                                               defaults={"description": BUILTIN_SUITES[AGENT_SUITE]})
        if not _same_items(latest_suite_version(agent), agent_items):
            _add_suite_version(agent, system, agent_items)
    return {**result, "benchmarks": sorted(b.builtin_key for b in builtins)}


def created_run(job: Job) -> list[tuple[str, str]]:
    """An evaluation job's run page, with its scores (the job page links it)."""
    from django.urls import reverse

    return [(gettext("evaluation run #%(run)s (scores)") % {"run": run.pk}, reverse("evaluation-run", args=[run.pk]))
            for run in EvaluationRun.objects.filter(job=job)]
