"""The only place that changes datasets: uploads, imports, cleaning and generation become jobs;
versions are registered by those jobs, immutable, and deleted only when nothing uses them."""
from __future__ import annotations

import codecs
import itertools
import json
import uuid
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils.translation import gettext

from apps.accounts.visibility import PermissionDenied, require_manager  # noqa: F401  (views catch services.PermissionDenied)
from apps.datasets.models import (
    Dataset,
    DatasetRequest,
    DatasetUpload,
    DatasetVersion,
    DatasetVersionUse,
)
from apps.jobs import services as jobs
from apps.jobs.models import Job
from apps.studio import storage, uploads

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".jsonl.gz", ".json.gz")
DATASET_KINDS = ("dataset_import", "dataset_clean", "dataset_generate")


class DatasetError(jobs.InvalidParams):
    """A refused dataset change; names the field (`.field`) and the reason (`.reason`)."""


def _require_manager(user, obj) -> None:
    require_manager(user, obj, "dataset")


def target_dataset(user, dataset: Dataset | None, name: str = "", description: str = "") -> Dataset:
    if dataset is not None:
        _require_manager(user, dataset)
        return dataset
    name = (name or "").strip()
    if not name:
        raise DatasetError("dataset_name", gettext("name the new dataset (or choose an existing one)"))
    if Dataset.objects.filter(owner=user, name=name).exists():
        raise DatasetError("dataset_name", gettext("you already have a dataset named %(name)s; choose it instead")
                                                   % {"name": repr(name)})
    return Dataset.objects.create(owner=user, name=name, description=description)


def _job(user, kind: str, params: dict, request: dict, *, uses=(), title: str = "", retry_of=None) -> Job:
    storage.require_free_space(*storage.dataset_needs(kind, request), error=DatasetError)
    with transaction.atomic():
        uid = uuid.uuid4()
        params = {**params, "output_path": str(settings.DATASET_STORE_DIR / f"{uid}.jsonl")}
        job = jobs.submit_job(user, kind, params, title=title, retry_of=retry_of)
        DatasetRequest.objects.create(job=job, uid=uid, **request)
        for version, role in uses:
            DatasetVersionUse.objects.create(version=version, job=job, role=role)
    return job


def upload_file(user, uploaded, *, dataset: Dataset | None = None, dataset_name: str = "", description: str = "",
                fmt: str = "", column_map: dict | None = None, tokenizer_dir: str = "", max_length: int = 0) -> tuple[DatasetUpload, Job]:
    """Store the upload and start its import job. A file whose records are all valid becomes a
    version at once; otherwise the job reports the errors and the user decides."""
    if column_map is not None and not (isinstance(column_map, dict) and all(isinstance(v, str) for v in column_map.values())):
        raise DatasetError("column_map", gettext("must map field names to column names (strings)"))
    refuse_non_utf8(uploaded)
    with transaction.atomic():
        target = target_dataset(user, dataset, dataset_name, description)
        stored = uploads.store_upload(uploaded, UPLOAD_SUFFIXES, "file")
        try:
            upload = DatasetUpload.objects.create(dataset=target, filename=uploaded.name[:255], stored_name=stored,
                                                  size_bytes=uploaded.size, format=fmt, column_map=column_map or {},
                                                  created_dataset=dataset is None, created_by=user)
            job = start_import(user, upload, exclude_invalid=False, tokenizer_dir=tokenizer_dir, max_length=max_length)
        except BaseException:  # refused (no room, too many jobs): the rows roll back, the file goes too
            (settings.UPLOAD_DIR / stored).unlink(missing_ok=True)
            raise
    return upload, job


TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")


def refuse_non_utf8(uploaded) -> None:
    """A text upload that is not UTF-8 (a Latin-1 or GBK export) is refused in the request, before
    anything is stored: no dataset, no upload row, no raw file. One streaming pass over the chunks
    (bounded by MAX_UPLOAD_BYTES). The import job checks again, with the same wording, because the
    web side may not import the worker core (tests/test_import_boundaries.py); compressed and
    binary formats are the job's to check."""
    if not uploaded.name.lower().endswith(TEXT_SUFFIXES):
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed, lines = 0, 1
    for chunk in [*uploaded.chunks(), b""]:  # b"": the final flush (a character cut off at the end)
        held = decoder.getstate()[0]  # the start of a character split across chunks
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            data = held + chunk
            line = lines - held.count(b"\n") + data[:exc.start].count(b"\n")
            raise DatasetError("file", gettext("%(file)s, line %(line)s: not valid UTF-8: byte 0x%(byte)s at "
                                               "byte offset %(offset)s cannot be decoded; save the file as UTF-8 and "
                                               "upload it again")
                                               % {"file": uploaded.name[:80], "line": line,
                                                  "byte": format(data[exc.start], "02X"),
                                                  "offset": consumed - len(held) + exc.start}) from None
        consumed += len(chunk)
        lines += chunk.count(b"\n")


