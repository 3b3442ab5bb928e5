"""The live job pages in a real browser (Playwright driving Debian chromium).

Against the real stack (daphne for HTTP and websockets, a Celery worker running the job, the
test database): a user logs in, starts worker diagnostics from the form, watches the progress
bar reach 100 % and the chart draw, reloads mid-run without losing state, and cancels another job.

Without the stack: the real job page (rendered by Django's test client, with the real CSS, JS
and plotly served from the static finders) driven by a stand-in websocket, for what the page
must draw from the events it receives.

Set PUYU_SCREENSHOTS=1 to (re)write the README screenshots under static/screenshots/.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from playwright.sync_api import expect

from apps.jobs.models import Job, JobKind, JobLogLine, JobStatus
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "static" / "screenshots"
WRITE_SCREENSHOTS = os.environ.get("PUYU_SCREENSHOTS") == "1"

# Generous: worker start-up alone takes ~5 s on a busy two-core machine.
START_TIMEOUT_MS = 90_000
FINISH_TIMEOUT_MS = 90_000


def screenshot(page, name: str) -> None:
    if WRITE_SCREENSHOTS:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def log_in(page, url: str, username: str, password: str = PASSWORD, shot: str | None = None) -> None:
    page.goto(url + "/jobs/")  # any page: anonymous browsers are sent to the login form
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/jobs/$"))
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    if shot:
        screenshot(page, shot)
    page.click("main form button[type=submit]")
    expect(page).to_have_url(url + "/jobs/")  # back where they were going
    expect(page.locator("header .account")).to_contain_text(f"Log out {username}")


def start_diagnostics(page, url: str, **fields) -> int:
    """Fill the diagnostics form like a user and submit it; returns the new job's id."""
    page.goto(url + "/jobs/new/diagnostics/")
    expect(page.locator("h1")).to_have_text("Worker diagnostics")
    expect(page.locator("#id_queue")).to_have_value("gpu")
    for name, value in fields.items():
        page.fill(f"#id_{name}", str(value))
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    expect(page.locator(".flash")).to_contain_text("queued on gpu")
    return int(re.search(r"/jobs/(\d+)/$", page.url).group(1))


def progress(page) -> float:
    return float(page.eval_on_selector("#job-progress", "el => el.value"))


def wait_running_with_progress(page) -> None:
    expect(page.locator("#job-status")).to_have_text("Running", timeout=START_TIMEOUT_MS)
    page.wait_for_function("document.getElementById('job-progress').value > 0", timeout=START_TIMEOUT_MS)


def assert_actions(page, finished: bool) -> None:
    """Cancel while the job runs, Retry once it is over (the other form gets `hidden`)."""
    shown, gone = ("retry", "cancel") if finished else ("cancel", "retry")
    expect(page.locator(f"#{shown}-button")).to_be_visible()
    expect(page.locator(f"#{gone}-button")).to_be_hidden()


def test_a_user_logs_in_starts_diagnostics_and_watches_it_finish(stack, make_user, page):
    steps = 30
    make_user("ada")  # password: PASSWORD
    stack.worker()
    url = stack.web()

    log_in(page, url, "ada", shot="login.png")
    job_id = start_diagnostics(page, url, title="Browser diagnostics", steps=steps, matmul_size=64,
                               bandwidth_mb=8, min_step_seconds=0.2)
    expect(page.locator("#live-state")).to_have_text("live")

    # Mid-run: the bar has moved and the run is not over (30 steps of at least 0.2 s each).
    wait_running_with_progress(page)
    before = progress(page)
    assert 0 < before < 1

    page.reload()
    # The page renders the job's database snapshot before the websocket says anything: the
    # bar does not start again from zero, and the log written so far is there.
    after = progress(page)
    assert after >= before, f"progress went back from {before} to {after} on reload"
    expect(page.locator("#job-status")).to_have_text(re.compile(r"^(Running|Succeeded)$"))
    expect(page.locator("#job-log")).to_contain_text("measuring on cpu")
    expect(page.locator("#live-state")).to_have_text("live")

    # ... and it follows the run to the end.
    expect(page.locator("#job-progress-text")).to_have_text("100%", timeout=FINISH_TIMEOUT_MS)
    expect(page.locator("#job-status")).to_have_text("Succeeded", timeout=FINISH_TIMEOUT_MS)
    assert progress(page) == 1
    expect(page.locator("#job-eta")).to_have_text("")
    expect(page.locator("#job-message")).to_have_text("")  # "step n/n" described the work in flight

    # The chart drew both series, one point per step each, with no point drawn twice although
    # the reload and the final snapshot replayed what the page had already seen.
    page.wait_for_function(f"Number(document.getElementById('job-chart').dataset.points) >= {2 * steps}",
                           timeout=FINISH_TIMEOUT_MS)
    assert page.get_attribute("#job-chart", "data-points") == str(2 * steps)
    expect(page.locator("#job-chart .scatterlayer .trace")).to_have_count(2)
    assert page.evaluate("document.getElementById('job-chart').data.map(t => t.x.length)") == [steps, steps]
    # (that plotly also rendered a marker per point is test_the_job_page_draws_every_metric_point)
    expect(page.locator("#job-chart .legend")).to_contain_text("matmul_gflops")
    expect(page.locator("#job-chart .legend")).to_contain_text("copy_gbps")

    # The result arrives with the final snapshot; the actions switch from Cancel to Retry.
    expect(page.locator("#job-result-card")).to_be_visible()
    expect(page.locator("#job-result")).to_contain_text("matmul_gflops_median")
    assert_actions(page, finished=True)

    # The log shows each line once (de-duplicated by seq across reload and snapshots).
    expect(page.locator("#job-log")).to_contain_text("GFLOP/s (median)")
    assert page.locator("#job-log span").count() == JobLogLine.objects.filter(job_id=job_id).count()

    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.progress == 1
    assert job.owner.username == "ada"
    assert job.params["steps"] == steps
    assert page.js_errors == []
    screenshot(page, "job-detail.png")

    # The dashboard lists the worker and the finished job.
    page.goto(url + "/")
    live = page.locator("#dashboard-live")
    expect(live).to_contain_text("gpu0@", timeout=START_TIMEOUT_MS)
    recent = card(live, "Recent jobs")
    expect(recent).to_contain_text("Browser diagnostics")
    expect(recent.locator("tr", has_text="Browser diagnostics")).to_contain_text("Succeeded")
    screenshot(page, "dashboard.png")


