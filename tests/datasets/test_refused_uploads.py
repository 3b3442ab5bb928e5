"""Uploads the import job refuses (issue 14, as a newcomer): a refused first upload leaves no
empty dataset behind, a refused later one leaves the dataset and its versions alone, and the
pages show what the parser said in full (file, line, field, detail)."""
import pytest

from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
from apps.jobs.models import JobStatus
from tests.datasets.test_datasets import alpaca_lines, stores, upload_and_run  # noqa: F401  (stores: autouse fixture)

pytestmark = pytest.mark.django_db(transaction=True)  # tasks run with a heartbeat thread

BINARY = b"\x00\x01\x02binary\x00"


def test_a_refused_first_upload_removes_the_dataset_it_created_and_its_page_says_why(client, users, api_token):
    owner = users["owner"]
    up, job = upload_and_run(client, api_token(owner), "binary.jsonl", BINARY, dataset_name="first-try")
    assert job.status == JobStatus.FAILED and job.error.startswith("binary.jsonl")
    assert not Dataset.objects.exists() and not DatasetUpload.objects.exists()
    assert job.result == {"refused_upload": up.pk, "removed_dataset": "first-try"}
    client.force_login(owner)
    assert "first-try" not in client.get("/datasets/").content.decode()
    page = client.get(f"/datasets/uploads/{up.pk}/")  # the page the uploader was watching
    assert page.status_code == 200
    text = page.content.decode()
    assert job.error in text and "first-try" in text and f"/jobs/{job.pk}/" in text
    client.force_login(users["outsider"])
    assert client.get(f"/datasets/uploads/{up.pk}/").status_code == 404


def test_a_refused_later_upload_leaves_the_dataset_and_its_versions_and_the_uploads_table_shows_the_full_error(
        client, users, api_token):
    owner, token = users["owner"], api_token(users["owner"])
    _, first = upload_and_run(client, token, "numbers.jsonl", alpaca_lines(), dataset_name="numbers")
    dataset = Dataset.objects.get(name="numbers")
    up, job = upload_and_run(client, token, "binary.jsonl", BINARY, dataset_id=dataset.pk)
    assert job.status == JobStatus.FAILED
    assert Dataset.objects.filter(pk=dataset.pk).exists() and DatasetVersion.objects.filter(source_job=first).exists()
    assert DatasetUpload.objects.filter(pk=up.pk).exists() and not up.path.exists()  # the row stays, the raw file goes
    client.force_login(owner)
    page = client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert f"refused: {job.error}" in page and len(job.error) > 60  # in full, file name first


def test_bad_records_are_shown_with_the_parser_detail_on_the_upload_and_dataset_pages(client, users, api_token):
    owner = users["owner"]
    up, job = upload_and_run(client, api_token(owner), "numbers.jsonl", alpaca_lines(bad_line=7), dataset_name="numbers")
    up.refresh_from_db()
    error = up.report["errors"][0]
    assert (error["line"], error["reason"]) == (7, "invalid JSON") and error["detail"]
    client.force_login(owner)
    upload_page = client.get(f"/datasets/uploads/{up.pk}/").content.decode()
    assert f"invalid JSON: {error['detail']}" in upload_page
    dataset_page = client.get(f"/datasets/{up.dataset_id}/").content.decode()
    assert f"line 7: invalid JSON ({error['detail']})" in dataset_page
