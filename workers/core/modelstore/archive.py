"""Extract an uploaded model archive (.zip, .tar, .tar.gz/.tgz) without trusting it.

Every member is checked before anything is written: a path that is absolute or climbs out with
'..', a link or special file, a forbidden file (pickle weights, code), too many members or too
many bytes in total refuse the whole archive, naming the member. Files are then written by us
(never with extractall), so no permission bits, owners or timestamps from the archive apply,
and into a temporary sibling that is renamed to `dest` only when everything is written.
"""
from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from .atomic import DiskFull, atomic_output_dir, require_empty_destination
from .errors import ModelFolderError
from .validation import refuse_forbidden_name

COPY_CHUNK = 2**20
# Finder adds these to zips made on macOS; they are metadata, never part of a model.
IGNORED_TOP_LEVEL = ("__MACOSX",)
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty zip
GZIP_MAGIC = b"\x1f\x8b"

FILE, DIRECTORY = "file", "directory"
Entry = tuple[str, str, int, Callable[[], IO[bytes]]]  # raw name, kind, size, opener


@dataclass
class Member:
    raw_name: str  # as stored in the archive, for error messages
    name: str  # normalised relative posix path
    kind: str  # FILE or DIRECTORY
    size: int
    open: Callable[[], IO[bytes]]


# A compression bomb: safetensors weights hardly compress (random-looking floats, ~1.1x), so an
# archive that claims to expand more than this is refused once it is past the size where ratios
# mean anything (small configs and tokenizers compress well and are harmless).
MAX_EXPANSION = 100
EXPANSION_FLOOR = 64 * 2**20


def safe_extract_archive(
    archive: Path, dest: Path, *, max_bytes: int = 20 * 2**30, max_members: int = 10_000,
    max_expansion: float = MAX_EXPANSION,
) -> Path:
    """Extract `archive` into `dest` (absent or empty). Returns the archive's single top-level
    folder inside `dest` if it has one (the usual ``model-name/...`` layout), else `dest`.
    On any error nothing is left in `dest`."""
    archive, dest = Path(archive), Path(dest)
    require_empty_destination(dest)
    try:
        with _archive_entries(archive) as entries:
            members = _checked_members(entries, max_bytes, max_members)
            if not members:
                raise ModelFolderError(archive.name, "the archive is empty")
            _check_expansion_and_space(archive, dest, sum(m.size for m in members), max_expansion)
            with atomic_output_dir(dest) as partial:
                for member in members:
                    _write_member(member, partial)
    except DiskFull:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        # Corrupt archives (bad headers, CRC or zlib errors mid-read) surface as these.
        raise ModelFolderError(archive.name, f"could not be extracted ({exc})") from None

    top_level = {member.name.split("/", 1)[0] for member in members}
    if len(top_level) == 1:
        (top,) = top_level
        if (dest / top).is_dir():
            return dest / top
    return dest


def _check_expansion_and_space(archive: Path, dest: Path, total: int, max_expansion: float) -> None:
    """Refuse a compression bomb, and an archive the disk cannot hold, before writing anything
    (the member sizes are the headers' claims; _write_member stops a member that lies)."""
    packed = max(archive.stat().st_size, 1)
    if total > EXPANSION_FLOOR and total > packed * max_expansion:
        raise ModelFolderError(archive.name, f"expands {total / packed:,.0f} times ({total:,} bytes from {packed:,}); "
                                             f"more than {max_expansion:g} times is refused as a compression bomb")
    parent = dest.parent if not dest.exists() else dest
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if total > free:
        raise DiskFull(f"the model from {archive.name} ({total:,} bytes, {free:,} free)")


