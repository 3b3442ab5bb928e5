"""The Storage page and API: usage per user and kind (a user sees their own, staff everyone's),
no server path anywhere, retention that deletes exactly the expired checkpoints of finished runs
and expired prediction caches, and retention settings only staff change."""
from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
from apps.jobs.models import Job, JobStatus
from apps.leaderboards.models import EvaluationRun, Suite, SuiteVersion
from apps.registry.models import ModelVersion, RegisteredModel
from apps.studio import storage
from apps.studio.models import StorageSettings
from apps.training.models import TrainingRun
from tests.conftest import login_client, own_data_dir

MANIFEST = b'{"complete": true, "step": 1, "files": []}'


@pytest.fixture
def data_dir(tmp_path, settings, monkeypatch):
    data = own_data_dir(tmp_path, settings, monkeypatch)
    settings.JOB_LOG_DIR = data / "jobs"
    return data


@pytest.fixture
def staff(make_user):
    return make_user("admin", is_staff=True)


def write(path, n: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * n)
    return path


def dataset_version(user, n: int, name: str = "data") -> DatasetVersion:
    dataset, _ = Dataset.objects.get_or_create(owner=user, name=name)
    version = DatasetVersion.objects.create(dataset=dataset, number=dataset.versions.count() + 1, source="upload",
                                            source_format="text", canonical="text", sha256="0" * 64, rows=1,
                                            size_bytes=n, created_by=user)
    write(version.path, n)
    return version


def model_version(user, recorded: int, on_disk: int, name: str = "tiny", **fields) -> ModelVersion:
    model, _ = RegisteredModel.objects.get_or_create(owner=user, name=name)
    version = ModelVersion.objects.create(model=model, number=model.versions.count() + 1, kind="base",
                                          source="import:folder", size_bytes=recorded, created_by=user, **fields)
    write(version.path / "model.safetensors", on_disk)
    return version


def job(user, kind: str, status=JobStatus.SUCCEEDED, finished=None, **fields) -> Job:
    return Job.objects.create(owner=user, kind=kind, status=status, finished_at=finished, **fields)


def training_run(user, data_dir, steps=(10, 20), weights: int = 300, status=JobStatus.SUCCEEDED, finished=None,
                 **fields) -> TrainingRun:
    """A run with a checkpoint folder per step (weights + manifest) and a samples file beside them."""
    target, _ = RegisteredModel.objects.get_or_create(owner=user, name="trained")
    run_job = job(user, "train", status, finished, title=f"SFT lora by {user.username}")
    folder = data_dir / "checkpoints" / uuid.uuid4().hex
    for step in steps:
        write(folder / f"checkpoint-{step}" / "adapter_model.safetensors", weights)
        (folder / f"checkpoint-{step}" / "manifest.json").write_bytes(MANIFEST)
    write(folder / "samples.jsonl", 10)
    return TrainingRun.objects.create(job=run_job, method="sft", finetune="lora", target_model=target,
                                      checkpoint_dir=str(folder), **fields)


def checkpoint_bytes(steps=(10, 20), weights: int = 300) -> int:
    return len(steps) * (weights + len(MANIFEST))


def evaluation(user, key: str, sample_bytes: int = 40, status=JobStatus.SUCCEEDED, finished=None) -> EvaluationRun:
    """An evaluation that filled the prediction cache under model key `key` and wrote one per-sample file."""
    suite, _ = Suite.objects.get_or_create(owner=user, name="core")
    suite_version, _ = SuiteVersion.objects.get_or_create(suite=suite, number=1, defaults={"created_by": user})
    name = f"samples-quiz-{key}-{uuid.uuid4().hex[:8]}.jsonl"
    write(storage.cache_dir() / name, sample_bytes)
    done = status == JobStatus.SUCCEEDED
    run_job = job(user, "evaluate", status, finished, title=f"Evaluate {key}",
                  result={"benchmarks": {"quiz": {"samples_file": name}}, "model_hash": key} if done else None)
    return EvaluationRun.objects.create(job=run_job, suite_version=suite_version, target_label=f"{key} model",
                                        request_key=uuid.uuid4().hex, model_hash=key if done else "")


def predictions(rows: dict[str, int]) -> None:
    """The evaluation core's cache file: `n` rows of 100 bytes of raw output per model key."""
    storage.cache_dir().mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(storage.cache_dir() / storage.PREDICTIONS)
    db.execute("CREATE TABLE IF NOT EXISTS predictions (model TEXT, benchmark TEXT, sample INTEGER, raw TEXT, "
               "PRIMARY KEY (model, benchmark, sample))")
    db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?)",
                   [(key, "quiz", i, "r" * 100) for key, n in rows.items() for i in range(n)])
    db.commit()
    db.close()


