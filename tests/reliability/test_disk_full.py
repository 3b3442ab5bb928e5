"""A full disk while writing a training checkpoint, a dataset version or an upload: a clear error
("disk full while writing …: free space and retry"), the previous state intact, no temporary
file left. ENOSPC is injected where the real write would meet it."""
from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile

from workers.core.modelstore.atomic import DiskFull
from workers.core.training import checkpoints

PROMISE = "disk full keeps previous state"


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def tree(root):
    """{relative path: sha256} of every file under root (hidden temporaries included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def stage(root, step):
    staged = root / checkpoints.STAGING / f"checkpoint-{step}"
    staged.mkdir(parents=True)
    (staged / "adapter_model.safetensors").write_bytes(os.urandom(1024))
    (staged / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return staged


@pytest.mark.promise(PROMISE)
def test_a_disk_full_while_committing_a_checkpoint_keeps_the_previous_one_latest_and_leaves_no_partial_folder(
        tmp_path, monkeypatch, promise_figure):
    ckpt = tmp_path / "ckpt"
    checkpoints.commit_checkpoint(stage(ckpt, 2), ckpt, 2, keep=1)
    before = tree(ckpt)
    staged = stage(ckpt, 4)
    monkeypatch.setattr(checkpoints.json, "dump", no_space)  # the manifest write meets the full disk

    with pytest.raises(DiskFull) as full:
        checkpoints.commit_checkpoint(staged, ckpt, 4, keep=1)

    assert str(full.value) == "disk full while writing checkpoint-4: free space and retry"
    assert full.value.errno == errno.ENOSPC  # still an OSError for code that handles those
    assert checkpoints.latest_checkpoint(ckpt)["name"] == "checkpoint-2"
    assert tree(ckpt) == before  # checkpoint-2 byte for byte; no checkpoint-4, staging or manifest.tmp
    promise_figure("checkpoint, dataset version, upload: previous state byte-identical, 0 temp files")


def test_a_disk_full_while_the_trainer_writes_its_staging_folder_names_the_checkpoint():
    with pytest.raises(DiskFull, match="^disk full while writing checkpoint-6: free space and retry$"):
        with checkpoints.writing(6):
            no_space()
    with pytest.raises(OSError, match="Permission"):  # other errors pass through unchanged
        with checkpoints.writing(6):
            raise PermissionError(errno.EACCES, "Permission denied")


@pytest.mark.promise(PROMISE)
def test_a_disk_full_while_importing_a_dataset_version_leaves_earlier_versions_and_no_temporary_file(
        tmp_path, monkeypatch):
    from workers.core.kinds import run_core_job
    from workers.core.reporting import ConsoleReporter

    monkeypatch.setenv("PUYU_DATA_DIR", str(tmp_path))
    upload = tmp_path / "uploads" / "rows.jsonl"
    upload.parent.mkdir()
    upload.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(100)))
    versions = tmp_path / "datasets" / "7"
    versions.mkdir(parents=True)
    (versions / "v1.jsonl").write_text('{"text": "the first version"}\n')
    before = tree(tmp_path / "datasets")
    monkeypatch.setattr(os, "fsync", no_space)  # the data is written; flushing it to disk fails

    with pytest.raises(DiskFull) as full:
        run_core_job("dataset_import", {"path": str(upload), "filename": "rows.jsonl",
                                        "output_path": str(versions / "v2.jsonl")}, ConsoleReporter())

    assert str(full.value) == "disk full while writing the dataset import output: free space and retry"
    assert tree(tmp_path / "datasets") == before


@pytest.mark.promise(PROMISE)
def test_a_disk_full_while_cleaning_into_a_new_version_leaves_nothing_at_the_output(tmp_path, monkeypatch):
    from workers.core.data.cleaning import CleaningSpec, run_cleaning
    from workers.core.data.cleaning import pipeline
    from workers.core.reporting import ConsoleReporter

    src = tmp_path / "v1.jsonl"
    src.write_text("".join(json.dumps({"text": f"The river flows past the old mill, day {i}."}) + "\n" for i in range(50)))
    before = tree(tmp_path)
    monkeypatch.setattr(pipeline.os, "fsync", no_space)
    spec = CleaningSpec(quality=False, dedup_exact=False, dedup_near=False, pii=False,  # the write is what
                        decontaminate=False)  # matters here; no stage needs its model

    with pytest.raises(DiskFull, match="^disk full while writing the cleaned dataset version: free space and retry$"):
        run_cleaning(src, tmp_path / "v2.jsonl", "text", spec, ConsoleReporter())

    assert tree(tmp_path) == before


@pytest.mark.promise(PROMISE)
@pytest.mark.django_db
@pytest.mark.parametrize("route", ["/api/datasets/upload", "/datasets/upload/"])
def test_a_disk_full_during_an_upload_answers_507_and_keeps_no_part_of_it(client, users, api_token, monkeypatch, route):
    from apps.datasets.models import DatasetUpload

    written = []

    def fill_up(self, data):  # the first chunk lands, the second meets the full disk
        if written:
            no_space()
        written.append(len(data))
        return self.file.write(data)

    monkeypatch.setattr(TemporaryUploadedFile, "write", fill_up, raising=False)
    before = sorted(os.listdir(settings.UPLOAD_DIR))
    big = b'{"text": "a record of the dataset"}\n' * 200_000  # 7 MB: over the in-memory limit, streamed to disk
    client.force_login(users["owner"])
    response = client.post(route, {"file": SimpleUploadedFile("rows.jsonl", big), "dataset_name": "full"},
                           HTTP_AUTHORIZATION=f"Bearer {api_token(users['owner'])}")

    assert response.status_code == 507
    assert "disk full while writing the upload: free space and retry" in response.content.decode()
    assert written  # the temporary file had started
    assert sorted(os.listdir(settings.UPLOAD_DIR)) == before  # ...and is gone
    assert not DatasetUpload.objects.exists()
