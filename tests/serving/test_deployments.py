"""Deployments as rows and replica jobs: validation, reconcile (states from jobs and replica
hashes, bounded restarts, alias roll-over one replica at a time, drain on stop), version use."""
import json

import pytest
import redis
from django.conf import settings

from apps.jobs.models import Job, JobStatus
from apps.registry import services as registry
from apps.registry.models import VersionKind
from apps.serving import services
from apps.serving.models import Deployment, Replica
from workers.tasks import serving_protocol as protocol


def replicas(deployment, **filters):
    return list(Replica.objects.filter(deployment=deployment, **filters).select_related("job").order_by("created_at", "id"))


def set_live(replica, state="ready"):
    Job.objects.filter(pk=replica.job_id).update(status=JobStatus.RUNNING, lease_owner="test-worker")
    redis.Redis.from_url(settings.REDIS_URL).hset(protocol.replica_key(replica.deployment_id, replica.replica_id),
                                                  mapping={"state": state, "metrics": json.dumps({"running": 0})})


def fail(replica, error="CUDA out of memory"):
    Job.objects.filter(pk=replica.job_id).update(status=JobStatus.FAILED, error=error)


def test_a_deployment_starts_its_replicas_as_serve_jobs_with_the_spec_fields(users, make_version):
    version = make_version(users["owner"])
    deployment = services.create_deployment(users["owner"], name="chat", model=version.model, version=version, replicas=2,
                                            engine_options={"max_concurrent": 4})
    rows = replicas(deployment)
    assert len(rows) == 2 and deployment.state == "starting"
    for row in rows:
        job = row.job
        assert (job.kind, job.queue, job.status, job.owner) == ("serve", "serve", "QUEUED", users["owner"])
        assert job.params["deployment_id"] == deployment.pk and job.params["replica_id"] == row.replica_id
        assert job.params["model_dir"] == str(version.path) and job.params["adapter_dir"] == ""
        assert job.params["served_name"] == "owner/chat" and job.params["max_concurrent"] == 4
        # The broker URL (with its password) is never stored where users see the job's params.
        assert not job.params.get("redis_url") and settings.REDIS_URL not in str(job.params)
        assert job.model_uses.filter(version=version, role="serving").exists()


def test_an_adapter_is_served_on_top_of_its_base(users, make_version):
    base = make_version(users["owner"])
    adapter = make_version(users["owner"], number=2, kind=VersionKind.ADAPTER)
    adapter.parent = base
    adapter.save()
    deployment = services.create_deployment(users["owner"], name="lora", model=base.model, version=adapter)
    params = replicas(deployment)[0].job.params
    assert params["model_dir"] == str(base.path) and params["adapter_dir"] == str(adapter.path)
    assert set(replicas(deployment)[0].job.model_uses.values_list("role", flat=True)) == {"serving", "serving base"}


@pytest.mark.parametrize("change, field", [
    ({"name": "no spaces allowed"}, "name"),
    ({"replicas": 0}, "replicas"),
    ({"replicas": 99}, "replicas"),
    ({"queue": "nowhere"}, "queue"),
    ({"max_queue": 0}, "max_queue"),
    ({"engine_options": "{not json"}, "engine_options"),
    ({"engine_options": {"model_dir": "/etc"}}, "engine_options.model_dir"),
    ({"engine_options": {"no_such_knob": 1}}, "engine_options.no_such_knob"),
    ({"alias": "prod"}, "version"),
])
def test_invalid_deployments_are_refused_naming_the_field(users, make_version, change, field):
    version = make_version(users["owner"])
    kwargs = {"name": "ok", "model": version.model, "version": version, **change}
    with pytest.raises(services.ServingError) as caught:
        services.create_deployment(users["owner"], **kwargs)
    assert caught.value.field == field, caught.value
    assert not Deployment.objects.exists() and not Job.objects.exists()


def test_the_name_is_unique_per_owner_and_the_outsider_cannot_deploy_a_private_model(users, make_version):
    version = make_version(users["owner"])
    services.create_deployment(users["owner"], name="chat", model=version.model, version=version)
    with pytest.raises(services.ServingError, match="already have"):
        services.create_deployment(users["owner"], name="chat", model=version.model, version=version)
    with pytest.raises(services.ServingError) as caught:
        services.create_deployment(users["outsider"], name="chat", model=version.model, version=version)
    assert caught.value.field == "model"
    teammates = services.create_deployment(users["teammate"], name="chat", model=version.model, version=version)
    assert teammates.served_name == "teammate/chat"


def test_reconcile_reads_replica_states_from_jobs_and_redis(deployment):
    [replica] = replicas(deployment)
    assert services.reconcile(deployment).state == "starting"
    set_live(replica, "loading")
    assert services.reconcile(deployment).state == "starting"
    assert Replica.objects.get(pk=replica.pk).state == "loading"
    set_live(replica, "ready")
    assert services.reconcile(deployment).state == "ready"


def test_a_failed_replica_is_restarted_until_max_restarts_then_the_deployment_fails_with_the_reason(users, make_version):
    version = make_version(users["owner"])
    deployment = services.create_deployment(users["owner"], name="flaky", model=version.model, version=version, max_restarts=2)
    for attempt in range(2):
        fail(replicas(deployment, state="queued")[0])
        deployment = services.reconcile(deployment)
        assert deployment.restarts == attempt + 1 and deployment.state == "starting"
        assert len(replicas(deployment, state="queued")) == 1  # its replacement
    fail(replicas(deployment, state="queued")[0], "killed by the OOM killer")
    deployment = services.reconcile(deployment)
    assert deployment.state == "failed" and "killed by the OOM killer" in deployment.state_reason
    assert len(replicas(deployment, state="failed")) == 3 and not replicas(deployment, state="queued")


