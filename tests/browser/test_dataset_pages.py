"""The dataset pages in a real browser, against the real stack (daphne, a Celery worker on the
"cpu" queue, the test database): a user uploads a JSONL file with one broken line, reads the
validation report, creates the version without the bad record and finds it with its facts, chat
rows and charts; and a version's row is rendered with a registry model's chat template, the
trained (loss) tokens highlighted.

Set PUYU_SCREENSHOTS=1 to (re)write static/screenshots/dataset-*.png.
"""
from __future__ import annotations

import json
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from playwright.sync_api import expect

from apps.datasets.models import DatasetUpload, DatasetVersion
from apps.jobs.models import Job, JobStatus
from tests.browser.test_job_pages import log_in, screenshot
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# Generous: worker start-up alone takes ~5 s on a busy two-core machine, and an import job loads
# pandas/pyarrow (datasets) or torch/transformers (registry) on first use.
JOB_TIMEOUT_MS = 120_000
JOB_TIMEOUT_S = JOB_TIMEOUT_MS / 1000


def alpaca_lines(n: int = 12, bad_line: int | None = None) -> bytes:
    lines = [json.dumps({"instruction": f"Say the number {i} in words.", "input": "", "output": f"The number is {i}."})
             for i in range(1, n + 1)]
    if bad_line:
        lines[bad_line - 1] = '{"instruction": "broken", "output": '
    return ("\n".join(lines) + "\n").encode()


def wait_job(job_id: int, timeout: float = JOB_TIMEOUT_S) -> Job:
    """Poll the database until the job is over; fail with its error unless it succeeded."""
    finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    job = wait_for(lambda: (j := Job.objects.get(pk=job_id)).status in finished and j, timeout, 0.5,
                   f"job #{job_id} to finish")
    assert job.status == JobStatus.SUCCEEDED, f"job #{job_id} {job.status}: {job.error}"
    return job


def test_a_user_uploads_a_file_with_a_bad_line_and_creates_the_version_without_it(stack, make_user, page):
    make_user("ada")
    stack.worker("cpu0", "cpu")
    url = stack.web()
    log_in(page, url, "ada")

    page.goto(url + "/datasets/upload/")
    expect(page.locator("h1")).to_have_text("Upload a dataset")
    page.set_input_files("#id_file", files=[{"name": "numbers.jsonl", "mimeType": "application/jsonl",
                                             "buffer": alpaca_lines(bad_line=7)}])
    page.fill("#id_dataset_name", "numbers")
    # upload_progress.js posts the form with XHR (a progress bar) and then follows the redirect.
    page.click("#upload-form button[type=submit]")
    try:
        expect(page).to_have_url(re.compile(r"/datasets/uploads/\d+/$"))
    except AssertionError as exc:
        raise AssertionError(f"the upload never left the form; errors on the page: {page.js_errors}") from exc
    upload_id = int(re.search(r"/datasets/uploads/(\d+)/$", page.url).group(1))
    expect(page.locator("h1")).to_contain_text("numbers.jsonl")
    expect(page.locator(".flash")).to_contain_text("numbers.jsonl uploaded")

    # While the validation job runs the page refreshes itself (htmx, every 2 s) until the report is in.
    summary = page.locator("#validation-summary")
    expect(summary).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(summary).to_contain_text(re.compile(r"11\s+of\s+12\s+records valid"))
    errors = page.locator("#errors tbody tr")
    expect(errors).to_have_count(1)
    expect(errors.first.locator("td").first).to_have_text("7")
    expect(page.locator("#error-counts")).to_be_visible()
    expect(page.locator("#exclude-button")).to_have_text("Create the version without the 1 bad record")
    assert not DatasetVersion.objects.exists()  # nothing is created until the user decides
    screenshot(page, "dataset-upload-report.png")

    page.click("#exclude-button")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=JOB_TIMEOUT_MS)

    # The upload page now links the version it became.
    page.goto(f"{url}/datasets/uploads/{upload_id}/")
    expect(page.locator(".flash.success")).to_contain_text("Version created")
    expect(page.locator(".flash.success")).to_contain_text("(1 records excluded)")
    expect(page.locator("#exclude-button")).to_have_count(0)

    page.goto(url + "/datasets/")
    expect(page.locator("#datasets tbody tr")).to_have_count(1)
    page.click("#datasets a:text-is('numbers')")
    expect(page.locator("h1")).to_contain_text("numbers")
    expect(page.locator("#versions tbody tr")).to_have_count(1)
    page.click("#versions a:text-is('v1')")
    expect(page).to_have_url(re.compile(r"/datasets/versions/\d+/$"))
    expect(page.locator("h1")).to_contain_text("numbers v1")
    expect(page.locator("#fact-rows")).to_have_text("11")
    expect(page.locator("#fact-excluded")).to_contain_text("1 records")
    expect(page.locator("#fact-excluded")).to_contain_text("lines 7")

    # Alpaca rows are stored as chat: each row is a user and an assistant bubble; line 7 is not there.
    expect(page.locator("#rows .record")).to_have_count(11)
    expect(page.locator("#rows .bubble.user")).to_have_count(11)
    expect(page.locator("#rows .bubble.assistant")).to_have_count(11)
    expect(page.locator("#rows .bubble.user").first).to_contain_text("Say the number 1 in words.")
    expect(page.locator("#rows .bubble.assistant").first).to_contain_text("The number is 1.")
    expect(page.locator("#rows")).not_to_contain_text("Say the number 7 in words.")
    expect(page.locator("#rows")).to_contain_text("(line 8 of the upload)")

    # plotly drew the charts from the version's statistics.
    for chart in ("#chart-lengths", "#chart-turns", "#chart-languages"):
        expect(page.locator(f"{chart} .plot-container svg.main-svg").first).to_be_attached()
    expect(page.locator("#chart-lengths .barlayer .point").first).to_be_attached()
    expect(page.locator("#chart-lengths")).to_contain_text("Length (characters)")

    version = DatasetVersion.objects.get()
    assert (version.rows, version.excluded["count"], version.excluded["lines"]) == (11, 1, [7])
    assert version.source_job.params["exclude_invalid"] is True
    assert DatasetUpload.objects.get(pk=upload_id).report["valid"] == 11
    assert page.js_errors == []


