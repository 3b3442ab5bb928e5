"""Datasets through the web side: upload → validation job → version (or a report and a choice),
cleaning and generation jobs with lineage, preview, render-with-template, and who sees what."""
import io
import json

import pytest

from apps.datasets import services
from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
from apps.jobs.models import Job, JobStatus
from tests.fixtures.data import excerpt

pytestmark = pytest.mark.django_db(transaction=True)  # tasks run with a heartbeat thread



@pytest.fixture(autouse=True)
def stores(tmp_path, settings, monkeypatch):
    """A data dir of the test's own (the core confines job paths to the data dir it reads from
    PUYU_DATA_DIR), so leftovers of one test cannot hide or fake another's."""
    settings.DATA_DIR = tmp_path / "data"
    monkeypatch.setenv("PUYU_DATA_DIR", str(settings.DATA_DIR))
    for name, folder in (("DATASET_STORE_DIR", "datasets"), ("UPLOAD_DIR", "uploads"), ("MODEL_STORE_DIR", "models")):
        setattr(settings, name, settings.DATA_DIR / folder)
        getattr(settings, name).mkdir(parents=True)


def run(job: Job) -> Job:
    from workers.tasks import datasets

    {"dataset_import": datasets.dataset_import, "dataset_clean": datasets.dataset_clean,
     "dataset_generate": datasets.dataset_generate}[job.kind].run(job.pk)
    job.refresh_from_db()
    return job


def upload(client, token, name: str, data: bytes, **fields):
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/api/datasets/upload", {"file": handle, **fields}, HTTP_AUTHORIZATION=f"Bearer {token}")


def alpaca_lines(n=12, bad_line=None) -> bytes:
    lines = [json.dumps({"instruction": f"Say the number {i} in words.", "input": "", "output": f"The number is {i}."})
             for i in range(1, n + 1)]
    if bad_line:
        lines[bad_line - 1] = '{"instruction": "broken", "output": '
    return ("\n".join(lines) + "\n").encode()


def upload_and_run(client, token, name, data, **fields):
    response = upload(client, token, name, data, **fields)
    assert response.status_code == 201, response.content
    body = response.json()
    return DatasetUpload.objects.get(pk=body["id"]), run(Job.objects.get(pk=body["job"]["id"]))


