"""The training pages in a real browser, against the real stack (daphne, a Celery worker, the
test database) and the real pre-flight: a user fills the new-run form, checks it (a spinner and
disabled buttons while it runs, then the pre-flight panel with the memory bar and the rendered
sample), starts it, follows the run page's live charts to the registered adapter, and compares two
runs.

PUYU_SCREENSHOTS=1 writes static/screenshots/training-*.png."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.training import services
from apps.training.models import TrainingRun
from tests.browser.test_job_pages import FINISH_TIMEOUT_MS, log_in, screenshot
from tests.stack import wait_for
from tests.training.conftest import lora_request, make_base, make_dataset, tiny_base_source  # noqa: F401,F811  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_a_user_checks_starts_follows_and_compares_training_runs(stack, users, page, make_base, make_dataset,
                                                                 tiny_base_source, lora_request):
    owner = users["owner"]
    base = make_base(owner, files=True, source=tiny_base_source)
    data = make_dataset(owner)
    stack.worker("gpu0", "gpu")
    url = stack.web()
    log_in(page, url, "owner")

    page.goto(url + "/training/new/")
    page.select_option("#id_base", f"v:{base.pk}")
    page.select_option("#id_train_versions", str(data.pk))
    page.select_option("#id_preset", "builtin:sft-lora-small")  # htmx re-renders the form with the preset's values
    expect(page.locator("#id_lora_r")).to_have_value("16")
    expect(page.locator("#id_base")).to_have_value(f"v:{base.pk}")  # the choices made so far are kept
    expect(page.locator("#id_advanced")).to_contain_text("lora_targets")
    page.fill("#id_advanced", "")
    page.fill("#id_model_name", "tiny-chat")
    for name, value in {"max_steps": "6", "batch_size": "2", "max_length": "64", "save_every": "2", "eval_every": "2",
                        "lora_r": "4", "lora_alpha": "8"}.items():
        page.fill(f"#id_{name}", value)
    page.fill("#id_advanced", "sample_every: 3\nsample_prompts: ['Say the number 3 in words.']\nsample_max_tokens: 6\n")
    # While the pre-flight runs (seconds: the tokenizer loads), the spinner shows, both buttons are
    # disabled and the panel is marked busy. The request is held here until the page was looked at.
    held = []
    page.route("**/training/new/", lambda route: held.append(route) if route.request.method == "POST" else route.continue_())
    page.click("#check-button")
    for _ in range(600):  # the route handler runs while Playwright waits
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the Check request never left the page"
    expect(page.locator("#check-busy")).to_be_visible()
    expect(page.locator("#check-busy")).to_contain_text("Checking")
    expect(page.locator("#check-button")).to_be_disabled()
    expect(page.locator("#submit-button")).to_be_disabled()
    expect(page.locator("#preflight")).to_have_attribute("aria-busy", "true")
    held[0].continue_()
    page.unroute("**/training/new/")
    expect(page.locator("#preflight-verdict")).to_have_text("Ready to train", timeout=60_000)
    expect(page.locator("#check-busy")).to_be_hidden()
    expect(page.locator("#check-button")).to_be_enabled()
    expect(page.locator("#submit-button")).to_be_enabled()
    expect(page.locator("#preflight")).not_to_have_attribute("aria-busy", "true")
    expect(page.locator("#memory-bar .mem")).to_have_count(5)  # weights, gradients, optimizer, activations, runtime
    expect(page.locator("#preflight-sample .loss").first).to_be_visible()
    screenshot(page, "training-new.png")

    page.click("#submit-button")
    expect(page).to_have_url(re.compile(r"/training/\d+/$"))
    first = TrainingRun.objects.latest("created_at")
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=FINISH_TIMEOUT_MS * 2)
    page.wait_for_function("Number(document.getElementById('job-chart').dataset.points || 0) >= 12")
    page.reload()  # the finished state, checkpoints and samples from the database
    expect(page.locator("#run-version")).to_contain_text("tiny-chat v1")
    expect(page.locator("#checkpoint-table")).to_contain_text("checkpoint-6")
    expect(page.locator("#samples .sample").first).to_be_visible()
    expect(page.locator("#command-line")).to_have_text("python -m workers.core train spec.yaml")
    assert not page.js_errors, page.js_errors
    screenshot(page, "training-run.png")

    # A second run with another learning rate (submitted as the form does, without the browser).
    req = lora_request(base, [data], model_name="tiny-chat",
                       fields={"max_steps": 6, "batch_size": 2, "max_length": 64, "learning_rate": 1e-3})
    second = services.submit(owner, req)
    wait_for(lambda: TrainingRun.objects.filter(job=second, job__status="SUCCEEDED").exists(), 180, 0.5, "the second run")

    page.goto(url + "/training/")
    page.check(f"input[name=jobs][value='{first.job_id}']")
    page.check(f"input[name=jobs][value='{second.pk}']")
    page.click("#compare-button")
    expect(page).to_have_url(re.compile(r"/training/compare/\?jobs="))
    page.wait_for_function("[...document.querySelectorAll('.compare-chart')].some(el => el.dataset.traces === '2')")
    expect(page.locator("#config-diff")).to_contain_text("learning_rate")
    assert not page.js_errors, page.js_errors
    screenshot(page, "training-compare.png")
