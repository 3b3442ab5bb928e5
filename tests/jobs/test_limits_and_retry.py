"""Per-user limits of the job layer, and retries of jobs that only their app can rebuild."""
import json

import pytest

from apps.jobs import lifecycle, services
from apps.jobs.models import Job, JobStatus


def call(client, method, path, token, body=None):
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {token}", **kwargs)


def test_a_user_with_the_maximum_of_active_jobs_gets_a_429_and_nothing_is_stored(client, users, api_token, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 2
    token = api_token(users["owner"])
    for _ in range(2):
        assert call(client, "post", "/api/jobs", token, {"kind": "probe"}).status_code == 201
    refused = call(client, "post", "/api/jobs", token, {"kind": "probe"})
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("jobs:") and "limit is 2" in refused.json()["detail"]
    assert Job.objects.filter(owner=users["owner"]).count() == 2
    # Another user is not affected, and a finished job frees a place.
    assert call(client, "post", "/api/jobs", api_token(users["teammate"]), {"kind": "probe"}).status_code == 201
    lifecycle.request_cancel(Job.objects.filter(owner=users["owner"]).first())
    assert call(client, "post", "/api/jobs", token, {"kind": "probe"}).status_code == 201


def test_staff_are_not_limited(make_user, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 1
    admin = make_user("admin", is_staff=True)
    for _ in range(3):
        services.submit_job(admin, "probe", {})
    assert Job.objects.filter(owner=admin, status=JobStatus.QUEUED).count() == 3


def test_the_limit_is_shown_on_the_submit_form(client, users, settings):
    settings.MAX_ACTIVE_JOBS_PER_USER = 1
    services.submit_job(users["owner"], "probe", {})
    client.force_login(users["owner"])
    response = client.post("/jobs/new/probe/", {"queue": "cpu", "seconds": 0, "steps": 1})
    assert response.status_code == 200 and b"limit is 1" in response.content
    assert Job.objects.count() == 1


@pytest.mark.parametrize("kind, params", [
    ("model_import", {"source": "hub", "hub_id": "org/model", "output_dir": "{models}/raw"}),
    ("train", {"base_model_dir": "{models}/base", "train_files": ["{datasets}/v1.jsonl"], "output_dir": "{models}/out",
               "checkpoint_dir": "{data}/checkpoints/run"}),
    ("dataset_generate", {"output_path": "{datasets}/gen.jsonl"}),
    ("serve", None),
])
def test_retrying_a_job_its_app_did_not_create_is_a_422_naming_kind_not_a_500(client, users, api_token, settings, kind, params):
    """A raw registry or training job (made by the generic API before it was restricted) has no
    records of its app to rebuild it from."""
    text = json.dumps(params or {"replica_id": "r"})
    for name, folder in {"models": settings.MODEL_STORE_DIR, "datasets": settings.DATASET_STORE_DIR, "data": settings.DATA_DIR}.items():
        text = text.replace("{" + name + "}", str(folder))
    stored = json.loads(text)
    raw = Job.objects.create(owner=users["owner"], kind=kind, params=stored, status=JobStatus.FAILED)
    response = call(client, "post", f"/api/jobs/{raw.pk}/retry", api_token(users["owner"]))
    assert response.status_code == 422, response.content
    assert response.json()["detail"].startswith("kind:")
    assert Job.objects.count() == 1
    client.force_login(users["owner"])
    page = client.post(f"/jobs/{raw.pk}/retry/", follow=True)
    assert page.status_code == 200 and Job.objects.count() == 1


def test_a_generic_job_is_still_retried_with_its_parameters(users):
    job = services.submit_job(users["owner"], "probe", {"seconds": 0.5, "steps": 2})
    lifecycle.request_cancel(job)
    again = services.retry_job(Job.objects.get(pk=job.pk), users["owner"])
    assert again.retry_of_id == job.pk and again.params == job.params


@pytest.mark.parametrize("queue", ["serve", "agent"])
def test_a_generic_job_cannot_take_a_serving_or_agent_worker(client, users, api_token, queue):
    response = call(client, "post", "/api/jobs", api_token(users["owner"]), {"kind": "probe", "params": {}, "queue": queue})
    assert response.status_code == 422 and response.json()["detail"].startswith("queue:")
    assert not Job.objects.exists()
    client.force_login(users["owner"])
    form = client.get("/jobs/new/diagnostics/").content.decode()
    assert f'value="{queue}"' not in form and 'value="gpu"' in form and "(1-10,000; default 20)" in form