def test_a_clean_upload_becomes_a_version_with_its_facts(client, owner, api_token):
    up, job = upload_and_run(client, api_token(owner), "numbers.jsonl", alpaca_lines(), dataset_name="numbers")
    assert job.status == JobStatus.SUCCEEDED, job.error
    version = DatasetVersion.objects.get(source_job=job)
    assert (version.number, version.source, version.source_format, version.canonical, version.rows) == (1, "upload", "alpaca", "chat", 12)
    assert len(version.sha256) == 64 and version.size_bytes == version.path.stat().st_size
    assert version.stats["languages"] == {"en": 12}
    first = json.loads(version.path.read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    up.refresh_from_db()
    assert up.report["valid"] == up.report["total"] == 12
    assert not up.path.exists()  # the upload is removed once its version exists


def test_the_same_content_gets_the_same_content_hash(client, owner, api_token):
    token = api_token(owner)
    _, first = upload_and_run(client, token, "a.jsonl", alpaca_lines(), dataset_name="a")
    _, second = upload_and_run(client, token, "b.jsonl", alpaca_lines(), dataset_name="b")
    assert DatasetVersion.objects.get(source_job=first).sha256 == DatasetVersion.objects.get(source_job=second).sha256


def test_bad_records_are_listed_with_line_and_reason_and_can_be_excluded_on_request(client, owner, api_token):
    token = api_token(owner)
    up, job = upload_and_run(client, token, "numbers.jsonl", alpaca_lines(bad_line=7), dataset_name="numbers")
    assert job.status == JobStatus.SUCCEEDED and job.result["created"] is False
    assert not DatasetVersion.objects.exists()
    up.refresh_from_db()
    assert (up.report["total"], up.report["valid"]) == (12, 11)
    assert up.report["errors"][0]["line"] == 7
    client.force_login(owner)
    page = client.get(f"/datasets/uploads/{up.pk}/").content.decode()
    assert 'id="exclude-button"' in page and "without the 1 bad record" in page
    response = client.post(f"/api/dataset-uploads/{up.pk}/exclude", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 201
    version = DatasetVersion.objects.get(source_job=run(Job.objects.get(pk=response.json()["id"])))
    assert version.rows == 11 and version.excluded["count"] == 1 and version.excluded["lines"] == [7]


@pytest.mark.parametrize("name, data, reason", [
    ("empty.jsonl", b"", "is empty (0 bytes)"),
    ("weights.bin", b"\x00\x01", "upload one of"),
    ("latin1.csv", "text\nplain line\ncaf\u00e9 cr\u00e8me\n".encode("latin-1"),
     "latin1.csv, line 3: not valid UTF-8: byte 0xE9 at byte offset 19"),
    ("gbk.jsonl", json.dumps({"text": "床前明月光"}, ensure_ascii=False).encode("gbk"), "gbk.jsonl, line 1: not valid UTF-8"),
])
def test_uploads_refused_at_the_door_store_nothing(client, owner, api_token, settings, name, data, reason):
    response = upload(client, api_token(owner), name, data, dataset_name="x")
    assert response.status_code == 422 and reason in response.json()["detail"]
    assert not Dataset.objects.exists() and list(settings.UPLOAD_DIR.iterdir()) == []


def test_an_oversize_upload_is_refused_before_it_is_stored(client, owner, api_token, settings):
    settings.MAX_UPLOAD_BYTES = 100
    assert upload(client, api_token(owner), "big.jsonl", alpaca_lines(), dataset_name="x").status_code == 400
    assert not Dataset.objects.exists()


@pytest.mark.parametrize("name, data, words", [
    ("binary.jsonl", b"\x00\x01\x02binary\x00", "binary"),
    ("truncated.jsonl.gz", b"\x1f\x8b\x08\x00 not really gzip", "truncated.jsonl.gz"),
])
def test_a_binary_file_fails_its_job_with_the_reason_no_version_and_no_raw_file_left(client, owner, api_token, name, data, words):
    up, job = upload_and_run(client, api_token(owner), name, data, dataset_name="x")
    assert job.status == JobStatus.FAILED
    assert job.error.startswith(name) and words in job.error  # the reason, not a class name first
    assert not DatasetVersion.objects.exists()
    assert not up.path.exists()


def test_real_public_files_import_as_they_are(client, owner, api_token):
    token = api_token(owner)
    for path, fmt, canonical, rows in [(excerpt("llamafactory_demo/alpaca_zh_demo.json"), "alpaca", "chat", 40),
                                       (excerpt("llamafactory_demo/glaive_toolcall_en_demo.json"), "sharegpt", "chat", 12),
                                       (excerpt("gsm8k/test.jsonl"), "qa", "qa", 20)]:
        _, job = upload_and_run(client, token, path.name, path.read_bytes(), dataset_name=path.stem)
        assert job.status == JobStatus.SUCCEEDED and job.result["created"], (path, job.error, job.result.get("report", {}).get("errors"))
        version = DatasetVersion.objects.get(source_job=job)
        assert (version.source_format, version.canonical) == (fmt, canonical), path
        assert version.rows == job.result["report"]["total"] == rows, path


def make_version(client, owner, api_token, data=None, name="numbers") -> DatasetVersion:
    _, job = upload_and_run(client, api_token(owner, name), f"{name}.jsonl", data or alpaca_lines(), dataset_name=name)
    return DatasetVersion.objects.get(source_job=job)


def test_cleaning_makes_a_child_version_with_a_per_stage_report_and_a_funnel(client, owner, api_token):
    docs = [{"text": f"This is a perfectly ordinary sentence number {i} about the weather and the sea, written for a test."}
            for i in range(30)]
    docs += [docs[0]] * 5 + [{"text": "Please write to me at alice@example.com and the team will reply to you with the details."}]
    data = "\n".join(json.dumps(d) for d in docs).encode()
    source = make_version(client, owner, api_token, data, "corpus")
    job = run(services.start_clean(owner, source, {"dedup_near": False}))
    assert job.status == JobStatus.SUCCEEDED, job.error
    cleaned = DatasetVersion.objects.get(source_job=job)
    assert (cleaned.parent, cleaned.source, cleaned.number) == (source, "cleaning", 2)
    stages = {s["name"]: s for s in cleaned.cleaning_report["stages"]}
    assert stages["dedup_exact"]["dropped_docs"] == 5
    assert cleaned.rows == 31
    assert "alice@example.com" not in cleaned.path.read_text() and stages["pii"]["pii"]["email"] == 1
    client.force_login(owner)
    page = client.get(f"/datasets/versions/{cleaned.pk}/").content.decode()
    assert 'id="chart-funnel"' in page and "dedup_exact" in page
    source_page = client.get(f"/datasets/versions/{source.pk}/").content.decode()
    assert f"job #{job.pk}" in source_page or str(job) in source_page  # which jobs used it


def test_a_bad_cleaning_threshold_is_refused_before_any_job_runs(owner, client, api_token):
    source = make_version(client, owner, api_token)
    with pytest.raises(Exception, match="cleaning.near_threshold"):
        services.start_clean(owner, source, {"near_threshold": "high"})
    assert not Job.objects.filter(kind="dataset_clean").exists()


def test_the_built_in_generators_make_versions_on_day_one(owner):
    job = run(services.start_generate(owner, generator="arithmetic", n=50, dataset_name="arithmetic"))
    version = DatasetVersion.objects.get(source_job=job)
    assert (version.rows, version.canonical, version.source) == (50, "qa", "generator")
    tools = run(services.start_generate(owner, generator="tool_use_sharegpt", n=20, dataset_name="tools"))
    version = DatasetVersion.objects.get(source_job=tools)
    record = json.loads(version.path.read_text().splitlines()[0])
    assert version.source_format == "sharegpt" and any(m.get("tool_calls") for m in record["messages"])


def test_rows_page_and_search_within_a_version(client, owner, api_token):
    version = make_version(client, owner, api_token, alpaca_lines(60))
    token = api_token(owner, "t2")
    rows = client.get(f"/api/dataset-versions/{version.pk}/rows?offset=50&limit=20", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert [r["row"] for r in rows] == list(range(51, 61))
    found = client.get(f"/api/dataset-versions/{version.pk}/rows?q=number 42 in", HTTP_AUTHORIZATION=f"Bearer {token}").json()
    assert len(found) == 1 and found[0]["row"] == 42
    client.force_login(owner)
    page = client.get(f"/datasets/versions/{version.pk}/?page=3").content.decode()
    assert "#51" in page and 'class="bubble user"' in page


def test_render_with_template_highlights_exactly_the_assistant_tokens(client, owner, api_token, tmp_path, settings,
                                                                     monkeypatch):
    from apps.registry import services as registry
    from apps.registry.models import ModelVersion
    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer
    from workers.tasks.registry import model_import

    settings.MODEL_IMPORT_DIRS = [tmp_path.resolve()]
    monkeypatch.setenv("PUYU_MODEL_IMPORT_DIRS", str(tmp_path.resolve()))  # what the core allows reading
    build_tiny_llama(tmp_path / "tiny", tokenizer_dir=train_tokenizer(tmp_path / "tok"))
    model_import.run(registry.start_import(owner, source="folder", folder="0/tiny", model_name="tiny").pk)
    model = ModelVersion.objects.get()
    version = make_version(client, owner, api_token)
    client.force_login(owner)
    html = client.get(f"/datasets/versions/{version.pk}/render/?tokenizer={model.pk}&row=3").content.decode()
    loss = "".join(part.split("</span>")[0] for part in html.split('<span class="loss">')[1:])
    assert "The number is 3." in loss and "Say the number 3" not in loss


def test_owner_and_teammate_see_a_dataset_and_the_outsider_gets_404(client, users, api_token):
    version = make_version(client, users["owner"], api_token)
    urls = [f"/datasets/{version.dataset_id}/", f"/datasets/versions/{version.pk}/", f"/datasets/versions/{version.pk}/download/"]
    api_urls = [f"/api/datasets/{version.dataset_id}", f"/api/dataset-versions/{version.pk}",
                f"/api/dataset-versions/{version.pk}/rows", f"/api/dataset-versions/{version.pk}/download"]
    for name, expected in (("owner", 200), ("teammate", 200), ("outsider", 404)):
        client.force_login(users[name])
        for url in urls:
            assert client.get(url).status_code == expected, (name, url)
        token = api_token(users[name], f"{name}-key")
        for url in api_urls:
            assert client.get(url, HTTP_AUTHORIZATION=f"Bearer {token}").status_code == expected, (name, url)
    teammate = api_token(users["teammate"], "tm2")
    assert client.delete(f"/api/dataset-versions/{version.pk}", HTTP_AUTHORIZATION=f"Bearer {teammate}").status_code == 403


def test_a_version_in_use_cannot_be_deleted(client, owner, api_token):
    version = make_version(client, owner, api_token)
    job = services.start_clean(owner, version, {})
    with pytest.raises(services.DatasetError, match="uses it as input"):
        services.delete_version(owner, version)
    run(job)
    with pytest.raises(services.DatasetError, match="was derived from it"):
        services.delete_version(owner, version)
    child = DatasetVersion.objects.get(source_job=job)
    path = child.path
    services.delete_version(owner, child)
    assert not path.exists()


def test_cleaning_against_a_chosen_evaluation_set_drops_contaminated_training_records(client, owner, api_token):
    leaked = ("Natalia sold clips to forty eight of her friends in April and then she sold half as many clips "
              "in May so how many clips did Natalia sell altogether in April and May")
    train = [{"text": f"An ordinary training paragraph number {i} that talks about the weather and the sea and the hills."}
             for i in range(10)] + [{"text": f"Here is a copied problem. {leaked}. It was on the test."}]
    evals = [{"question": leaked + "?", "answer": "72"}]
    source = make_version(client, owner, api_token, "\n".join(json.dumps(d) for d in train).encode(), "train")
    benchmark = make_version(client, owner, api_token, "\n".join(json.dumps(d) for d in evals).encode(), "bench")
    job = run(services.start_clean(owner, source, {"quality": False, "dedup_near": False}, [benchmark]))
    assert job.status == JobStatus.SUCCEEDED, job.error
    cleaned = DatasetVersion.objects.get(source_job=job)
    stage = next(s for s in cleaned.cleaning_report["stages"] if s["name"] == "decontaminate")
    assert stage["dropped_docs"] == 1 and cleaned.rows == 10
    assert "Natalia" not in cleaned.path.read_text()
    assert set(benchmark.uses.values_list("role", flat=True)) == {"decontamination"}


def test_a_hub_dataset_import_on_an_offline_machine_fails_with_a_clear_reason(client, owner, api_token, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    response = client.post("/api/datasets/import-hub", {"hub_id": "openai/gsm8k", "hub_file": "main/test.jsonl",
                                                        "dataset_name": "gsm8k"},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_token(owner)}")
    assert response.status_code == 201, response.content
    job = run(Job.objects.get(pk=response.json()["job"]["id"]))
    assert job.status == JobStatus.FAILED
    assert job.error == ("main/test.jsonl: cannot reach the hub to fetch 'openai/gsm8k' "
                         "(this machine is offline); upload the file instead")
    assert not DatasetVersion.objects.exists()


@pytest.mark.parametrize("hub_id, hub_file, field", [("gsm8k", "test.jsonl", "hub_id"), ("openai/gsm8k", "../x.jsonl", "hub_file"),
                                                      ("openai/gsm8k", "model.bin", "hub_file")])
def test_a_bad_hub_reference_is_refused_before_any_job(owner, hub_id, hub_file, field):
    with pytest.raises(services.DatasetError) as error:
        services.import_from_hub(owner, hub_id, hub_file, dataset_name="x")
    assert error.value.field == field and not Job.objects.exists()
