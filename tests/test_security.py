"""Anonymous users see nothing but an allowlist, CSRF guards every unsafe method, outsiders get
404 everywhere (page, API, websocket), and a websocket from a foreign Origin is refused."""
import re

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from apps.jobs import services
from puyu_site.api import api
from puyu_site.asgi import application

# Reachable without logging in, and why.
ANONYMOUS_ALLOWLIST = {
    "/accounts/login/",  # the way in
    "/accounts/logout/",  # logging out when already logged out is harmless (POST only)
    "/healthz",  # load balancers; says only {"ok": true}
    "/api/openapi.json",  # the API's shape is not a secret; every operation in it needs auth
    "/api/docs",  # the Swagger page for that schema
    "/admin/login/",  # the admin's own way in
}
SAMPLE_VALUES = {"int": "1", "slug": "datasets", "str": "x", "path": "x/y"}


def sample_path(pattern: str) -> str:
    """A concrete URL for a route or simple regex pattern."""
    pattern = re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLE_VALUES[m.group(1) or "str"], pattern)
    pattern = re.sub(r"\(\?P<\w+>([^|)]+)[^)]*\)", r"\1", pattern)  # (?P<app_label>auth|jobs) → auth
    pattern = re.sub(r"\(\?P<\w+>\.\+\)", "x", pattern)
    return pattern.replace("^", "").replace("$", "").replace("\\Z", "")


def all_paths(resolver=None, prefix="") -> set[str]:
    paths = set()
    for entry in (resolver or get_resolver()).url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            paths |= all_paths(entry, route)
        elif isinstance(entry, URLPattern):
            paths.add("/" + sample_path(route))
    return paths


def test_every_page_sends_anonymous_users_to_a_login_page():
    client = Client()
    checked = 0
    for path in sorted(all_paths()):
        if path in ANONYMOUS_ALLOWLIST or path.startswith("/api/"):
            continue
        if path.startswith("/v1/") or path == "/metrics":  # key-authenticated: 401, see tests/serving
            assert client.get(path).status_code in (401, 405), path
            continue
        response = client.get(path)
        assert response.status_code == 302, f"{path} answered {response.status_code} to an anonymous user"
        assert "/login/" in response["Location"], f"{path} redirected to {response['Location']}"
        checked += 1
    assert checked >= 25  # the site's pages and the admin's


def test_every_api_operation_answers_401_to_anonymous_callers():
    client = Client()
    schema = api.get_openapi_schema()
    checked = 0
    for path, operations in schema["paths"].items():
        for method in operations:
            response = getattr(client, method)(sample_path(path.replace("{", "<").replace("}", ">")))
            assert response.status_code == 401, f"{method.upper()} {path} answered {response.status_code}"
            checked += 1
    assert checked >= 10


def test_the_allowlisted_pages_really_are_reachable_anonymously(db):
    client = Client()
    for path in ("/accounts/login/", "/healthz", "/api/openapi.json", "/api/docs", "/admin/login/"):
        assert client.get(path).status_code == 200, path


@pytest.fixture
def csrf_client(users):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["owner"])
    return client


def test_every_form_post_without_a_csrf_token_is_refused(csrf_client, users):
    job = services.submit_job(users["owner"], "probe", {})
    token = __import__("apps.accounts.models", fromlist=["APIToken"]).APIToken.issue(users["owner"], "t")[0]
    for path in (f"/jobs/{job.pk}/cancel/", f"/jobs/{job.pk}/retry/", "/jobs/new/diagnostics/", "/accounts/tokens/",
                 f"/accounts/tokens/{token.pk}/revoke/", "/accounts/logout/"):
        assert csrf_client.post(path).status_code == 403, path
    job.refresh_from_db()
    assert job.status == "QUEUED"


def test_every_unsafe_api_call_with_a_session_and_no_csrf_token_is_refused(csrf_client, users):
    job = services.submit_job(users["owner"], "probe", {})
    calls = [("post", "/api/jobs", '{"kind": "probe"}'), ("post", f"/api/jobs/{job.pk}/cancel", ""),
             ("post", f"/api/jobs/{job.pk}/retry", ""), ("post", "/api/tokens", '{"name": "x"}'),
             ("delete", "/api/tokens/1", "")]
    for method, path, body in calls:
        response = getattr(csrf_client, method)(path, data=body, content_type="application/json")
        assert response.status_code == 403, f"{method} {path} answered {response.status_code}"
    assert csrf_client.get("/api/me").status_code == 200  # safe methods need no token


def test_owner_and_teammate_see_the_job_page_and_the_outsider_gets_404(client, users):
    job = services.submit_job(users["owner"], "probe", {})
    for name, expected in (("owner", 200), ("teammate", 200), ("outsider", 404)):
        client.force_login(users[name])
        for path in (f"/jobs/{job.pk}/",):
            assert client.get(path).status_code == expected, (name, path)
        assert client.post(f"/jobs/{job.pk}/cancel/").status_code in ((302,) if expected == 200 else (404,))
    job.refresh_from_db()
    assert job.status == "CANCELLED" and job.cancel_requested  # by the owner; the teammate's try was refused


def session_headers(client, user, origin=b"http://testserver"):
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    return [(b"cookie", cookie), (b"origin", origin), (b"host", b"testserver")]


async def connect(path, headers):
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    first = await communicator.receive_json_from(timeout=5) if connected else None
    await communicator.disconnect()
    return connected, code, first


@pytest.mark.django_db(transaction=True)
def test_the_websocket_serves_owner_and_teammate_and_refuses_outsider_and_anonymous(client, users):
    job = services.submit_job(users["owner"], "probe", {})
    path = f"/ws/jobs/{job.pk}/"
    for name in ("owner", "teammate"):
        connected, _, first = async_to_sync(connect)(path, session_headers(client, users[name]))
        assert connected and first["event"] == "snapshot" and first["data"]["status"] == "QUEUED", name
    connected, code, _ = async_to_sync(connect)(path, session_headers(client, users["outsider"]))
    assert (connected, code) == (False, 4404)
    connected, code, _ = async_to_sync(connect)(path, [(b"origin", b"http://testserver")])
    assert (connected, code) == (False, 4401)


@pytest.mark.django_db(transaction=True)
def test_a_websocket_from_a_foreign_origin_is_refused(client, users):
    job = services.submit_job(users["owner"], "probe", {})
    headers = session_headers(client, users["owner"], origin=b"http://evil.example")
    connected, _, _ = async_to_sync(connect)(f"/ws/jobs/{job.pk}/", headers)
    assert connected is False


def test_cancel_returns_to_the_page_that_asked_and_never_to_another_site(client, users):
    client.force_login(users["owner"])
    job = services.submit_job(users["owner"], "probe", {})
    response = client.post(f"/jobs/{job.pk}/cancel/", {"next": f"/training/{job.pk}/"})
    assert response.status_code == 302 and response["Location"] == f"/training/{job.pk}/"
    other = services.submit_job(users["owner"], "probe", {})
    response = client.post(f"/jobs/{other.pk}/cancel/", {"next": "https://evil.example/"})
    assert response["Location"] == f"/jobs/{other.pk}/"