def test_a_user_cancels_a_running_job_from_its_page(stack, make_user, page):
    make_user("grace")  # password: PASSWORD
    stack.worker()
    url = stack.web()

    log_in(page, url, "grace")
    # 200 steps of at least 0.2 s: it would run for 40 s or more.
    job_id = start_diagnostics(page, url, title="Long soak", steps=200, matmul_size=64, bandwidth_mb=8,
                               min_step_seconds=0.2)
    wait_running_with_progress(page)
    assert_actions(page, finished=False)

    page.click("#cancel-button")
    # The form posts, the server asks the worker to stop and sends the browser back here.
    expect(page).to_have_url(f"{url}/jobs/{job_id}/")
    expect(page.locator(".flash")).to_contain_text(re.compile(r"Cancel requested|Job cancelled"))
    expect(page.locator("#job-status")).to_have_text("Cancelled", timeout=15_000)
    expect(page.locator("#job-cancel-requested")).to_be_hidden()
    assert_actions(page, finished=True)
    assert progress(page) < 1

    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.progress < 1
    assert job.finished_at is not None
    assert page.js_errors == []


def card(scope, title: str):
    """The dashboard card whose heading is exactly `title`."""
    return scope.locator(f"section.card:has(> h2:text-is('{title}'))")


def test_the_dashboard_shows_the_worker_online(stack, make_user, page):
    make_user("linus")  # password: PASSWORD
    stack.worker()
    url = stack.web()

    log_in(page, url, "linus")
    page.goto(url + "/")
    expect(page.locator("h1")).to_have_text("Dashboard")
    live = page.locator("#dashboard-live")
    # The worker reports in within a heartbeat of starting; the panel refreshes itself (htmx).
    expect(live).to_contain_text("gpu0@", timeout=START_TIMEOUT_MS)
    workers = card(live, "Workers online")
    expect(workers.locator("tbody tr")).to_have_count(1)
    cells = workers.locator("tbody tr").first.locator("td")
    expect(cells.nth(0)).to_have_text(re.compile(r"^gpu0@"))
    expect(cells.nth(1)).to_have_text(re.compile(r"^(gpu, cpu|cpu, gpu)$"))  # the queues it consumes
    expect(cells.nth(4)).to_have_text("none")  # CUDA_VISIBLE_DEVICES="" in the test stack

    queues = card(live, "Queues")
    expect(queues.locator("tbody tr")).to_have_count(4)
    for index, name in enumerate(("gpu", "cpu", "serve", "agent")):
        expect(queues.locator("tbody tr").nth(index).locator("td").first).to_have_text(name)
    expect(queues).not_to_contain_text("broker unreachable")
    expect(card(live, "Running jobs")).to_contain_text("Nothing is running.")
    expect(card(live, "Recent jobs")).to_contain_text("No jobs yet.")
    assert page.js_errors == []



# --- the job page alone, with a stand-in websocket ----------------------------------------

PAGE_ORIGIN = "http://puyu.test"
FAKE_WEBSOCKET = """
window.__sockets = [];
window.WebSocket = class {
  constructor(url) {
    this.url = url; this.sent = []; window.__sockets.push(this);
    setTimeout(() => this.onopen && this.onopen(), 0);
  }
  send(data) { this.sent.push(data); }
  close() {}
};
"""


