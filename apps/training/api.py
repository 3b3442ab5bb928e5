"""The training API: pre-flight, submit, read runs, restart from a checkpoint, and presets (with
YAML export/import). Refusals are 422 with `detail` ("field: reason", as the rest of the API) and,
for a refused pre-flight, every error and the whole report."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpResponse
from django.utils.translation import gettext
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from apps.accounts.visibility import get_visible_or_404
from apps.jobs.api import JobOut
from apps.training import presets, services
from apps.training.models import TrainingRun
from apps.training.views import visible_runs
from workers.tasks.catalog import public_value

router = Router(tags=["training"])


class TrainingIn(Schema):
    method: str = "sft"
    finetune: str = "lora"
    base_version_id: int | None = None
    base_alias_id: int | None = None
    train_version_ids: list[int]
    eval_version_ids: list[int] = []
    model_id: int | None = None
    model_name: str = ""
    queue: str = "gpu"
    preset: str = ""  # a preset key (builtin:<name> or a preset id): its fields, overridden by `fields`
    fields: dict[str, Any] = {}
    dry_run: bool = False
    title: str = ""


class FieldError(Schema):
    field: str
    message: str


class RefusalOut(Schema):
    detail: str
    errors: list[FieldError]
    report: dict[str, Any] | None = None


class CheckpointOut(Schema):
    name: str
    step: int
    path: str


class RunOut(Schema):
    job: JobOut
    method: str
    finetune: str
    base_version_id: int | None
    target_model_id: int
    train_version_ids: list[int]
    eval_version_ids: list[int]
    preset: str
    dry_run: bool
    restarted_from: str
    restarted_from_job_id: int | None
    version_id: int | None
    checkpoints: list[CheckpointOut]
    created_at: datetime

    @staticmethod
    def resolve_train_version_ids(obj: TrainingRun) -> list[int]:
        return [u.version_id for u in obj.job.dataset_uses.all() if u.role == "train"]

    @staticmethod
    def resolve_eval_version_ids(obj: TrainingRun) -> list[int]:
        return [u.version_id for u in obj.job.dataset_uses.all() if u.role == "eval"]

    @staticmethod
    def resolve_version_id(obj: TrainingRun) -> int | None:
        version = getattr(obj.job, "produced_version", None)
        return version.pk if version else None

    @staticmethod
    def resolve_checkpoints(obj: TrainingRun) -> list[dict]:
        # Paths relative to the data dir (restart takes the checkpoint's name, not its path).
        return [{**c, "path": public_value(c["path"])} for c in services.kept_checkpoints(obj)]

    @staticmethod
    def resolve_restarted_from(obj: TrainingRun) -> str:
        return public_value(obj.restarted_from) if obj.restarted_from else ""


class RestartIn(Schema):
    checkpoint: str


class PresetIn(Schema):
    name: str
    description: str = ""
    fields: dict[str, Any]


class PresetOut(Schema):
    key: str
    name: str
    owner: str | None
    description: str
    fields: dict[str, Any]


class YamlIn(Schema):
    yaml: str


def _refusal(exc: services.TrainingError, report: dict | None = None):
    errors = getattr(exc, "errors", None) or [{"field": exc.field, "message": exc.reason}]
    return Status(422, {"detail": str(exc), "errors": errors, "report": report})


def _request(request, payload: TrainingIn) -> services.TrainingRequest:
    if payload.base_version_id and payload.base_alias_id:
        raise services.TrainingError("base", gettext("give base_version_id or base_alias_id, not both"))
    base = f"v:{payload.base_version_id}" if payload.base_version_id else f"a:{payload.base_alias_id}" if payload.base_alias_id else None
    fields, preset_name = dict(payload.fields), ""
    if payload.preset:
        preset_name, preset_fields = presets.preset_fields(request.auth, payload.preset)
        fields = {**{k: v for k, v in preset_fields.items() if k not in ("method", "finetune")}, **fields}
    presets.check_fields(fields)
    return services.TrainingRequest(
        method=payload.method, finetune=payload.finetune, base=base, train_versions=payload.train_version_ids,
        eval_versions=payload.eval_version_ids, model_id=payload.model_id, model_name=payload.model_name,
        queue=payload.queue, preset=preset_name, fields=fields, dry_run=payload.dry_run, title=payload.title,
    )


def _run(request, job_id: int) -> TrainingRun:
    return get_visible_or_404(TrainingRun.objects.select_related("job", "job__owner"), request.auth, "job__owner", job_id=job_id)


@router.post("/training/preflight", response=dict[str, Any])
def preflight(request, payload: TrainingIn):
    """The pre-flight report (nothing is stored): ok, errors [{field, message}], warnings, memory,
    suggestions, sample, device."""
    try:
        req = _request(request, payload)
    except services.TrainingError as exc:
        return {"ok": False, "errors": [{"field": exc.field, "message": exc.reason}], "warnings": [], "memory": None,
                "suggestions": [], "sample": None}
    return services.preflight(request.auth, req)


@router.post("/training/runs", response={201: RunOut, 403: dict, 422: RefusalOut})
def submit(request, payload: TrainingIn):
    try:
        job = services.submit(request.auth, _request(request, payload))
    except services.PreflightRefused as exc:
        return _refusal(exc, exc.report)
    except services.TrainingError as exc:
        return _refusal(exc)
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    return Status(201, TrainingRun.objects.get(job=job))


@router.get("/training/runs", response=list[RunOut])
def list_runs(request, limit: int = 50, offset: int = 0):
    limit, offset = max(1, min(limit, 200)), max(offset, 0)  # a negative offset would be a 500
    return list(visible_runs(request.auth).prefetch_related("job__dataset_uses")[offset:offset + limit])


@router.get("/training/runs/{job_id}", response=RunOut)
def get_run(request, job_id: int):
    return _run(request, job_id)


@router.post("/training/runs/{job_id}/restart", response={201: RunOut, 422: RefusalOut})
def restart(request, job_id: int, payload: RestartIn):
    run = _run(request, job_id)
    try:
        job = services.restart_from_checkpoint(request.auth, run.job, payload.checkpoint)
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except services.TrainingError as exc:
        return _refusal(exc)
    return Status(201, TrainingRun.objects.get(job=job))


@router.get("/training/presets", response=list[PresetOut])
def list_presets(request):
    return presets.choices(request.auth)


@router.post("/training/presets", response={201: PresetOut, 422: RefusalOut})
def create_preset(request, payload: PresetIn):
    try:
        preset = presets.save(request.auth, name=payload.name, description=payload.description, fields=payload.fields)
    except services.TrainingError as exc:
        return _refusal(exc)
    return Status(201, _preset_out(preset))


@router.post("/training/presets/import", response={201: PresetOut, 422: RefusalOut})
def import_preset(request, payload: YamlIn):
    try:
        preset = presets.import_yaml(request.auth, payload.yaml)
    except services.TrainingError as exc:
        return _refusal(exc)
    return Status(201, _preset_out(preset))


@router.get("/training/presets/{key}/export")
def export_preset(request, key: str):
    """The preset as YAML (`name`, `description`, `fields`), importable again."""
    try:
        name, fields = presets.preset_fields(request.auth, key)
    except services.TrainingError as exc:
        raise HttpError(404, exc.reason) from None
    description = ""
    if key.isdigit():
        description = presets.TrainingPreset.objects.get(pk=int(key)).description
    return HttpResponse(presets.export_yaml(name, fields, description), content_type="application/yaml")


def _preset_out(preset) -> dict:
    return {"key": str(preset.pk), "name": preset.name, "owner": preset.owner.username, "description": preset.description,
            "fields": preset.fields}
