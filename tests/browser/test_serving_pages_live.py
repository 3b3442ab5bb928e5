"""The deployment page's own JavaScript, in a real browser against daphne (no worker: the replica's
job and live hash are set from the test): a stop shows as draining, then stopped, with the job's
outcome, without a reload; an empty chart says so over the real time window (not "Jan 2000");
running and queued requests are separate series; a KV cache use under 1% is visible."""
from __future__ import annotations

import datetime
import json

import pytest
import redis
from django.conf import settings
from playwright.sync_api import expect

from apps.jobs.models import Job, JobStatus
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving import services
from tests.browser.test_job_pages import log_in
from tests.serving.test_deployments import set_live
from workers.tasks import serving_protocol as protocol

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]


def chart(page, element_id: str, expression: str):
    return page.evaluate(f"(() => {{ const c = document.getElementById('{element_id}'); return {expression}; }})()")


def test_the_deployment_page_follows_a_stop_live_and_draws_empty_and_small_figures_readably(stack, users, page):
    owner = users["owner"]
    model = RegisteredModel.objects.create(owner=owner, name="tiny")
    version = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=owner,
                                          architecture="LlamaForCausalLM", has_chat_template=True)
    deployment = services.create_deployment(owner, name="live", model=model, version=version)
    replica = deployment.replica_set.get()
    key = protocol.replica_key(deployment.pk, replica.replica_id)
    broker = redis.Redis.from_url(settings.REDIS_URL)
    set_live(replica, "ready")
    # One short request's worth of KV on a CPU replica (0.56%), and no latency figure yet.
    broker.hset(key, "metrics", json.dumps({"running": 0, "waiting": 0, "tokens_per_s": 0.0, "kv_cache_used": 0.0056}))
    services.reconcile(deployment)
    url = stack.web()
    try:
        log_in(page, url, "owner")
        page.goto(f"{url}/deployments/{deployment.pk}/")
        expect(page.locator(".replica-state")).to_have_text("ready")

        assert chart(page, "chart-latency", "c.layout.annotations[0].text") == "No requests yet"
        assert chart(page, "chart-latency", "new Date(c.layout.xaxis.range[1]).getFullYear()") == datetime.date.today().year
        assert chart(page, "chart-requests", "c.data.map((t) => t.name)") == ["running", "waiting in a replica", "queued"]
        page.wait_for_function("document.getElementById('chart-kv').data[0].y.length >= 1")
        assert chart(page, "chart-kv", "c.data[0].y[0]") == pytest.approx(0.56)
        assert chart(page, "chart-kv", "c.layout.yaxis.range[1]") < 5  # an axis that fits, not 0-100 (or 0-1)
        assert chart(page, "chart-kv", "(c.layout.annotations || []).length") == 0

        services.stop(owner, deployment)  # the Stop button, pressed elsewhere: this page learns it from its poll
        expect(page.locator(".replica-state")).to_have_text("draining")
        Job.objects.filter(pk=replica.job_id).update(status=JobStatus.SUCCEEDED)  # drained; no reconcile runs here
        expect(page.locator(".replica-state")).to_have_text("stopped")
        expect(page.locator(".replica-job-status")).to_have_text("succeeded")
        assert page.js_errors == []
    finally:
        broker.delete(key)
