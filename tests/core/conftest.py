"""The core tests build their files in pytest's temporary folders, not in a studio data dir. The
core confines every spec path to the data-dir subtree its field may use (workers/core/paths.py,
which reads `PUYU_DATA_DIR` at call time, and resolves the subtree roots so a store may be a
symlink to another disk). So here the data dir is a folder whose subtrees are symlinks to
pytest's base temporary folder: every test folder counts as inside the store, for this process
and for the subprocesses it starts (torchrun ranks, `python -m workers.core`). The confinement
itself is tested in tests/security/test_job_kinds_and_paths.py with a real data dir."""
from __future__ import annotations

import pytest

from workers.core import paths

SUBTREES = (paths.MODELS, paths.DATASETS, paths.UPLOADS, paths.CHECKPOINTS, paths.IMPORT, paths.EVALUATIONS)


@pytest.fixture(scope="session")
def core_data_dir(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    data = base / "core-data-dir"
    data.mkdir(exist_ok=True)
    for name in SUBTREES:
        link = data / name
        if not link.is_symlink():
            link.symlink_to(base, target_is_directory=True)
    return data


@pytest.fixture(autouse=True)
def _test_folders_are_inside_the_data_dir(core_data_dir, monkeypatch):
    monkeypatch.setenv("PUYU_DATA_DIR", str(core_data_dir))
    monkeypatch.delenv("PUYU_MODEL_IMPORT_DIRS", raising=False)
