"""The only place that creates training jobs. A submission resolves what the user may see (base
model version or alias, dataset versions), builds the core's TrainSpec fields, runs the
pre-flight against the device of the workers serving the chosen queue, and only when it passes
creates — in one transaction — the job, what it will register, and what it reads."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext

from apps.accounts.visibility import PermissionDenied, can_manage, get_visible_or_404, require_manager  # noqa: F401
from apps.datasets.models import DatasetVersion, DatasetVersionUse
from apps.jobs import services as jobs
from apps.jobs.models import Job, WorkerNode
from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel, VersionKind, VersionRequest, VersionUse
from apps.studio import storage
from apps.training.models import TrainingRun
from workers.tasks import catalog

METHODS = ("pretrain", "cpt", "sft", "dpo")  # as the core's TrainSpec (no ORPO recipe there)
FINETUNES = ("full", "lora", "qlora")
ADAPTER_FINETUNES = ("lora", "qlora")
# Fields the service fills from the resolved inputs: a user (form, YAML, API, preset) never gives
# a server path.
PATH_FIELDS = ("base_model_dir", "train_files", "eval_files", "output_dir", "checkpoint_dir", "resume_from")
DEFAULT_DRY_RUN_STEPS = 5


class TrainingError(jobs.InvalidParams):
    """A refused submission; `.field` and `.reason` say what and where."""


class PreflightRefused(TrainingError):
    """The pre-flight found errors: nothing was stored. `.report` is the whole pre-flight report."""

    def __init__(self, report: dict) -> None:
        errors = report.get("errors") or [{"field": "spec", "message": "pre-flight failed"}]
        super().__init__(errors[0].get("field", "spec"), errors[0].get("message", ""))
        self.report = report
        self.errors = errors


# ---- inputs the user may see ---------------------------------------------------------------

def resolve_base(user, ref: str | int | None) -> ModelVersion | None:
    """`ref` is "v:<version id>", "a:<alias id>", a bare version id, or empty (pretraining)."""
    if ref in (None, "", 0):
        return None
    text = str(ref)
    kind, _, ident = text.partition(":") if ":" in text else ("v", "", text)
    if not ident.isdigit() or kind not in ("v", "a"):
        raise TrainingError("base", gettext("%(text)s is neither a model version nor an alias")
                                            % {"text": repr(text)})
    if kind == "a":
        alias = get_visible_or_404(ModelAlias.objects.select_related("version__model"), user, "model__owner", pk=int(ident))
        version = alias.version
    else:
        version = get_visible_or_404(ModelVersion.objects.select_related("model"), user, "model__owner", pk=int(ident))
    if version.kind == VersionKind.ADAPTER:
        raise TrainingError("base", gettext("%(version)s is an adapter; train on a base or merged version (merge it "
                                            "first)") % {"version": version})
    return version


def resolve_datasets(user, ids) -> list[DatasetVersion]:
    versions = []
    for ident in ids or []:
        versions.append(get_visible_or_404(DatasetVersion.objects.select_related("dataset"), user, "dataset__owner", pk=int(ident)))
    return versions


def _target_model(user, base: ModelVersion | None, model_id: int | None, model_name: str,
                  create: bool = True) -> RegisteredModel | None:
    """The model the trained version joins: the one chosen (the user must manage it), the user's
    model of that name (made when `create`), or the base's model when the user manages it."""
    if model_id:
        model = get_visible_or_404(RegisteredModel.objects.all(), user, pk=model_id)
        require_manager(user, model, "model")
        return model
    name = (model_name or "").strip()
    if name:
        existing = RegisteredModel.objects.filter(owner=user, name=name).first()
        return existing or (RegisteredModel.objects.create(owner=user, name=name) if create else None)
    if base is not None and can_manage(user, base.model):
        return base.model
    raise TrainingError("model_name", gettext("name the model the trained version joins"))


# ---- the target device ---------------------------------------------------------------------

def online_workers(queue: str):
    horizon = timezone.now() - timedelta(seconds=settings.WORKER_ONLINE_SECONDS)
    nodes = WorkerNode.objects.filter(stopped_at__isnull=True, last_seen_at__gte=horizon)
    return [node for node in nodes if queue in (node.queues or [])]


