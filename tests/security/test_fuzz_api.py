"""API fuzzing: schemathesis generates requests for every operation of /api/openapi.json and sends
them as a logged-in API token user. No answer is a server error, and every error answers in the
documented shape, `{"detail": ...}`.

Bounded and reproducible: a fixed number of examples per operation (PUYU_FUZZ_EXAMPLES, default
4), derandomized generation (a fixed seed), no example database, no deadline. The requests go to
Django's WSGI handler in this process (no server to start)."""
from __future__ import annotations

import json
import os

import pytest

EXAMPLES = int(os.environ.get("PUYU_FUZZ_EXAMPLES", "4"))


def check_error_shape(case, response) -> None:
    """Errors say what is wrong in the shape every operation documents."""
    if response.status_code < 400:
        return
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lower-case keys, lists
    assert content_type.startswith("application/json"), (
        f"{case.method} {case.formatted_path}: {response.status_code} is not JSON")
    body = json.loads(response.content)
    assert isinstance(body, dict) and body.get("detail"), (
        f"{case.method} {case.formatted_path}: {response.status_code} has no 'detail': {response.content[:300]!r}")


@pytest.mark.slow
@pytest.mark.promise("API fuzzing: no 500, errors in the documented shape")
@pytest.mark.django_db(transaction=True)  # the WSGI handler closes connections between requests
def test_every_api_operation_survives_generated_requests(users, api_token, world_for_fuzz, promise_figure):
    import schemathesis
    from django.core.wsgi import get_wsgi_application
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", get_wsgi_application())
    auth = {}

    def fresh_token():
        auth["Authorization"] = f"Bearer {api_token(users['owner'])}"

    fresh_token()
    sent, errors = 0, {}

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/v1/"):
            continue  # the OpenAI-compatible API, documented here too, takes API keys and is async: tests/serving

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            nonlocal sent
            response = case.call(headers=dict(auth))
            sent += 1
            if case.method == "DELETE" and case.path.endswith("/tokens/{token_id}"):
                fresh_token()  # the fuzzer may have revoked the token it calls with
            assert response.status_code != 401, f"{case.method} {case.formatted_path}: the token was refused"
            errors[response.status_code] = errors.get(response.status_code, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])
            check_error_shape(case, response)

        fuzz()
    assert sent >= 40
    summary = ", ".join(f"{n}x{code}" for code, n in sorted(errors.items()))
    promise_figure(f"{sent} requests, {EXAMPLES} examples per operation: {summary}")


@pytest.fixture
def world_for_fuzz(users):
    """A job of the token user's, so operations on ids sometimes find something."""
    from apps.jobs import services

    return services.submit_job(users["owner"], "probe", {})
