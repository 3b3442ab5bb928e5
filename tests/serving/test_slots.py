"""Serve slots without a worker: WorkerNode rows as heartbeats leave them and replica jobs as a
worker leases them. Slot accounting and the reason a queued replica gives (on the page, in the
API, in the 503 of /v1 and try-it, naming only what the viewer may see), the free slots on the
deploy form, what a worker's heartbeat reports, and the launcher's serve worker. (A real serve
worker hosting two replicas at once: test_slots_worker.py.)"""
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.utils import timezone

from apps.jobs.models import Job, JobStatus, WorkerNode
from apps.serving import services, slots
from apps.serving.models import Deployment, Replica
from puyu_site import launcher
from puyu_site.env import SettingError
from tests.serving.test_openai_api import CHAT, assert_openai_error

GiB = 2**30


def online_worker(name="serve0", capacity=2, queues=("serve",), **fields):
    """A worker's row as its heartbeat leaves it (capacity None: a worker from before slots)."""
    now = timezone.now()
    devices = {"cpu_cores": 2, "serve_slots": {"capacity": capacity, "used": []}} if capacity else {"cpu_cores": 2}
    return WorkerNode.objects.create(name=f"{name}@host", hostname="host", queues=list(queues), pid=4242, devices=devices,
                                     started_at=now, last_seen_at=fields.pop("last_seen_at", now), **fields)


def deploy(user, make_version, name):
    version = make_version(user, name=f"model-{name}")
    return services.create_deployment(user, name=name, model=version.model, version=version)


def replica_of(deployment) -> Replica:
    return Replica.objects.select_related("job").get(deployment=deployment)


def run_on(deployment, worker: WorkerNode, minute: int = 0) -> None:
    """The worker leased the deployment's replica job (as lifecycle.claim leaves it)."""
    now = timezone.now()
    replica = replica_of(deployment)
    Job.objects.filter(pk=replica.job_id).update(status=JobStatus.RUNNING, lease_owner=f"{worker.name}:{worker.pid}",
                                                 lease_expires_at=now + timedelta(seconds=30),
                                                 started_at=now - timedelta(minutes=10 - minute))
    Replica.objects.filter(pk=replica.pk).update(state="ready")


def reason(deployment, viewer) -> str:
    return slots.waiting_reason(replica_of(deployment), viewer)


@pytest.fixture
def full_worker(users, make_version):
    """serve0 with 2 slots, used by the owner's and the teammate's deployments."""
    worker = online_worker(capacity=2)
    run_on(deploy(users["owner"], make_version, "smollm2"), worker, minute=0)
    run_on(deploy(users["teammate"], make_version, "tiny"), worker, minute=1)
    return worker


def test_a_queued_replica_names_the_deployments_that_hold_the_slots_as_far_as_the_viewer_may_see_them(
        users, make_version, full_worker):
    mine = deploy(users["owner"], make_version, "third")
    assert reason(mine, users["owner"]) == (
        "waiting for a free serve slot: 2 of 2 used by owner/smollm2, teammate/tiny; stop one or add a worker")
    theirs = deploy(users["outsider"], make_version, "elsewhere")
    assert reason(theirs, users["outsider"]) == ("waiting for a free serve slot: 2 of 2 used by another user's "
                                                 "deployment ×2; 1 more queued before it; stop one or add a worker")
    assert reason(Deployment.objects.get(name="smollm2"), users["owner"]) == ""  # running: it waits for nothing


def test_with_no_live_serve_worker_the_replica_says_so_and_stale_or_stopped_workers_do_not_count(users, make_version):
    online_worker("gone", last_seen_at=timezone.now() - timedelta(minutes=10))
    online_worker("stopped", stopped_at=timezone.now())
    online_worker("gpu0", queues=("gpu",))
    deployment = deploy(users["owner"], make_version, "lonely")
    assert reason(deployment, users["owner"]).startswith("no serve worker is running")


def test_free_slots_go_to_the_replicas_queued_first_and_the_next_one_waits_behind_them(users, make_version):
    worker = online_worker(capacity=3)
    run_on(deploy(users["owner"], make_version, "first"), worker)
    second = deploy(users["owner"], make_version, "second")
    third = deploy(users["owner"], make_version, "third")
    fourth = deploy(users["owner"], make_version, "fourth")
    assert reason(second, users["owner"]) == reason(third, users["owner"]) == ""  # a worker takes them now
    assert reason(fourth, users["owner"]) == (
        "waiting for a free serve slot: 3 of 3 used by owner/first, owner/second, owner/third; stop one or add a worker")
    assert slots.queue_slots("serve").summary(users["owner"]) == "0 of 3 serve slots free (used by owner/first; 3 queued)"