def queue_device(queue: str) -> dict:
    """The device a job on `queue` will get, from the online workers' heartbeats (the largest GPU
    among them, else the largest CPU host); with no worker online, this host's RAM."""
    gpus, cpus = [], []
    for node in online_workers(queue):
        devices = node.devices or {}
        for gpu in devices.get("gpus") or []:
            gpus.append({"kind": "cuda", "name": f"{gpu.get('name', 'GPU')} on {node.name}",
                         "memory_bytes": int(float(gpu.get("memory_gb") or 0) * 2**30)})
        if devices.get("memory_gb"):
            cpus.append({"kind": "cpu", "name": f"CPU on {node.name}", "memory_bytes": int(float(devices["memory_gb"]) * 2**30)})
    if gpus:
        return max(gpus, key=lambda d: d["memory_bytes"])
    if cpus:
        return max(cpus, key=lambda d: d["memory_bytes"])
    import psutil

    return {"kind": "cpu", "name": "CPU of this host (no worker online)", "memory_bytes": int(psutil.virtual_memory().total)}


# ---- building the spec ---------------------------------------------------------------------

@dataclass
class TrainingRequest:
    """Everything a submission says, from the form or the API (ids, never paths)."""

    method: str = "sft"
    finetune: str = "lora"
    base: str | int | None = None
    train_versions: list = field(default_factory=list)
    eval_versions: list = field(default_factory=list)
    model_id: int | None = None
    model_name: str = ""
    queue: str = "gpu"
    preset: str = ""
    fields: dict = field(default_factory=dict)  # hyperparameters (TrainSpec fields without paths)
    dry_run: bool = False
    title: str = ""


@dataclass
class Resolved:
    base: ModelVersion | None
    train: list[DatasetVersion]
    eval: list[DatasetVersion]
    params: dict
    uid: uuid.UUID
    device: dict


def _check_request(req: TrainingRequest) -> None:
    if req.method == "pretrain":
        req.finetune = "full"  # pretraining trains every weight (the core ignores the choice too)
    if req.method not in METHODS:
        raise TrainingError("method", gettext("%(method)s is not one of %(methods)s")
                                              % {"method": repr(req.method), "methods": ', '.join(METHODS)})
    if req.finetune not in FINETUNES:
        raise TrainingError("finetune", gettext("%(finetune)s is not one of %(finetunes)s")
                                                % {"finetune": repr(req.finetune), "finetunes": ', '.join(FINETUNES)})
    if req.queue not in settings.JOB_QUEUES:
        raise TrainingError("queue", gettext("unknown queue %(queue)s (known: %(known)s)")
                                             % {"queue": repr(req.queue),
                                                "known": ', '.join(settings.JOB_QUEUES)})
    given_paths = sorted(set(req.fields) & set(PATH_FIELDS))
    if given_paths:
        raise TrainingError(given_paths[0], gettext("is filled in from the chosen model and dataset versions; do "
                                                    "not set it"))
    # The core also takes a tokenizer folder for pretraining; a request may only ask for one
    # trained on the data, never name a folder (it could be another user's version).
    if req.fields.get("tokenizer", "train") != "train":
        raise TrainingError("tokenizer", gettext("only 'train' (a tokenizer trained on the data) may be chosen; a "
                                                 "folder is never accepted"))
    for name in ("method", "finetune"):
        if name in req.fields and req.fields[name] != getattr(req, name):
            raise TrainingError(name, gettext("set it with the %(name)s choice, not in the fields") % {"name": name})


def checkpoint_root() -> Path:
    return settings.DATA_DIR / "checkpoints"


