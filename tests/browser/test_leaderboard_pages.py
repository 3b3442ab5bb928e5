"""The leaderboards in a real browser, against the real stack (daphne, a Celery worker running the
`evaluate` job on a tiny Llama, the test database): a user starts an evaluation from the model
card, watches the run page's per-benchmark progress reach done and the scores appear, opens the
suite's leaderboard, sorts it by a column, and drills down to one sample's prompt and option
log-likelihoods.

PUYU_SCREENSHOTS=1 writes static/screenshots/leaderboard-*.png."""
from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from apps.jobs.models import JobStatus
from apps.leaderboards import services
from apps.leaderboards.models import BenchmarkScore, EvaluationRun, SampleResult
from tests.browser.test_job_pages import FINISH_TIMEOUT_MS, log_in, screenshot
from tests.training.conftest import make_base, make_dataset, tiny_base_source  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# A tiny hand-made multiple-choice set: enough rows for a score, few enough for a quick CPU run.
MC_ROWS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": "B"},
    {"question": "Which is a colour?", "choices": ["red", "run", "rain", "rock"], "answer": "A"},
    {"question": "The capital of France is", "choices": ["Rome", "Berlin", "Paris", "Madrid"], "answer": "C"},
    {"question": "Water freezes at", "choices": ["50 C", "100 C", "10 C", "0 C"], "answer": "D"},
    {"question": "How many legs has a spider?", "choices": ["6", "8", "10", "4"], "answer": "B"},
    {"question": "Opposite of hot?", "choices": ["cold", "warm", "big", "fast"], "answer": "A"},
]


def stored_run(owner, suite_version, version, bv, correct: list[bool]) -> EvaluationRun:
    """Another model's finished run, as the worker would have stored it (a second board row)."""
    version.path.mkdir(parents=True, exist_ok=True)  # the submit checks the model's folder is there
    run = services.submit_evaluation(owner, suite_version=suite_version, model_version=version)
    job = run.job
    job.status, job.progress, job.started_at, job.finished_at = JobStatus.SUCCEEDED, 1.0, timezone.now(), timezone.now()
    job.save()
    score = BenchmarkScore.objects.create(run=run, benchmark_version=bv, metric="accuracy", score=sum(correct) / len(correct),
                                          ci_low=0.0, ci_high=1.0, n=len(correct), correct=sum(correct))
    SampleResult.objects.bulk_create([SampleResult(score=score, index=i, correct=ok, prompt=f"prompt {i}", extracted="A",
                                                   reference="A") for i, ok in enumerate(correct)])
    return run


def test_a_user_evaluates_from_the_model_card_then_sorts_the_board_and_opens_a_sample(
        stack, users, page, make_base, make_dataset, tiny_base_source):
    owner = users["owner"]
    model = make_base(owner, name="tiny-eval", files=True, source=tiny_base_source)
    data = make_dataset(owner, canonical="multiple_choice", name="quiz-data", records=MC_ROWS)
    bv = services.create_benchmark(owner, name="quiz", dataset_version=data, shape="multiple_choice",
                                   scorer={"paradigm": "likelihood", "normalization": "per-character"}, dimension="knowledge")
    suite_version = services.create_suite(owner, name="tiny", items=[(bv, 1.0)])
    perfect = stored_run(owner, suite_version, make_base(owner, name="oracle"), bv, [True] * 6)
    stack.worker("gpu0", "gpu")
    url = stack.web()
    log_in(page, url, "owner")

    # The model card's "Evaluate" button opens the form with the version chosen.
    page.goto(f"{url}/models/{model.model_id}/")
    expect(page.locator("#version-scores-empty")).to_contain_text("Not evaluated yet")
    page.click("#evaluate-button")
    expect(page).to_have_url(re.compile(rf"/leaderboards/evaluate/\?target=v:{model.pk}$"))
    expect(page.locator("#id_target")).to_have_value(f"v:{model.pk}")
    page.select_option("#id_suite", str(suite_version.pk))
    page.fill("#id_max_samples", "6")
    screenshot(page, "leaderboard-evaluate.png")
    page.click("#evaluate-submit")

    # The run page: live progress per benchmark, then the scores swapped in when it finishes.
    expect(page).to_have_url(re.compile(r"/leaderboards/runs/\d+/$"))
    run = EvaluationRun.objects.get(model_version=model)
    expect(page.locator("#benchmark-progress tbody tr")).to_have_count(1)
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=FINISH_TIMEOUT_MS * 2)
    expect(page.locator("#benchmark-progress tbody tr")).to_have_attribute("data-state", "done", timeout=15_000)
    expect(page.locator("#benchmark-progress .done")).to_have_text("6")
    expect(page.locator("#score-table")).to_contain_text(bv.short_hash)
    expect(page.locator("#score-table")).to_contain_text(re.compile(r"\d+\.\d \[\d+\.\d, \d+\.\d\]"))
    assert not page.js_errors, page.js_errors
    screenshot(page, "leaderboard-run.png")

    # The leaderboard: the perfect model first; sorting by the benchmark ascending puts ours first.
    page.click("#board-link")
    expect(page).to_have_url(re.compile(rf"/leaderboards/suites/{suite_version.suite_id}/board/$"))
    rows = page.locator("#leaderboard tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-label", str(perfect.model_version))
    page.click(f"#leaderboard th a[data-sort='bench:{bv.pk}']")  # best first
    expect(page).to_have_url(re.compile(rf"sort=bench%3A{bv.pk}&order=desc"))
    page.click(f"#leaderboard th a[data-sort='bench:{bv.pk}']")  # again: worst first
    expect(page).to_have_url(re.compile(r"order=asc"))
    expect(rows.first).to_have_attribute("data-label", str(model))
    screenshot(page, "leaderboard-board.png")

    # Drill down: our score → its samples → the first sample's prompt and option log-likelihoods.
    rows.first.locator("a.score").click()
    expect(page).to_have_url(re.compile(rf"/leaderboards/runs/{run.pk}/benchmarks/{bv.pk}/samples/$"))
    expect(page.locator("#samples tbody tr")).to_have_count(6)
    page.click("#samples tbody tr >> nth=0 >> a")
    expect(page.locator("#sample-prompt")).to_contain_text("What is 2 + 2?")
    expect(page.locator("#option-scores tbody tr")).to_have_count(4)
    expect(page.locator("#option-scores tr.chosen")).to_have_count(1)
    expect(page.locator("#sample-reference")).to_have_text("B")
    assert not page.js_errors, page.js_errors
    screenshot(page, "leaderboard-sample.png")
