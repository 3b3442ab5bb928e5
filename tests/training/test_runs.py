"""Training runs without the core (the pre-flight is a stand-in): what a submission stores, who
may see and act on runs, restart from a kept checkpoint, retry, and what a finished job records."""
import json
from pathlib import Path

import pytest
from django.http import Http404

from apps.datasets.models import DatasetVersionUse
from apps.jobs.models import Job, JobMetric, JobStatus
from apps.registry.models import ModelVersion, RegisteredModel, VersionRequest, VersionUse
from apps.training import services
from apps.training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def inputs(users, make_base, make_dataset):
    return make_base(users["owner"]), make_dataset(users["owner"])


def test_a_lora_submission_stores_the_job_its_adapter_request_and_what_it_reads_with_server_paths(
        users, inputs, fake_preflight, lora_request, settings):
    base, data = inputs
    job = services.submit(users["owner"], lora_request(base, [data], model_name="tiny-chat"))
    run = TrainingRun.objects.get(job=job)
    request = VersionRequest.objects.get(job=job)
    assert (job.kind, job.queue, run.method, run.finetune, run.dry_run) == ("train", "gpu", "sft", "lora", False)
    assert (request.kind, request.parent, request.source, request.model.name) == ("adapter", base, "train", "tiny-chat")
    assert job.params["output_dir"] == str(settings.MODEL_STORE_DIR / str(request.uid))
    assert job.params["checkpoint_dir"] == run.checkpoint_dir == str(settings.DATA_DIR / "checkpoints" / str(request.uid))
    assert job.params["base_model_dir"] == str(base.path)
    assert job.params["train_files"] == [str(data.path)] and job.params["data_format"] == "chat"
    assert job.params["lora_r"] == 4 and job.params["max_steps"] == 4
    assert list(VersionUse.objects.filter(job=job).values_list("version", "role")) == [(base.pk, "base")]
    assert list(DatasetVersionUse.objects.filter(job=job).values_list("version", "role")) == [(data.pk, "train")]
    params, device = fake_preflight.calls[0]
    assert params["train_files"] == job.params["train_files"] and device["kind"] in ("cpu", "cuda")


def test_a_full_fine_tune_registers_a_full_version_whose_parent_is_the_base(users, inputs, fake_preflight, lora_request):
    base, data = inputs
    req = lora_request(base, [data])
    req.finetune = "full"
    job = services.submit(users["owner"], req)
    request = VersionRequest.objects.get(job=job)
    assert (request.kind, request.parent, request.model) == ("base", base, base.model)  # the base's model by default


def test_a_dry_run_registers_nothing_and_asks_the_core_for_a_few_measured_steps(users, inputs, fake_preflight, lora_request):
    base, data = inputs
    job = services.submit(users["owner"], lora_request(base, [data], dry_run=True))
    assert TrainingRun.objects.get(job=job).dry_run
    assert job.params["dry_run_steps"] == services.DEFAULT_DRY_RUN_STEPS
    assert not VersionRequest.objects.filter(job=job).exists()


def test_a_refused_pre_flight_stores_nothing(users, inputs, fake_preflight, lora_request):
    base, data = inputs
    fake_preflight.errors = [{"field": "batch_size", "message": "needs 90 GiB, the device has 16 GiB"}]
    with pytest.raises(services.PreflightRefused) as refused:
        services.submit(users["owner"], lora_request(base, [data], model_name="never-made"))
    assert refused.value.field == "batch_size" and refused.value.report["suggestions"] == ["use LoRA"]
    assert not Job.objects.exists() and not TrainingRun.objects.exists() and not VersionRequest.objects.exists()
    assert not RegisteredModel.objects.filter(name="never-made").exists()


@pytest.mark.parametrize("field", ["output_dir", "train_files", "base_model_dir", "checkpoint_dir", "resume_from", "tokenizer"])
def test_a_submission_may_not_name_a_server_path(users, inputs, fake_preflight, lora_request, field):
    base, data = inputs
    with pytest.raises(services.TrainingError) as refused:
        services.submit(users["owner"], lora_request(base, [data], fields={field: "/etc"}))
    assert refused.value.field == field
    assert not Job.objects.exists() and not fake_preflight.calls


def test_an_outsider_cannot_train_on_what_they_may_not_see(users, inputs, make_base, make_dataset, fake_preflight, lora_request):
    base, data = inputs
    outsider = users["outsider"]
    with pytest.raises(Http404):
        services.submit(outsider, lora_request(base, [make_dataset(outsider)], model_name="x"))
    with pytest.raises(Http404):
        services.submit(outsider, lora_request(make_base(outsider), [data], model_name="x"))
    assert not Job.objects.exists()


def test_a_teammate_trains_on_the_owners_base_into_a_model_of_their_own(users, inputs, fake_preflight, lora_request):
    base, data = inputs
    teammate = users["teammate"]
    with pytest.raises(services.TrainingError) as refused:  # the base's model is not theirs to change
        services.submit(teammate, lora_request(base, [data]))
    assert refused.value.field == "model_name" and not fake_preflight.calls  # refused before the pre-flight
    job = services.submit(teammate, lora_request(base, [data], model_name="mine"))
    assert VersionRequest.objects.get(job=job).model.owner == teammate