def cache_keys() -> set[str]:
    db = sqlite3.connect(storage.cache_dir() / storage.PREDICTIONS)
    try:
        return {key for (key,) in db.execute("SELECT DISTINCT model FROM predictions")}
    finally:
        db.close()


def upload(user, n: int, recorded: int | None = None) -> DatasetUpload:
    dataset, _ = Dataset.objects.get_or_create(owner=user, name="raw")
    row = DatasetUpload.objects.create(dataset=dataset, filename="notes.jsonl", stored_name=f"{uuid.uuid4().hex}.jsonl",
                                       size_bytes=n if recorded is None else recorded, created_by=user)
    write(row.path, n)
    return row


def job_log(user, n: int) -> Job:
    logged = job(user, "probe")
    write(logged.log_path, n)
    return logged


@pytest.fixture
def stored(users, data_dir):
    """The owner and the outsider each store something of every kind; some files no row claims."""
    owner, outsider = users["owner"], users["outsider"]
    dataset_version(owner, 1000)
    model_version(owner, recorded=5000, on_disk=100)  # the recorded size wins
    model_version(owner, recorded=0, on_disk=700, name="unrecorded")  # measured on disk
    training_run(owner, data_dir)
    owner_eval = evaluation(owner, "owner-key")
    evaluation(outsider, "other-key")  # as long as "owner-key": rows of one size
    predictions({"owner-key": 20, "other-key": 20, "nobody-key": 20})
    upload(owner, 250)
    job_log(owner, 60)
    dataset_version(outsider, 111)
    write(data_dir / "uploads" / "left-behind.tmp", 33)  # claimed by no row
    return {"owner_eval": owner_eval}


def usage_of(user):
    return {row["user_id"]: row for row in storage.usage_rows(user)}


@pytest.mark.django_db
def test_each_kind_is_counted_for_the_owner_of_the_object_it_belongs_to(users, staff, stored, data_dir):
    rows = usage_of(users["owner"])
    mine = rows[users["owner"].pk]["bytes"]
    assert mine["datasets"] == 1000
    assert mine["models"] == 5000 + 700
    assert mine["checkpoints"] == checkpoint_bytes() + 10  # the samples file is the run's too
    assert mine["uploads"] == 250
    assert mine["logs"] == 60
    cache_file = (storage.cache_dir() / storage.PREDICTIONS).stat().st_size
    everyone = usage_of(staff)
    theirs = everyone[users["outsider"].pk]["bytes"]
    # The shared cache file is split by rows: the two users' keys have as many rows, the third is nobody's.
    own_share, their_share = mine["caches"] - 40, theirs["caches"] - 40
    assert abs(own_share - their_share) <= 1 and own_share > 0
    assert abs(own_share + their_share + everyone[None]["bytes"]["caches"] - cache_file) <= 3
    assert theirs["datasets"] == 111 and everyone[None]["bytes"]["uploads"] == 33


@pytest.mark.django_db
def test_a_user_sees_only_their_own_usage_and_staff_see_everyones(users, staff, stored):
    assert list(usage_of(users["owner"])) == [users["owner"].pk]
    assert list(usage_of(users["teammate"])) == [users["teammate"].pk]  # a teammate does not see the owner's
    assert usage_of(users["teammate"])[users["teammate"].pk]["total"] == 0
    assert set(usage_of(staff)) == {users["owner"].pk, users["outsider"].pk, None}


@pytest.mark.django_db
def test_the_page_shows_a_user_their_own_row_and_staff_every_row(client, users, staff, stored):
    html = login_client(client, users["outsider"]).get("/storage/").content.decode()
    assert "Your usage" in html and "Unattributed" not in html
    assert ">owner<" not in html  # the owner's row is not there
    html = login_client(client, staff).get("/storage/").content.decode()
    assert "Usage per user" in html and ">owner<" in html and ">outsider<" in html and "Unattributed" in html
    assert 'href="/storage/"' in html  # linked from the header
    html = login_client(client, users["teammate"]).get("/storage/").content.decode()
    assert "You store nothing yet" in html and 'href="/datasets/upload/"' in html  # the empty state says what next


