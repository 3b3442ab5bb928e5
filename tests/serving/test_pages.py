"""The serving pages and endpoints for people: three-user authorization, the deployment form,
keys (shown once, revoked), usage, live metrics JSON, Prometheus, and the try-it box."""
import json

from django.test import Client

from apps.serving.access import record_usage
from apps.serving.models import ApiKey, Deployment, UsageDay
from tests.serving.conftest import sse_events


def pages(deployment):
    return ["/deployments/", f"/deployments/{deployment.pk}/", f"/deployments/{deployment.pk}/metrics/"]


def test_owner_and_teammate_see_the_deployment_and_the_outsider_gets_404(client, users, deployment):
    for name, expected in (("owner", 200), ("teammate", 200), ("outsider", 404)):
        client.force_login(users[name])
        for path in pages(deployment)[1:]:
            assert client.get(path).status_code == expected, (name, path)
        listing = client.get("/deployments/").content.decode()
        assert ("owner/tiny-chat" in listing) == (expected == 200), name


def test_the_teammate_sees_but_cannot_stop_scale_or_delete(client, users, deployment):
    client.force_login(users["teammate"])
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "stop-button" not in page
    for action in ("stop", "scale", "delete"):
        assert client.post(f"/deployments/{deployment.pk}/{action}/", {"replicas": 2}).status_code == 403, action
    client.force_login(users["outsider"])
    assert client.post(f"/deployments/{deployment.pk}/stop/").status_code == 404
    deployment.refresh_from_db()
    assert deployment.state == "starting" and deployment.replicas == 1
    client.force_login(users["owner"])
    assert client.post(f"/deployments/{deployment.pk}/stop/").status_code == 302
    deployment.refresh_from_db()
    assert deployment.state in ("draining", "stopped")


def test_anonymous_callers_get_401_from_the_api_and_a_login_redirect_from_pages(db, deployment):
    anonymous = Client()
    for path in ("/v1/models",):
        response = anonymous.get(path)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert anonymous.post("/v1/chat/completions", "{}", content_type="application/json").status_code == 401
    assert anonymous.get("/metrics").status_code == 401
    for path in pages(deployment) + ["/deployments/keys/", "/deployments/usage/", "/deployments/new/"]:
        response = anonymous.get(path)
        assert response.status_code == 302 and "/login/" in response["Location"], path


def test_the_new_deployment_form_deploys_a_version_and_shows_field_errors(client, users, make_version):
    version = make_version(users["owner"])
    client.force_login(users["owner"])
    form = client.get("/deployments/new/").content.decode()
    assert f'value="v{version.pk}"' in form
    bad = client.post("/deployments/new/", {"name": "chat", "serves": f"v{version.pk}", "replicas": 1, "queue": "serve",
                                           "engine_options": '{"no_such_knob": 1}', "max_queue": 8, "request_timeout_s": 60,
                                           "max_restarts": 1})
    assert bad.status_code == 200 and "engine_options.no_such_knob" in bad.content.decode()
    good = client.post("/deployments/new/", {"name": "chat", "serves": f"v{version.pk}", "replicas": 1, "queue": "serve",
                                            "engine_options": "", "max_queue": 8, "request_timeout_s": 60, "max_restarts": 1})
    deployment = Deployment.objects.get(name="chat")
    assert good.status_code == 302 and good["Location"] == f"/deployments/{deployment.pk}/"
    assert deployment.max_queue == 8 and deployment.replica_set.count() == 1


def test_the_outsider_cannot_pick_a_private_version_in_the_form(client, users, make_version):
    version = make_version(users["owner"])
    client.force_login(users["outsider"])
    assert f'value="v{version.pk}"' not in client.get("/deployments/new/").content.decode()
    response = client.post("/deployments/new/", {"name": "steal", "serves": f"v{version.pk}", "replicas": 1, "queue": "serve",
                                                "max_queue": 8, "request_timeout_s": 60, "max_restarts": 1})
    assert response.status_code == 200 and not Deployment.objects.exists()


def test_a_key_is_shown_once_hashed_at_rest_and_revoked_from_the_keys_page(client, users, api, deployment):
    client.force_login(users["owner"])
    page = client.post("/deployments/keys/", {"name": "laptop", "rate_limit_per_minute": 10, "token_quota_per_day": 1000})
    raw = page.context["new_key"]
    assert raw.startswith("sk-puyu-") and raw in page.content.decode()
    key = ApiKey.objects.get(user=users["owner"])
    assert key.key_hash != raw and raw not in json.dumps(list(ApiKey.objects.values()), default=str)
    assert raw not in client.get("/deployments/keys/").content.decode()
    assert api.get("/v1/models", raw).status_code == 200
    client.force_login(users["teammate"])
    assert client.post(f"/deployments/keys/{key.pk}/revoke/").status_code == 404  # not theirs
    client.force_login(users["owner"])
    assert client.post(f"/deployments/keys/{key.pk}/revoke/").status_code == 302
    assert api.get("/v1/models", raw).status_code == 401


