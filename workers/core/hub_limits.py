"""A cap on what one hub import may download (model_import and dataset_import with a hub id).

The hub's file list gives each file's size, so an over-size repository is refused before a byte
is fetched; what lands on disk is measured again afterwards (a listing the hub could not give,
or one that changed), and removed when it is over. The cap is PUYU_MAX_HUB_DOWNLOAD_BYTES (the
settings parse and document it; the core reads the same variable, as paths.py reads the data dir).
"""
from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from workers.core.specs import SpecError

LIMIT_ENV = "PUYU_MAX_HUB_DOWNLOAD_BYTES"
DEFAULT_LIMIT = 50 * 2**30


def download_limit() -> int:
    raw = os.environ.get(LIMIT_ENV, "")
    return int(raw) if raw.strip().isdigit() and int(raw) > 0 else DEFAULT_LIMIT


def _refuse(hub_id: str, size: int, limit: int) -> SpecError:
    return SpecError("hub_id", f"{hub_id[:100]} is {size:,} bytes to download; the limit is {limit:,} ({LIMIT_ENV})")


def check_listing(hub_id: str, *, repo_type: str, patterns: list[str] | None = None, filename: str = "",
                  limit: int | None = None) -> int | None:
    """The bytes the download would fetch (every file matching `patterns`, or the one `filename`),
    or None when the hub cannot be asked (offline: the download reports that itself).
    SpecError("hub_id") when it is over the limit."""
    limit = limit or download_limit()
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        if filename:
            entries = [(e.path, getattr(e, "size", None)) for e in api.get_paths_info(hub_id, [filename], repo_type=repo_type)]
        else:
            info = api.repo_info(hub_id, repo_type=repo_type, files_metadata=True)
            entries = [(s.rfilename, s.size) for s in info.siblings or []
                       if not patterns or any(fnmatch.fnmatch(s.rfilename, p) for p in patterns)]
    except Exception:  # noqa: BLE001 - unreachable hub, unknown repository: the download says which
        return None
    if any(size is None for _, size in entries):
        return None
    total = sum(size for _, size in entries)
    if total > limit:
        raise _refuse(hub_id, total, limit)
    return total


def check_downloaded(hub_id: str, path: Path, limit: int | None = None) -> int:
    """Bytes under `path` (a file or folder); over the limit it is removed and SpecError raised."""
    limit = limit or download_limit()
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    total = sum(p.stat().st_size for p in files)
    if total > limit:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        raise _refuse(hub_id, total, limit)
    return total
