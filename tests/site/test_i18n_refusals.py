"""A refusal reads in the request's language, on a page as in the API: the services word it with
gettext when they refuse, so the language LocaleMiddleware picked (the language cookie the
switcher and the saved choice set, else Accept-Language, else English) is the one it reads in.
A script that sends no Accept-Language gets English. The field it names stays as the code has it.

The built-in objects' texts are stored in English and shown in the reader's language
(apps/studio/labels.py builtin_text), and the composer, the charts and the chat follow the page's
language too, except for what a person or a model wrote, which the pages mark not to translate."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.utils import translation

from apps.datasets.models import Dataset
from tests.conftest import login_client
from tests.site.test_i18n_pages import english_words

ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
HAN = re.compile(r"[\u4e00-\u9fff]")


def zh_browser(client, user):
    login_client(client, user)
    client.post("/accounts/language/", {"language": "zh-hans", "next": "/"})
    return client


def a_deployment(owner, *, ready: bool = False):
    """A deployment of a model version of `owner`'s (no replica runs: the pages only show it)."""
    from apps.registry.models import ModelVersion, RegisteredModel
    from apps.serving import services as serving
    from apps.serving.models import DeploymentState

    model = RegisteredModel.objects.create(owner=owner, name="m")
    version = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=owner)
    deployment = serving.create_deployment(owner, name="d", model=model, version=version)
    if ready:
        deployment.state = DeploymentState.READY
        deployment.save(update_fields=["state"])
    return deployment


def form_errors(html: str) -> str:
    return " ".join(re.findall(r'<p class="error">(.*?)</p>', html, re.S))


@pytest.mark.django_db
def test_a_refused_page_form_says_why_in_chinese_on_a_chinese_page_and_in_english_otherwise(client, users):
    Dataset.objects.create(owner=users["owner"], name="dup")
    form = {"generator": "arithmetic", "n": 10, "seed": 0, "dataset_name": "dup"}

    zh_browser(client, users["owner"])
    errors = form_errors(client.post("/datasets/generate/", form).content.decode())
    assert errors == "dataset_name: 你已经有一个名为 &#x27;dup&#x27; 的数据集，请直接选择它"  # the field stays code

    client.post("/accounts/language/", {"language": "en", "next": "/"})
    errors = form_errors(client.post("/datasets/generate/", form).content.decode())
    assert errors == "dataset_name: you already have a dataset named &#x27;dup&#x27;; choose it instead"


@pytest.mark.django_db
def test_an_api_error_follows_accept_language_and_is_english_without_one(client, users, api_token):
    token = {"HTTP_AUTHORIZATION": f"Bearer {api_token(users['owner'])}"}
    body = {"data": json.dumps({"kind": "diagnostics", "params": {}, "queue": "serve"}),
            "content_type": "application/json"}

    chinese = client.post("/api/jobs", **body, **token, **ZH)
    assert chinese.status_code == 422
    assert chinese.json()["detail"] == "queue: 'serve'：通用任务只在 gpu 或 cpu 上运行"
    assert chinese["Content-Language"] == "zh-hans"

    script = client.post("/api/jobs", **body, **token)  # a script sends no Accept-Language
    assert script.status_code == 422
    assert script.json()["detail"] == "queue: 'serve': generic jobs run on gpu or cpu"


@pytest.mark.django_db
def test_an_api_error_follows_the_language_cookie_of_a_signed_in_browser(client, users):
    zh_browser(client, users["owner"])
    refused = client.post("/api/jobs", data=json.dumps({"kind": "diagnostics", "queue": "nowhere"}),
                          content_type="application/json")
    assert refused.status_code == 422
    assert refused.json()["detail"] == "queue: 'nowhere'：通用任务只在 gpu 或 cpu 上运行"


