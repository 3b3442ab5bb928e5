"""Playwright fixtures for the browser tests: one Debian chromium per test module, a fresh
context (cookies, storage) and page per test.

Never run `playwright install`: the tests drive the system chromium at /usr/bin/chromium."""
from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = os.environ.get("PUYU_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
VIEWPORT = {"width": 1280, "height": 900}
# The machine running the suite may be small and busy (two cores shared with workers, beat,
# daphne and other test runs): give the browser generous defaults.
DEFAULT_TIMEOUT_MS = 30_000
EXPECT_TIMEOUT_MS = 15_000  # playwright's own default for expect() is 5 s


# Module scope, not session: while Playwright runs it holds an event loop in this thread, which
# would break async_to_sync (and the websocket tests) in every module that runs after this one.
@pytest.fixture(scope="module")
def browser():
    # A missing browser is a failure, not a skip: `make test` installs Debian chromium as root.
    if not os.path.exists(CHROMIUM) and not shutil.which(CHROMIUM):
        pytest.fail(f"no chromium at {CHROMIUM}: run `make browser` as root (apt-get install chromium)")
    from playwright import sync_api

    # Playwright's sync API drives its own asyncio event loop in this thread (through greenlets),
    # so while it is started asyncio reports a running loop and Django's async-safety guard
    # refuses every ORM call from the test (SynchronousOnlyOperation) - including the
    # transactional_db flush at teardown. The ORM calls here really are synchronous, made from
    # the test's thread while no coroutine is in flight, so switching the guard off is safe.
    # It is restored when the browser stops.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    sync_api.expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    playwright = sync_api.sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _csp_safe_wait_for_function(page):
    """Playwright polls a string predicate with eval() inside the page, which the studio's
    Content-Security-Policy (script-src 'self') refuses; evaluate it from here instead
    (page.evaluate goes through the DevTools protocol, which the policy does not govern)."""
    import time

    def wait_for_function(expression: str, *, timeout: float | None = None, **_ignored):
        deadline = time.monotonic() + (timeout if timeout is not None else DEFAULT_TIMEOUT_MS) / 1000
        while True:
            value = page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting in the page for: {expression}")
            page.wait_for_timeout(100)

    return wait_for_function


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # A script or style the Content-Security-Policy refused counts as an error too.
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    page.js_errors = errors  # tests assert the live page ran without uncaught exceptions
    page.wait_for_function = _csp_safe_wait_for_function(page)
    yield page
    context.close()


@pytest.fixture
def model_in_import_dir(settings, tmp_path):
    """Builds a tiny Llama (with a ChatML tokenizer) in the default import directory, which the
    web and worker processes read; removed after the test."""
    import shutil

    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer

    made = []

    def build(name: str):
        target = settings.MODEL_IMPORT_DIRS[0] / name
        shutil.rmtree(target, ignore_errors=True)
        build_tiny_llama(target, tokenizer_dir=train_tokenizer(tmp_path / f"{name}-tokenizer"))
        made.append(target)
        return target

    yield build
    for target in made:
        shutil.rmtree(target, ignore_errors=True)
