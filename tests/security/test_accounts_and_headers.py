"""Accounts and response headers: login throttling on the login page and the admin's, the
generated admin password file, who may set an API key's limits, and the Content-Security-Policy
on every response (no template runs an inline script)."""
import os
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from apps.accounts import throttle
from apps.serving.models import ApiKey
from tests.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]
RIGHT = "correct horse battery"


@pytest.fixture
def fast_hashes(settings):
    # The production hasher costs ~1 s a check on these machines; the throttle is what is tested.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def alice(db, fast_hashes):
    cache.clear()  # failure counts live in the (per-process) cache
    user = get_user_model().objects.create(username="alice", is_staff=True)
    user.set_password(RIGHT)
    user.save()
    return user


def attempt(path, password, address="10.0.0.1", username="alice"):
    return Client(REMOTE_ADDR=address).post(path, {"username": username, "password": password})


@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_five_failed_logins_refuse_that_username_from_that_address_until_the_window_passes(alice, settings, path):
    settings.LOGIN_FAILURE_WINDOW_SECONDS = 2
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        assert attempt(path, "wrong").status_code == 200  # the form again, with its error
    refused = attempt(path, RIGHT)  # even the right password, while the window lasts
    assert refused.status_code == 429 and "Too many failed log-ins" in refused.content.decode()
    assert refused["Retry-After"] == "2"
    assert attempt(path, RIGHT, address="10.0.0.2").status_code == 302  # not locked out from everywhere
    wait_for(lambda: throttle.failures("alice", "10.0.0.1") == 0, 10, 0.1, "the window to pass")
    assert attempt(path, RIGHT).status_code == 302


def test_a_successful_login_clears_the_failures_and_is_not_slowed(alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):
        attempt("/accounts/login/", "wrong")
    assert attempt("/accounts/login/", RIGHT).status_code == 302
    assert throttle.failures("alice", "10.0.0.1") == 0
    for _ in range(settings.LOGIN_FAILURE_LIMIT - 1):  # a fresh allowance
        attempt("/accounts/login/", "wrong")
    assert attempt("/accounts/login/", RIGHT).status_code == 302


def test_the_generated_admin_password_is_kept_in_a_private_file_and_never_printed(db, tmp_path, settings, capsys):
    settings.DATA_DIR = tmp_path
    os.environ.pop("DJANGO_SUPERUSER_PASSWORD", None)
    call_command("ensure_admin")
    out = capsys.readouterr().out
    secret_file = tmp_path / "admin_password.txt"
    password = secret_file.read_text().strip()
    assert password and password not in out and "admin_password.txt (mode 600" in out
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert get_user_model().objects.get(username="admin").check_password(password)


def test_a_symlink_planted_at_the_admin_password_file_is_refused_not_followed(db, tmp_path, settings):
    settings.DATA_DIR = tmp_path
    os.environ.pop("DJANGO_SUPERUSER_PASSWORD", None)
    target = tmp_path / "served-to-everyone.txt"
    target.write_text("public\n")
    (tmp_path / "admin_password.txt").symlink_to(target)
    with pytest.raises(CommandError, match="is a symbolic link"):
        call_command("ensure_admin")
    assert target.read_text() == "public\n"


@pytest.mark.promise("keys and quotas hold under concurrency")
def test_only_staff_set_a_keys_limits_and_others_cannot_touch_the_owners_keys(client, users, make_user):
    owner = users["owner"]
    client.force_login(owner)
    page = client.post("/deployments/keys/", {"name": "mine", "rate_limit_per_minute": 0, "token_quota_per_day": 0})
    assert page.status_code == 200 and "rate_limit_per_minute" not in page.content.decode()
    key = ApiKey.objects.get(user=owner)
    assert (key.rate_limit_per_minute, key.token_quota_per_day) == (
        settings.SERVING_DEFAULT_RATE_LIMIT_PER_MINUTE, settings.SERVING_DEFAULT_TOKEN_QUOTA_PER_DAY)
    # nor through the admin (staff only) or another route
    assert client.post(f"/admin/serving/apikey/{key.pk}/change/", {"rate_limit_per_minute": 0}).status_code == 302
    key.refresh_from_db()
    assert key.rate_limit_per_minute == settings.SERVING_DEFAULT_RATE_LIMIT_PER_MINUTE
    for other in ("teammate", "outsider"):
        client.force_login(users[other])
        assert client.post(f"/deployments/keys/{key.pk}/revoke/").status_code == 404
        assert str(key.pk) not in re.findall(r"/deployments/keys/(\d+)/", client.get("/deployments/keys/").content.decode())
    key.refresh_from_db()
    assert key.revoked_at is None

    staff = make_user("operator", is_staff=True)
    client.force_login(staff)
    client.post("/deployments/keys/", {"name": "batch", "rate_limit_per_minute": 0, "token_quota_per_day": 5000})
    assert ApiKey.objects.values_list("rate_limit_per_minute", "token_quota_per_day").get(user=staff) == (0, 5000)


@pytest.mark.parametrize("path, anonymous", [("/accounts/login/", True), ("/", False), ("/deployments/keys/", False),
                                             ("/api/jobs", False), ("/v1/models", True), ("/healthz", True)])
def test_every_response_carries_a_content_security_policy_that_allows_only_our_scripts(client, users, path, anonymous):
    if not anonymous:
        client.force_login(users["owner"])
    response = client.get(path)
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert "object-src 'none'" in policy and "frame-ancestors 'none'" in policy


def test_no_template_has_an_inline_script():
    """An inline script would need 'unsafe-inline' (or a nonce); data goes in json_script blocks
    (type application/json, never executed) and code in static files."""
    inline = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.IGNORECASE)
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}"
             for folder in [ROOT / "templates", *ROOT.glob("apps/*/templates")]
             for path in folder.rglob("*.html") for match in inline.finditer(path.read_text())]
    assert not found, found


def test_a_plotly_figure_is_embedded_without_an_inline_script():
    import plotly.graph_objects as go

    from puyu_site.charts import figure_html

    html = figure_html(go.Figure(go.Bar(x=["<img src=x onerror=alert(1)>"], y=[1])), "chart")
    assert 'type="application/json"' in html and "js/plotly_figures.js" in html
    assert "<img" not in html  # the label is escaped inside the JSON block
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)", html)
