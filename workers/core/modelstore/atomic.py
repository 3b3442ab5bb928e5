"""Write a folder so that it appears complete or not at all.

Jobs that produce a model folder (conversion, merge, quantization, extraction) write into a
hidden temporary sibling and rename it into place at the end: the registry, a concurrent
reader, or a retry after a crash never sees a half-written folder at the final path, and a
failed or cancelled job leaves nothing behind. The sibling lives on the same filesystem, so
the rename is atomic.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ModelFolderError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """A write failed for lack of space (or quota). Still an OSError with errno ENOSPC, so code
    that handles OSError keeps working; the message says what was being written and what to do,
    never a server path."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.ENOSPC, f"disk full while writing {what}: free space and retry")
        self.what = what

    def __str__(self) -> str:
        return self.strerror


@contextmanager
def disk_full_is_clear(what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside into DiskFull(what); the innermost `what` wins."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise DiskFull(what) from None
        raise


def require_empty_destination(out_dir: Path) -> None:
    if out_dir.is_symlink() or (out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))):
        raise ModelFolderError(str(out_dir), "destination already exists and is not an empty folder")


@contextmanager
def atomic_output_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes `out_dir` (which must be absent or
    empty), on any exception (including a cancel) it is deleted."""
    out_dir = Path(out_dir)
    require_empty_destination(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        with disk_full_is_clear(f"the folder {out_dir.name}"):
            yield partial
            os.chmod(partial, 0o755)  # mkdtemp makes it 0700; the web process may read it
            require_empty_destination(out_dir)  # re-check: another job may have written it meanwhile
            if out_dir.exists():
                out_dir.rmdir()
            os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
