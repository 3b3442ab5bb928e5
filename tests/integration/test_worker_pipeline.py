"""A real Redis, real Celery worker processes and beat: jobs run, survive `kill -9` of their
worker, fail after three lost workers, and wait out a Redis outage."""
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from apps.jobs import services
from apps.jobs.models import Job, JobMetric, JobStatus, WorkerNode
from puyu_site.asgi import application
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LONG_DIAGNOSTICS = {"steps": 40, "matmul_size": 64, "bandwidth_mb": 1, "min_step_seconds": 0.25}  # ~10 s


def status_of(job):
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


def wait_running(job, attempts, timeout=60):
    return wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, attempts=attempts, progress__gt=0).exists(),
                    timeout, message=f"job {job.pk} running attempt {attempts}")


def test_a_diagnostics_job_goes_queued_running_succeeded_with_metrics(stack, owner):
    stack.worker("gpu0", "gpu")
    job = services.submit_job(owner, "diagnostics", {"steps": 20, "matmul_size": 64, "bandwidth_mb": 1, "min_step_seconds": 0.1})
    seen = [status_of(job)]
    deadline = time.monotonic() + 90
    while seen[-1] != JobStatus.SUCCEEDED and time.monotonic() < deadline:
        status = status_of(job)
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.05)
    assert seen == [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED], stack.log("gpu0")
    job.refresh_from_db()
    assert job.attempts == 1 and job.progress == 1.0
    assert job.result["device"] == "cpu" and job.result["matmul_gflops_median"] > 0
    assert JobMetric.objects.filter(job=job, name="copy_gbps").count() == 20
    worker = WorkerNode.objects.get(name__startswith="gpu0@")
    assert worker.queues == ["gpu"] and worker.devices["cpu_cores"] >= 1


def test_progress_metrics_and_the_final_status_reach_a_websocket_live(stack, owner, client):
    stack.worker("gpu0", "gpu")
    job = services.submit_job(owner, "diagnostics", {"steps": 10, "matmul_size": 64, "bandwidth_mb": 1, "min_step_seconds": 0.3})
    client.force_login(owner)
    headers = [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), (b"origin", b"http://testserver")]

    async def follow():
        communicator = WebsocketCommunicator(application, f"/ws/jobs/{job.pk}/", headers=headers)
        assert (await communicator.connect(timeout=10))[0]
        events = []
        while True:
            message = await communicator.receive_json_from(timeout=60)
            events.append(message)
            if message["event"] == "status" and message["data"]["status"] == JobStatus.SUCCEEDED:
                break
        await communicator.disconnect()
        return events

    events = async_to_sync(follow)()
    kinds = [e["event"] for e in events]
    assert kinds[0] == "snapshot"
    assert "progress" in kinds and "log" in kinds
    metric_steps = {e["data"]["step"] for e in events if e["event"] == "metric" and e["data"]["name"] == "matmul_gflops"}
    assert metric_steps <= set(range(1, 11)) and len(metric_steps) >= 5  # some may predate the connection


def test_a_job_whose_worker_is_killed_resumes_on_a_restarted_worker_as_attempt_two(stack, owner):
    stack.worker("gpu0", "gpu")
    stack.beat()
    job = services.submit_job(owner, "diagnostics", LONG_DIAGNOSTICS)
    wait_running(job, attempts=1)
    stack.kill("gpu0")
    stack.worker("gpu0", "gpu")
    wait_for(lambda: status_of(job) == JobStatus.SUCCEEDED, 120, 0.2, "the job to finish on the new worker")
    job.refresh_from_db()
    assert job.attempts == 2
    assert job.log_lines.filter(message__startswith="worker lost").exists()


def test_a_job_whose_worker_dies_every_time_fails_after_three_attempts_with_worker_lost(stack, owner):
    stack.beat()
    job = services.submit_job(owner, "diagnostics", LONG_DIAGNOSTICS)
    for attempt in (1, 2, 3):
        stack.worker("gpu0", "gpu")
        wait_running(job, attempts=attempt)
        stack.kill("gpu0")
    wait_for(lambda: status_of(job) == JobStatus.FAILED, 30, 0.2, "the reaper to fail the job")
    job.refresh_from_db()
    assert job.attempts == 3
    assert job.error.startswith("worker lost")


def test_a_job_submitted_while_redis_is_down_is_dispatched_once_redis_is_back(stack, owner, redis_server):
    stack.worker("gpu0", "gpu")
    stack.beat()
    wait_for(lambda: WorkerNode.objects.filter(name__startswith="gpu0@").exists(), 30, message="the worker to report")
    redis_server.stop()
    job = services.submit_job(owner, "diagnostics", {"steps": 2, "matmul_size": 32, "bandwidth_mb": 1})
    job.refresh_from_db()
    assert job.dispatched_at is None and job.status == JobStatus.QUEUED
    time.sleep(2)
    redis_server.start()
    wait_for(lambda: status_of(job) == JobStatus.SUCCEEDED, 90, 0.2, "the job to be dispatched and run")
    assert Job.objects.get(pk=job.pk).attempts == 1
