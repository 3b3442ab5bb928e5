"""Atomic checkpoints: `{checkpoint_dir}/checkpoint-{step}/` with manifest.json written LAST.

The Trainer writes a checkpoint (weights or adapter, optimizer, scheduler, RNG states, trainer
state with the step and data position) into a staging folder; `commit_checkpoint` then fsyncs
every file, renames the folder into place and writes the manifest. A folder without a valid
manifest is a checkpoint that a crash interrupted: it is never resumed from (transformers'
`resume_from_checkpoint=True` would crash on it, or resume from half-written tensors) and is
removed by `clean_incomplete`. Only the newest `keep` complete checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from workers.core.modelstore.atomic import DiskFull, disk_full_is_clear

MANIFEST = "manifest.json"
STAGING = ".staging"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _fsync_tree(folder: Path) -> list[str]:
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            files.append(str(path.relative_to(folder)))
    _fsync_dir(folder)
    return files


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int, files: list[str]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump({"step": step, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "files": files, "complete": True}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.rename(tmp, folder / MANIFEST)
    _fsync_dir(folder)


@contextmanager
def writing(step: int):
    """Around the Trainer's own save into the staging folder: a full disk is a DiskFull naming the
    checkpoint (the staging folder is removed by the recipe's cleanup; the previous checkpoints
    stay the latest complete ones)."""
    with disk_full_is_clear(f"checkpoint-{step}"):
        yield


def commit_checkpoint(staged: Path, checkpoint_dir: Path, step: int, keep: int) -> Path:
    """Move a fully written staging folder to checkpoint_dir/checkpoint-{step}, manifest last,
    then prune to the newest `keep` complete checkpoints. If the disk fills up on the way, the
    staged and the half-committed folder are removed (older checkpoints are untouched: pruning
    comes after the manifest) and DiskFull says so."""
    staged, checkpoint_dir = Path(staged), Path(checkpoint_dir)
    final = checkpoint_dir / f"checkpoint-{step}"
    try:
        with disk_full_is_clear(f"checkpoint-{step}"):
            files = _fsync_tree(staged)
            if final.exists():  # an earlier attempt's incomplete (or same-step) folder
                shutil.rmtree(final)
            os.rename(staged, final)
            _fsync_dir(checkpoint_dir)
            write_manifest(final, step, files)
    except DiskFull:  # (another error is left as a crash would leave it: clean_incomplete removes it)
        shutil.rmtree(staged, ignore_errors=True)
        if read_manifest(final) is None:
            shutil.rmtree(final, ignore_errors=True)
        raise
    prune(checkpoint_dir, keep)
    return final


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        return None
    if not all((Path(folder) / name).is_file() for name in manifest.get("files", [])):
        return None
    return manifest


def complete_checkpoints(checkpoint_dir: Path) -> list[dict]:
    """[{"name", "step", "path"}] of the complete checkpoints, oldest first."""
    found = []
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return found
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and read_manifest(child) is not None:
            found.append({"name": child.name, "step": int(match.group(1)), "path": str(child)})
    return sorted(found, key=lambda c: c["step"])


def latest_checkpoint(checkpoint_dir: Path) -> dict | None:
    found = complete_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def clean_incomplete(checkpoint_dir: Path) -> list[str]:
    """Remove checkpoint folders without a valid manifest, and the staging area."""
    removed = []
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        if (child.name == STAGING or _NAME.match(child.name)) and child.is_dir() and read_manifest(child) is None:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child.name)
    return removed


def prune(checkpoint_dir: Path, keep: int) -> None:
    for old in complete_checkpoints(checkpoint_dir)[:-keep]:
        folder = Path(old["path"])
        os.unlink(folder / MANIFEST)  # first: a crash mid-delete leaves an incomplete folder, never a bad one
        shutil.rmtree(folder, ignore_errors=True)


def resolve_resume(checkpoint_dir: Path, resume_from: str) -> str | None:
    """The checkpoint folder to resume from: "none" → None; a path → it (must be complete);
    "" → the latest complete checkpoint in checkpoint_dir, if any."""
    from workers.core.specs import SpecError

    if resume_from == "none":
        return None
    if resume_from:
        if read_manifest(Path(resume_from)) is None:
            raise SpecError("resume_from", f"{resume_from} is not a complete checkpoint (no valid manifest.json)")
        return resume_from
    latest = latest_checkpoint(checkpoint_dir)
    return latest["path"] if latest else None
