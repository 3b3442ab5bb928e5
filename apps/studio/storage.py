"""The data dir's disk: who uses how much of it for what, what retention deletes, and the
free-space check before a job that writes a lot.

Usage, per owner and kind (KINDS). Each store folder's entries are read once (os.scandir, never
following a symlink) and every entry is matched to the database row it belongs to: a dataset
version's file, a model version's folder, a training run's checkpoint folder, an evaluation's
prediction cache and per-sample files, a pending upload, a job's log folder. A row gives the
owner (the owner of the dataset, the model, the job) and, where it records one, the size
(`size_bytes`); other entries are measured by a bounded walk (FILE_CAP entries, results cached
for CACHE_SECONDS). What no row claims is "unattributed" (shown to staff only). Names on disk are
only matched against rows; nothing here takes a name or a path from a request.

Retention (StorageSettings, edited by staff): checkpoints of finished training runs and
evaluation caches older than N days are deleted by `sweep`, which the maintenance beat task runs
at most once per SWEEP_INTERVAL (and staff may run now). `plan` lists exactly what the next sweep
deletes. Registered versions (under models/) are never touched.

Pages and the API show labels made from rows (a run's title, a version's name), never a server
path.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from apps.datasets.models import DatasetRequest, DatasetUpload, DatasetVersion
from apps.jobs.models import FINISHED_STATUSES, Job, JobStatus
from apps.leaderboards.models import EvaluationRun
from apps.registry.models import ModelVersion, VersionRequest
from apps.studio.models import StorageSettings
from apps.training.models import TrainingRun
from workers.tasks.catalog import InvalidParams, validate_params

log = logging.getLogger(__name__)

KINDS = {
    "datasets": _("Datasets"),
    "models": _("Models"),
    "checkpoints": _("Checkpoints"),
    "caches": _("Prediction caches"),
    "uploads": _("Uploads"),
    "logs": _("Job logs"),
}
KIND_HELP = {
    "datasets": _("the files of dataset versions"),
    "models": _("the folders of model versions (base, adapter, merged, quantized) and of imports in progress"),
    "checkpoints": _("the checkpoints and sample generations of training runs"),
    "caches": _("cached model predictions and per-sample files of evaluations, and arena vote exports"),
    "uploads": _("uploaded files waiting to become a dataset or model version"),
    "logs": _("the full log files of jobs"),
}

FILE_CAP = 100_000  # entries one walk visits before it stops and reports a lower bound
CACHE_SECONDS = 60
SWEEP_INTERVAL = timedelta(hours=1)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
PREDICTIONS = "predictions.sqlite"  # the evaluation core's cache file (workers/core/evaluation/runner.py)
SAMPLES_FILE = re.compile(r"^samples-[\w.\-]{1,200}\.jsonl$")  # the per-sample files the runner names
CHECKPOINT = re.compile(r"^checkpoint-\d+$")
STAGING = ".staging"  # a checkpoint being written (workers/core/training/checkpoints.py)


def checkpoint_root() -> Path:
    return settings.DATA_DIR / "checkpoints"


def cache_dir() -> Path:
    return settings.EVALUATION_DIR / "cache"


def arena_dir() -> Path:
    return settings.EVALUATION_DIR / "arena"


def _child_name(stored: str, root: Path) -> str | None:
    """The entry name when `stored` (a path a row recorded) is an immediate child of `root`, by
    the path as written (symlinks are not resolved: an entry that is a link is never followed)."""
    path = Path(os.path.normpath(stored or "/"))
    return path.name if path.parent == Path(os.path.normpath(root)) and path.name not in ("", ".", "..") else None


# ---- measuring -----------------------------------------------------------------------------

@dataclass
class Measured:
    bytes: int = 0
    complete: bool = True  # False: the walk stopped at FILE_CAP entries; `bytes` is a lower bound


def _walk(path: Path) -> Measured:
    # Hand-written: os.walk would follow nothing but stats every entry twice and has no cap;
    # du is not everywhere and would need a subprocess.
    try:
        top = os.stat(path, follow_symlinks=False)
    except OSError:
        return Measured()
    if not os.path.isdir(path) or os.path.islink(path):
        return Measured(top.st_size if not os.path.islink(path) else 0)
    total, seen, stack = 0, 0, [os.fspath(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > FILE_CAP:
                        return Measured(total, complete=False)
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue  # removed while we looked
        except OSError:
            continue
    return Measured(total)


def _cache_key(*parts) -> str:
    generation = cache.get_or_set("storage:generation", 0, None)
    return f"storage:{generation}:" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def measure(path: Path) -> Measured:
    """Bytes in a file or folder (links are neither followed nor counted), cached CACHE_SECONDS."""
    key = _cache_key("walk", path)
    found = cache.get(key)
    if found is None:
        found = _walk(Path(path))
        cache.set(key, found, CACHE_SECONDS)
    return found


def forget_measurements() -> None:
    """After deleting: the next page shows what is left, not a cached figure (this process)."""
    try:
        cache.incr("storage:generation")
    except ValueError:
        cache.set("storage:generation", 1, None)


def _entries(root: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(root) as entries:
            return [entry for _, entry in zip(range(FILE_CAP), entries)]
    except OSError:
        return []


def disk() -> dict:
    """The file system holding the data dir: total, used and free bytes."""
    usage = shutil.disk_usage(settings.DATA_DIR)
    return {"total": usage.total, "used": usage.used, "free": usage.free}


# ---- usage per owner and kind ----------------------------------------------------------------

@dataclass
class Usage:
    by_owner: dict = field(default_factory=dict)  # owner id (None: unattributed) -> {kind: bytes}
    approximate: set = field(default_factory=set)  # owner ids with a figure from a walk that hit FILE_CAP

    def add(self, owner_id, kind: str, n: int, complete: bool = True) -> None:
        kinds = self.by_owner.setdefault(owner_id, dict.fromkeys(KINDS, 0))
        kinds[kind] += int(n)
        if not complete:
            self.approximate.add(owner_id)

    def add_entries(self, kind: str, root: Path, claims: dict, skip=()) -> None:
        """Every entry of `root`: a claimed one ({name: (owner id, recorded size or 0)}) to its
        owner, by its recorded size when there is one, else measured; the rest unattributed."""
        for entry in _entries(root):
            if entry.name in skip:
                continue
            owner_id, recorded = claims.get(entry.name, (None, 0))
            if recorded and not entry.is_symlink():
                self.add(owner_id, kind, recorded)
            else:
                found = measure(Path(entry.path))
                self.add(owner_id, kind, found.bytes, found.complete)


def _claims(rows, name) -> dict:
    """{entry name: (owner id, recorded size)} from (key, owner id, size) rows; the first row wins."""
    claims: dict = {}
    for row in rows:
        claims.setdefault(name(row), (row[1], row[2]))
    return claims


def collect_usage() -> Usage:
    """Everyone's usage (a page filters it to what the viewer may see)."""
    usage = Usage()
    # Datasets: a version's file "<uid>.jsonl"; a dataset job's output before it is registered.
    claims = _claims(DatasetVersion.objects.values_list("uid", "dataset__owner_id", "size_bytes"),
                     lambda r: f"{r[0]}.jsonl")
    for uid, owner_id in DatasetRequest.objects.values_list("uid", "job__owner_id"):
        claims.setdefault(f"{uid}.jsonl", (owner_id, 0))
    usage.add_entries("datasets", settings.DATASET_STORE_DIR, claims)
    # Models: a version's folder "<uid>"; a registry or training job's output before it is registered.
    claims = _claims(ModelVersion.objects.values_list("uid", "model__owner_id", "size_bytes"), lambda r: str(r[0]))
    for uid, owner_id in VersionRequest.objects.values_list("uid", "job__owner_id"):
        claims.setdefault(str(uid), (owner_id, 0))
    usage.add_entries("models", settings.MODEL_STORE_DIR, claims)
    # Checkpoints: each training run's folder, as its row recorded it.
    claims = {}
    for stored, owner_id in TrainingRun.objects.values_list("checkpoint_dir", "job__owner_id"):
        name = _child_name(stored, checkpoint_root())
        if name:
            claims.setdefault(name, (owner_id, 0))
    usage.add_entries("checkpoints", checkpoint_root(), claims)
    _cache_usage(usage)
    # Uploads: a dataset upload's file (its dataset's owner), a model archive a registry job imports.
    claims = _claims(DatasetUpload.objects.values_list("stored_name", "dataset__owner_id", "size_bytes"),
                     lambda r: r[0])
    for name, owner_id in VersionRequest.objects.exclude(upload="").values_list("upload", "job__owner_id"):
        claims.setdefault(name, (owner_id, 0))
    usage.add_entries("uploads", settings.UPLOAD_DIR, claims)
    # Logs: a folder per job id.
    entries = [e.name for e in _entries(settings.JOB_LOG_DIR) if e.name.isdigit()]
    claims = {str(pk): (owner_id, 0) for pk, owner_id in
              Job.objects.filter(pk__in=[int(n) for n in entries]).values_list("pk", "owner_id")}
    usage.add_entries("logs", settings.JOB_LOG_DIR, claims)
    return usage