@pytest.mark.django_db
def test_the_api_shows_a_user_their_own_usage_and_staff_everyones(client, api_token, users, staff, stored):
    def get(user):
        response = client.get("/api/storage", HTTP_AUTHORIZATION=f"Bearer {api_token(user)}")
        assert response.status_code == 200
        return response.json()

    mine = get(users["owner"])
    assert [row["user"] for row in mine["users"]] == ["owner"]
    assert mine["users"][0]["bytes"]["datasets"] == 1000 and mine["users"][0]["bytes"]["models"] == 5700
    assert mine["disk"]["free_bytes"] > 0 and mine["disk"]["total_bytes"] >= mine["disk"]["used_bytes"]
    assert {row["user"] for row in get(staff)["users"]} == {"owner", "outsider", None}


@pytest.mark.django_db
def test_no_server_path_appears_on_the_page_or_in_the_api(client, api_token, users, staff, stored, data_dir, settings):
    StorageSettings.objects.update_or_create(pk=1, defaults={"checkpoint_days": 1, "cache_days": 1})
    old = timezone.now() - timedelta(days=5)
    training_run(users["owner"], data_dir, status=JobStatus.FAILED, finished=old)
    evaluation(users["owner"], "owner-key", finished=old)
    for user in (users["owner"], staff):
        html = login_client(client, user).get("/storage/").content.decode()
        body = client.get("/api/storage", HTTP_AUTHORIZATION=f"Bearer {api_token(user)}").content.decode()
        assert "checkpoints of training run" in html  # the plan is listed...
        for text in (html, body):
            for path in (str(data_dir), str(settings.BASE_DIR), "/tmp/", "checkpoints/", "evaluations/"):
                assert path not in text  # ...by what it is, never where it lies


# ---- retention ------------------------------------------------------------------------------

@pytest.fixture
def expiring(users, data_dir):
    """Checkpoints and caches on both sides of a 7-day retention, and things retention never touches."""
    owner, outsider = users["owner"], users["outsider"]
    StorageSettings.objects.update_or_create(pk=1, defaults={"checkpoint_days": 7, "cache_days": 7})
    now = timezone.now()
    old, recent = now - timedelta(days=10), now - timedelta(days=2)
    runs = {
        "old": training_run(owner, data_dir, finished=old),
        "old_failed": training_run(outsider, data_dir, status=JobStatus.FAILED, finished=now - timedelta(days=30)),
        "recent": training_run(owner, data_dir, finished=recent),
        "running": training_run(owner, data_dir, status=JobStatus.RUNNING),
        "resumed": training_run(owner, data_dir, status=JobStatus.CANCELLED, finished=old),
    }
    # The final version the old run registered lives under models/: never touched.
    registered = model_version(owner, recorded=100, on_disk=100, name="trained", source_job=runs["old"].job)
    # A queued restart resumes from a checkpoint of the cancelled run: its checkpoints stay.
    training_run(owner, data_dir, status=JobStatus.QUEUED, restarted_from_job=runs["resumed"].job)
    evals = {"old": evaluation(owner, "old-key", finished=old), "recent": evaluation(outsider, "new-key", finished=recent)}
    predictions({"old-key": 5, "new-key": 5, "nobody-key": 5})
    return {"runs": runs, "evals": evals, "registered": registered, "now": now}


def checkpoint_folders(run: TrainingRun) -> list[str]:
    from pathlib import Path

    return sorted(p.name for p in Path(run.checkpoint_dir).iterdir())


@pytest.mark.django_db
def test_retention_deletes_exactly_the_expired_checkpoints_and_caches(expiring):
    runs, evals = expiring["runs"], expiring["evals"]
    done = storage.sweep(expiring["now"])
    assert done["checkpoints"] == 2 and done["caches"] == 2 and done["failed"] == 0
    assert done["bytes"] >= 2 * checkpoint_bytes()
    for name in ("old", "old_failed"):
        assert checkpoint_folders(runs[name]) == ["samples.jsonl"]  # the checkpoints go, the run's samples stay
    for name in ("recent", "running", "resumed"):
        assert checkpoint_folders(runs[name]) == ["checkpoint-10", "checkpoint-20", "samples.jsonl"]
    registered = expiring["registered"]
    assert (registered.path / "model.safetensors").stat().st_size == 100
    assert cache_keys() == {"new-key", "nobody-key"}  # a key no run recorded is nobody's to expire
    old_samples = storage.cache_dir() / evals["old"].job.result["benchmarks"]["quiz"]["samples_file"]
    new_samples = storage.cache_dir() / evals["recent"].job.result["benchmarks"]["quiz"]["samples_file"]
    assert not old_samples.exists() and new_samples.exists()
    assert storage.plan(expiring["now"]).items == []  # nothing is left to expire
    assert StorageSettings.load().last_sweep["checkpoints"] == 2


