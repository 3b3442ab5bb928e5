"""A job whose output the data dir would not hold is refused before it starts, with a human
error naming the field, and nothing is stored (no row, no file); with room, the same job starts.
The free space is faked by replacing shutil.disk_usage."""
from __future__ import annotations

import json
import shutil
from collections import namedtuple

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.datasets import services as datasets
from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
from apps.jobs.models import Job, JobStatus
from apps.registry import services as registry
from apps.registry.models import VersionRequest
from apps.studio import storage
from apps.training import services as training
from apps.training.models import TrainingRun
from tests.site.test_storage import data_dir, dataset_version, model_version, training_run  # noqa: F401 (the fixture)

Usage = namedtuple("Usage", "total used free")
GB = 10**9


@pytest.fixture
def free_space(monkeypatch):
    """free_space(n): the data dir's file system reports n bytes free from now on."""
    def set_free(n: int) -> None:
        monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(100 * GB, 100 * GB - n, n))

    return set_free


def stored_rows() -> dict:
    return {"jobs": Job.objects.count(), "runs": TrainingRun.objects.count(), "requests": VersionRequest.objects.count(),
            "datasets": Dataset.objects.count(), "uploads": DatasetUpload.objects.count(),
            "versions": DatasetVersion.objects.count()}


def finished_training(user, data_dir, finetune: str, parameters: int, hidden: int = 2048) -> Job:  # noqa: F811
    """A finished run of `finetune` on a base of `parameters` (config.json gives its hidden size)."""
    base = model_version(user, recorded=2 * parameters, on_disk=10, name="base", parameter_count=parameters)
    (base.path / "config.json").write_text(json.dumps({"hidden_size": hidden}))
    train = dataset_version(user, 100, name="chat")
    run = training_run(user, data_dir, finished=None)
    params = {"method": "sft", "finetune": finetune, "base_model_dir": str(base.path), "train_files": [str(train.path)],
              "output_dir": str(data_dir / "models" / "out"), "checkpoint_dir": run.checkpoint_dir,
              "max_steps": 100, "save_every": 50, "keep_checkpoints": 2, "lora_r": 16}
    Job.objects.filter(pk=run.job_id).update(params=params)
    TrainingRun.objects.filter(pk=run.pk).update(base_version=base)
    return Job.objects.get(pk=run.job_id)


@pytest.mark.django_db
def test_the_training_estimate_counts_kept_checkpoints_and_the_final_weights(users, data_dir):  # noqa: F811
    owner = users["owner"]
    full = finished_training(owner, data_dir, "full", parameters=GB)
    base = TrainingRun.objects.get(job=full).base_version
    # Full: (2 kept + 0 extra: only two saves in 100 steps) x (fp32 weights + AdamW moments) + fp32 weights.
    assert storage.training_needs(base, full.params) == (2 * 12 * GB + 4 * GB, "disk")
    lora = {**full.params, "finetune": "lora"}
    trained = GB * 2 * 16 // 2048
    assert storage.training_needs(base, lora) == (2 * 12 * trained + 4 * trained, "disk")
    assert storage.training_needs(base, {**lora, "max_steps": 1000})[0] == 3 * 12 * trained + 4 * trained
    assert storage.training_needs(base, {**lora, "dry_run_steps": 5})[0] == 0  # a dry run saves nothing


@pytest.mark.django_db
def test_a_training_run_too_big_for_the_disk_is_refused_and_stores_nothing(users, data_dir, free_space):  # noqa: F811
    owner = users["owner"]
    old = finished_training(owner, data_dir, "full", parameters=GB)
    Job.objects.filter(pk=old.pk).update(status=JobStatus.SUCCEEDED)
    free_space(int(0.8 * GB))
    before = stored_rows()
    with pytest.raises(training.TrainingError) as refused:
        training.retry_training_job(old, owner)
    assert refused.value.field == "disk"
    assert refused.value.reason.startswith("needs about 26.1") and "the data dir has 762.9 MB free" in refused.value.reason
    assert "Storage page" in refused.value.reason
    assert stored_rows() == before
    free_space(40 * GB)
    assert training.retry_training_job(old, owner).retry_of == old


@pytest.mark.django_db
def test_a_quantization_bigger_than_the_free_space_is_refused_naming_the_field(users, data_dir, free_space):  # noqa: F811
    owner = users["owner"]
    version = model_version(owner, recorded=2 * GB, on_disk=10, name="big")
    free_space(GB)
    before = stored_rows()
    with pytest.raises(registry.RegistryError) as refused:
        registry.start_quantize(owner, version, "int8")
    assert refused.value.field == "disk" and "needs about 1.9 GB, the data dir has 953.7 MB free" in refused.value.reason
    assert stored_rows() == before
    free_space(3 * GB)
    assert registry.start_quantize(owner, version, "int8").kind == "model_quantize"


@pytest.mark.django_db
def test_a_folder_import_is_sized_by_the_folder_on_disk(users, data_dir, settings, free_space):  # noqa: F811
    folder = data_dir / "import" / "llama"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * 5000)
    settings.MODEL_IMPORT_DIRS = [data_dir / "import"]
    free_space(4000)
    with pytest.raises(registry.RegistryError) as refused:
        registry.start_import(users["owner"], source="folder", folder="0/llama", model_name="llama")
    assert refused.value.field == "folder" and "needs about 4.9 KB" in refused.value.reason
    assert stored_rows()["requests"] == 0 and not registry.RegisteredModel.objects.filter(name="llama").exists()


@pytest.mark.django_db
def test_an_upload_too_big_to_import_is_refused_and_leaves_no_dataset_and_no_file(users, data_dir, free_space):  # noqa: F811
    free_space(1500)  # a 1000-byte text upload needs about twice that
    before = stored_rows()
    upload = SimpleUploadedFile("notes.jsonl", b'{"text": "hello"}\n' * 55 + b'{"text": "hi!!!!!"}\n')
    with pytest.raises(datasets.DatasetError) as refused:
        datasets.upload_file(users["owner"], upload, dataset_name="notes")
    assert refused.value.field == "file" and "the data dir has 1.5 KB free" in refused.value.reason
    assert stored_rows() == before
    assert list((data_dir / "uploads").iterdir()) == []


@pytest.mark.django_db
def test_the_upload_api_answers_422_naming_the_file_field(client, api_token, users, data_dir, free_space):  # noqa: F811
    free_space(10)
    response = client.post("/api/datasets/upload", {"file": SimpleUploadedFile("a.jsonl", b'{"text": "hello"}\n'),
                                                    "dataset_name": "a"},
                           HTTP_AUTHORIZATION=f"Bearer {api_token(users['owner'])}")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("file: needs about 36 bytes, the data dir has 10 bytes free")
    assert not Dataset.objects.exists() and list((data_dir / "uploads").iterdir()) == []


@pytest.mark.django_db
def test_a_cleaning_bigger_than_the_free_space_is_refused(users, data_dir, free_space):  # noqa: F811
    version = dataset_version(users["owner"], 3000)
    free_space(2000)
    with pytest.raises(datasets.DatasetError) as refused:
        datasets.start_clean(users["owner"], version, {})
    assert refused.value.field == "disk" and not Job.objects.exists()
    free_space(4000)
    assert datasets.start_clean(users["owner"], version, {}).kind == "dataset_clean"