def _cache_owners() -> dict[str, tuple[int, str]]:
    """{prediction-cache model key: (owner id, label)}: the key belongs to whoever first evaluated
    that model (the run that filled the cache); the label names the latest run's target."""
    owners: dict = {}
    for key, owner_id, label in (EvaluationRun.objects.exclude(model_hash="").order_by("created_at", "id")
                                 .values_list("model_hash", "job__owner_id", "target_label")):
        owners[key] = (owners[key][0] if key in owners else owner_id, label)
    return owners


def _sample_owners() -> dict[str, int]:
    """{per-sample file name: owner id} from the results of evaluation jobs (the earliest run wins)."""
    owners: dict = {}
    for result, owner_id in (Job.objects.filter(kind="evaluate").exclude(result=None).order_by("created_at", "id")
                             .values_list("result", "owner_id")):
        for name in _samples_files(result):
            owners.setdefault(name, owner_id)
    return owners


def _samples_files(result) -> list[str]:
    benchmarks = (result or {}).get("benchmarks") if isinstance(result, dict) else None
    names = [b.get("samples_file", "") for b in (benchmarks or {}).values() if isinstance(b, dict)] if isinstance(
        benchmarks, dict) else []
    return [n for n in names if isinstance(n, str) and SAMPLES_FILE.match(n)]


