"""English and 简体中文: the browser's Accept-Language is the default, the header's switcher keeps the
choice in a cookie and for the user (a new browser gets it after signing in), and only safe
redirects follow a switch."""
import pytest
from django.test import Client

from apps.accounts.models import Preference
from tests.conftest import login_client

pytestmark = pytest.mark.django_db


def nav(client, **headers) -> str:
    return client.get("/", **headers).content.decode()


def test_the_browsers_accept_language_picks_chinese_without_a_cookie(client, users):
    login_client(client, users["owner"])
    assert 'href="/jobs/">Jobs</a>' in nav(client)
    page = nav(client, HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9,en;q=0.5")
    assert 'href="/jobs/">任务</a>' in page and '<html lang="zh-hans">' in page and "仪表盘" in page


def test_switching_keeps_the_choice_in_a_cookie_and_for_the_user_in_a_new_browser(client, users):
    login_client(client, users["owner"])
    response = client.post("/accounts/language/", {"language": "zh-hans", "next": "/start/"})
    assert response.status_code == 302 and response["Location"] == "/start/"
    assert response.cookies["django_language"].value == "zh-hans"
    assert Preference.objects.get(user=users["owner"]).language == "zh-hans"
    assert "快速上手：从数据到智能体" in client.get("/start/").content.decode()
    other = login_client(Client(), users["owner"])  # another browser: no cookie yet
    response = other.get("/", HTTP_ACCEPT_LANGUAGE="en")
    assert "仪表盘" in response.content.decode() and response.cookies["django_language"].value == "zh-hans"
    assert 'id="language-en"' in response.content.decode()  # the switcher offers the way back


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x"])
def test_a_switch_never_redirects_off_the_site_and_an_unknown_language_changes_nothing(client, users, target):
    login_client(client, users["owner"])
    response = client.post("/accounts/language/", {"language": "fr", "next": target})
    assert response["Location"] == "/" and "django_language" not in response.cookies
    assert not Preference.objects.exists()


def test_the_login_page_has_the_switcher_for_signed_out_visitors():
    client = Client()
    page = client.get("/accounts/login/").content.decode()
    assert 'id="language-zh-hans"' in page
    assert client.post("/accounts/language/", {"language": "zh-hans", "next": "/accounts/login/"}).status_code == 302
