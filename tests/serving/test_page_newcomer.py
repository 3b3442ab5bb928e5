"""What a newcomer saw go wrong on the deployment and keys pages (issue 14): a stopped replica
shown "ready" until a reload, its job ending "Cancelled", the try-it key "never" used, and a
running request counted as queued."""
import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from apps.jobs import lifecycle
from apps.jobs.models import Job, JobStatus
from apps.serving import access, services
from apps.serving.models import ApiKey, Deployment, Replica
from tests.serving.test_deployments import set_live
from workers.core.reporting import JobCancelled
from workers.tasks import serving_protocol as protocol


def replica_rows(client, deployment):
    return {row["replica_id"]: row for row in client.get(f"/deployments/{deployment.pk}/metrics/").json()["replicas"]}


def test_the_page_poll_shows_a_stopped_replica_draining_then_stopped_without_waiting_for_a_reconcile(client, users, deployment):
    [replica] = Replica.objects.filter(deployment=deployment)
    set_live(replica, "ready")
    services.reconcile(deployment)
    client.force_login(users["owner"])
    assert replica_rows(client, deployment)[replica.replica_id]["state"] == "ready"

    services.stop(users["owner"], deployment)
    assert replica_rows(client, deployment)[replica.replica_id]["state"] == "draining"
    Job.objects.filter(pk=replica.job_id).update(status=JobStatus.SUCCEEDED)  # the replica drained; no reconcile yet
    row = replica_rows(client, deployment)[replica.replica_id]
    assert (row["state"], row["job_status"], row["job_url"]) == ("stopped", "SUCCEEDED", f"/jobs/{replica.job_id}/")
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()  # a reload agrees with the poll
    assert 'class="status replica-state stopped"' in page and "succeeded" in page


def test_the_requests_chart_counts_requests_no_replica_claimed_apart_from_running_ones(client, users, deployment):
    [replica] = Replica.objects.filter(deployment=deployment)
    set_live(replica, "ready")
    broker = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True)
    stream = protocol.requests_stream(deployment.pk)
    broker.xgroup_create(stream, protocol.REPLICA_GROUP, id="0", mkstream=True)
    try:
        for n in range(3):
            broker.xadd(stream, {"request": f"r{n}"})
        broker.xreadgroup(protocol.REPLICA_GROUP, "replica-1", {stream: ">"}, count=1)  # the replica runs one
        broker.hset(protocol.replica_key(deployment.pk, replica.replica_id), "metrics", json.dumps({"running": 1, "waiting": 0}))
        client.force_login(users["owner"])
        totals = client.get(f"/deployments/{deployment.pk}/metrics/").json()["totals"]
    finally:
        broker.delete(stream)
    assert (totals["running"], totals["waiting"], totals["queued"], totals["queue_length"]) == (1, 0, 2, 3)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'data-series="running|waiting in a replica|queued"' in page and "in queue" not in page


@pytest.mark.django_db(transaction=True)  # the task runs with a heartbeat thread
def test_a_replica_drained_by_a_stop_ends_succeeded_saying_who_stopped_it_and_a_cancelled_one_ends_cancelled(
        deployment, users, monkeypatch):
    from workers.tasks import serving as tasks

    [first] = Replica.objects.filter(deployment=deployment)

    def stopped_while_serving(kind, params, reporter):
        services.stop(users["owner"], deployment)  # the Stop button, while the replica serves
        raise JobCancelled("replica stopped on request")  # what the replica does once drained

    monkeypatch.setattr(tasks, "run_core_job", stopped_while_serving)
    assert tasks.replica.run(first.job_id) == JobStatus.SUCCEEDED
    job = Job.objects.get(pk=first.job_id)
    assert job.result == {"outcome": "stopped", "reason": "stopped by owner"} and job.error == ""
    assert job.log_lines.filter(message="stopped: stopped by owner").exists()

    Job.objects.filter(pk=first.job_id).update(status=JobStatus.SUCCEEDED)
    deployment.refresh_from_db()
    services.start(users["owner"], deployment)  # a new replica, whose job is then cancelled on its own page
    second = Replica.objects.filter(deployment=deployment).exclude(pk=first.pk).get()

    def cancelled_on_its_job_page(kind, params, reporter):
        lifecycle.request_cancel(Job.objects.get(pk=second.job_id))
        raise JobCancelled("replica stopped on request")

    monkeypatch.setattr(tasks, "run_core_job", cancelled_on_its_job_page)
    assert tasks.replica.run(second.job_id) == JobStatus.CANCELLED


def test_the_try_it_box_records_when_its_key_was_last_used(users, deployment, replica, client):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    async def try_it():
        browser = AsyncClient()
        await browser.aforce_login(users["owner"])
        response = await browser.post(f"/deployments/{deployment.pk}/try/", data=json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}), content_type="application/json")
        return [chunk async for chunk in response.streaming_content]

    with replica():
        async_to_sync(try_it)()
    key = ApiKey.objects.get(user=users["owner"], name=access.TRY_KEY_NAME)
    assert key.last_used is not None and timezone.now() - key.last_used < timedelta(minutes=1)
    client.force_login(users["owner"])
    row = next(line for line in client.get("/deployments/keys/").content.decode().splitlines() if access.TRY_KEY_NAME in line)
    assert "never" not in row


def test_a_key_used_again_within_the_minute_is_not_written_again(users):
    key, _ = ApiKey.issue(users["owner"], "script")
    recent = timezone.now() - timedelta(seconds=10)
    ApiKey.objects.filter(pk=key.pk).update(last_used=recent)
    key.refresh_from_db()
    access.touch(key)
    assert ApiKey.objects.get(pk=key.pk).last_used == recent
    ApiKey.objects.filter(pk=key.pk).update(last_used=recent - timedelta(minutes=2))
    key.refresh_from_db()
    access.touch(key)
    assert ApiKey.objects.get(pk=key.pk).last_used > recent


def test_the_scale_and_try_it_inputs_each_say_what_they_set_with_unit_range_and_default(client, users, deployment):
    from tests.site.test_form_help import help_line

    client.force_login(users["owner"])
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert f"from 1 to {services.MAX_REPLICAS} (now 1, default 1)" in help_line(page, "replicas")
    assert "in tokens; from 1 to 4096, default 64" in help_line(page, "max_tokens")
    assert "from 0 to 2, default 0.7" in help_line(page, "temperature")