def test_a_worker_from_before_slots_holds_one_replica_and_an_expired_lease_holds_none(users, make_version):
    old = online_worker("serve0", capacity=None)
    held = deploy(users["owner"], make_version, "held")
    run_on(held, old)
    waiting = deploy(users["owner"], make_version, "waiting")
    assert reason(waiting, users["owner"]).startswith("waiting for a free serve slot: 1 of 1 used by owner/held;")
    # The worker died (its lease ran out; the reaper re-queues the job soon): its slot is free.
    Job.objects.filter(pk=replica_of(held).job_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert slots.queue_slots("serve").free == 1


def test_the_api_the_metrics_and_the_page_show_why_a_replica_waits(client, users, make_version, full_worker, api_token):
    waiting = deploy(users["owner"], make_version, "third")
    expected = "waiting for a free serve slot: 2 of 2 used by owner/smollm2, teammate/tiny; stop one or add a worker"
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_token(users['owner'])}"}
    assert client.get(f"/api/deployments/{waiting.pk}", **auth).json()["waiting_reason"] == expected
    listed = {d["served_name"]: d["waiting_reason"] for d in client.get("/api/deployments", **auth).json()}
    assert listed["owner/third"] == expected and listed["owner/smollm2"] == ""
    live = client.get(f"/api/deployments/{waiting.pk}/metrics", **auth).json()
    assert live["waiting_reason"] == expected and live["replicas"][0]["waiting_reason"] == expected
    serve = next(q for q in client.get("/api/deployments/slots", **auth).json() if q["queue"] == "serve")
    assert (serve["capacity"], serve["used"], serve["free"], serve["used_by"]) == (2, 2, 0, ["owner/smollm2", "teammate/tiny"])
    outsider = {"HTTP_AUTHORIZATION": f"Bearer {api_token(users['outsider'])}"}
    serve = next(q for q in client.get("/api/deployments/slots", **outsider).json() if q["queue"] == "serve")
    assert serve["used_by"] == ["another user's deployment"] * 2

    client.force_login(users["owner"])
    page = client.get(f"/deployments/{waiting.pk}/").content.decode()
    assert f'id="deployment-reason" class="muted">{expected}</dd>' in page  # the deployment's Reason
    assert f'class="muted replica-reason">{expected}</div>' in page  # and its replica's
    assert client.get(f"/deployments/{waiting.pk}/metrics/").json()["waiting_reason"] == expected


def test_the_deploy_form_shows_the_free_slots_before_submitting(client, users, make_version, full_worker):
    client.force_login(users["outsider"])
    form = client.get("/deployments/new/").content.decode()
    assert "0 of 2 serve slots free (used by another user&#x27;s deployment ×2)" in form
    assert "gpu: no gpu worker is running" in form
    run_on(deploy(users["owner"], make_version, "third"), online_worker("serve1", capacity=4), minute=2)
    client.force_login(users["owner"])
    form = client.get("/deployments/new/").content.decode()
    assert "3 of 6 serve slots free (used by owner/smollm2, teammate/tiny, owner/third)" in form


def test_v1_answers_503_naming_why_no_replica_runs_instead_of_retry_shortly(api, users, deployment, make_key, make_version):
    key = make_key(users["owner"])
    response = api.post("/v1/chat/completions", CHAT, key)
    error = assert_openai_error(response, 503, "no_ready_replica")
    assert error["message"].startswith("no replica of owner/tiny-chat is running: no serve worker is running")
    assert "retry shortly" not in error["message"]

    run_on(deploy(users["outsider"], make_version, "busy"), online_worker(capacity=1))
    response = api.post("/v1/chat/completions", CHAT, key)
    error = assert_openai_error(response, 503, "no_ready_replica")
    assert error["message"] == ("no replica of owner/tiny-chat is running: waiting for a free serve slot: 1 of 1 used by "
                                "another user's deployment; stop one or add a worker")
    assert response["Retry-After"] == "30"