def test_the_usage_page_shows_tokens_per_day_per_key_and_deployment_only_to_the_keys_owner(client, users, deployment, make_key):
    make_key(users["owner"], name="script")
    key = ApiKey.objects.get(user=users["owner"])
    record_usage(key.pk, deployment.pk, {"prompt_tokens": 11, "completion_tokens": 31})
    record_usage(key.pk, deployment.pk, {"prompt_tokens": 1, "completion_tokens": 1})
    row = UsageDay.objects.get()
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 12, 32)
    client.force_login(users["owner"])
    page = client.get("/deployments/usage/")
    assert page.context["chart"][0]["y"] == [44] and "script → owner/tiny-chat" in page.context["chart"][0]["name"]
    client.force_login(users["teammate"])
    assert client.get("/deployments/usage/").context["chart"] == []


def test_the_metrics_json_reads_the_replica_hashes(client, users, deployment, replica):
    client.force_login(users["teammate"])
    with replica():
        data = client.get(f"/deployments/{deployment.pk}/metrics/?history=1").json()
    assert data["replicas"][0]["live_state"] == "ready"
    assert data["totals"]["tokens_per_s"] == 50.0 and data["totals"]["kv_cache_used"] == 0.25
    assert set(data["history"]) >= {"running", "tokens_per_s"}


def test_prometheus_metrics_are_for_staff_or_the_metrics_token(client, users, deployment, replica, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    client.force_login(users["owner"])
    assert client.get("/metrics").status_code == 403
    users["owner"].is_staff = True
    users["owner"].save()
    with replica():
        text = client.get("/metrics").content.decode()
        scraped = Client().get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert 'puyu_serving_tokens_per_second{deployment="owner/tiny-chat"' in text
    assert 'puyu_serving_replica_ready{deployment="owner/tiny-chat"' in text
    assert scraped.status_code == 200 and "puyu_serving_kv_cache_used_ratio" in scraped.content.decode()
    assert Client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_try_it_box_streams_for_a_teammate_and_not_for_the_outsider(users, deployment, replica):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def post(user):
        client = AsyncClient()
        await client.aforce_login(user)
        response = await client.post(f"/deployments/{deployment.pk}/try/", data=json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}), content_type="application/json")
        if response.streaming:
            response.chunks = [chunk async for chunk in response.streaming_content]
        return response

    with replica():
        ok = async_to_sync(post)(users["teammate"])
        refused = async_to_sync(post)(users["outsider"])
    events = sse_events(ok)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"]) == "Hello world"
    assert events[-2]["usage"]["total_tokens"] == 7
    assert refused.status_code == 404


def test_the_deployments_api_follows_the_same_rules(client, users, make_version, api_token):
    version = make_version(users["owner"])
    auth = lambda name: {"HTTP_AUTHORIZATION": f"Bearer {api_token(users[name])}"}
    created = client.post("/api/deployments", json.dumps({"name": "api-chat", "version_id": version.pk, "replicas": 1}),
                          content_type="application/json", **auth("owner"))
    assert created.status_code == 201, created.content
    deployment_id = created.json()["id"]
    assert created.json()["served_name"] == "owner/api-chat"
    bad = client.post("/api/deployments", json.dumps({"name": "x", "version_id": version.pk, "engine_options": {"bogus": 1}}),
                      content_type="application/json", **auth("owner"))
    assert bad.status_code == 422 and "engine_options.bogus" in bad.json()["detail"]
    assert client.get(f"/api/deployments/{deployment_id}", **auth("teammate")).status_code == 200
    assert client.post(f"/api/deployments/{deployment_id}/stop", **auth("teammate")).status_code == 403
    assert client.get(f"/api/deployments/{deployment_id}", **auth("outsider")).status_code == 404
    assert [d["id"] for d in client.get("/api/deployments", **auth("outsider")).json()] == []
    stopped = client.post(f"/api/deployments/{deployment_id}/stop", **auth("owner"))
    assert stopped.status_code == 200 and stopped.json()["state"] in ("draining", "stopped")
