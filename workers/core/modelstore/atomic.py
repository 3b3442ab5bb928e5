"""Write a folder so that it appears complete or not at all.

Jobs that produce a model folder (conversion, merge, quantization, extraction) write into a
hidden temporary sibling and rename it into place at the end: the registry, a concurrent
reader, or a retry after a crash never sees a half-written folder at the final path, and a
failed or cancelled job leaves nothing behind. The sibling lives on the same filesystem, so
the rename is atomic.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ModelFolderError


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
        yield partial
        os.chmod(partial, 0o755)  # mkdtemp makes it 0700; the web process may read it
        require_empty_destination(out_dir)  # re-check: another job may have written it meanwhile
        if out_dir.exists():
            out_dir.rmdir()
        os.rename(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
