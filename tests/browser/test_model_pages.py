"""The model registry pages in a real browser: a user imports a model folder from the form,
follows the import job to its end, and finds the model card with its facts, lineage graph and
actions; an alias is set from the model page."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.test_job_pages import log_in, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture
def import_folder(model_in_import_dir):
    return model_in_import_dir("tiny-llama")


def test_a_user_imports_a_model_folder_and_reads_its_card(stack, make_user, page, import_folder):
    make_user("ada")
    stack.worker("cpu0", "cpu")
    url = stack.web()
    log_in(page, url, "ada")

    page.goto(url + "/models/import/")
    # Only the chosen source's own field shows, and each radio sits beside its label.
    expect(page.locator("#id_folder")).to_be_hidden()
    expect(page.locator("#id_hub_id")).to_be_hidden()
    page.check("input[name=source][value=folder]")
    expect(page.locator("#id_folder")).to_be_visible()
    expect(page.locator("#id_hub_id")).to_be_hidden()
    radio = page.locator("input[name=source][value=folder]").bounding_box()
    text = page.locator("label.choice", has_text="A folder in the import directory").bounding_box()
    assert abs(radio["y"] - text["y"]) < text["height"]  # same line, not above it
    page.select_option("#id_folder", label=str(import_folder))
    page.fill("#id_model_name", "tiny-llama")
    page.click("#import-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=90_000)
    # The page links what the job created as soon as it finishes, without a reload.
    expect(page.locator("#job-outputs a")).to_have_text("model version tiny-llama v1")

    page.goto(url + "/models/")
    page.click("text=tiny-llama")
    expect(page.locator("#versions")).to_contain_text("Base")
    page.fill("#alias-form input[name=name]", "production")
    page.click("#alias-form button[type=submit]")
    expect(page.locator("#aliases")).to_contain_text("production")
    expect(page.locator("main")).to_contain_text("moved production to tiny-llama v1")

    page.click("#versions a:text('v1')")
    expect(page.locator("h1")).to_contain_text("tiny-llama v1")
    expect(page.locator("#fact-parameters")).not_to_have_text("0")
    expect(page.locator("main")).to_contain_text("LlamaForCausalLM")
    expect(page.locator("main")).to_contain_text("config.json")
    # plotly drew the lineage: the import job and the version as two nodes
    page.wait_for_function("document.querySelectorAll('#lineage-graph .scatterlayer .point').length >= 2")
    expect(page.locator("#delete-button")).to_be_disabled()  # the production alias points here
    screenshot(page, "model-card.png")