def test_pretraining_needs_no_base_but_other_methods_do(users, make_dataset, fake_preflight, lora_request):
    text = make_dataset(users["owner"], "text")
    with pytest.raises(services.TrainingError) as refused:
        services.submit(users["owner"], lora_request(None, [text]))
    assert refused.value.field == "base"
    req = lora_request(None, [text], model_name="scratch")
    req.method = "pretrain"
    job = services.submit(users["owner"], req)
    assert job.params["base_model_dir"] == "" and TrainingRun.objects.get(job=job).finetune == "full"
    assert VersionRequest.objects.get(job=job).parent is None


def test_the_device_comes_from_the_workers_serving_the_queue(users, inputs, fake_preflight, lora_request):
    from django.utils import timezone

    from apps.jobs.models import WorkerNode

    now = timezone.now()
    WorkerNode.objects.create(name="gpu0@a", hostname="a", queues=["gpu"], started_at=now, last_seen_at=now,
                              devices={"memory_gb": 64, "gpus": [{"index": 0, "name": "H100", "memory_gb": 80.0}]})
    WorkerNode.objects.create(name="cpu0@a", hostname="a", queues=["cpu"], started_at=now, last_seen_at=now,
                              devices={"memory_gb": 16, "gpus": []})
    assert services.queue_device("gpu") == {"kind": "cuda", "name": "H100 on gpu0@a", "memory_bytes": 80 * 2**30}
    assert services.queue_device("cpu") == {"kind": "cpu", "name": "CPU on cpu0@a", "memory_bytes": 16 * 2**30}


# ---- who may see and act --------------------------------------------------------------------

@pytest.fixture
def owner_run(users, inputs, fake_preflight, lora_request):
    base, data = inputs
    return TrainingRun.objects.get(job=services.submit(users["owner"], lora_request(base, [data])))


def write_checkpoint(run, step, complete=True):
    folder = Path(run.checkpoint_dir) / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    if complete:
        (folder / "manifest.json").write_text(json.dumps({"step": step, "created": "now", "files": [], "complete": True}))
    return folder


def test_owner_and_teammate_see_a_run_page_and_only_the_owner_gets_the_buttons(client, users, owner_run):
    url = f"/training/{owner_run.job_id}/"
    write_checkpoint(owner_run, 2)
    client.force_login(users["owner"])
    page = client.get(url).content.decode()
    assert "cancel-button" in page and "Restart from here" in page and "python -m workers.core train spec.yaml" in page
    client.force_login(users["teammate"])
    page = client.get(url).content.decode()
    assert "cancel-button" not in page and "Restart from here" not in page and "checkpoint-2" in page
    client.force_login(users["outsider"])
    assert client.get(url).status_code == 404
    assert client.get(f"/training/{owner_run.job_id}/spec.yaml").status_code == 404
    assert client.get(f"/training/{owner_run.job_id}/samples/").status_code == 404
    assert str(owner_run.job_id) not in client.get("/training/").content.decode().split("<tbody>")[1]


def test_the_api_shows_runs_to_owner_and_teammate_and_404s_the_outsider(client, users, owner_run, api_token):
    for who, status in (("owner", 200), ("teammate", 200), ("outsider", 404)):
        response = client.get(f"/api/training/runs/{owner_run.job_id}", HTTP_AUTHORIZATION=f"Bearer {api_token(users[who])}")
        assert response.status_code == status, who
    body = client.get(f"/api/training/runs/{owner_run.job_id}", HTTP_AUTHORIZATION=f"Bearer {api_token(users['owner'])}").json()
    assert body["method"] == "sft" and body["job"]["status"] == "QUEUED" and body["base_version_id"] == owner_run.base_version_id


def test_a_teammate_can_neither_cancel_nor_restart_and_an_outsider_gets_404(client, users, owner_run, api_token):
    write_checkpoint(owner_run, 2)
    job_id = owner_run.job_id
    teammate = f"Bearer {api_token(users['teammate'])}"
    assert client.post(f"/api/jobs/{job_id}/cancel", HTTP_AUTHORIZATION=teammate).status_code == 403
    assert client.post(f"/api/training/runs/{job_id}/restart", {"checkpoint": "checkpoint-2"}, content_type="application/json",
                       HTTP_AUTHORIZATION=teammate).status_code == 403
    outsider = f"Bearer {api_token(users['outsider'])}"
    assert client.post(f"/api/training/runs/{job_id}/restart", {"checkpoint": "checkpoint-2"}, content_type="application/json",
                       HTTP_AUTHORIZATION=outsider).status_code == 404
    client.force_login(users["teammate"])
    client.post(f"/training/{job_id}/restart/", {"checkpoint": "checkpoint-2"})
    assert TrainingRun.objects.count() == 1
    assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED and not Job.objects.get(pk=job_id).cancel_requested


