"""Stored XSS renders as text: payloads in dataset rows and statistics, model output (a
deployment's try-it answer), job titles, logs and metric names (plotly legends), model names (the
lineage graph) and key names.

Server side, every page escapes them. In the real browser (Debian chromium), the pages that
Django renders, with their real JS, plotly and htmx, run no injected script: no dialog opens, no
marker variable is set, no injected element exists, and the payload is on the page as text. The
browser talks to Django in-process (a Playwright route answers each request through Django's test
client), so no server has to start."""
from __future__ import annotations

import hashlib
import json

import pytest
from django.contrib.staticfiles import finders
from django.test import Client

from apps.datasets.models import Dataset, DatasetVersion
from apps.jobs import services
from apps.jobs.models import JobLogLine, JobMetric
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving import services as serving
from apps.serving.models import ApiKey
from tests.browser.conftest import browser, page  # noqa: F401  (the Playwright fixtures)

ORIGIN = "http://puyu.test"
# Each sets window.__xss or opens a dialog if it ever runs; the ids let the test look for the element.
PAYLOADS = ['<script>window.__xss="script"</script>',
            '<img id="xss-img" src="x" onerror="window.__xss=\'img\';alert(1)">',
            '"><svg id="xss-svg" onload="window.__xss=\'svg\'"></svg>']
SCRIPT, IMG, SVG = PAYLOADS
# The stand-in for websockets: the pages under test must draw from what the server rendered.
NO_WEBSOCKET = "window.WebSocket = class { constructor() {} send() {} close() {} };"


@pytest.fixture
def stored(users):
    """Objects of the owner's whose user-chosen text is an XSS payload."""
    owner = users["owner"]
    job = services.submit_job(owner, "probe", {}, title=SCRIPT)
    for step in range(3):
        JobMetric.objects.create(job=job, name=IMG[:80], step=step, value=step)
        JobMetric.objects.create(job=job, name=SCRIPT[:80], step=step, value=2 * step)
    JobLogLine.objects.create(job=job, seq=1, message=SVG)

    dataset = Dataset.objects.create(owner=owner, name=IMG[:100], description=SCRIPT)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": p}]} for p in PAYLOADS]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    version = DatasetVersion.objects.create(
        dataset=dataset, number=1, source="upload", source_format="chat", canonical="chat", rows=len(rows),
        sha256=hashlib.sha256(body).hexdigest(), size_bytes=len(body), created_by=owner,
        stats={"rows": 3, "languages": {IMG: 2, SCRIPT: 1}, "exact_duplicates": 0})
    version.path.parent.mkdir(parents=True, exist_ok=True)
    version.path.write_bytes(body)

    model = RegisteredModel.objects.create(owner=owner, name=SVG[:100], description=IMG)
    mversion = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=owner,
                                           architecture="LlamaForCausalLM", has_chat_template=True, notes=SCRIPT)
    mversion.path.mkdir(parents=True, exist_ok=True)
    deployment = serving.create_deployment(owner, name="xss", model=model, version=mversion)
    deployment.state = "ready"
    deployment.save(update_fields=["state"])
    ApiKey.issue(owner, IMG[:100])
    return {"job": job, "dataset": dataset, "version": version, "model": model, "mversion": mversion,
            "deployment": deployment}


def pages(stored) -> list[str]:
    return ["/", "/jobs/", f"/jobs/{stored['job'].pk}/", f"/datasets/{stored['dataset'].pk}/", "/datasets/",
            f"/datasets/versions/{stored['version'].pk}/", "/models/", f"/models/{stored['model'].pk}/",
            f"/models/versions/{stored['mversion'].pk}/", "/deployments/keys/",
            f"/deployments/{stored['deployment'].pk}/"]


def test_every_page_escapes_the_stored_payloads(client, users, stored):
    client.force_login(users["owner"])
    for path in pages(stored):
        response = client.get(path)
        assert response.status_code == 200, path
        html = response.content.decode()
        for payload in PAYLOADS:
            assert payload not in html, f"{path} holds a raw payload: {payload}"
            assert 'onerror="window.__xss' not in html and "<script>window.__xss" not in html, path


def test_the_api_returns_payloads_as_json_strings(client, users, stored):
    client.force_login(users["owner"])
    response = client.get(f"/api/jobs/{stored['job'].pk}")
    assert response["Content-Type"].startswith("application/json") and response.json()["title"] == SCRIPT
    rows = client.get(f"/api/dataset-versions/{stored['version'].pk}/rows").json()
    assert rows[0]["messages"][0]["content"] == SCRIPT


def serve_through_django(page, client: Client) -> None:
    """Answer the browser's requests to ORIGIN with Django (in this process, the test's user)."""

    def handle(route):
        request = route.request
        path = request.url[len(ORIGIN):]
        if path.startswith("/static/"):
            found = finders.find(path[len("/static/"):].split("?")[0])
            return route.fulfill(path=found) if found else route.fulfill(status=404, body="")
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith("hx-") or k.lower() == "accept"}
        response = client.generic(request.method, path, data=request.post_data_buffer or b"",
                                  content_type=request.headers.get("content-type", ""), headers=headers)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        out_headers = {k: v for k, v in response.items() if k.lower() in ("content-type", "location", "hx-redirect")}
        route.fulfill(status=response.status_code, headers=out_headers, body=body)

    def guarded(route):
        try:
            handle(route)
        except BaseException as exc:  # show the error in the test's output rather than as a network failure
            import traceback
            traceback.print_exc()
            route.fulfill(status=599, body=repr(exc))

    page.route(lambda url: url.startswith(ORIGIN + "/"), guarded)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.promise("stored XSS renders as text")
# Committed rows: Playwright calls the route handler in a greenlet, which Django gives a database
# connection of its own (outside the test's transaction).
@pytest.mark.django_db(transaction=True)
def test_in_the_browser_no_payload_runs_and_each_shows_as_text(page, users, stored, promise_figure):
    client = Client()
    client.force_login(users["owner"])
    serve_through_django(page, client)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script(NO_WEBSOCKET)
    # The try-it answer streams what the model wrote: here, the payloads.
    answer = "".join("data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) + "\n\n" for p in PAYLOADS)
    page.route(f"{ORIGIN}/deployments/{stored['deployment'].pk}/try/",
               lambda route: route.fulfill(status=200, content_type="text/event-stream", body=answer + "data: [DONE]\n\n"))

    checked = 0
    for path in pages(stored):
        page.goto(ORIGIN + path)  # waits for "load": the page's own scripts (plotly included) have run
        if path == f"/datasets/versions/{stored['version'].pk}/":
            assert page.get_by_text(SCRIPT, exact=False).count() >= 1  # the rows, as text
        if path == f"/jobs/{stored['job'].pk}/":
            page.wait_for_selector("#job-chart .legend")  # plotly drew the legend from the metric names
            assert "window.__xss" in page.text_content("#job-chart .legend")
        if path.startswith("/deployments/") and path != "/deployments/keys/":
            page.fill("#try-form [name=message]", "hi")
            page.click("#try-send")
            page.wait_for_function("document.getElementById('try-output').textContent.includes('svg')")
            assert page.inner_text("#try-output").count("window.__xss") == len(PAYLOADS)
        assert page.evaluate("window.__xss") is None, f"a payload ran on {path}"
        assert page.locator("#xss-img, #xss-svg").count() == 0, f"an injected element exists on {path}"
        checked += 1
    assert dialogs == []
    assert "window.__xss" in page.content()  # the last page (the deployment) shows the payload as text
    promise_figure(f"{len(PAYLOADS)} payloads x {checked} pages, none ran")
