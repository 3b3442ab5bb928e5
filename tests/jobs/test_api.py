"""The JSON API: tokens, jobs, and who may see what (owner, teammate, outsider)."""
import json

import pytest

from apps.accounts.models import APIToken, hash_token
from apps.jobs import lifecycle, services
from apps.jobs.models import Job, JobStatus


def call(client, method, path, token=None, body=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)(path, **kwargs, **headers)


@pytest.fixture
def owner_job(users):
    return services.submit_job(users["owner"], "probe", {"seconds": 1})


def test_a_token_is_stored_only_as_a_hash_and_shown_once(owner):
    token, raw = APIToken.issue(owner, "laptop")
    assert raw.startswith("puyu_") and raw not in (token.token_hash, token.prefix)
    assert token.token_hash == hash_token(raw)
    assert APIToken.authenticate(raw) == owner


def test_a_revoked_token_no_longer_authenticates(client, owner, api_token):
    raw = api_token(owner)
    assert call(client, "get", "/api/me", raw).status_code == 200
    APIToken.objects.get(user=owner).revoke()
    assert call(client, "get", "/api/me", raw).status_code == 401


def test_tokens_are_created_listed_and_revoked_through_the_api(client, owner, api_token):
    raw = api_token(owner, "bootstrap")
    created = call(client, "post", "/api/tokens", raw, {"name": "ci"})
    assert created.status_code == 201
    new = created.json()
    assert new["token"].startswith("puyu_")
    listed = call(client, "get", "/api/tokens", raw).json()
    assert {t["name"] for t in listed} == {"bootstrap", "ci"} and all("token" not in t for t in listed)
    assert call(client, "delete", f"/api/tokens/{new['id']}", raw).status_code == 204
    assert call(client, "get", "/api/me", new["token"]).status_code == 401


def test_one_user_cannot_revoke_another_users_token(client, users, api_token):
    theirs = APIToken.issue(users["owner"], "mine")[0]
    assert call(client, "delete", f"/api/tokens/{theirs.pk}", api_token(users["outsider"])).status_code == 404
    assert APIToken.objects.get(pk=theirs.pk).revoked_at is None


def test_a_job_is_submitted_through_the_api_and_read_back(client, owner, api_token):
    raw = api_token(owner)
    response = call(client, "post", "/api/jobs", raw, {"kind": "diagnostics", "params": {"steps": 3}, "title": "node check"})
    assert response.status_code == 201
    body = response.json()
    assert (body["status"], body["queue"], body["owner"], body["title"]) == ("QUEUED", "gpu", "owner", "node check")
    assert body["params"]["steps"] == 3 and body["params"]["matmul_size"] == 512
    assert call(client, "get", f"/api/jobs/{body['id']}", raw).json()["id"] == body["id"]


@pytest.mark.parametrize("body, field", [
    ({"kind": "diagnostics", "params": {"steps": 0}}, "steps"),
    ({"kind": "diagnostics", "params": {"warp": 9}}, "warp"),
    ({"kind": "probe", "queue": "tpu"}, "queue"),
])
def test_bad_job_parameters_get_a_422_naming_the_field(client, owner, api_token, body, field):
    response = call(client, "post", "/api/jobs", api_token(owner), body)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"{field}:")
    assert Job.objects.count() == 0


def test_an_unknown_kind_is_refused_by_the_schema(client, owner, api_token):
    response = call(client, "post", "/api/jobs", api_token(owner), {"kind": "mine-bitcoin"})
    assert response.status_code == 422


def test_the_job_list_filters_by_kind_status_and_owner(client, users, api_token):
    services.submit_job(users["owner"], "probe", {})
    done = services.submit_job(users["teammate"], "diagnostics", {})
    lifecycle.request_cancel(done)
    raw = api_token(users["owner"])
    assert call(client, "get", "/api/jobs", raw).json()["count"] == 2
    assert [j["kind"] for j in call(client, "get", "/api/jobs?kind=probe", raw).json()["items"]] == ["probe"]
    assert [j["owner"] for j in call(client, "get", "/api/jobs?status=CANCELLED", raw).json()["items"]] == ["teammate"]
    assert call(client, "get", "/api/jobs?owner=teammate", raw).json()["count"] == 1


@pytest.mark.parametrize("path", ["/api/jobs/{id}", "/api/jobs/{id}/log", "/api/jobs/{id}/metrics"])
def test_owner_and_teammate_can_read_a_job_and_the_outsider_gets_404(client, users, api_token, owner_job, path):
    url = path.format(id=owner_job.pk)
    assert call(client, "get", url, api_token(users["owner"])).status_code == 200
    assert call(client, "get", url, api_token(users["teammate"])).status_code == 200
    assert call(client, "get", url, api_token(users["outsider"])).status_code == 404


def test_the_outsider_does_not_see_the_job_in_lists(client, users, api_token, owner_job):
    assert call(client, "get", "/api/jobs", api_token(users["outsider"])).json() == {"count": 0, "items": []}
    assert call(client, "get", "/api/jobs", api_token(users["teammate"])).json()["count"] == 1


def test_only_the_owner_can_cancel_the_teammate_gets_403_and_the_outsider_404(client, users, api_token, owner_job):
    url = f"/api/jobs/{owner_job.pk}/cancel"
    assert call(client, "post", url, api_token(users["outsider"])).status_code == 404
    assert call(client, "post", url, api_token(users["teammate"])).status_code == 403
    assert Job.objects.get(pk=owner_job.pk).status == JobStatus.QUEUED
    response = call(client, "post", url, api_token(users["owner"]))
    assert response.status_code == 200 and response.json()["status"] == "CANCELLED"


def test_retry_through_the_api_links_the_new_job_to_the_old_one(client, users, api_token, owner_job):
    raw = api_token(users["owner"])
    assert call(client, "post", f"/api/jobs/{owner_job.pk}/retry", raw).status_code == 422  # still queued
    call(client, "post", f"/api/jobs/{owner_job.pk}/cancel", raw)
    response = call(client, "post", f"/api/jobs/{owner_job.pk}/retry", raw)
    assert response.status_code == 201 and response.json()["retry_of"] == owner_job.pk


def test_the_log_endpoint_pages_by_sequence_number(client, owner, api_token, owner_job):
    for i in range(5):
        lifecycle.append_log_line(owner_job.pk, "info", f"line {i}")
    lines = call(client, "get", f"/api/jobs/{owner_job.pk}/log?after=3", api_token(owner)).json()
    assert [line["message"] for line in lines] == ["line 3", "line 4"]


def test_session_users_can_use_the_api_from_the_browser(client, owner):
    client.force_login(owner)
    assert client.get("/api/me").json()["username"] == "owner"


def test_the_openapi_schema_describes_the_job_endpoints(client):
    schema = client.get("/api/openapi.json").json()
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/cancel", "/api/tokens"} <= set(schema["paths"])
    schemes = schema["components"]["securitySchemes"]
    assert schemes["TokenAuth"] == {"type": "http", "scheme": "bearer"}
    assert schemes["SessionAuth"]["in"] == "cookie"


def test_using_a_token_records_when_it_was_last_used(client, owner, api_token):
    raw = api_token(owner)
    assert APIToken.objects.get(user=owner).last_used_at is None
    call(client, "get", "/api/me", raw)
    assert APIToken.objects.get(user=owner).last_used_at is not None
