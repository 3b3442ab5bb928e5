"""The deployment page in a real browser against the real stack (daphne, a Celery worker on
queue "serve" running a tiny model's replica): the replica turns ready live, the charts draw and
grow, and the try-it box streams an answer over SSE. PUYU_SCREENSHOTS=1 writes
static/screenshots/serving-*.png."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.serving.models import ApiKey, UsageDay
from tests.browser.test_job_pages import log_in, screenshot
from tests.serving.test_end_to_end import deploy, register

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]


def test_the_deployment_page_shows_live_charts_and_streams_a_try_it_answer(stack, users, page, tmp_path):
    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer

    owner = users["owner"]
    source = build_tiny_llama(tmp_path / "tiny", tokenizer_dir=train_tokenizer(tmp_path / "tokenizer"))
    stack.worker("serve0", "serve")
    stack.beat()  # reconcile turns the deployment ready
    url = stack.web()
    deployment = deploy(owner, register(owner, source))
    log_in(page, url, "owner")

    page.goto(url + "/deployments/")
    expect(page.locator("#deployment-table")).to_contain_text("owner/tiny-chat")
    page.click("text=owner/tiny-chat")
    expect(page).to_have_url(re.compile(rf"/deployments/{deployment.pk}/$"))
    expect(page.locator("#deployment-state")).to_have_text("ready", timeout=120_000)  # live, without a reload
    expect(page.locator(".replica-state").first).to_have_text("ready")
    for chart in ("chart-requests", "chart-latency", "chart-throughput", "chart-kv"):
        expect(page.locator(f"#{chart} .main-svg").first).to_be_visible()
    expect(page.locator("#snippet-python")).to_contain_text('model="owner/tiny-chat"')

    page.fill("#try-form textarea[name=message]", "Hello there")
    page.fill("#try-form input[name=max_tokens]", "12")
    page.click("#try-send")
    expect(page.locator("#try-status")).to_contain_text("completion tokens", timeout=60_000)
    expect(page.locator("#try-output")).not_to_be_empty()
    # the poller keeps adding points to the charts
    page.wait_for_function("document.querySelector('#chart-throughput').data[0].x.length >= 2", timeout=30_000)
    screenshot(page, "serving-deployment.png")
    assert page.js_errors == []
    usage = UsageDay.objects.get(deployment=deployment)
    assert usage.key.name == "Studio try-it box" and usage.completion_tokens >= 1

    page.goto(url + "/deployments/keys/")
    page.fill("#id_name", "notebook")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#new-key")).to_contain_text("sk-puyu-")
    assert ApiKey.objects.filter(user=owner, name="notebook").exists()
    screenshot(page, "serving-keys.png")
    page.goto(url + "/deployments/usage/")
    expect(page.locator("#usage-chart .main-svg").first).to_be_visible()
    expect(page.locator("#usage-table")).to_contain_text("owner/tiny-chat")
    screenshot(page, "serving-usage.png")
    assert page.js_errors == []