def _prediction_shares(path: Path) -> dict[str, int] | None:
    """{model key: bytes of its rows} in the prediction cache, read-only; None when unreadable
    (being written, or not a cache). Cached like a walk: a GROUP BY scans the whole table."""
    key = _cache_key("predictions", path)
    shares = cache.get(key)
    if shares is None:
        try:
            db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2)
            try:
                shares = dict(db.execute("SELECT model, SUM(LENGTH(model) + LENGTH(benchmark) + LENGTH(raw) + 16) "
                                         "FROM predictions GROUP BY model"))
            finally:
                db.close()
        except sqlite3.Error as exc:
            log.warning("storage: cannot read the prediction cache (%s)", exc)
            shares = {}
        cache.set(key, shares, CACHE_SECONDS)
    return shares or None


def _prediction_files() -> list[Path]:
    return [p for p in (cache_dir() / (PREDICTIONS + s) for s in ("", "-wal", "-shm", "-journal")) if p.is_file()]


def _cache_usage(usage: Usage) -> None:
    # The prediction cache is one SQLite file shared by every run: its bytes (with its journal)
    # are split between model keys in proportion to their rows; a key no run recorded is unattributed.
    size = sum(measure(p).bytes for p in _prediction_files())
    shares = _prediction_shares(cache_dir() / PREDICTIONS) if size else None
    if shares:
        owners, total, split = _cache_owners(), sum(shares.values()) or 1, {}
        for key, n in shares.items():
            owner_id = owners[key][0] if key in owners else None
            split[owner_id] = split.get(owner_id, 0) + n
        for owner_id, n in split.items():
            usage.add(owner_id, "caches", size * n // total)
    elif size:
        usage.add(None, "caches", size)
    skip = {PREDICTIONS + s for s in ("", "-wal", "-shm", "-journal")}
    usage.add_entries("caches", cache_dir(), {name: (owner_id, 0) for name, owner_id in _sample_owners().items()}, skip=skip)
    claims = {}
    for params, owner_id in Job.objects.filter(kind="arena_ratings").values_list("params", "owner_id"):
        name = _child_name(str((params or {}).get("votes_path", "")), arena_dir())
        if name:
            claims.setdefault(name, (owner_id, 0))
    usage.add_entries("caches", arena_dir(), claims)
    # Anything else under the evaluations folder.
    usage.add_entries("caches", settings.EVALUATION_DIR, {}, skip={cache_dir().name, arena_dir().name})


def usage_rows(user, usage: Usage | None = None) -> list[dict]:
    """What `user` may see: staff everyone's (and the unattributed bytes), anyone else their own.
    [{"user_id", "username", "bytes": {kind: n}, "total", "approximate"}], largest first."""
    usage = usage or collect_usage()
    owners = dict(get_user_model().objects.filter(pk__in=[o for o in usage.by_owner if o]).values_list("pk", "username"))
    rows = []
    for owner_id, kinds in usage.by_owner.items():
        if not user.is_staff and owner_id != user.pk:
            continue
        rows.append({"user_id": owner_id, "username": owners.get(owner_id, "") if owner_id else "",
                     "bytes": kinds, "total": sum(kinds.values()), "approximate": owner_id in usage.approximate})
    if not user.is_staff and not rows:
        rows.append({"user_id": user.pk, "username": user.username, "bytes": dict.fromkeys(KINDS, 0), "total": 0,
                     "approximate": False})
    rows.sort(key=lambda r: (r["user_id"] is None, -r["total"], r["username"]))
    return rows


def kind_totals(rows: list[dict]) -> dict:
    return {kind: sum(r["bytes"][kind] for r in rows) for kind in KINDS} | {"total": sum(r["total"] for r in rows)}


# ---- retention -----------------------------------------------------------------------------

@dataclass
class Expired:
    """One thing the next sweep deletes. `paths` and `keys` are for the sweep only: pages and
    the API show `label`, `owner`, `bytes` and `finished_at`."""

    kind: str  # "checkpoints" or "caches"
    label: str
    owner_id: int | None
    bytes: int
    finished_at: datetime
    paths: list[Path] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # prediction-cache model keys


@dataclass
class Plan:
    items: list[Expired]
    checkpoint_cutoff: datetime | None  # None: kept forever
    cache_cutoff: datetime | None
    caches_waiting: bool = False  # an evaluation is queued or running: caches are left for now


def plan(now: datetime | None = None, retention: StorageSettings | None = None) -> Plan:
    now = now or timezone.now()
    retention = retention or StorageSettings.load()
    checkpoints = now - timedelta(days=retention.checkpoint_days) if retention.checkpoint_days else None
    caches = now - timedelta(days=retention.cache_days) if retention.cache_days else None
    items = _expired_checkpoints(checkpoints) if checkpoints else []
    waiting = False
    if caches:
        # A running evaluation may be reading (or about to record) the very cache rows and files
        # that look expired; its model key is known only once it succeeds. Wait for it.
        waiting = Job.objects.filter(kind__in=("evaluate", "arena_ratings"), status__in=ACTIVE).exists()
        if not waiting:
            items += _expired_caches(caches)
    return Plan(items, checkpoints, caches, waiting)


def _expired_checkpoints(cutoff: datetime) -> list[Expired]:
    # A finished run whose checkpoint a queued or running restart resumes from keeps them all.
    resumed = set(TrainingRun.objects.filter(job__status__in=ACTIVE, restarted_from_job__isnull=False)
                  .values_list("restarted_from_job_id", flat=True))
    runs = (TrainingRun.objects.select_related("job").filter(job__status__in=FINISHED_STATUSES, job__finished_at__lt=cutoff)
            .exclude(job_id__in=resumed).order_by("job__finished_at", "pk"))
    root = checkpoint_root()
    items = []
    for run in runs:
        name = _child_name(run.checkpoint_dir, root)
        folder = root / name if name else None
        if folder is None or folder.is_symlink() or not folder.is_dir():
            continue
        doomed = [Path(e.path) for e in _entries(folder)
                  if (CHECKPOINT.match(e.name) or e.name == STAGING) and e.is_dir(follow_symlinks=False)]
        if doomed:
            size = sum(measure(p).bytes for p in doomed)
            count = sum(1 for p in doomed if p.name != STAGING)
            label = ngettext("%(count)d checkpoint of training run #%(job)d: %(title)s",
                             "%(count)d checkpoints of training run #%(job)d: %(title)s", count) % {
                "count": count, "job": run.job_id, "title": run.job.display_title}
            items.append(Expired("checkpoints", label, run.job.owner_id, size, run.job.finished_at, paths=doomed))
    return items


def _expired_caches(cutoff: datetime) -> list[Expired]:
    items = []
    finished = Job.objects.filter(status__in=FINISHED_STATUSES, finished_at__isnull=False)
    # Prediction-cache rows: a model key whose every run finished before the cutoff.
    path = cache_dir() / PREDICTIONS
    shares = _prediction_shares(path) if path.is_file() else None
    if shares:
        size, total = sum(measure(p).bytes for p in _prediction_files()), sum(shares.values()) or 1
        runs: dict = {}
        for run in (EvaluationRun.objects.select_related("job").filter(model_hash__in=list(shares))
                    .order_by("created_at", "id")):
            runs.setdefault(run.model_hash, []).append(run)
        for key, key_runs in runs.items():
            latest = max((r.job.finished_at for r in key_runs if r.job.finished_at), default=None)
            if latest is None or latest >= cutoff or any(r.job.status not in FINISHED_STATUSES for r in key_runs):
                continue
            label = ngettext("Cached predictions of %(target)s (%(runs)d evaluation)",
                             "Cached predictions of %(target)s (%(runs)d evaluations)", len(key_runs)) % {
                "target": key_runs[-1].target_label, "runs": len(key_runs)}
            items.append(Expired("caches", label, key_runs[0].job.owner_id, size * shares[key] // total, latest,
                                 keys=[key]))
    # Per-sample files: named by runs that finished before the cutoff and by no later one.
    kept: set = set()
    old: dict = {}
    for job in Job.objects.filter(kind="evaluate").exclude(result=None).order_by("finished_at", "id"):
        names = _samples_files(job.result)
        if job.status in FINISHED_STATUSES and job.finished_at and job.finished_at < cutoff:
            for name in names:
                old[name] = job
        else:
            kept.update(names)
    by_job: dict = {}
    for name, job in old.items():
        file = cache_dir() / name
        if name not in kept and file.is_file() and not file.is_symlink():
            by_job.setdefault(job, []).append(file)
    for job, files in by_job.items():
        label = str(_("Per-sample files of evaluation job #%(job)d: %(title)s") % {"job": job.pk, "title": job.display_title})
        items.append(Expired("caches", label, job.owner_id, sum(measure(f).bytes for f in files), job.finished_at,
                             paths=files))
    # Arena vote exports of finished ratings jobs.
    for job in finished.filter(kind="arena_ratings", finished_at__lt=cutoff).order_by("finished_at", "id"):
        name = _child_name(str((job.params or {}).get("votes_path", "")), arena_dir())
        file = arena_dir() / name if name else None
        if file is not None and file.is_file() and not file.is_symlink():
            label = str(_("Vote export of arena ratings job #%(job)d") % {"job": job.pk})
            items.append(Expired("caches", label, job.owner_id, measure(file).bytes, job.finished_at, paths=[file]))
    return items


def visible_items(user, items: list[Expired]) -> list[Expired]:
    return items if user.is_staff else [i for i in items if i.owner_id == user.pk]


def sweep_if_due(now: datetime | None = None) -> dict | None:
    """The maintenance beat task's call: sweep when the last sweep is SWEEP_INTERVAL old (claimed by
    a conditional UPDATE, so two ticks never both sweep); None when it is not due."""
    now = now or timezone.now()
    retention = StorageSettings.load()
    if not (retention.checkpoint_days or retention.cache_days):
        return None
    due = Q(last_sweep_at__isnull=True) | Q(last_sweep_at__lt=now - SWEEP_INTERVAL)
    if not StorageSettings.objects.filter(due, pk=retention.pk).update(last_sweep_at=now):
        return None
    return sweep(now, by="beat")


def sweep(now: datetime | None = None, by: str = "") -> dict:
    """Delete what `plan` lists, logging each deletion; returns (and records) what was deleted."""
    now = now or timezone.now()
    retention = StorageSettings.load()
    found = plan(now, retention)
    done = {"at": now.isoformat(), "by": by, "checkpoints": 0, "caches": 0, "bytes": 0, "failed": 0}
    keys = [key for item in found.items for key in item.keys]
    keys_deleted = _delete_predictions(keys) if keys else False
    for item in found.items:
        try:
            for path in item.paths:
                _delete(path)
            if item.keys and not keys_deleted:
                raise OSError("the prediction cache could not be written")
        except OSError as exc:
            done["failed"] += 1
            log.warning("retention: could not delete %s (owner id %s): %s", item.label, item.owner_id, exc)
            continue
        done[item.kind] += 1
        done["bytes"] += item.bytes
        log.info("retention: deleted %s (owner id %s, %s bytes, finished %s, by %s)", item.label, item.owner_id,
                 item.bytes, item.finished_at.isoformat(), by or "-")
    StorageSettings.objects.filter(pk=retention.pk).update(last_sweep_at=now, last_sweep=done)
    forget_measurements()
    return done


def _delete(path: Path) -> None:
    if path.is_symlink():
        raise OSError(f"{path.name} is a link; links are never followed")
    if path.is_dir():
        # Like the trainer's own pruning: the manifest first, so a crash mid-delete leaves an
        # incomplete checkpoint (never resumed from), never a damaged one that looks complete.
        (path / "manifest.json").unlink(missing_ok=True)
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _delete_predictions(keys: list[str]) -> bool:
    try:
        db = sqlite3.connect(cache_dir() / PREDICTIONS, timeout=10)
        try:
            with db:
                db.executemany("DELETE FROM predictions WHERE model = ?", [(k,) for k in keys])
            db.execute("VACUUM")  # give the pages back to the file system
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.warning("retention: the prediction cache could not be cleaned (%s); trying again next sweep", exc)
        return False
    return True


# ---- room for a job's output -----------------------------------------------------------------

class InsufficientSpace(InvalidParams):
    """The data dir would not hold a job's output; names the field and the sizes."""


def require_free_space(bytes_needed: int, field: str, *, error: type[InvalidParams] = InsufficientSpace) -> None:
    """Refuse (raise `error(field, reason)`, the caller's own refusal class) when the data dir's
    file system has less than `bytes_needed` free; call it before anything is stored."""
    if bytes_needed <= 0:
        return
    try:
        free = shutil.disk_usage(settings.DATA_DIR).free
    except OSError as exc:  # the job itself fails clearly if the disk is really full
        log.warning("storage: cannot read the free space of the data dir (%s); not checking", exc)
        return
    if bytes_needed > free:
        raise error(field, str(_("needs about %(needed)s, the data dir has %(free)s free: delete old checkpoints on the "
                                 "Storage page or free disk") % {"needed": _size(bytes_needed), "free": _size(free)}))


def _size(n: int) -> str:
    # Django's sizes (translated units) keep a no-break space for pages; an error is plain text.
    return filesizeformat(n).replace("\xa0", " ")


DISK = "disk"  # the field named when no form field holds what takes the space


def _version_bytes(version: ModelVersion) -> int:
    return version.size_bytes or measure(version.path).bytes


def training_needs(base: ModelVersion | None, params: dict) -> tuple[int, str]:
    """(bytes, field) a training run writes, from its base's size and its save settings:
        trained    the base's parameters (full) or about 2 x lora_r / hidden_size of them (LoRA: an
                   r x (in + out) pair per adapted matrix; the embeddings are not adapted, so this errs high)
        checkpoint trained x 12 bytes (fp32 weights or adapter, and AdamW's two fp32 moments)
        kept       keep_checkpoints + 1 (a new checkpoint is complete before the oldest is pruned),
                   at most one per save
        final      trained x 4 bytes (the fp32 model or adapter)
    A dry run writes neither; pretraining from scratch has no base to size from (not checked)."""
    try:
        spec = validate_params("train", params)
    except InvalidParams:
        return 0, DISK  # the submission refuses it anyway, naming the field
    if base is None or spec.get("dry_run_steps"):
        return 0, DISK
    parameters = base.parameter_count or _version_bytes(base) // 2  # bf16 when only the size is known
    trained = parameters
    if spec["finetune"] != "full" and spec["method"] != "pretrain":
        trained = min(parameters, parameters * 2 * int(spec["lora_r"]) // max(_hidden_size(base), 1))
    saves = math.ceil(spec["max_steps"] / spec["save_every"]) if spec["max_steps"] else spec["keep_checkpoints"] + 1
    kept = min(spec["keep_checkpoints"] + 1, max(saves, 1))
    return kept * trained * 12 + trained * 4, DISK


def _hidden_size(version: ModelVersion) -> int:
    import json

    try:
        with open(version.path / "config.json", encoding="utf-8") as fh:
            config = json.loads(fh.read(1 << 20))
        config = config.get("text_config") or config
        return int(config.get("hidden_size") or config.get("n_embd") or 0) or 512
    except (OSError, ValueError, AttributeError, TypeError):
        return 512  # small: the estimate errs high


def registry_needs(kind: str, params: dict, uses) -> tuple[int, str]:
    """(bytes, field) a registry job writes: about its source's size (an import's folder or
    archive, a merge's base, a quantization's source; a hub import is checked by its own limit)."""
    if kind == "model_import":
        source = params.get("source")
        if source in ("folder", "archive") and params.get("path"):
            return measure(Path(params["path"])).bytes, source
        return 0, DISK
    role = {"model_merge": "base", "model_quantize": "source"}.get(kind)
    return sum(_version_bytes(version) for version, used_as in uses if used_as == role), DISK


COMPRESSED = (".gz", ".parquet")
# A normalised JSONL version re-encodes every record (field names, JSON escapes) and the import
# keeps a report of excluded lines: about twice a text upload; compressed uploads expand more.
TEXT_FACTOR, COMPRESSED_FACTOR = 2, 6


def dataset_needs(kind: str, request: dict) -> tuple[int, str]:
    """(bytes, field) a dataset job writes: an import about its upload x a small factor, a
    cleaning at most its input; a generator's output is small (not checked)."""
    upload, parent = request.get("upload"), request.get("parent")
    if kind == "dataset_import" and upload is not None:
        size = upload.size_bytes or measure(upload.path).bytes
        factor = COMPRESSED_FACTOR if upload.stored_name.lower().endswith(COMPRESSED) else TEXT_FACTOR
        return size * factor, "file"
    if kind == "dataset_clean" and parent is not None:
        return parent.size_bytes, DISK
    return 0, DISK


# ---- what the page and the API show ----------------------------------------------------------

def update_retention(user, *, checkpoint_days: int | None = None, cache_days: int | None = None) -> StorageSettings:
    """Staff change the retention settings (PermissionDenied for anyone else); values are checked
    by the model's validators (ValidationError naming the field)."""
    if not user.is_staff:
        raise PermissionDenied(_("only staff change the retention settings"))
    retention = StorageSettings.load()
    for name, value in (("checkpoint_days", checkpoint_days), ("cache_days", cache_days)):
        if value is not None:
            setattr(retention, name, value)
    retention.updated_by, retention.updated_at = user, timezone.now()
    retention.full_clean()
    retention.save()
    return retention


def run_sweep(user) -> dict:
    if not user.is_staff:
        raise PermissionDenied(_("only staff run the retention sweep"))
    return sweep(by=user.username)


def overview(user) -> dict:
    """Everything the Storage page and GET /api/storage show `user`, without a server path."""
    retention = StorageSettings.load()
    rows = usage_rows(user)
    found = plan(retention=retention)
    items = visible_items(user, found.items)
    names = dict(get_user_model().objects.filter(pk__in={i.owner_id for i in items if i.owner_id})
                 .values_list("pk", "username"))
    for row in rows:
        row["cells"] = [row["bytes"][kind] for kind in KINDS]
    return {
        "disk": disk(),
        "kinds": [{"name": kind, "label": label, "help": KIND_HELP[kind]} for kind, label in KINDS.items()],
        "users": rows,
        "totals": kind_totals(rows),
        "retention": retention,
        "next_sweep": [{"kind": item.kind, "kind_label": KINDS[item.kind], "label": item.label,
                        "owner": names.get(item.owner_id), "bytes": item.bytes, "finished_at": item.finished_at}
                       for item in items],
        "next_sweep_bytes": sum(item.bytes for item in items),
        "caches_waiting": found.caches_waiting,
        "checkpoint_cutoff": found.checkpoint_cutoff,
        "cache_cutoff": found.cache_cutoff,
    }