@pytest.mark.django_db
def test_the_openai_compatible_api_refuses_in_the_requests_language(client):
    missing_key = {"data": json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
                   "content_type": "application/json"}
    chinese = client.post("/v1/chat/completions", **missing_key, **ZH)
    assert chinese.status_code == 401 and chinese.json()["error"]["code"] == "invalid_api_key"
    assert chinese.json()["error"]["message"].startswith("缺少 API 密钥")
    english = client.post("/v1/chat/completions", **missing_key)
    assert english.json()["error"]["message"].startswith("no API key: send `Authorization: Bearer")

    broken = client.post("/v1/chat/completions", data="{", content_type="application/json", **ZH)
    assert broken.status_code == 400 and broken.json()["error"]["message"].startswith("请求体不是有效的 JSON")


def test_a_refusal_names_a_stored_state_by_its_label_in_chinese_and_by_its_value_in_english():
    from apps.serving.models import Deployment
    from apps.studio.labels import choice_word

    stopped = Deployment(state="stopped")
    with translation.override("en"):
        assert choice_word(stopped, "state") == "stopped"
    with translation.override("zh-hans"):
        assert choice_word(stopped, "state") == "已停止"


@pytest.mark.django_db(transaction=True)
def test_a_refused_playground_action_on_the_socket_says_why_in_the_pages_language(users):
    from django.test import Client

    from apps.playground import services as playground
    from puyu_site.asgi import application

    owner = users["owner"]
    deployment = a_deployment(owner)
    conversation = playground.create_conversation(owner, deployment=deployment)
    browser = Client()
    browser.force_login(owner)
    session = f"sessionid={browser.cookies['sessionid'].value}"

    async def refusal(cookie: str, language: bytes = b""):
        headers = [(b"cookie", cookie.encode()), (b"origin", b"http://testserver"), (b"host", b"testserver")]
        if language:
            headers.append((b"accept-language", language))
        socket = WebsocketCommunicator(application, f"/ws/playground/conversations/{conversation.pk}/", headers=headers)
        connected, _ = await socket.connect(timeout=5)
        assert connected
        assert (await socket.receive_json_from(timeout=5))["event"] == "snapshot"
        await socket.send_json_to({"action": "regenerate", "message_id": "one"})  # refused in the worker thread
        event = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return event

    chinese = async_to_sync(refusal)(f"{session}; {settings.LANGUAGE_COOKIE_NAME}=zh-hans")
    assert chinese == {"event": "error", "field": "message_id", "error": "必须是消息 ID（整数）"}
    assert async_to_sync(refusal)(session, b"zh-CN,zh;q=0.9")["error"] == "必须是消息 ID（整数）"
    assert async_to_sync(refusal)(session)["error"] == "must be a message id (an integer)"


@pytest.mark.django_db
def test_the_builtin_objects_texts_read_in_chinese_while_what_is_stored_stays_english(settings):
    """Every text the built-ins are stored with has its translation (labels.BUILTIN_TEXTS, which a
    new built-in must join): the benchmarks and their datasets, the suites, the starter model."""
    from apps.accounts.system import system_user
    from apps.leaderboards.services import BUILTIN_SUITES
    from apps.registry import services as registry
    from apps.registry.models import RegisteredModel
    from apps.studio import labels
    from workers.core.evaluation.builtins import BUILTIN_SETS

    registry.queue_starter(system_user())
    starter = RegisteredModel.objects.get(name=registry.STARTER_MODEL_NAME).description
    stored = {text for s in BUILTIN_SETS.values() for text in (s.title, s.description)}
    stored = {text for text in stored | set(BUILTIN_SUITES.values()) | {starter} if english_words(text)}  # not a name
    assert stored <= set(labels.BUILTIN_TEXTS)
    with translation.override("zh-hans"):
        shown = {text: labels.builtin_text(text) for text in stored}
    untranslated = {text for text, read in shown.items() if read == text or not HAN.search(read)}
    assert not untranslated
    assert shown[starter].startswith("随附的入门模型")
    with translation.override("en"):
        assert all(labels.builtin_text(text) == text for text in stored)
        assert labels.builtin_text("a description a person wrote") == "a description a person wrote"
    assert RegisteredModel.objects.get(name=registry.STARTER_MODEL_NAME).description == starter  # stored as written


