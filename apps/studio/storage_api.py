"""The storage API: what the Storage page shows (GET /storage), the retention settings (staff
change them: PUT /storage/retention) and the sweep run now (staff: POST /storage/sweep). Sizes
are bytes; nothing here names a server path."""
from __future__ import annotations

from datetime import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from ninja import Router, Schema
from ninja.errors import HttpError
from pydantic import Field

from apps.studio import storage
from apps.studio.models import MAX_RETENTION_DAYS, StorageSettings

router = Router(tags=["storage"])


class KindBytes(Schema):
    datasets: int
    models: int
    checkpoints: int
    caches: int
    uploads: int
    logs: int


class UserUsageOut(Schema):
    user_id: int | None = Field(description="null: bytes no database row claims (staff only)")
    user: str | None
    bytes: KindBytes
    total_bytes: int
    approximate: bool = Field(description="a folder walk stopped at its file cap: the figure is a lower bound")


class DiskOut(Schema):
    total_bytes: int
    used_bytes: int
    free_bytes: int


class RetentionOut(Schema):
    checkpoint_days: int = Field(description="days checkpoints of finished training runs are kept; 0 = forever")
    cache_days: int = Field(description="days prediction caches are kept after their last evaluation; 0 = forever")
    updated_by: str | None
    updated_at: datetime | None
    last_sweep_at: datetime | None


class ExpiredOut(Schema):
    kind: str
    label: str
    owner: str | None
    bytes: int
    finished_at: datetime


class StorageOut(Schema):
    disk: DiskOut
    users: list[UserUsageOut]
    retention: RetentionOut
    next_sweep: list[ExpiredOut] = Field(description="what the next retention sweep deletes (yours; staff: everyone's)")
    caches_waiting: bool = Field(description="an evaluation is queued or running: caches are swept after it")


class RetentionIn(Schema):
    checkpoint_days: int | None = Field(None, ge=0, le=MAX_RETENTION_DAYS)
    cache_days: int | None = Field(None, ge=0, le=MAX_RETENTION_DAYS)


class SweepOut(Schema):
    checkpoints: int
    caches: int
    bytes: int
    failed: int


def _retention(retention: StorageSettings) -> dict:
    return {"checkpoint_days": retention.checkpoint_days, "cache_days": retention.cache_days,
            "updated_by": retention.updated_by.username if retention.updated_by else None,
            "updated_at": retention.updated_at, "last_sweep_at": retention.last_sweep_at}


@router.get("/storage", response=StorageOut)
def usage(request):
    """Disk use of the data dir's file system, bytes per user and kind (yours; staff: everyone's),
    the retention settings and what the next sweep deletes."""
    found = storage.overview(request.auth)
    disk = found["disk"]
    return {
        "disk": {"total_bytes": disk["total"], "used_bytes": disk["used"], "free_bytes": disk["free"]},
        "users": [{"user_id": row["user_id"], "user": row["username"] or None, "bytes": row["bytes"],
                   "total_bytes": row["total"], "approximate": row["approximate"]} for row in found["users"]],
        "retention": _retention(found["retention"]),
        "next_sweep": [{k: item[k] for k in ("kind", "label", "owner", "bytes", "finished_at")} for item in found["next_sweep"]],
        "caches_waiting": found["caches_waiting"],
    }


@router.put("/storage/retention", response={200: RetentionOut, 403: dict, 422: dict})
def update_retention(request, payload: RetentionIn):
    """Staff only: days to keep checkpoints of finished runs and prediction caches (0 = forever)."""
    try:
        return _retention(storage.update_retention(request.auth, **payload.dict()))
    except PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except ValidationError as exc:
        raise HttpError(422, "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from None


@router.post("/storage/sweep", response={200: SweepOut, 403: dict})
def sweep(request):
    """Staff only: run the retention sweep now; what it deleted."""
    try:
        done = storage.run_sweep(request.auth)
    except PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    return {k: done[k] for k in ("checkpoints", "caches", "bytes", "failed")}