def test_restarting_from_a_kept_checkpoint_makes_a_new_job_with_the_same_inputs(users, owner_run, settings):
    kept = write_checkpoint(owner_run, 2)
    write_checkpoint(owner_run, 4, complete=False)  # no manifest: never offered
    assert [c["name"] for c in services.kept_checkpoints(owner_run)] == ["checkpoint-2"]
    with pytest.raises(services.TrainingError):
        services.restart_from_checkpoint(users["owner"], owner_run.job, "checkpoint-4")
    with pytest.raises(services.TrainingError):
        services.restart_from_checkpoint(users["owner"], owner_run.job, "../../etc")
    job = services.restart_from_checkpoint(users["owner"], owner_run.job, "checkpoint-2")
    run = TrainingRun.objects.get(job=job)
    old = owner_run.job.params
    assert job.pk != owner_run.job_id and job.params["resume_from"] == str(kept)
    assert job.params["train_files"] == old["train_files"] and job.params["base_model_dir"] == old["base_model_dir"]
    assert job.params["output_dir"] != old["output_dir"] and job.params["checkpoint_dir"] != old["checkpoint_dir"]
    assert run.restarted_from == str(kept) and run.restarted_from_job_id == owner_run.job_id
    request = VersionRequest.objects.get(job=job)
    assert job.params["output_dir"] == str(settings.MODEL_STORE_DIR / str(request.uid)) and request.kind == "adapter"
    assert set(job.dataset_uses.values_list("role", flat=True)) == {"train"}


def test_retrying_a_failed_run_reruns_the_same_inputs_into_fresh_folders(users, owner_run):
    from apps.jobs import services as jobs

    Job.objects.filter(pk=owner_run.job_id).update(status=JobStatus.FAILED)
    owner_run.job.refresh_from_db()
    job = jobs.retry_job(owner_run.job, users["owner"])
    assert job.retry_of_id == owner_run.job_id and TrainingRun.objects.filter(job=job).exists()
    assert job.params["train_files"] == owner_run.job.params["train_files"]
    assert job.params["output_dir"] != owner_run.job.params["output_dir"]
    assert VersionRequest.objects.get(job=job).uid != VersionRequest.objects.get(job=owner_run.job).uid


# ---- what a finished job records ------------------------------------------------------------

FAKE_RESULT = {
    "facts": {"kind": "adapter", "architecture": "LlamaForCausalLM", "parameter_count": 2000, "files": [],
              "adapter": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}},
    "final_metrics": {"loss": 1.25, "eval_loss": 1.5}, "checkpoints": [{"name": "checkpoint-4", "step": 4, "path": "/x"}],
    "resumed_from": "",
}


def test_a_finished_run_registers_exactly_one_adapter_with_lineage_and_final_metrics(client, users, owner_run):
    from workers.tasks.training import train

    job = owner_run.job
    first = train.record(job, FAKE_RESULT)
    second = train.record(job, FAKE_RESULT)  # a duplicate delivery
    assert first["version_id"] == second["version_id"]
    version = ModelVersion.objects.get(source_job=job)
    assert (version.kind, version.parent, version.source) == ("adapter", owner_run.base_version, "train")
    assert version.evaluation["final_metrics"] == {"loss": 1.25, "eval_loss": 1.5}
    assert version.evaluation["checkpoints"] == ["checkpoint-4"]
    client.force_login(users["teammate"])
    page = client.get(f"/models/versions/{version.pk}/").content.decode()
    assert 'id="trained-by"' in page and f"/training/{job.pk}/" in page and "eval_loss" in page


def test_a_dry_run_records_its_estimate_registers_nothing_and_shows_the_estimate(client, users, inputs, fake_preflight,
                                                                                 lora_request):
    from workers.tasks.training import train

    base, data = inputs
    job = services.submit(users["owner"], lora_request(base, [data], dry_run=True))
    estimate = {"seconds_per_step": 0.5, "tokens_per_s": 256.0, "peak_memory_bytes": 2**20,
                "estimated_total_seconds": 2.0, "steps_measured": 5, "total_steps": 4}
    result = train.record(job, {"dry_run": estimate})
    assert result["dry_run"]["estimated_total_seconds"] == 2.0
    assert not ModelVersion.objects.filter(source_job=job).exists() and ModelVersion.objects.count() == 1  # the base only
    Job.objects.filter(pk=job.pk).update(status=JobStatus.SUCCEEDED, result=result)
    client.force_login(users["owner"])
    page = client.get(f"/training/{job.pk}/").content.decode()
    assert "0.5 s per step" in page and "about 2.0 s for 4 steps" in page


def test_the_run_list_shows_method_base_dataset_and_latest_loss(client, users, owner_run):
    JobMetric.objects.create(job=owner_run.job, name="loss", step=1, value=3.5)
    JobMetric.objects.create(job=owner_run.job, name="loss", step=2, value=2.25)
    client.force_login(users["teammate"])
    page = client.get("/training/").content.decode()
    assert "sft · lora" in page and str(owner_run.base_version) in page and "chat-demo v1" in page and "2.2500" in page
