"""What a newcomer meets first and when something goes wrong: the studio's own 403/404/500 pages (its layout,
what happened, what to do), 401 (not a CSRF complaint) for an anonymous API call, a favicon, and
admin names that read as English."""
from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.test import Client

from tests.conftest import login_client


@pytest.mark.django_db
def test_an_unknown_address_shows_the_studio_404_page_with_a_way_back(client, users, settings):
    settings.DEBUG = False
    login_client(client, users["owner"])
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Not found" in html and 'class="topbar"' in html and 'href="/"' in html
    assert "Traceback" not in html


@pytest.mark.django_db
def test_a_server_error_shows_the_studio_500_page_without_a_traceback(users, settings):
    settings.DEBUG = False
    client = Client(raise_request_exception=False)
    login_client(client, users["owner"])
    import puyu_site.urls as urls

    def broken(request):
        raise RuntimeError("secret /var/lib/puyu/path")

    pattern = next(p for p in urls.urlpatterns if getattr(p, "name", "") == "dashboard")
    original = pattern.callback
    try:
        pattern.callback = broken
        response = client.get("/")
    finally:
        pattern.callback = original
    assert response.status_code == 500
    html = response.content.decode()
    assert "Something went wrong on our side" in html and "nothing half-done was kept" in html
    assert "secret" not in html and "RuntimeError" not in html


@pytest.mark.django_db
def test_a_forged_form_post_shows_the_studio_csrf_page(users, settings):
    client = Client(enforce_csrf_checks=True)
    login_client(client, users["owner"])
    response = client.post("/accounts/tokens/", {"name": "x"})
    assert response.status_code == 403
    assert "The form expired" in response.content.decode() and "Nothing was changed" in response.content.decode()


@pytest.mark.django_db
def test_an_anonymous_api_post_is_told_to_authenticate_not_that_csrf_failed(db):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/api/jobs", {"kind": "probe"}, content_type="application/json")
    assert response.status_code == 401
    assert "CSRF" not in response.content.decode()


@pytest.mark.django_db
def test_a_signed_in_browser_session_still_needs_the_csrf_token_for_api_posts(users):
    client = Client(enforce_csrf_checks=True)
    login_client(client, users["owner"])
    response = client.post("/api/tokens", {"name": "x"}, content_type="application/json")
    assert response.status_code == 403


@pytest.mark.django_db
def test_every_page_links_a_favicon_and_the_browser_default_address_answers(client, users):
    login_client(client, users["owner"])
    assert 'rel="icon"' in client.get("/").content.decode()
    response = client.get("/favicon.ico")
    assert response.status_code == 301 and response["Location"].endswith("favicon.svg")


def test_admin_names_are_proper_english_plurals():
    names = {str(model._meta.verbose_name_plural) for model in admin.site._registry}
    # Django's default plural only appends "s": "model aliass", "imported summarys".
    assert not [name for name in names if re.search(r"([^aeiou]ys|[^e]ss)$", name)]


@pytest.mark.django_db
def test_the_api_docs_describe_the_openai_compatible_endpoints_and_which_credential_they_take(client, users):
    login_client(client, users["owner"])
    schema = client.get("/api/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"OpenAIKey": []}] and "messages" in chat["requestBody"]["content"]["application/json"]["schema"]["required"]
    assert "/v1/models" in schema["paths"] and "/v1/completions" in schema["paths"]
    assert "not an API token" in schema["components"]["securitySchemes"]["OpenAIKey"]["description"]
    # and the two credential pages say which is which
    for page in ("/accounts/tokens/", "/deployments/keys/"):
        assert 'id="credential-kinds"' in client.get(page).content.decode()