def test_moving_the_alias_rolls_replicas_over_one_at_a_time(users, make_version):
    owner = users["owner"]
    v1, v2 = make_version(owner), make_version(owner, number=2)
    registry.move_alias(owner, v1.model, "prod", v1)
    deployment = services.create_deployment(owner, name="prod", model=v1.model, alias="prod", replicas=2)
    for row in replicas(deployment):
        set_live(row)
    assert services.reconcile(deployment).state == "ready"

    registry.move_alias(owner, v1.model, "prod", v2)
    services.reconcile(deployment)
    active = lambda: [(r.version_id, r.job.cancel_requested) for r in replicas(deployment) if r.job.status != "CANCELLED"]
    assert sorted(active()) == sorted([(v1.pk, False), (v1.pk, False), (v2.pk, False)])  # one new, none drained yet
    services.reconcile(deployment)
    assert len(active()) == 3  # the new one is not ready: nothing else happens
    new = replicas(deployment, version=v2)[0]
    set_live(new)
    services.reconcile(deployment)
    drained = [r for r in replicas(deployment, version=v1) if r.job.cancel_requested]
    assert len(drained) == 1  # one old replica drains once the new one is ready ...
    services.reconcile(deployment)
    assert len(replicas(deployment, version=v2)) == 2  # ... and the second new one starts
    assert services.reconcile(deployment).state == "ready"  # served throughout


def test_stop_drains_replicas_and_ends_stopped_and_delete_waits_for_it(deployment, users):
    [replica] = replicas(deployment)
    set_live(replica)
    with pytest.raises(services.PermissionDenied):
        services.stop(users["teammate"], deployment)
    deployment = services.stop(users["owner"], deployment)
    assert deployment.state == "draining" and Job.objects.get(pk=replica.job_id).cancel_requested
    with pytest.raises(services.ServingError, match="stop it"):
        services.delete(users["owner"], deployment)
    Job.objects.filter(pk=replica.job_id).update(status=JobStatus.CANCELLED)
    assert services.reconcile(deployment).state == "stopped"
    services.delete(users["owner"], deployment)
    assert not Deployment.objects.exists()


def test_scaling_adds_and_removes_replicas(deployment, users):
    services.scale(users["owner"], deployment, 3)
    assert len([r for r in replicas(deployment) if not r.job.cancel_requested]) == 3
    services.scale(users["owner"], deployment, 1)
    assert len([r for r in replicas(deployment) if r.job.status == "QUEUED"]) == 1
    with pytest.raises(services.PermissionDenied):
        services.scale(users["teammate"], deployment, 2)


def test_a_version_in_use_by_a_deployment_cannot_be_deleted(deployment, users):
    version = deployment.version
    with pytest.raises(registry.RegistryError, match="in use"):
        registry.delete_version(users["owner"], version)


@pytest.mark.django_db(transaction=True)  # the task runs with a heartbeat thread
def test_the_replica_task_runs_the_spec_built_from_the_rows_and_skips_a_stopped_deployment(deployment, users, monkeypatch):
    from workers.tasks import serving as tasks

    seen = {}
    monkeypatch.setattr(tasks, "run_core_job", lambda kind, params, reporter: seen.update(kind=kind, params=params) or {"served": 0})
    first, second = replicas(services.scale(users["owner"], deployment, 2))
    assert tasks.replica.run(first.job_id) == JobStatus.SUCCEEDED
    assert seen["kind"] == "serve" and seen["params"]["replica_id"] == first.replica_id
    assert seen["params"]["model_dir"] == str(deployment.version.path)
    assert seen["params"]["redis_url"] == settings.REDIS_URL  # handed over at run time only
    Deployment.objects.filter(pk=deployment.pk).update(state="draining")  # stopped while the message waited
    seen.clear()
    assert tasks.replica.run(second.job_id) == JobStatus.CANCELLED and not seen


@pytest.mark.django_db(transaction=True)  # the task runs with a heartbeat thread
def test_a_replica_given_back_at_a_warm_shutdown_leaves_its_deployment_starting_at_once(deployment, users, monkeypatch):
    """Not at beat's next reconcile: a stack restarted within those seconds offered a "ready"
    deployment whose answers failed with "no replica is ready"."""
    from workers.core.reporting import JobSuspended
    from workers.tasks import serving as tasks

    [replica] = replicas(deployment)
    Deployment.objects.filter(pk=deployment.pk).update(state="ready")  # served until the worker stopped
    Replica.objects.filter(pk=replica.pk).update(state="ready")

    def drained_by_the_shutdown(kind, params, reporter):
        raise JobSuspended("the replica drained")

    monkeypatch.setattr(tasks, "run_core_job", drained_by_the_shutdown)
    assert tasks.replica.run(replica.job_id) == "suspended"
    assert Job.objects.get(pk=replica.job_id).status == JobStatus.QUEUED  # back in the queue for the next worker
    assert Deployment.objects.get(pk=deployment.pk).state == "starting"
    assert Replica.objects.get(pk=replica.pk).state == "queued"


def test_replica_jobs_stored_with_the_broker_url_lose_it_in_the_migration(deployment):
    import importlib

    from django.apps import apps as django_apps

    migration = importlib.import_module("apps.serving.migrations.0002_drop_redis_url_from_replica_params")
    job = deployment.replica_set.get().job
    Job.objects.filter(pk=job.pk).update(params={**job.params, "redis_url": "redis://:s3cret@10.0.0.5:6379/0"})
    migration.drop_redis_url(django_apps, None)
    job.refresh_from_db()
    assert "redis_url" not in job.params and job.params["replica_id"] == deployment.replica_set.get().replica_id