def test_the_try_it_box_answers_503_with_the_same_reason(users, deployment, make_version):
    run_on(deploy(users["teammate"], make_version, "busy"), online_worker(capacity=1))

    async def post():
        client = AsyncClient()
        await client.aforce_login(users["owner"])
        return await client.post(f"/deployments/{deployment.pk}/try/", data=json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}), content_type="application/json")

    response = async_to_sync(post)()
    assert response.status_code == 503
    assert "waiting for a free serve slot: 1 of 1 used by teammate/busy; stop one or add a worker" in (
        response.json()["error"]["message"])


def test_the_heartbeat_reports_the_capacity_and_which_replica_uses_each_slot(db, monkeypatch):
    from workers.tasks import presence

    monkeypatch.setattr(presence, "_node", {"name": "serve0@host", "queues": ["serve"], "devices": {"cpu_cores": 2},
                                            "capacity": 3})
    with presence.holding_slot(11, 5, "abc"), presence.holding_slot(12, 6, "def"):
        presence._beat()
        report = WorkerNode.objects.get(name="serve0@host").devices["serve_slots"]
    assert report == {"capacity": 3, "used": [{"job": 11, "deployment": 5, "replica": "abc"},
                                              {"job": 12, "deployment": 6, "replica": "def"}]}
    presence._beat()
    assert WorkerNode.objects.get(name="serve0@host").devices["serve_slots"] == {"capacity": 3, "used": []}
    assert WorkerNode.objects.get(name="serve0@host").devices["cpu_cores"] == 2


def test_a_replica_sharing_its_worker_keeps_the_workers_torch_threads():
    from workers.tasks.serving import shared_process_params

    logged = []

    class Log:
        def log(self, message, level="info"):
            logged.append((level, message))

    assert shared_process_params({"threads": 4, "dtype": "fp32"}, 3, Log()) == {"threads": 0, "dtype": "fp32"}
    assert logged and logged[0][0] == "warning" and "threads=4 ignored" in logged[0][1]
    assert shared_process_params({"threads": 4}, 1, Log()) == {"threads": 4}  # alone in its worker: as asked


# ---- the launcher ----------------------------------------------------------------------------

def serve_command(plan):
    command = next(command for name, command, _ in plan if name.startswith("serve"))
    return command[command.index("-P") + 1], int(command[command.index("-c") + 1])


def test_the_launchers_serve_worker_is_a_threads_pool_with_one_thread_per_configured_slot(monkeypatch):
    monkeypatch.setenv("PUYU_SERVE_SLOTS", "5")
    assert serve_command(launcher.worker_plan(cores=2, gpus=0)) == ("threads", 5)
    plan = {name: env for name, _, env in launcher.worker_plan(cores=2, gpus=0)}
    assert plan["serve0"]["OMP_NUM_THREADS"] == "1"  # on 2 cores each replica decodes with 1 thread
    assert serve_command(launcher.worker_plan(cores=16, gpus=2, slots=2)) == ("threads", 2)
    for bad, words in (("two", "is not an integer"), ("0", "below the minimum 1"), ("65", "above the maximum 64")):
        monkeypatch.setenv("PUYU_SERVE_SLOTS", bad)
        with pytest.raises(SettingError, match=f"PUYU_SERVE_SLOTS.*{words}"):
            launcher.worker_plan(cores=2, gpus=0)


def test_without_the_setting_the_slots_follow_the_memory(monkeypatch):
    monkeypatch.delenv("PUYU_SERVE_SLOTS", raising=False)
    assert launcher.default_serve_slots(8 * 10**9) == 3  # an 8 GB laptop hosts 3 small models
    assert launcher.default_serve_slots(int(7.6 * GiB)) == 3
    assert launcher.default_serve_slots(16 * 10**9) == 8 and launcher.default_serve_slots(256 * GiB) == 8
    assert launcher.default_serve_slots(4 * GiB) == 1 and launcher.default_serve_slots(1 * GiB) == 1
    assert launcher.default_serve_slots(32 * GiB, serve_workers=4) == 5  # shared by one serve worker per GPU
    monkeypatch.setattr(launcher, "total_memory_bytes", lambda: 8 * 10**9)
    assert serve_command(launcher.worker_plan(cores=2, gpus=0)) == ("threads", 3)
