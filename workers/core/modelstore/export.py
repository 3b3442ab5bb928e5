"""Stream a model folder as an uncompressed tar, for an HTTP download.

The tar is generated piece by piece (headers from tarfile.TarInfo, file data read in chunks),
so a multi-GB model is never held in memory or staged on disk, and its exact size is known up
front (`archive_size`, for Content-Length). No compression: safetensors weights barely
compress, and gzip would cost more CPU than the bytes it saves.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from .errors import ModelFolderError
from .validation import list_files

CHUNK_BYTES = 2**20
BLOCK = tarfile.BLOCKSIZE  # 512: every header and file body is padded to this
RECORD = tarfile.RECORDSIZE  # the archive's total length is padded to this, as tarfile does
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)


@dataclass
class _Entry:
    header: bytes
    path: Path | None  # None for a directory entry
    size: int


def archive_stream(folder: Path, arcname: str, *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Chunks (about `chunk_bytes` each) of a tar holding `folder`'s files under `arcname/`.

    The folder is checked (no symlinks or special files) when this is called, before the
    first chunk, so a refusal becomes an error response rather than a truncated download."""
    return _generate(_plan(Path(folder), arcname), chunk_bytes)


def archive_size(folder: Path, arcname: str) -> int:
    """The exact byte length of what archive_stream(folder, arcname) yields."""
    body = sum(len(entry.header) + _padded(entry.size) for entry in _plan(Path(folder), arcname))
    return _padded(body + len(END_OF_ARCHIVE), RECORD)


def _plan(folder: Path, arcname: str) -> list[_Entry]:
    root = PurePosixPath(arcname)
    if not arcname or root.is_absolute() or ".." in root.parts or "\\" in arcname:
        raise ModelFolderError(arcname, "archive name must be a plain relative name")
    files = list_files(folder)
    folders = sorted({str(PurePosixPath(name).parent) for name in files} - {"."})
    entries = [_entry(root.as_posix(), folder, None)]
    entries += [_entry(f"{root}/{name}", folder / name, None) for name in folders]
    entries += [_entry(f"{root}/{name}", folder / name, folder / name) for name in files]
    return entries


def _entry(name: str, source: Path, file_path: Path | None) -> _Entry:
    info = tarfile.TarInfo(name)
    status = os.stat(source if file_path is None else file_path)
    info.mtime = int(status.st_mtime)
    # Owner and permissions are normalised: the download should not leak the server's uids.
    if file_path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = status.st_size, 0o644
    header = info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
    return _Entry(header=header, path=file_path, size=info.size)


def _generate(entries: list[_Entry], chunk_bytes: int) -> Iterator[bytes]:
    buffer = bytearray()
    emitted = 0

    def drain(force: bool = False):
        nonlocal emitted
        if buffer and (force or len(buffer) >= chunk_bytes):
            emitted += len(buffer)
            chunk = bytes(buffer)
            buffer.clear()
            yield chunk

    for entry in entries:
        buffer += entry.header
        if entry.path is not None:
            with open(entry.path, "rb") as handle:
                remaining = entry.size
                while remaining:
                    data = handle.read(min(chunk_bytes, remaining))
                    if not data:  # the header already promised `size` bytes
                        raise ModelFolderError(entry.path.name, "file shrank while it was being streamed")
                    buffer += data
                    remaining -= len(data)
                    yield from drain()
            buffer += b"\0" * (_padded(entry.size) - entry.size)
        yield from drain()
    buffer += END_OF_ARCHIVE
    total = emitted + len(buffer)
    buffer += b"\0" * (_padded(total, RECORD) - total)
    yield from drain(force=True)


def _padded(size: int, unit: int = BLOCK) -> int:
    return -(-size // unit) * unit
