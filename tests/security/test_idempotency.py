"""A replayed or double-submitted POST creates one object: the `Idempotency-Key` header on the
JSON API and the one-time `_once` token of the HTML forms (apps/studio/idempotency.py)."""
from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from apps.jobs import services
from apps.jobs.models import Job
from apps.studio import idempotency
from apps.studio.models import IdempotencyRecord

PROBE = {"kind": "probe", "params": {}, "title": "once"}


@pytest.fixture
def api(users, api_token):
    """POST as the owner with a bearer token (no CSRF) and an optional Idempotency-Key."""
    token = api_token(users["owner"])

    def post(path, body, key=None, token=token):
        headers = {"Authorization": f"Bearer {token}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return Client().post(path, data=json.dumps(body), content_type="application/json", headers=headers)

    return post


@pytest.mark.promise("double submit creates one job")
def test_a_replayed_post_with_the_same_key_returns_the_first_job(api, users):
    first = api("/api/jobs", PROBE, key="submit-1")
    again = api("/api/jobs", PROBE, key="submit-1")
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert Job.objects.filter(owner=users["owner"]).count() == 1
    # Another key is another request.
    assert api("/api/jobs", PROBE, key="submit-2").json()["id"] != first.json()["id"]
    assert Job.objects.filter(owner=users["owner"]).count() == 2


def test_the_same_key_with_another_body_is_refused_naming_the_header(api, users):
    api("/api/jobs", PROBE, key="k")
    response = api("/api/jobs", {**PROBE, "title": "other"}, key="k")
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["detail"]
    # ... and so is the same key on another path.
    assert api("/api/tokens", {"name": "x"}, key="k").status_code == 422
    assert Job.objects.filter(owner=users["owner"]).count() == 1


def test_keys_belong_to_one_user(api, users, api_token):
    mine = api("/api/jobs", PROBE, key="shared").json()
    theirs = api("/api/jobs", PROBE, key="shared", token=api_token(users["outsider"])).json()
    assert mine["id"] != theirs["id"] and theirs["owner"] == "outsider"


def test_a_malformed_key_is_refused_and_a_post_without_one_is_not_deduplicated(api, users):
    response = api("/api/jobs", PROBE, key="x" * 256)
    assert response.status_code == 422 and "Idempotency-Key" in response.json()["detail"]
    assert api("/api/jobs", PROBE).status_code == api("/api/jobs", PROBE).status_code == 201
    assert Job.objects.filter(owner=users["owner"]).count() == 2


def test_a_refused_request_keeps_its_answer_and_a_server_error_lets_the_key_go(api, users, monkeypatch):
    refused = api("/api/jobs", {"kind": "train", "params": {}}, key="bad")
    assert refused.status_code == 422
    assert api("/api/jobs", {"kind": "train", "params": {}}, key="bad").content == refused.content

    def boom(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(services, "submit_job", boom)
    with pytest.raises(RuntimeError):
        api("/api/jobs", PROBE, key="retry-me")
    assert not IdempotencyRecord.objects.filter(key="api:retry-me").exists()
    monkeypatch.undo()
    assert api("/api/jobs", PROBE, key="retry-me").status_code == 201


def test_a_new_token_is_not_replayed_with_its_secret(api, users):
    first = api("/api/tokens", {"name": "ci"}, key="tok")
    assert first.status_code == 201 and first.json()["token"].startswith("puyu_")
    again = api("/api/tokens", {"name": "ci"}, key="tok")
    assert again.status_code == 409 and "secret" in again.json()["detail"]
    assert first.json()["token"].encode() not in bytes(IdempotencyRecord.objects.get(key="api:tok").body or b"")


def test_records_older_than_a_day_are_forgotten(api, users):
    api("/api/jobs", PROBE, key="old")
    IdempotencyRecord.objects.update(created_at=timezone.now() - idempotency.KEEP - timedelta(minutes=1))
    assert api("/api/jobs", PROBE, key="new").status_code == 201
    assert not IdempotencyRecord.objects.filter(key="api:old").exists()  # cleaned up on insert
    assert Job.objects.filter(owner=users["owner"]).count() == 2


def test_the_schema_documents_the_header_on_every_studio_api_post_and_not_on_v1(client):
    schema = client.get("/api/openapi.json").json()
    posts = [ops["post"] for path, ops in schema["paths"].items() if "post" in ops and not path.startswith("/v1/")]
    assert posts and all(any(p["name"] == "Idempotency-Key" for p in op["parameters"]) for op in posts)
    v1 = schema["paths"]["/v1/chat/completions"]["post"]  # the OpenAI API has no such header here
    assert not any(p.get("name") == "Idempotency-Key" for p in v1.get("parameters", []))


class Gate:
    """Holds the first submit_job call inside the request until released, so a second request
    with the same key arrives while the first is still running."""

    def __init__(self, monkeypatch):
        self.entered, self.release = threading.Event(), threading.Event()
        real = services.submit_job

        def held(*args, **kwargs):
            self.entered.set()
            assert self.release.wait(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(services, "submit_job", held)


def in_thread(fn, *args, **kwargs):
    box = {}

    def run():
        from django.db import connection

        try:
            box["response"] = fn(*args, **kwargs)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


@pytest.mark.promise("double submit creates one job")
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_with_one_key_create_one_job(api, users, monkeypatch, promise_figure):
    gate = Gate(monkeypatch)
    first, first_box = in_thread(api, "/api/jobs", PROBE, key="race")
    assert gate.entered.wait(10)
    second, second_box = in_thread(api, "/api/jobs", PROBE, key="race")
    # The second waits on the first's record (it never reaches submit_job: the gate is not re-entered).
    gate.entered.clear()
    gate.release.set()
    first.join(15), second.join(15)
    assert not gate.entered.is_set()
    assert first_box["response"].status_code == second_box["response"].status_code == 201
    assert first_box["response"].content == second_box["response"].content
    assert Job.objects.filter(owner=users["owner"]).count() == 1
    promise_figure("API: 2 concurrent POSTs with one Idempotency-Key -> 1 job, same response")


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_that_waits_too_long_gets_409_with_a_clear_message(api, users, monkeypatch):
    monkeypatch.setattr(idempotency, "WAIT_SECONDS", 0.2)
    gate = Gate(monkeypatch)
    first, first_box = in_thread(api, "/api/jobs", PROBE, key="slow")
    assert gate.entered.wait(10)
    busy = api("/api/jobs", PROBE, key="slow")
    gate.release.set()
    first.join(15)
    assert busy.status_code == 409 and "still being processed" in busy.json()["detail"]
    assert first_box["response"].status_code == 201
    assert Job.objects.filter(owner=users["owner"]).count() == 1


# ---- forms: the one-time `_once` token --------------------------------------------------------

def post_form(client, path, data):
    """As a browser posts a form without a file input (urlencoded; the test client's default is multipart)."""
    from urllib.parse import urlencode

    return client.post(path, urlencode(data), content_type="application/x-www-form-urlencoded")


DIAGNOSTICS = {"title": "twice", "queue": "gpu", "steps": "3", "matmul_size": "64", "bandwidth_mb": "8",
               "min_step_seconds": "0", "device": "auto"}


@pytest.mark.promise("double submit creates one job")
def test_a_form_posted_twice_with_one_token_creates_one_job_and_both_land_on_it(client, users):
    client.force_login(users["owner"])
    form = {**DIAGNOSTICS, "_once": "3b241101-e2bb-4255-8caf-4136c566a962"}
    first = post_form(client, "/jobs/new/diagnostics/", form)
    second = post_form(client, "/jobs/new/diagnostics/", form)
    job = Job.objects.get(owner=users["owner"])
    assert first.status_code == second.status_code == 302
    assert first["Location"] == second["Location"] == f"/jobs/{job.pk}/"
    # A fresh page load (a new token) is a new submission.
    post_form(client, "/jobs/new/diagnostics/", {**form, "_once": "5c8f0d3e-0000-4000-8000-000000000001"})
    assert Job.objects.filter(owner=users["owner"]).count() == 2


def test_a_form_token_in_the_query_string_guards_multipart_forms_too(client, users):
    """once.js puts the token of a multipart form in its action's query string: the server must
    not parse a multipart body before the view (it picks the upload handlers)."""
    client.force_login(users["owner"])
    token = "9e1c4a1e-7d7e-4c39-9d0d-2f1bb0f6f6aa"
    responses = [client.post(f"/jobs/new/diagnostics/?_once={token}", DIAGNOSTICS) for _ in range(2)]
    assert responses[0]["Location"] == responses[1]["Location"]
    assert Job.objects.filter(owner=users["owner"]).count() == 1


def test_a_malformed_form_token_is_refused_and_nothing_is_created(client, users):
    client.force_login(users["owner"])
    response = post_form(client, "/jobs/new/diagnostics/", {**DIAGNOSTICS, "_once": "<script>"})
    assert response.status_code == 400 and b"_once" in response.content
    assert not Job.objects.exists()


def test_the_base_page_loads_the_once_script(client, users):
    client.force_login(users["owner"])
    assert b"js/once.js" in client.get("/jobs/new/diagnostics/").content