@pytest.mark.django_db
def test_caches_wait_while_an_evaluation_runs(users, expiring):
    job(users["teammate"], "evaluate", status=JobStatus.RUNNING)
    found = storage.plan(expiring["now"])
    assert found.caches_waiting and {item.kind for item in found.items} == {"checkpoints"}
    storage.sweep(expiring["now"])
    assert cache_keys() == {"old-key", "new-key", "nobody-key"}


@pytest.mark.django_db
def test_zero_days_keeps_everything_forever(expiring):
    StorageSettings.objects.filter(pk=1).update(checkpoint_days=0, cache_days=0)
    assert storage.sweep(expiring["now"])["checkpoints"] == 0
    assert checkpoint_folders(expiring["runs"]["old"]) == ["checkpoint-10", "checkpoint-20", "samples.jsonl"]
    assert cache_keys() == {"old-key", "new-key", "nobody-key"}


@pytest.mark.django_db
def test_the_maintenance_task_sweeps_once_when_due_and_logs_each_deletion(expiring, caplog):
    from workers.tasks.maintenance import retention_sweep

    with caplog.at_level("INFO", logger="apps.studio.storage"):
        first = retention_sweep()
    assert first["checkpoints"] == 2 and first["by"] == "beat"
    assert sum("retention: deleted" in r.message for r in caplog.records) == 4
    assert retention_sweep() is None  # swept moments ago: not due for an hour


@pytest.mark.django_db
def test_the_page_lists_what_the_next_sweep_deletes_each_user_their_own(client, users, staff, expiring):
    html = login_client(client, staff).get("/storage/").content.decode()
    assert html.count("checkpoints of training run") == 2 and "Cached predictions of old-key model" in html
    assert "Run the sweep now" in html
    html = login_client(client, users["outsider"]).get("/storage/").content.decode()
    assert html.count("checkpoints of training run") == 1 and "old-key" not in html
    assert "Run the sweep now" not in html and "Only staff change these settings." in html


@pytest.mark.django_db
def test_staff_run_the_sweep_from_the_page(client, staff, expiring):
    response = login_client(client, staff).post("/storage/sweep/", follow=True)
    assert "Sweep done: 4 expired items deleted" in response.content.decode()
    assert checkpoint_folders(expiring["runs"]["old"]) == ["samples.jsonl"]


# ---- who changes retention --------------------------------------------------------------------

@pytest.mark.django_db
def test_outsiders_cannot_change_retention_or_sweep(client, api_token, users, expiring):
    outsider = users["outsider"]
    login_client(client, outsider)
    assert client.post("/storage/retention/", {"checkpoint_days": 1, "cache_days": 1}).status_code == 403
    assert client.post("/storage/sweep/").status_code == 403
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_token(outsider)}"}
    response = client.put("/api/storage/retention", json.dumps({"checkpoint_days": 1}), content_type="application/json", **auth)
    assert response.status_code == 403
    assert client.post("/api/storage/sweep", **auth).status_code == 403
    retention = StorageSettings.load()
    assert (retention.checkpoint_days, retention.cache_days) == (7, 7)
    assert checkpoint_folders(expiring["runs"]["old"]) == ["checkpoint-10", "checkpoint-20", "samples.jsonl"]


@pytest.mark.django_db
def test_staff_change_retention_on_the_page_and_in_the_api(client, api_token, staff, data_dir):
    login_client(client, staff)
    html = client.get("/storage/").content.decode()
    assert "0 keeps them forever" in html and "In days, 0 to 3650" in html  # inline help: what, unit, range, default
    response = client.post("/storage/retention/", {"checkpoint_days": 14, "cache_days": 30})
    assert response.status_code == 302
    retention = StorageSettings.load()
    assert (retention.checkpoint_days, retention.cache_days, retention.updated_by) == (14, 30, staff)
    response = client.post("/storage/retention/", {"checkpoint_days": 5000, "cache_days": 30})
    assert response.status_code == 422 and "3650" in response.content.decode()
    response = client.put("/api/storage/retention", json.dumps({"cache_days": 3}), content_type="application/json",
                          HTTP_AUTHORIZATION=f"Bearer {api_token(staff)}")
    assert response.status_code == 200 and response.json()["cache_days"] == 3 and response.json()["checkpoint_days"] == 14


@pytest.mark.django_db
def test_everyone_reads_the_retention_settings(client, users, data_dir):
    StorageSettings.objects.update_or_create(pk=1, defaults={"checkpoint_days": 14, "cache_days": 0})
    html = login_client(client, users["outsider"]).get("/storage/").content.decode()
    assert "kept 14 days after the run finished" in html and "kept forever" in html
