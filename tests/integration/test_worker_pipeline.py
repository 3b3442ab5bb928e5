"""A real Redis, real Celery worker processes: a job runs QUEUED → RUNNING → SUCCEEDED and its
progress reaches a websocket live. (The fault cases — killed workers, Redis outages, lost and
duplicated messages — are in tests/reliability/test_job_faults.py.)"""
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from apps.jobs import services
from apps.jobs.models import Job, JobMetric, JobStatus, WorkerNode
from puyu_site.asgi import application

pytestmark = [pytest.mark.slow, pytest.mark.integration]

def status_of(job):
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


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