def member_path(raw_name: str) -> str | None:
    """The normalised relative path of a member, or None for the archive root ("./")."""
    if "\x00" in raw_name:
        raise ModelFolderError(repr(raw_name), "NUL byte in member name")
    if "\\" in raw_name:
        raise ModelFolderError(raw_name, "backslash in member name (Windows paths are refused)")
    if raw_name.startswith("/") or WINDOWS_DRIVE.match(raw_name):
        raise ModelFolderError(raw_name, "absolute member path (must be relative to the archive)")
    parts = [part for part in raw_name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ModelFolderError(raw_name, "member path leaves the archive folder ('..')")
    return "/".join(parts) or None


def _checked_members(entries: Iterator[Entry], max_bytes: int, max_members: int) -> list[Member]:
    """Read every header and apply every rule before a single byte is written."""
    members: list[Member] = []
    kinds: dict[str, str] = {}
    total = 0
    for raw_name, kind, size, opener in entries:
        if len(members) >= max_members:
            raise ModelFolderError(raw_name, f"too many members (more than {max_members})")
        if kind not in (FILE, DIRECTORY):
            raise ModelFolderError(raw_name, f"{kind} members are refused (only files and folders)")
        name = member_path(raw_name)
        if name is None or name.split("/", 1)[0] in IGNORED_TOP_LEVEL:
            continue
        if name in kinds and not (kind == DIRECTORY and kinds[name] == DIRECTORY):
            raise ModelFolderError(raw_name, "duplicate member")
        if kind == FILE:
            refuse_forbidden_name(name)
            total += size
            if total > max_bytes:
                raise ModelFolderError(raw_name, f"total uncompressed size exceeds the limit of {max_bytes} bytes")
        kinds[name] = kind
        members.append(Member(raw_name, name, kind, size, opener))

    # A member "a" that is a file while another is "a/b" would fail half-way through writing.
    for name in kinds:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if kinds.get(parent) == FILE:
                raise ModelFolderError(parent, f"is both a file and the folder of {name}")
    return members


def _write_member(member: Member, root: Path) -> None:
    target = root.joinpath(*member.name.split("/"))
    if member.kind == DIRECTORY:
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with member.open() as source, open(target, "xb") as out:
        while chunk := source.read(COPY_CHUNK):
            written += len(chunk)
            if written > member.size:  # the header lied about the size
                raise ModelFolderError(member.raw_name, "member is larger than its header says")
            out.write(chunk)
    if written != member.size:
        raise ModelFolderError(member.raw_name, "member is truncated")


@contextmanager
def _archive_entries(archive: Path) -> Iterator[Iterator[Entry]]:
    """Yield an iterator of (raw name, kind, size, opener) per member, in archive order. The
    format is recognised from the content, not the file name: zip, gzip-compressed tar, tar."""
    with open(archive, "rb") as probe:
        magic = probe.read(4)
    if magic in ZIP_MAGIC:
        with zipfile.ZipFile(archive) as handle:
            yield _zip_entries(handle)
    elif magic[:2] == GZIP_MAGIC:
        with tarfile.open(archive, mode="r:gz") as handle:
            yield _tar_entries(handle)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, mode="r:") as handle:
            yield _tar_entries(handle)
    else:
        raise ModelFolderError(archive.name, "unsupported archive type (use .zip, .tar, .tar.gz or .tgz)")


def _zip_entries(archive: zipfile.ZipFile):
    for info in archive.infolist():  # the central directory: no data is read yet
        if info.flag_bits & 0x1:
            yield info.filename, "encrypted", info.file_size, None
        else:
            yield info.filename, _zip_kind(info), info.file_size, (lambda info=info: archive.open(info))


def _tar_entries(archive: tarfile.TarFile):
    # next() rather than getmembers(): the member limit is enforced before a hostile archive
    # with millions of headers is read into memory.
    while (info := archive.next()) is not None:
        yield info.name, _tar_kind(info), info.size, (lambda info=info: archive.extractfile(info))


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16  # unix mode, when the zip was made on unix
    if info.is_dir() or stat.S_ISDIR(mode):
        return DIRECTORY
    if stat.S_ISLNK(mode):
        return "symlink"
    if mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
        return "special file"
    return FILE


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return DIRECTORY
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    if info.issparse():
        return "sparse file"
    if info.isreg():
        return FILE
    return "special file"