def resolve(user, req: TrainingRequest) -> Resolved:
    """Resolve and build the spec fields (no database writes, except a new target model is not
    created here)."""
    _check_request(req)
    base = resolve_base(user, req.base)
    if base is None and req.method != "pretrain":
        raise TrainingError("base", gettext("%(method)s needs a base model version (only pretraining starts from "
                                            "scratch)") % {"method": req.method})
    train = resolve_datasets(user, req.train_versions)
    if not train:
        raise TrainingError("train_versions", gettext("choose at least one dataset version to train on"))
    formats = {v.canonical for v in train}
    if len(formats) > 1:
        raise TrainingError("train_versions", gettext("the chosen versions have different formats (%(formats)s); "
                                                      "pick one format") % {"formats": ', '.join(sorted(formats))})
    evals = resolve_datasets(user, req.eval_versions)
    uid = uuid.uuid4()
    params = {
        **req.fields,
        "method": req.method,
        "finetune": req.finetune,
        "train_files": [str(v.path) for v in train],
        "data_format": train[0].canonical,
        "eval_files": [str(v.path) for v in evals],
        "output_dir": str(settings.MODEL_STORE_DIR / str(uid)),
        "checkpoint_dir": str(checkpoint_root() / str(uid)),
    }
    if base is not None:
        params["base_model_dir"] = str(base.path)
    if req.dry_run:
        params["dry_run_steps"] = int(req.fields.get("dry_run_steps") or DEFAULT_DRY_RUN_STEPS)
    return Resolved(base, train, evals, params, uid, queue_device(req.queue))


def preflight(user, req: TrainingRequest) -> dict:
    """The pre-flight report for a submission (stores nothing). Input errors (what the user may
    not see, a bad choice) come back as report errors too, so the form shows them the same way."""
    try:
        resolved = resolve(user, req)
    except TrainingError as exc:
        return {"ok": False, "errors": [{"field": exc.field, "message": exc.reason}], "warnings": [], "memory": None,
                "suggestions": [], "sample": None}
    report = catalog.training_preflight(resolved.params, resolved.device)
    return {**report, "device": resolved.device}


def submit(user, req: TrainingRequest) -> Job:
    """Pre-flight, then the job, its version request (not for dry runs), and its uses, in one
    transaction. A refused pre-flight raises PreflightRefused and stores nothing."""
    resolved = resolve(user, req)
    _target_model(user, resolved.base, req.model_id, req.model_name, create=False)  # refuse before the slower checks
    report = catalog.training_preflight(resolved.params, resolved.device)
    if not report.get("ok"):
        raise PreflightRefused({**report, "device": resolved.device})
    with transaction.atomic():
        target = _target_model(user, resolved.base, req.model_id, req.model_name)
        return _create(user, req, resolved, target, title=req.title or _title(req, resolved, target))


def _title(req: TrainingRequest, resolved: Resolved, target: RegisteredModel) -> str:
    what = f"{req.method.upper()} {req.finetune}" if req.method in ("sft", "dpo", "orpo") else req.method.upper()
    base = f" of {resolved.base}" if resolved.base else ""
    data = ", ".join(str(v) for v in resolved.train)
    return f"{'Dry run: ' if req.dry_run else ''}{what}{base} on {data} → {target.name}"


def _create(user, req: TrainingRequest, resolved: Resolved, target: RegisteredModel, *, title: str,
            retry_of: Job | None = None, restarted_from: str = "", restarted_from_job: Job | None = None) -> Job:
    storage.require_free_space(*storage.training_needs(resolved.base, resolved.params), error=TrainingError)
    with transaction.atomic():
        job = jobs.submit_job(user, "train", resolved.params, queue=req.queue, title=title, retry_of=retry_of)
        TrainingRun.objects.create(
            job=job, method=req.method, finetune=req.finetune, base_version=resolved.base, target_model=target,
            preset=req.preset[:120], checkpoint_dir=resolved.params["checkpoint_dir"], dry_run=req.dry_run,
            restarted_from=restarted_from, restarted_from_job=restarted_from_job,
        )
        if not req.dry_run:
            adapter = req.finetune in ADAPTER_FINETUNES
            VersionRequest.objects.create(
                job=job, uid=resolved.uid, model=target, source="train", parent=resolved.base,
                kind=VersionKind.ADAPTER if adapter else VersionKind.BASE,
            )
        if resolved.base is not None:
            VersionUse.objects.create(version=resolved.base, job=job, role="base")
        for version in resolved.train:
            DatasetVersionUse.objects.get_or_create(version=version, job=job, role="train")
        for version in resolved.eval:
            DatasetVersionUse.objects.get_or_create(version=version, job=job, role="eval")
    return job