def forget_refused_upload(job: Job) -> None:
    """The import job refused the uploaded file itself (not single records): its raw file can
    never become a version, so it is removed. The upload row stays, with the job's reason, on a
    dataset that has more in it; a dataset the upload created and that holds nothing else (no
    version, no other upload, no other job) goes too, so a refused first upload leaves no empty
    dataset behind. The job's result then says so: the upload's page reads it (refused_upload)."""
    request = DatasetRequest.objects.select_related("upload", "dataset").filter(job=job).first()
    if request is None or not request.upload_id or job.kind != "dataset_import":
        return
    upload, dataset = request.upload, request.dataset
    upload.path.unlink(missing_ok=True)
    with transaction.atomic():
        alone = (upload.created_dataset and not dataset.versions.exists()
                 and not dataset.uploads.exclude(pk=upload.pk).exists()
                 and not DatasetRequest.objects.filter(dataset=dataset).exclude(job=job).exists())
        if alone:
            Job.objects.filter(pk=job.pk).update(result={"refused_upload": upload.pk, "removed_dataset": dataset.name})
            dataset.delete()  # its upload row and this job's request go with it; the job stays


def refused_upload_jobs(upload_id: int):
    """The failed import (a queryset of one) whose refused upload `upload_id` was removed with its dataset."""
    return Job.objects.filter(kind="dataset_import", status="FAILED", result__refused_upload=upload_id)


def import_from_hub(user, hub_id: str, hub_file: str, *, dataset: Dataset | None = None, dataset_name: str = "",
                    fmt: str = "", column_map: dict | None = None) -> tuple[DatasetUpload, Job]:
    """Like an upload, but the worker fetches the file from a hub dataset repository first (a
    clear error when the machine is offline)."""
    hub_id, hub_file = hub_id.strip(), hub_file.strip().lstrip("/")
    if "/" not in hub_id:
        raise DatasetError("hub_id", gettext("expected a dataset id like 'org/name', got %(hub_id)s")
                                             % {"hub_id": repr(hub_id)})
    suffix = next((s for s in sorted(UPLOAD_SUFFIXES, key=len, reverse=True) if hub_file.lower().endswith(s)), None)
    if suffix is None or ".." in hub_file.split("/"):
        raise DatasetError("hub_file", gettext("%(hub_file)s: name a data file in the repository "
                                               "(%(suffixes)s)")
                                               % {"hub_file": repr(hub_file),
                                                  "suffixes": ', '.join(UPLOAD_SUFFIXES)})
    with transaction.atomic():
        target = target_dataset(user, dataset, dataset_name, f"from the hub dataset {hub_id}")
        upload = DatasetUpload.objects.create(dataset=target, filename=hub_file.rsplit("/", 1)[-1][:255],
                                              stored_name=f"{uuid.uuid4().hex}{suffix}", size_bytes=0, format=fmt,
                                              column_map=column_map or {}, created_dataset=dataset is None, created_by=user)
        job = start_import(user, upload, exclude_invalid=False, hub=(hub_id, hub_file))
    return upload, job


def start_import(user, upload: DatasetUpload, *, exclude_invalid: bool, tokenizer_dir: str = "", max_length: int = 0,
                 retry_of=None, hub: tuple[str, str] | None = None) -> Job:
    _require_manager(user, upload.dataset)
    if hub is None and not upload.path.exists():
        raise DatasetError("upload", gettext("the uploaded file is gone (a version was already created from it); "
                                             "upload it again"))
    params = {"path": str(upload.path), "filename": upload.filename, "format": upload.format, "column_map": upload.column_map,
              "exclude_invalid": exclude_invalid, "tokenizer_dir": tokenizer_dir, "max_length": max_length}
    if hub:
        params.update(hub_id=hub[0], hub_file=hub[1])
    title = f"Import {upload.filename} into {upload.dataset.name}" + (" (excluding bad records)" if exclude_invalid else "")
    return _job(user, "dataset_import", params, {"dataset": upload.dataset, "upload": upload, "source": "upload"}, title=title,
                retry_of=retry_of)


def start_clean(user, version: DatasetVersion, cleaning: dict, eval_versions=()) -> Job:
    _require_manager(user, version.dataset)
    params = {"input_path": str(version.path), "canonical": version.canonical, "cleaning": cleaning,
              "eval_paths": [str(v.path) for v in eval_versions], "eval_canonicals": [v.canonical for v in eval_versions],
              "eval_names": [str(v) for v in eval_versions]}
    uses = [(version, "input")] + [(v, "decontamination") for v in eval_versions]
    return _job(user, "dataset_clean", params, {"dataset": version.dataset, "parent": version, "source": "cleaning"},
                uses=uses, title=f"Clean {version}")


