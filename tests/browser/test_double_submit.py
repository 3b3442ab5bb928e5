"""Double submit creates one job, in a real browser against daphne: a double-click on a form's
submit button, and the same form posted twice at once by script (no timing luck: the server
answers the second POST of one `_once` token with the first one's redirect)."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from apps.jobs.models import Job
from tests.conftest import PASSWORD

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]


def log_in(page, url: str, username: str) -> None:
    page.goto(url + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("main form button[type=submit]")
    expect(page.locator("header .account")).to_contain_text(f"Log out {username}")


def open_diagnostics_form(page, url: str, title: str) -> None:
    page.goto(url + "/jobs/new/diagnostics/")
    page.fill("#id_title", title)
    page.fill("#id_steps", "3")
    # The token is there from page load, one per form.
    expect(page.locator("#job-form input[name=_once]")).to_have_value(re.compile(r"^[0-9a-f-]{36}$"))


@pytest.mark.promise("double submit creates one job")
def test_a_double_click_and_a_scripted_double_post_each_create_one_job(stack, make_user, page, promise_figure):
    user = make_user("dora")
    url = stack.web()  # no worker: the jobs stay queued, which is all this needs
    log_in(page, url, "dora")

    open_diagnostics_form(page, url, "double click")
    page.dblclick("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    jobs = Job.objects.filter(owner=user)
    assert [j.title for j in jobs] == ["double click"]
    assert page.url.endswith(f"/jobs/{jobs[0].pk}/")

    # Two POSTs of the same form at once (what a double click does when the browser lets the
    # second one through): both land on the one job the first created.
    open_diagnostics_form(page, url, "scripted twice")
    landed = page.evaluate("""async () => {
        const form = document.getElementById('job-form');
        const post = () => fetch(location.href, {method: 'POST', body: new URLSearchParams(new FormData(form))});
        const [a, b] = await Promise.all([post(), post()]);
        return [a.url, b.url, a.status, b.status];
    }""")
    scripted = Job.objects.get(owner=user, title="scripted twice")
    assert landed == [f"{url}/jobs/{scripted.pk}/"] * 2 + [200, 200]
    assert Job.objects.filter(owner=user).count() == 2
    assert page.js_errors == []
    promise_figure("browser: double click -> 1 job, 2 concurrent POSTs of one form -> 1 job")