# ---- again: retry and restart from a kept checkpoint ---------------------------------------

def _request_of(run: TrainingRun) -> tuple[TrainingRequest, Resolved]:
    job = run.job
    uses = list(job.dataset_uses.select_related("version"))
    train = [u.version for u in uses if u.role == "train"]
    evals = [u.version for u in uses if u.role == "eval"]
    uid = uuid.uuid4()
    params = {**job.params, "output_dir": str(settings.MODEL_STORE_DIR / str(uid)),
              "checkpoint_dir": str(checkpoint_root() / str(uid))}
    req = TrainingRequest(method=run.method, finetune=run.finetune, queue=job.queue, preset=run.preset, dry_run=run.dry_run)
    return req, Resolved(run.base_version, train, evals, params, uid, {})


def retry_training_job(job: Job, user) -> Job:
    """RETRY_HANDLERS["train"]: the same inputs into a fresh output folder and checkpoint folder."""
    run = TrainingRun.objects.select_related("base_version", "target_model").get(job=job)
    req, resolved = _request_of(run)
    return _create(user, req, resolved, run.target_model, title=job.title, retry_of=job,
                   restarted_from=run.restarted_from, restarted_from_job=run.restarted_from_job)


def kept_checkpoints(run: TrainingRun) -> list[dict]:
    """The complete checkpoints in the run's folder (a manifest written last marks one complete),
    oldest first: [{"name", "step", "path", "created"}]."""
    root = Path(run.checkpoint_dir)
    found = []
    if not root.is_dir():
        return found
    for folder in root.glob("checkpoint-*"):
        manifest = folder / "manifest.json"
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue  # no manifest: incomplete
        if data.get("complete"):
            found.append({"name": folder.name, "step": int(data.get("step", 0)), "path": str(folder),
                          "created": data.get("created")})
    return sorted(found, key=lambda c: c["step"])


def restart_from_checkpoint(user, job: Job, checkpoint_name: str) -> Job:
    """A new job from one of `job`'s kept checkpoints: same inputs, a fresh output uid. The
    checkpoint is chosen by name among the kept ones, never as a path from the request."""
    run = TrainingRun.objects.select_related("base_version", "target_model", "job").get(job=job)
    if not can_manage(user, job):
        raise PermissionDenied(gettext("only the owner or staff can restart this run"))
    checkpoint = next((c for c in kept_checkpoints(run) if c["name"] == checkpoint_name), None)
    if checkpoint is None:
        raise TrainingError("checkpoint", gettext("%(checkpoint_name)s is not a kept, complete checkpoint of %(job)s")
                                                  % {"checkpoint_name": repr(checkpoint_name), "job": job})
    req, resolved = _request_of(run)
    resolved.params["resume_from"] = checkpoint["path"]
    req.dry_run = False
    resolved.params.pop("dry_run_steps", None)
    return _create(user, req, resolved, run.target_model, title=f"{job.title} (from {checkpoint['name']})"[:200],
                   restarted_from=checkpoint["path"], restarted_from_job=job)


# ---- what a run shows ----------------------------------------------------------------------

def recent_samples(run: TrainingRun, limit: int = 20) -> list[dict]:
    """The last sample generations the core appended to {checkpoint_dir}/samples.jsonl, newest first."""
    path = Path(run.checkpoint_dir) / "samples.jsonl"
    if not path.is_file():
        return []
    samples = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[-limit * 4:]:
        try:
            sample = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(sample, dict):
            samples.append(sample)
    return list(reversed(samples))[:limit]


def spec_yaml(job: Job) -> str:
    """The run's spec as users may download it: paths relative to the data dir, no secrets."""
    import yaml

    return yaml.safe_dump(catalog.public_params(job.kind, job.params), sort_keys=True, allow_unicode=True)