@pytest.mark.django_db
def test_the_builtin_benchmarks_and_suites_pages_show_their_texts_in_chinese(client, users, settings):
    from tests.site.test_i18n_pages import builtin_objects

    builtin_objects(settings)
    zh_browser(client, users["owner"])
    benchmarks = client.get("/leaderboards/benchmarks/").content.decode()
    assert "计算器工具调用" in benchmarks and "Calculator tool use" not in benchmarks
    suites = client.get("/leaderboards/suites/").content.decode()
    assert "全部内置评测集，权重均为 1。" in suites and "Every built-in benchmark" not in suites
    client.post("/accounts/language/", {"language": "en", "next": "/"})
    assert "Calculator tool use" in client.get("/leaderboards/benchmarks/").content.decode()


def test_the_charts_take_the_pages_language_and_every_language_of_the_studio_has_a_plotly_locale():
    """base.html loads plotly_locale.js after the page's plotly.min.js and before the scripts that
    draw; it maps <html lang> to a locale it registers (plotly's package ships English only)."""
    base = (Path(settings.BASE_DIR) / "templates" / "base.html").read_text()
    head = base[base.index("<head>"):base.index("</head>")]
    assert '<html lang="{{ LANGUAGE_CODE' in base
    assert head.index("{% block head %}") < head.index("js/plotly_locale.js") < len(head)
    script = (Path(settings.BASE_DIR) / "static" / "js" / "plotly_locale.js").read_text()
    locales = json.loads(re.search(r"var LOCALES = (\{[^}]*\});", script).group(1))
    registered = set(re.findall(r'name: "([^"]+)"', script))
    for code, _ in settings.LANGUAGES:
        assert code == "en" or locales[code] in registered
    assert 'shortMonths: ["1月"' in script and 'dayMonthYear: "%Y年%-m月%-d日"' in script
    assert "window.Plotly.setPlotConfig({locale: locale})" in script


@pytest.mark.django_db
def test_a_chinese_chart_page_names_its_language_and_loads_the_locale_after_plotly(client, users):
    owner = users["owner"]
    deployment = a_deployment(owner)
    page = zh_browser(client, owner).get(f"/deployments/{deployment.pk}/").content.decode()
    assert '<html lang="zh-hans">' in page
    assert page.index("plotly.min.js") < page.index("js/plotly_locale.js") < page.index("serving/deployment.js")


@pytest.mark.django_db
def test_chat_content_and_model_output_are_marked_not_to_translate_and_the_composer_is_chinese(client, users, settings):
    from apps.playground import services as playground
    from apps.playground.models import Message

    owner = users["owner"]
    deployment = a_deployment(owner, ready=True)
    conversation = playground.create_conversation(owner, deployment=deployment, system_prompt="Answer in English.")
    asked = Message.objects.create(conversation=conversation, role="user", content="Say hello")
    Message.objects.create(conversation=conversation, role="assistant", parent=asked, content="Hello there!",
                           deployment=deployment, model_version=deployment.version)
    page = zh_browser(client, owner).get(f"/playground/c/{conversation.pk}/").content.decode()
    bodies = re.findall(r'<div class="msg-body[^"]*"[^>]*>', page)
    assert len(bodies) == 3 and all('translate="no"' in body for body in bodies)  # the system prompt, both turns
    assert 'placeholder="输入消息（按回车发送，Shift+回车换行）"' in page
    scripts = Path(settings.BASE_DIR) / "static" / "js"
    for name in ("playground_chat.js", "playground_columns.js"):  # the bodies the scripts add
        assert 'body.setAttribute("translate", "no")' in (scripts / name).read_text()
