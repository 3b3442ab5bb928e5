"""Flash messages do not outlive what they describe: "queued" fades while the page shows the job
live; an error stays until closed."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.test_double_submit import log_in, open_diagnostics_form

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]


def test_a_success_message_fades_and_an_error_stays_until_closed(stack, make_user, page):
    make_user("fay")
    url = stack.web()
    log_in(page, url, "fay")
    open_diagnostics_form(page, url, "flash")
    page.click("#job-form button[type=submit]")
    flash = page.locator(".flash.success")
    expect(flash).to_contain_text("queued on")
    expect(flash).to_have_count(0, timeout=10_000)

    # An error flash: retrying a job that is still queued (no worker runs here) is refused.
    page.evaluate("""() => { const form = document.createElement('form'); form.method = 'post';
        form.action = location.pathname + 'retry/';
        const token = document.querySelector('[name=csrfmiddlewaretoken]').cloneNode();
        form.append(token); document.body.append(form); form.submit(); }""")
    error = page.locator(".flash.error")
    expect(error).to_have_count(1)
    page.wait_for_timeout(7000)
    expect(error).to_have_count(1)
    error.locator(".flash-close").click()
    expect(error).to_have_count(0)
