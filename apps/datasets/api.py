"""The datasets API: everything the dataset pages do."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.utils.translation import gettext
from ninja import File, Form, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from apps.accounts.visibility import get_visible_or_404, visible_to
from apps.datasets import services
from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
from apps.jobs.api import JobOut
from apps.jobs.services import InvalidParams
from apps.studio.streaming import StreamingFileResponse  # streams under daphne (no whole-file list)

router = Router(tags=["datasets"])


class DatasetOut(Schema):
    id: int
    name: str
    description: str
    owner: str

    @staticmethod
    def resolve_owner(obj: Dataset) -> str:
        return obj.owner.username


class DatasetVersionOut(Schema):
    id: int
    dataset_id: int
    number: int
    source: str
    source_detail: str
    source_format: str
    canonical: str
    parent_id: int | None
    source_job_id: int | None
    sha256: str
    rows: int
    size_bytes: int
    excluded: dict[str, Any]
    stats: dict[str, Any]
    cleaning_report: dict[str, Any] | None
    created_at: datetime


class DatasetDetailOut(DatasetOut):
    versions: list[DatasetVersionOut]

    @staticmethod
    def resolve_versions(obj):
        return list(obj.versions.all())


class UploadOut(Schema):
    id: int
    dataset_id: int
    filename: str
    size_bytes: int
    report: dict[str, Any] | None
    job: JobOut | None = None
    version_id: int | None = None

    @staticmethod
    def resolve_version_id(obj: DatasetUpload) -> int | None:
        return DatasetVersion.objects.filter(source_job__dataset_request__upload=obj).values_list("pk", flat=True).first()


class CleanIn(Schema):
    cleaning: dict[str, Any] = {}
    eval_version_ids: list[int] = []


class GenerateIn(Schema):
    generator: str
    n: int = 1000
    seed: int = 0
    dataset_name: str = ""
    dataset_id: int | None = None


def _dataset(request, dataset_id: int) -> Dataset:
    return get_visible_or_404(Dataset.objects.select_related("owner"), request.auth, pk=dataset_id)


def _version(request, version_id: int) -> DatasetVersion:
    return get_visible_or_404(DatasetVersion.objects.select_related("dataset"), request.auth, "dataset__owner", pk=version_id)


def _act(fn):
    try:
        return fn()
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except (services.DatasetError, InvalidParams) as exc:
        raise HttpError(409 if exc.field == "version" else 422, str(exc)) from None


@router.get("/datasets", response=list[DatasetOut])
def list_datasets(request, q: str = ""):
    datasets = visible_to(Dataset.objects.select_related("owner"), request.auth)
    return list(datasets.filter(name__icontains=q)[:500] if q else datasets[:500])


@router.post("/datasets/upload", response={201: UploadOut})
def upload(request, file: File[UploadedFile], dataset_name: Form[str] = "", dataset_id: Form[int | None] = None,
           description: Form[str] = "", format: Form[str] = "", column_map: Form[str] = "{}"):
    """Upload a file; its records are validated by a job. A clean file becomes a version at once."""
    dataset = _dataset(request, dataset_id) if dataset_id else None
    try:
        mapping = json.loads(column_map or "{}")
    except json.JSONDecodeError as exc:
        raise HttpError(422, "column_map: " + gettext("not valid JSON (%(exc)s)") % {"exc": exc}) from None
    upload, job = _act(lambda: services.upload_file(request.auth, file, dataset=dataset, dataset_name=dataset_name,
                                                    description=description, fmt=format, column_map=mapping))
    upload.job = job
    return Status(201, upload)


class HubImportIn(Schema):
    hub_id: str
    hub_file: str
    dataset_name: str = ""
    dataset_id: int | None = None
    format: str = ""
    column_map: dict[str, str] = {}


@router.post("/datasets/import-hub", response={201: UploadOut})
def import_hub(request, payload: HubImportIn):
    """Fetch a data file from a hub dataset repository (when the workers can reach a hub)."""
    dataset = _dataset(request, payload.dataset_id) if payload.dataset_id else None
    upload, job = _act(lambda: services.import_from_hub(request.auth, payload.hub_id, payload.hub_file, dataset=dataset,
                                                        dataset_name=payload.dataset_name, fmt=payload.format,
                                                        column_map=payload.column_map))
    upload.job = job
    return Status(201, upload)


@router.post("/datasets/generate", response={201: JobOut})
def generate(request, payload: GenerateIn):
    dataset = _dataset(request, payload.dataset_id) if payload.dataset_id else None
    return Status(201, _act(lambda: services.start_generate(request.auth, generator=payload.generator, n=payload.n,
                                                            seed=payload.seed, dataset=dataset, dataset_name=payload.dataset_name)))


@router.get("/datasets/{dataset_id}", response=DatasetDetailOut)
def get_dataset(request, dataset_id: int):
    return _dataset(request, dataset_id)


@router.get("/dataset-uploads/{upload_id}", response=UploadOut)
def get_upload(request, upload_id: int):
    return get_visible_or_404(DatasetUpload.objects.all(), request.auth, "dataset__owner", pk=upload_id)


@router.post("/dataset-uploads/{upload_id}/exclude", response={201: JobOut})
def create_excluding_bad_records(request, upload_id: int):
    upload = get_visible_or_404(DatasetUpload.objects.select_related("dataset"), request.auth, "dataset__owner", pk=upload_id)
    return Status(201, _act(lambda: services.start_import(request.auth, upload, exclude_invalid=True)))


@router.get("/dataset-versions/{version_id}", response=DatasetVersionOut)
def get_version(request, version_id: int):
    return _version(request, version_id)


@router.get("/dataset-versions/{version_id}/rows", response=list[dict[str, Any]])
def get_rows(request, version_id: int, offset: int = 0, limit: int = 50, q: str = ""):
    version = _version(request, version_id)
    limit = min(max(limit, 1), 500)
    if q:
        return [{"row": n, **r} for n, r in services.search_rows(version, q, limit=limit)]
    return [{"row": offset + i + 1, **r} for i, r in enumerate(services.read_rows(version, offset=max(offset, 0), limit=limit))]


@router.get("/dataset-versions/{version_id}/download")
def download(request, version_id: int):
    version = _version(request, version_id)
    return StreamingFileResponse(version.path.open("rb"), as_attachment=True, filename=f"{version.dataset.name}-v{version.number}.jsonl")


@router.post("/dataset-versions/{version_id}/clean", response={201: JobOut})
def clean(request, version_id: int, payload: CleanIn):
    version = _version(request, version_id)
    evals = [_version(request, pk) for pk in payload.eval_version_ids]
    return Status(201, _act(lambda: services.start_clean(request.auth, version, payload.cleaning, evals)))


@router.delete("/dataset-versions/{version_id}", response={204: None})
def delete(request, version_id: int):
    version = _version(request, version_id)
    _act(lambda: services.delete_version(request.auth, version))
    return Status(204, None)