def start_generate(user, *, generator: str, n: int, seed: int = 0, dataset: Dataset | None = None, dataset_name: str = "") -> Job:
    with transaction.atomic():
        target = target_dataset(user, dataset, dataset_name, f"generated by the built-in {generator} generator")
        return _job(user, "dataset_generate", {"generator": generator, "n": n, "seed": seed},
                    {"dataset": target, "source": "generator"}, title=f"Generate {n} {generator} records")


def retry_dataset_job(job: Job, user) -> Job:
    request = DatasetRequest.objects.select_related("upload").get(job=job)
    params = {k: v for k, v in job.params.items() if k != "output_path"}
    fields = {"dataset": request.dataset, "upload": request.upload, "parent": request.parent, "source": request.source}
    uses = [(use.version, use.role) for use in job.dataset_uses.select_related("version")]
    return _job(user, job.kind, params, fields, uses=uses, title=job.title, retry_of=job)


# ---- what a finished dataset job stores ---------------------------------------------------

def record_job_result(job: Job, result: dict) -> dict:
    """In the worker's SUCCEEDED transaction: keep the validation report on the upload and, when
    the job wrote a version, register it (idempotent: one version per job)."""
    request = DatasetRequest.objects.select_related("upload", "dataset").get(job=job)
    if request.upload_id and "report" in result:
        size = request.upload.path.stat().st_size if request.upload.path.exists() else request.upload.size_bytes
        DatasetUpload.objects.filter(pk=request.upload_id).update(report=result["report"], size_bytes=size)
    if not result.get("created"):
        return result
    version = DatasetVersion.objects.filter(source_job=job).first()
    if version is None:
        number = (DatasetVersion.objects.filter(dataset=request.dataset).aggregate(m=Max("number"))["m"] or 0) + 1
        report = result.get("report") or {}
        excluded = result.get("excluded_lines") or []
        version = DatasetVersion.objects.create(
            uid=request.uid, dataset=request.dataset, number=number, source=request.source,
            source_detail=(request.upload.filename if request.upload else job.params.get("generator", ""))[:300],
            source_format=result["format"], canonical=result["canonical"], parent=request.parent, source_job=job,
            sha256=result["sha256"], rows=result["rows"], size_bytes=result["size_bytes"],
            excluded={"count": len(excluded), "lines": excluded[:1000], "reasons": report.get("error_counts", {})} if excluded else {},
            stats=result.get("stats") or {}, cleaning_report=result.get("cleaning_report"), created_by=job.owner,
        )
    if request.upload_id:
        upload_path = request.upload.path
        transaction.on_commit(lambda: upload_path.unlink(missing_ok=True))
    return {**{k: v for k, v in result.items() if k not in ("stats", "cleaning_report")}, "version_id": version.pk,
            "version": str(version)}


# ---- reading versions ---------------------------------------------------------------------

def read_rows(version: DatasetVersion, *, offset: int = 0, limit: int = 50) -> list[dict]:
    with open(version.path, encoding="utf-8") as fh:
        return [json.loads(line) for line in itertools.islice(fh, offset, offset + limit)]


def search_rows(version: DatasetVersion, query: str, *, limit: int = 50) -> list[tuple[int, dict]]:
    """(row number, record) of rows whose text contains `query` (case-insensitive)."""
    needle = query.lower()
    found = []
    with open(version.path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if needle in line.lower() and needle in json.dumps(json.loads(line), ensure_ascii=False).lower():
                found.append((number, json.loads(line)))
                if len(found) >= limit:
                    break
    return found


def usage_blockers(version: DatasetVersion) -> list[str]:
    blockers = [gettext("%(child)s was derived from it") % {"child": child} for child in version.children.all()]
    blockers += [gettext("benchmark %(benchmark)s is made of it") % {"benchmark": bv}
                 for bv in version.benchmark_versions.select_related("benchmark")]
    blockers += [gettext("benchmark %(benchmark)s takes its few-shot rows from it") % {"benchmark": bv}
                 for bv in version.fewshot_of.select_related("benchmark")]
    blockers += jobs.active_use_blockers(version.uses)
    return blockers


def delete_version(user, version: DatasetVersion) -> None:
    _require_manager(user, version.dataset)
    path = version.path
    with transaction.atomic():
        blockers = usage_blockers(version)
        if blockers:
            raise DatasetError("version", gettext("%(version)s is in use: %(reasons)s")
                               % {"version": version, "reasons": "; ".join(blockers)})
        version.delete()
        transaction.on_commit(lambda: Path(path).unlink(missing_ok=True))


def created_versions(job: Job) -> list[tuple[str, str]]:
    """The dataset version a finished import, clean or generate job registered (its page links it)."""
    from django.urls import reverse

    return [(gettext("dataset version %(version)s") % {"version": v}, reverse("dataset-version-detail", args=[v.pk]))
            for v in DatasetVersion.objects.filter(source_job=job).select_related("dataset")]
