"""The only place that changes the registry: imports, merges and quantizations become jobs;
aliases, notes and deletes are recorded with who and when."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils.translation import gettext

from apps.accounts.visibility import PermissionDenied, require_manager  # noqa: F401  (views catch services.PermissionDenied)
from apps.jobs import services as jobs
from apps.jobs.models import Job
from apps.registry.models import (
    AliasMove,
    FirstRunRecord,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    VersionKind,
    VersionRequest,
    VersionUse,
)
from apps.studio import storage, uploads

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class RegistryError(jobs.InvalidParams):
    """A refused registry change; names the field (`.field`) and the reason (`.reason`)."""


def _require_manager(user, obj) -> None:
    require_manager(user, obj, "model")


# ---- import sources ------------------------------------------------------------------------

def import_choices() -> list[tuple[str, str]]:
    """Sub-folders of the allowlisted import directories, as (choice value, label)."""
    choices = []
    for index, root in enumerate(settings.MODEL_IMPORT_DIRS):
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
                    choices.append((f"{index}/{child.name}", f"{root}/{child.name}"))
    return choices


def resolve_import_choice(value: str) -> Path:
    """Map a choice back to its folder, refusing anything that is not one of the offered ones."""
    index, _, name = (value or "").partition("/")
    roots = settings.MODEL_IMPORT_DIRS
    if not index.isdigit() or int(index) >= len(roots) or not name or "/" in name or name in (".", ".."):
        raise RegistryError("folder", gettext("%(folder)s is not one of the offered import folders")
                                              % {"folder": repr(value)})
    root = roots[int(index)]
    folder = (root / name).resolve()
    if folder.parent != root or not folder.is_dir():
        raise RegistryError("folder", gettext("%(name)s is not a folder in %(root)s")
                                              % {"name": repr(name), "root": root})
    return folder


def store_upload(uploaded) -> str:
    return uploads.store_upload(uploaded, ARCHIVE_SUFFIXES, "archive")


def _target_model(user, model: RegisteredModel | None, model_name: str, description: str) -> RegisteredModel:
    if model is not None:
        _require_manager(user, model)
        return model
    name = (model_name or "").strip()
    if not name:
        raise RegistryError("model_name", gettext("name the new model (or choose an existing one)"))
    if RegisteredModel.objects.filter(owner=user, name=name).exists():
        raise RegistryError("model_name", gettext("you already have a model named %(name)s; choose it instead")
                                                  % {"name": repr(name)})
    return RegisteredModel.objects.create(owner=user, name=name, description=description)


REGISTRY_KINDS = ("model_import", "model_merge", "model_quantize")


def _registry_job(user, kind: str, params: dict, request: dict, *, uses=(), queue: str | None = None,
                  retry_of: Job | None = None) -> Job:
    """Create the job, what it will register, and what it reads, in one transaction."""
    storage.require_free_space(*storage.registry_needs(kind, params, uses), error=RegistryError)
    with transaction.atomic():
        uid = uuid.uuid4()
        params = {**params, "output_dir": str(settings.MODEL_STORE_DIR / str(uid))}
        job = jobs.submit_job(user, kind, params, queue=queue, title=request.pop("title", ""), retry_of=retry_of)
        VersionRequest.objects.create(job=job, uid=uid, **request)
        for version, role in uses:
            VersionUse.objects.create(version=version, job=job, role=role)
    return job


def retry_registry_job(job: Job, user) -> Job:
    """Run a finished registry job again: same inputs, a fresh output folder and request."""
    request = VersionRequest.objects.get(job=job)
    params = {k: v for k, v in job.params.items() if k != "output_dir"}
    if request.upload and not (settings.UPLOAD_DIR / request.upload).exists():
        raise RegistryError("archive", gettext("the uploaded archive is gone (imported already?); upload it again"))
    fields = {f: getattr(request, f) for f in ("model", "kind", "parent", "adapter", "source", "upload")}
    uses = [(use.version, use.role) for use in job.model_uses.select_related("version")]
    return _registry_job(user, job.kind, params, {**fields, "title": job.title}, uses=uses, queue=job.queue, retry_of=job)


def start_import(user, *, source: str, model: RegisteredModel | None = None, model_name: str = "",
                 description: str = "", folder: str = "", upload: str = "", hub_id: str = "",
                 base_version: ModelVersion | None = None) -> Job:
    """`base_version` is the registry version an imported adapter was trained on (its parent).
    A refused import of an uploaded archive removes the archive too: a refusal stores nothing."""
    try:
        return _start_import(user, source=source, model=model, model_name=model_name, description=description,
                             folder=folder, upload=upload, hub_id=hub_id, base_version=base_version)
    except BaseException:
        if source == "archive" and upload and "/" not in upload:
            (settings.UPLOAD_DIR / upload).unlink(missing_ok=True)
        raise


def _start_import(user, *, source, model, model_name, description, folder, upload, hub_id, base_version) -> Job:
    if base_version is not None and base_version.kind == VersionKind.ADAPTER:
        raise RegistryError("base_version", gettext("%(base_version)s is an adapter; an adapter's base must be a "
                                                    "full model") % {"base_version": base_version})
    with transaction.atomic():
        target = _target_model(user, model, model_name, description)
        params = {"source": source}
        if source == "folder":
            params["path"] = str(resolve_import_choice(folder))
            detail = Path(params["path"]).name
        elif source == "archive":
            if not upload or "/" in upload:
                raise RegistryError("archive", gettext("upload an archive"))
            params["path"] = str(settings.UPLOAD_DIR / upload)
            detail = upload
        elif source == "hub":
            params["hub_id"] = hub_id.strip()
            detail = hub_id
        elif source == "starter":
            detail = "SmolLM2-135M-Instruct"
        else:
            raise RegistryError("source", gettext("unknown import source %(source)s") % {"source": repr(source)})
        return _registry_job(user, "model_import", params, {
            "model": target, "kind": VersionKind.BASE, "source": f"import:{source}", "upload": upload if source == "archive" else "",
            "parent": base_version, "title": f"Import {detail} into {target.name}",
        }, uses=[(base_version, "base")] if base_version else ())


def start_merge(user, adapter: ModelVersion) -> Job:
    _require_manager(user, adapter.model)
    if adapter.kind != VersionKind.ADAPTER or adapter.parent is None:
        raise RegistryError("version", gettext("%(adapter)s is not an adapter with a base version; only adapters "
                                               "can be merged") % {"adapter": adapter})
    return _registry_job(user, "model_merge", {"base_dir": str(adapter.parent.path), "adapter_dir": str(adapter.path)}, {
        "model": adapter.model, "kind": VersionKind.MERGED, "parent": adapter.parent, "adapter": adapter,
        "source": "model_merge", "title": f"Merge {adapter} into {adapter.parent}",
    }, uses=[(adapter, "adapter"), (adapter.parent, "base")])


def start_quantize(user, version: ModelVersion, method: str, eval_text: str = "") -> Job:
    _require_manager(user, version.model)
    if version.kind in (VersionKind.ADAPTER, VersionKind.QUANTIZED):
        raise RegistryError("version", gettext("%(version)s is %(kind)s; quantize a base or merged version")
                                               % {"version": version, "kind": version.kind})
    return _registry_job(user, "model_quantize", {"source_dir": str(version.path), "method": method, "eval_text": eval_text}, {
        "model": version.model, "kind": VersionKind.QUANTIZED, "parent": version, "source": "model_quantize",
        "title": f"Quantize {version} ({method})",
    }, uses=[(version, "source")], queue="gpu" if method == "nf4" else None)


# ---- what a finished registry job stores --------------------------------------------------

def register_version(job: Job, result: dict) -> ModelVersion:
    """Called by the worker in the transaction that marks the job SUCCEEDED. Idempotent: a
    job produces exactly one version."""
    existing = ModelVersion.objects.filter(source_job=job).first()
    if existing:
        return existing
    request = VersionRequest.objects.select_related("model").get(job=job)
    facts = result["facts"]
    kind, parent = request.kind, request.parent
    if request.source.startswith("import:"):
        # What was imported decides: an adapter keeps the base it was given; a full model has none.
        kind = VersionKind.ADAPTER if facts["kind"] == "adapter" else VersionKind.BASE
        parent = parent if kind == VersionKind.ADAPTER else None
    number = (ModelVersion.objects.filter(model=request.model).aggregate(m=Max("number"))["m"] or 0) + 1
    version = ModelVersion.objects.create(
        uid=request.uid, model=request.model, number=number, kind=kind, parent=parent, adapter=request.adapter,
        source=request.source, source_detail=result.get("source_detail", "")[:300], source_job=job,
        architecture=facts.get("architecture", ""), parameter_count=facts.get("parameter_count", 0),
        context_length=facts.get("context_length"), dtype=facts.get("dtype", ""), size_bytes=facts.get("size_bytes", 0),
        has_chat_template=facts.get("has_chat_template", False), files=facts.get("files", []),
        adapter_config=facts.get("adapter"), quantization=facts.get("quantization"),
        evaluation=result.get("evaluation") or {}, created_by=job.owner,
    )
    if not request.model.architecture and version.architecture:
        RegisteredModel.objects.filter(pk=request.model.pk).update(architecture=version.architecture)
    if request.upload:
        upload = settings.UPLOAD_DIR / request.upload
        transaction.on_commit(lambda: upload.unlink(missing_ok=True))
    if request.deploy_as:
        _deploy_starter(job.owner, request.model, version, request.deploy_as)
    return version


# ---- the first-run starter ------------------------------------------------------------------

STARTER_ALIAS = "starter"
STARTER_MODEL_NAME = "SmolLM2-135M-Instruct"


def queue_starter(owner) -> Job | None:
    """Import the packaged starter model as `owner` (the system user) and, once registered, deploy
    it under the alias `starter`: one job, queued once per data dir (a FirstRunRecord, which no
    deletion cascades to: deleting the model, its versions, deployment or import job is respected);
    start-up never waits for it."""
    with transaction.atomic():
        _, first = FirstRunRecord.objects.get_or_create(name=STARTER_ALIAS)
        if not first:
            return None
        model = RegisteredModel.objects.filter(owner=owner, name=STARTER_MODEL_NAME).first()
        job = start_import(owner, source="starter", model=model, model_name="" if model else STARTER_MODEL_NAME,
                           description="The packaged starter model: SmolLM2-135M-Instruct (Apache-2.0), "
                                       "converted once from its GGUF. Everyone may chat with it.")
        VersionRequest.objects.filter(job=job).update(deploy_as=STARTER_ALIAS)
    return job


def _deploy_starter(owner, model: RegisteredModel, version: ModelVersion, name: str) -> None:
    from apps.serving.models import Deployment
    from apps.serving.services import create_deployment

    move_alias(owner, model, STARTER_ALIAS, version)
    if not Deployment.objects.filter(owner=owner, name=name).exists():
        create_deployment(owner, name=name, model=model, alias=STARTER_ALIAS, queue="serve")


# ---- aliases, notes, delete -----------------------------------------------------------------

def move_alias(user, model: RegisteredModel, name: str, version: ModelVersion) -> ModelAlias:
    _require_manager(user, model)
    if version.model_id != model.pk:
        raise RegistryError("version", gettext("%(version)s is not a version of %(model)s")
                                               % {"version": version, "model": model})
    name = (name or "").strip().lower()
    if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 40:
        raise RegistryError("alias", gettext("%(name)s: use letters, digits, - and _ (at most 40)")
                                             % {"name": repr(name)})
    with transaction.atomic():
        alias = ModelAlias.objects.select_for_update().filter(model=model, name=name).first()
        previous = alias.version if alias else None
        if alias is None:
            alias = ModelAlias.objects.create(model=model, name=name, version=version, updated_by=user)
        elif previous != version:
            alias.version, alias.updated_by = version, user
            alias.save(update_fields=["version", "updated_by", "updated_at"])
        else:
            return alias
        AliasMove.objects.create(alias=alias, from_version=previous, to_version=version, moved_by=user)
    return alias


def update_notes(user, version: ModelVersion, notes: str) -> None:
    _require_manager(user, version.model)
    ModelVersion.objects.filter(pk=version.pk).update(notes=notes[:20_000])


def usage_blockers(version: ModelVersion) -> list[str]:
    """Why a version may not be deleted now (empty when it may)."""
    blockers = [gettext("alias %(alias)s points to it") % {"alias": repr(a.name)} for a in version.aliases.all()]
    blockers += [gettext("%(child)s was derived from it") % {"child": child} for child in version.children.all()]
    blockers += [gettext("%(merged)s was merged from it") % {"merged": merged} for merged in version.merged_into.all()]
    blockers += jobs.active_use_blockers(version.uses)
    return blockers


def delete_version(user, version: ModelVersion) -> None:
    _require_manager(user, version.model)
    path = version.path
    with transaction.atomic():
        blockers = usage_blockers(version)
        if blockers:
            raise RegistryError("version", gettext("%(version)s is in use: %(reasons)s")
                                % {"version": version, "reasons": "; ".join(blockers)})
        try:
            version.delete()
        except IntegrityError as exc:  # a use appeared between the check and the delete
            raise RegistryError("version", gettext("%(version)s is in use: %(exc)s")
                                                   % {"version": version, "exc": exc}) from None
        # Files go only once the row is gone for good.
        transaction.on_commit(lambda: shutil.rmtree(path, ignore_errors=True))


def created_versions(job: Job) -> list[tuple[str, str]]:
    """The model versions a finished import, merge, quantize or training job registered (its page links them)."""
    from django.urls import reverse

    return [(gettext("model version %(version)s") % {"version": v}, reverse("version-detail", args=[v.pk]))
            for v in ModelVersion.objects.filter(source_job=job).select_related("model")]