@pytest.fixture
def tiny_model_folder(model_in_import_dir):
    return model_in_import_dir("tiny-chat")


def test_render_with_a_template_highlights_the_trained_tokens(stack, make_user, page, tiny_model_folder):
    from apps.datasets import services as datasets
    from apps.registry import services as registry
    from apps.registry.models import ModelVersion

    user = make_user("grace")
    stack.worker("cpu0", "cpu")
    url = stack.web()

    # A registry model (its tokenizer and chat template) and a dataset version, made in-process;
    # the stack's worker runs both jobs.
    model_job = registry.start_import(user, source="folder", folder=f"0/{tiny_model_folder.name}", model_name="tiny")
    _, data_job = datasets.upload_file(user, SimpleUploadedFile("numbers.jsonl", alpaca_lines(), "application/jsonl"),
                                       dataset_name="numbers")
    wait_job(data_job.pk)
    wait_job(model_job.pk)
    version = DatasetVersion.objects.get(source_job_id=data_job.pk)
    model_version = ModelVersion.objects.get(model__name="tiny")
    assert version.rows == 12

    log_in(page, url, "grace")
    page.goto(f"{url}/datasets/versions/{version.pk}/")
    expect(page.locator("h1")).to_contain_text("numbers v1")
    expect(page.locator("#fact-excluded")).to_have_count(0)  # a clean upload excludes nothing
    expect(page.locator("#chart-lengths .plot-container svg.main-svg").first).to_be_attached()

    form = page.locator("#render-form")
    form.locator("select[name=tokenizer]").select_option(str(model_version.pk))
    form.locator("input[name=row]").fill("2")
    form.locator("button[type=submit]").click()

    # htmx swaps the rendering into #rendered-box: loss only on the assistant's answer.
    rendered = page.locator("#rendered-box #rendered")
    expect(rendered).to_contain_text(f"Row 2 with the tokenizer and chat template of {model_version}",
                                     timeout=JOB_TIMEOUT_MS)  # the web process loads transformers on first use
    expect(rendered.locator("pre.rendered")).to_contain_text("<|im_start|>user")
    expect(rendered.locator(".loss", has_text="The number is 2.")).to_have_count(1)
    expect(rendered.locator(".noloss", has_text="Say the number 2 in words.")).to_have_count(1)
    expect(rendered.locator(".loss", has_text="Say the number 2")).to_have_count(0)
    expect(rendered.locator(".noloss", has_text="The number is 2.")).to_have_count(0)
    loss_text = "".join(rendered.locator(".loss").all_inner_texts())
    assert "The number is 2." in loss_text and "Say the number" not in loss_text
    tokens, with_loss = map(int, re.search(r"(\d+) tokens, (\d+) with loss", rendered.locator("p").inner_text()).groups())
    assert 0 < with_loss < tokens
    rendered.scroll_into_view_if_needed()
    assert page.js_errors == []
    screenshot(page, "dataset-version.png")
