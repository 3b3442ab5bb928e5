"""A job's page links what the job created the moment it exists (in the page and in the live
snapshot the page applies without a reload), and a failed job links nothing."""
import pytest

from apps.datasets.models import DatasetVersion
from apps.jobs.models import Job, JobStatus
from apps.jobs.snapshot import job_snapshot
from apps.registry.models import ModelVersion, RegisteredModel
from tests.conftest import login_client, own_data_dir
from tests.datasets.test_datasets import alpaca_lines, upload_and_run

pytestmark = pytest.mark.django_db(transaction=True)  # the import task runs with a heartbeat thread


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, settings, monkeypatch):
    own_data_dir(tmp_path, settings, monkeypatch)


def test_an_import_job_page_links_the_dataset_version_it_created(client, owner, api_token):
    _, job = upload_and_run(client, api_token(owner), "numbers.jsonl", alpaca_lines(), dataset_name="numbers")
    assert job.status == JobStatus.SUCCEEDED
    version = DatasetVersion.objects.get(source_job=job)
    snapshot = job_snapshot(job)
    assert len(snapshot["outputs"]) == 1 and snapshot["outputs"][0]["label"].startswith("dataset version numbers")
    login_client(client, owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="{snapshot["outputs"][0]["url"]}"' in page and 'id="job-outputs" hidden' not in page
    assert snapshot["outputs"][0]["url"] == f"/datasets/versions/{version.pk}/"


def test_a_training_job_links_the_version_it_registered_and_a_failed_job_links_nothing(users):
    owner = users["owner"]
    job = Job.objects.create(owner=owner, kind="train", params={}, status=JobStatus.SUCCEEDED)
    model = RegisteredModel.objects.create(owner=owner, name="tuned")
    version = ModelVersion.objects.create(model=model, number=1, kind="adapter", source="training", source_job=job,
                                          dtype="float32", size_bytes=1, files=[], created_by=owner)
    assert job_snapshot(job)["outputs"] == [{"label": "model version tuned v1", "url": f"/models/versions/{version.pk}/"}]
    job.status = JobStatus.FAILED
    assert job_snapshot(job)["outputs"] == []