def open_job_page(page, client, job):
    """The job page as Django renders it for the job's owner, loaded into the browser; the
    page's websocket is a stand-in. Returns push(event, data), which delivers a server event."""
    client.force_login(job.owner)
    response = client.get(f"/jobs/{job.pk}/")
    assert response.status_code == 200
    html = response.content
    # The scripts' gettext() catalogue, as Django serves it (fetched here: the route handler runs
    # outside the test's database transaction, where the session does not exist).
    catalogue = client.get("/jsi18n/").content

    def serve(route):
        path = route.request.url[len(PAGE_ORIGIN):].split("?")[0]
        if path == f"/jobs/{job.pk}/":
            return route.fulfill(body=html, content_type="text/html; charset=utf-8")
        if path.startswith("/static/"):
            found = finders.find(path[len("/static/"):])
            if found:
                return route.fulfill(path=found)
        if path == "/jsi18n/":
            return route.fulfill(body=catalogue, content_type="text/javascript")
        return route.fulfill(status=404, body="not found")

    page.add_init_script(FAKE_WEBSOCKET)
    page.route(PAGE_ORIGIN + "/**", serve)
    page.goto(f"{PAGE_ORIGIN}/jobs/{job.pk}/")
    expect(page.locator("#live-state")).to_have_text("live")
    page.wait_for_function("window.Plotly !== undefined")

    def push(event: str, data: dict) -> None:
        page.evaluate("([event, data]) => window.__sockets.at(-1).onmessage({data: JSON.stringify({event, data})})",
                      [event, data])

    return push


@pytest.fixture
def running_job(make_user):
    return Job.objects.create(kind=JobKind.DIAGNOSTICS, owner=make_user("ada"), queue="gpu", status=JobStatus.RUNNING,
                              attempts=1, progress=0.1, params={"steps": 30, "matmul_size": 64})


def status_event(job, **changes) -> dict:
    return {"status": job.status, "attempts": job.attempts, "counted_attempts": job.counted_attempts,
            "released_attempts": job.released_attempts, "progress": job.progress, "eta_seconds": None,
            "message": "", "error": "", "cancel_requested": False, **changes}


def test_the_job_page_draws_every_metric_point(page, client, running_job):
    """Plotly.react compares data arrays by identity: handing it the same arrays grown in place
    kept the first drawing (one point per series, default axes) while data-points said 60."""
    push = open_job_page(page, client, running_job)
    for step in range(1, 31):
        push("metric", {"name": "matmul_gflops", "step": step, "value": 2 + step % 3})
        push("metric", {"name": "copy_gbps", "step": step, "value": 7 + step % 5})
        # each step is drawn before the next arrives: events spread over frames, as from a worker
        page.wait_for_function(f"document.getElementById('job-chart').dataset.points === '{2 * step}'")
    expect(page.locator("#job-chart .scatterlayer .trace")).to_have_count(2)
    expect(page.locator("#job-chart .scatterlayer .point")).to_have_count(60)
    assert page.evaluate("document.getElementById('job-chart')._fullLayout.xaxis.range[1]") >= 30


def test_the_job_page_shows_only_the_action_that_applies(page, client, running_job):
    """The page hides Cancel or Retry with the `hidden` attribute on a `form.inline`, whose
    `display:inline` in studio.css used to beat the attribute: both buttons always showed."""
    push = open_job_page(page, client, running_job)
    expect(page.locator("#cancel-button")).to_be_visible()
    expect(page.locator("#retry-button")).to_be_hidden()
    push("status", status_event(running_job, status="SUCCEEDED", progress=1.0))
    expect(page.locator("#job-status")).to_have_text("Succeeded")
    expect(page.locator("#retry-button")).to_be_visible()
    expect(page.locator("#cancel-button")).to_be_hidden()


def test_the_job_page_lists_each_fact_beside_its_label(page, client, running_job):
    """The facts are a two-column grid of <dt>/<dd>: one extra <dd> (the "of N" after Attempts)
    once shifted every later fact by a cell."""
    open_job_page(page, client, running_job)
    facts = page.locator("dl.facts")
    labels = facts.locator("dt")
    for i in range(labels.count()):
        label = labels.nth(i)
        value = label.locator("xpath=following-sibling::dd[1]")
        label_box, value_box = label.bounding_box(), value.bounding_box()
        assert abs(label_box["y"] - value_box["y"]) < 4, f"{label.inner_text()!r} is not beside its value"
        assert value_box["x"] > label_box["x"] + label_box["width"], f"{label.inner_text()!r}: value not right of it"


def test_the_job_page_follows_the_attempts_the_cap_counts_and_shows_hand_backs_apart(page, client, running_job):
    """After warm shutdowns the page says "2 of 3" with the hand-backs beside it, never "4 of 5"."""
    push = open_job_page(page, client, running_job)
    expect(page.locator("#job-attempts")).to_have_text("1")
    expect(page.locator("#job-released")).to_be_hidden()
    push("status", status_event(running_job, attempts=4, counted_attempts=2, released_attempts=2))
    expect(page.locator("#job-released-count")).to_have_text("2")
    expect(page.locator("#job-released")).to_be_visible()
    expect(page.locator("#job-attempts")).to_have_text("2")
    expect(page.locator("#job-attempts + .muted")).to_have_text("of 3")
