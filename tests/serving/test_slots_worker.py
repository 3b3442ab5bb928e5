"""Several models on one machine, for real: one serve worker started with the launcher's own
command (a threads pool of 2 slots) hosts two tiny deployments at once, both answering through
/v1; a third waits and says why (API, /v1's 503, the heartbeat's slots); stopping one gives its
slot to the third; a warm shutdown of the worker hands its replicas back to the queue."""
import os
import signal
import threading

import openai
import pytest

from apps.jobs.models import Job, JobStatus, WorkerNode
from apps.serving import services
from apps.serving.models import ApiKey
from puyu_site.launcher import serve_worker_command
from tests.serving.test_end_to_end import (  # noqa: F401  (fixtures)
    client_for,
    deploy,
    register,
    stop_deployments_first,
    tiny_source,
    wait_ready,
)
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# 64 blocks = 2,048 KV tokens: a tiny replica then takes ~10 MiB (the CPU default, 256 MiB of KV,
# gives the tiny model 524k tokens and the manager ~1.3 GiB of buffers sized by them).
SMALL = {"num_blocks": 64}


def replica_jobs(*deployments):
    return list(Job.objects.filter(replica__deployment__in=deployments).exclude(status__in=("CANCELLED", "FAILED")))


def ask_both(client, names):
    answers = {}

    def ask(name):
        try:
            answers[name] = client.chat.completions.create(model=f"owner/{name}", max_tokens=6, temperature=0,
                                                           messages=[{"role": "user", "content": "Hello"}])
        except Exception as exc:  # asserted below
            answers[name] = exc

    threads = [threading.Thread(target=ask, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def test_one_serve_worker_with_two_slots_serves_two_deployments_and_a_third_waits_saying_why(
        stack, users, tiny_source, client, api_token):  # noqa: F811
    owner = users["owner"]
    stack._spawn("serve0", serve_worker_command("serve0", 2), {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    url = stack.web()
    version = register(owner, tiny_source)
    first = deploy(owner, version, name="first", engine=SMALL)
    second = deploy(owner, version, name="second", engine=SMALL)
    wait_ready(stack, first)
    wait_ready(stack, second)
    owners = {job.lease_owner for job in replica_jobs(first, second)}
    assert len(owners) == 1 and owners.pop().startswith("serve0@")  # one worker process hosts both

    api = client_for(url, ApiKey.issue(owner, "slots", rate_limit_per_minute=0)[1], timeout=120)
    answers = ask_both(api, ["first", "second"])
    for name, reply in answers.items():
        assert not isinstance(reply, Exception), (name, reply)
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1

    third = deploy(owner, version, name="third", engine=SMALL)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_token(owner)}"}
    reason = client.get(f"/api/deployments/{third.pk}", **auth).json()["waiting_reason"]
    assert reason in ("waiting for a free serve slot: 2 of 2 used by owner/first, owner/second; stop one or add a worker",
                      "waiting for a free serve slot: 2 of 2 used by owner/second, owner/first; stop one or add a worker")
    with pytest.raises(openai.InternalServerError) as refused:
        api.chat.completions.create(model="owner/third", messages=[{"role": "user", "content": "Hello"}], max_tokens=4)
    assert refused.value.status_code == 503 and reason in str(refused.value)
    used = {(slot["deployment"], slot["replica"]) for slot in
            WorkerNode.objects.get(name__startswith="serve0@").devices["serve_slots"]["used"]}
    slots = WorkerNode.objects.get(name__startswith="serve0@").devices["serve_slots"]
    assert slots["capacity"] == 2
    assert used == {(d.pk, d.replica_set.get().replica_id) for d in (first, second)}

    services.stop(owner, first)  # what the reason advises: its slot goes to the third
    wait_ready(stack, third, timeout=120)
    assert client.get(f"/api/deployments/{third.pk}", **auth).json()["waiting_reason"] == ""
    assert ask_both(api, ["third"])["third"].choices[0].finish_reason in ("stop", "length")

    # Warm shutdown (Ctrl-C of make run): every replica drains and goes back to the queue for the
    # next worker, instead of holding the shutdown until the launcher kills the worker.
    serve0 = stack.procs.pop("serve0")
    os.killpg(serve0.pid, signal.SIGTERM)
    assert serve0.wait(60) == 0, stack.log("serve0")[-3000:]
    for job in replica_jobs(second, third):
        assert job.status == JobStatus.QUEUED, (job.status, job.error)
        assert job.log_lines.filter(message__contains="re-queued: worker shutting down").exists()
