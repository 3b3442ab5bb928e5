"""The registry API: everything the model pages do."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils.translation import gettext
from ninja import File, Form, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from apps.accounts.visibility import get_visible_or_404, visible_to
from apps.jobs.api import JobOut
from apps.registry import services
from apps.registry.downloads import version_archive_response
from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel

router = Router(tags=["models"])


class VersionOut(Schema):
    id: int
    model_id: int
    number: int
    kind: str
    parent_id: int | None
    adapter_id: int | None
    source: str
    source_detail: str
    source_job_id: int | None
    architecture: str
    parameter_count: int
    context_length: int | None
    dtype: str
    size_bytes: int
    has_chat_template: bool
    files: list[dict[str, Any]]
    adapter_config: dict[str, Any] | None
    quantization: dict[str, Any] | None
    evaluation: dict[str, Any]
    notes: str
    aliases: list[str]
    created_at: datetime

    @staticmethod
    def resolve_aliases(obj: ModelVersion) -> list[str]:
        return sorted(a.name for a in obj.aliases.all())


class AliasOut(Schema):
    name: str
    version_id: int
    updated_by: str
    updated_at: datetime

    @staticmethod
    def resolve_updated_by(obj: ModelAlias) -> str:
        return obj.updated_by.username


class ModelOut(Schema):
    id: int
    name: str
    architecture: str
    description: str
    owner: str

    @staticmethod
    def resolve_owner(obj: RegisteredModel) -> str:
        return obj.owner.username


class ModelDetailOut(ModelOut):
    versions: list[VersionOut]
    aliases: list[AliasOut]

    @staticmethod
    def resolve_versions(obj):
        return list(obj.versions.all())

    @staticmethod
    def resolve_aliases(obj):
        return list(obj.aliases.select_related("updated_by"))


class ImportIn(Schema):
    source: str  # folder | starter | hub (archives: POST /models/import/archive)
    model_id: int | None = None
    model_name: str = ""
    description: str = ""
    folder: str = ""
    hub_id: str = ""
    base_version_id: int | None = None  # for adapters: the version they were trained on


class QuantizeIn(Schema):
    method: str = "int8"
    eval_text: str = ""


class AliasIn(Schema):
    version_id: int


class NotesIn(Schema):
    notes: str


def _model(request, model_id: int) -> RegisteredModel:
    return get_visible_or_404(RegisteredModel.objects.select_related("owner"), request.auth, pk=model_id)


def _version(request, version_id: int) -> ModelVersion:
    return get_visible_or_404(ModelVersion.objects.select_related("model"), request.auth, "model__owner", pk=version_id)


def _act(fn):
    try:
        return fn()
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except (services.RegistryError, services.jobs.InvalidParams) as exc:
        raise HttpError(409 if exc.field == "version" else 422, str(exc)) from None


@router.get("/models", response=list[ModelOut])
def list_models(request, q: str = "", architecture: str = "", owner: str = ""):
    models = visible_to(RegisteredModel.objects.select_related("owner"), request.auth)
    if q:
        models = models.filter(name__icontains=q)
    if architecture:
        models = models.filter(architecture=architecture)
    if owner:
        models = models.filter(owner__username=owner)
    return list(models[:500])


@router.get("/models/import/folders", response=list[dict[str, str]])
def import_folders(request):
    """The folders an import may take (the allowlisted import directories' sub-folders)."""
    return [{"value": value, "path": label} for value, label in services.import_choices()]


@router.post("/models/import", response={201: JobOut})
def import_model(request, payload: ImportIn):
    model = _model(request, payload.model_id) if payload.model_id else None
    if payload.source == "archive":
        raise HttpError(422, "source: " + gettext("upload archives to /api/models/import/archive"))
    base = _version(request, payload.base_version_id) if payload.base_version_id else None
    return Status(201, _act(lambda: services.start_import(
        request.auth, source=payload.source, model=model, model_name=payload.model_name, description=payload.description,
        folder=payload.folder, hub_id=payload.hub_id, base_version=base)))


@router.post("/models/import/archive", response={201: JobOut})
def import_archive(request, archive: File[UploadedFile], model_name: Form[str] = "", model_id: Form[int | None] = None,
                   description: Form[str] = "", base_version_id: Form[int | None] = None):
    model = _model(request, model_id) if model_id else None
    base = _version(request, base_version_id) if base_version_id else None
    return Status(201, _act(lambda: services.start_import(
        request.auth, source="archive", model=model, model_name=model_name, description=description,
        upload=services.store_upload(archive), base_version=base)))


@router.get("/models/{model_id}", response=ModelDetailOut)
def get_model(request, model_id: int):
    return _model(request, model_id)


@router.put("/models/{model_id}/aliases/{name}", response=AliasOut)
def move_alias(request, model_id: int, name: str, payload: AliasIn):
    model = _model(request, model_id)
    version = model.versions.filter(pk=payload.version_id).first()
    if version is None:
        raise HttpError(422, "version_id: " + gettext("%(version_id)s is not a version of %(model)s")
                                                      % {"version_id": payload.version_id, "model": model.name})
    return _act(lambda: services.move_alias(request.auth, model, name, version))


@router.get("/versions/{version_id}", response=VersionOut)
def get_version(request, version_id: int):
    return _version(request, version_id)


@router.patch("/versions/{version_id}", response=VersionOut)
def update_version(request, version_id: int, payload: NotesIn):
    version = _version(request, version_id)
    _act(lambda: services.update_notes(request.auth, version, payload.notes))
    version.refresh_from_db()
    return version


@router.delete("/versions/{version_id}", response={204: None})
def delete_version(request, version_id: int):
    version = _version(request, version_id)
    _act(lambda: services.delete_version(request.auth, version))
    return Status(204, None)


@router.post("/versions/{version_id}/merge", response={201: JobOut})
def merge_version(request, version_id: int):
    version = _version(request, version_id)
    return Status(201, _act(lambda: services.start_merge(request.auth, version)))


@router.post("/versions/{version_id}/quantize", response={201: JobOut})
def quantize_version(request, version_id: int, payload: QuantizeIn):
    version = _version(request, version_id)
    return Status(201, _act(lambda: services.start_quantize(request.auth, version, payload.method, payload.eval_text)))


@router.get("/versions/{version_id}/download")
def download_version(request, version_id: int):
    """The version as a tar in the Hugging Face layout, streamed."""
    return version_archive_response(_version(request, version_id))
