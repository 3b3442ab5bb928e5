"""Two worker hosts, for real: independent Celery worker processes with their own node names
(`gpu0@hostA`, `gpu0@hostB`) and scratch folders (TMPDIR), one shared data dir, one database and
one Redis (tests/stack.py, Stack.host_worker), on the same queues. Queued jobs spread over both
hosts; a host killed (kill -9) mid-training loses its job to the other host once the lease
expires, which resumes it from the checkpoint in the shared data dir; a deployment of two
replicas, with one serve slot per host, runs one replica on each host."""
from __future__ import annotations

import pytest

from apps.jobs import services
from apps.jobs.models import Job, JobLogLine, JobStatus, WorkerNode
from apps.training import services as training
from apps.training.models import TrainingRun
from tests.reliability.conftest import (  # noqa: F401  (fixtures)
    fake_preflight,
    finished,
    lora_request,
    losses,
    make_base,
    make_dataset,
    submit_training,
    tiny_base_source,
)
from tests.serving.test_end_to_end import deploy, register, stop_deployments_first, tiny_source, wait_ready  # noqa: F401
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
HOSTS = ("hostA", "hostB")


def host_of(lease_owner: str) -> str:
    """The host part of a lease owner, `gpu0@hostA:1234` (node name, then the worker's pid)."""
    return lease_owner.split("@", 1)[1].rsplit(":", 1)[0]


def wait_online(names: list[str]) -> None:
    wait_for(lambda: set(WorkerNode.objects.filter(name__in=names).values_list("name", flat=True)) == set(names),
             90, 0.2, f"workers {names} to report")


def test_queued_jobs_spread_over_two_worker_hosts_and_a_killed_hosts_training_resumes_on_the_other_one(
        stack, owner, submit_training):  # noqa: F811
    for host in HOSTS:
        stack.host_worker(host, "gpu0", "gpu,cpu")
    stack.beat()  # the reaper hands a dead host's job on once its lease (3 s, tests/env_plugin.py) expires
    wait_online([f"gpu0@{host}" for host in HOSTS])
    assert WorkerNode.objects.get(name="gpu0@hostA").queues == WorkerNode.objects.get(name="gpu0@hostB").queues \
        == ["cpu", "gpu"]

    # 1. Six one-second probes queued at once: each host takes one at a time (prefetch 1).
    probes = [services.submit_job(owner, "probe", {"seconds": 1, "steps": 4}, queue="gpu") for _ in range(6)]
    for probe in probes:
        finished(probe, stack, timeout=120, worker="gpu0@hostA")
    ran_on = {}
    for probe in probes:
        assert (probe.status, probe.attempts) == (JobStatus.SUCCEEDED, 1), probe.error
        ran_on[probe.pk] = host_of(probe.lease_owner)
        assert probe.log_lines.filter(message=f"attempt 1 of 3 on {probe.lease_owner}").exists()
    assert set(ran_on.values()) == set(HOSTS), ran_on

    # 2. kill -9 of the whole host that runs a training job, once it has written a checkpoint.
    job = submit_training()
    run = TrainingRun.objects.get(job=job)
    wait_for(lambda: any(c["step"] >= 4 for c in training.kept_checkpoints(run)) and len(losses(job)) >= 5, 180, 0.05,
             f"a checkpoint\n{stack.log('gpu0@hostA')[-2000:]}\n{stack.log('gpu0@hostB')[-2000:]}")
    first = Job.objects.get(pk=job.pk).lease_owner
    dead, survivor = host_of(first), next(h for h in HOSTS if h != host_of(first))
    assert stack.kill_host(dead) == [f"gpu0@{dead}"]
    checkpointed = max(c["step"] for c in training.kept_checkpoints(run))

    job = finished(job, stack, worker=f"gpu0@{survivor}")
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2 and host_of(job.lease_owner) == survivor
    lines = list(JobLogLine.objects.filter(job=job).values_list("message", flat=True))
    assert f"worker lost: no heartbeat from {first}" in lines
    assert f"attempt 2 of 3 on {job.lease_owner}" in lines
    resumed_at = int(job.result["resumed_from"].rsplit("checkpoint-", 1)[1])
    assert f"resuming from checkpoint-{resumed_at}" in lines and 4 <= checkpointed <= resumed_at < 16
    assert sorted(losses(job)) == list(range(1, 17))  # every step once: none lost, none run twice


def test_a_deployment_of_two_replicas_runs_one_replica_on_each_worker_host(stack, users, tiny_source):  # noqa: F811
    owner = users["owner"]
    for host in HOSTS:  # one serve slot per host: the second replica can only go to the other host
        stack.host_worker(host, "serve0", "serve", serve_slots=1)
    wait_online([f"serve0@{host}" for host in HOSTS])
    deployment = deploy(owner, register(owner, tiny_source), name="two-hosts", replicas=2, engine={"num_blocks": 64})
    wait_ready(stack, deployment, replicas=2)

    replicas = list(deployment.replica_set.select_related("job").filter(state="ready"))
    assert len(replicas) == 2
    placed = {host_of(r.job.lease_owner): r.replica_id for r in replicas}
    assert set(placed) == set(HOSTS), placed

    def slots_used(host):
        return [(s["deployment"], s["replica"]) for s in
                WorkerNode.objects.get(name=f"serve0@{host}").devices["serve_slots"]["used"]]

    for host, replica_id in placed.items():  # and each host's own heartbeat says which replica it holds
        wait_for(lambda host=host, replica_id=replica_id: slots_used(host) == [(deployment.pk, replica_id)], 30, 0.2,
                 f"serve0@{host} to report its replica")
