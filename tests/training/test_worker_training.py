"""Training through the real job system: real Redis, real Celery worker processes and beat, the
tiny Llama and a tiny chat dataset. A LoRA SFT job registers exactly one adapter with lineage; a
SIGKILLed worker's job resumes from its last checkpoint on the next worker; cancel stops within a
couple of steps and registers nothing; a kept checkpoint restarts as a new job."""
from pathlib import Path

import pytest

from apps.jobs import services as jobs
from apps.jobs.models import Job, JobMetric, JobStatus
from apps.registry.models import ModelVersion
from apps.training import services
from apps.training.models import TrainingRun
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def status_of(job):
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


def loss_steps(job) -> list[int]:
    return list(JobMetric.objects.filter(job=job, name="loss").order_by("step").values_list("step", flat=True))


def finished(job, stack, timeout=180):
    wait_for(lambda: status_of(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED), timeout, 0.25,
             f"job {job.pk} to finish\n{stack.log('gpu0')[-3000:]}")
    job.refresh_from_db()
    return job


@pytest.fixture
def submit(users, make_base, make_dataset, tiny_base_source, fake_preflight, lora_request):
    """Submit a tiny LoRA SFT run (the pre-flight is the stand-in: this file tests the job, not the checks)."""
    owner = users["owner"]
    base, data = make_base(owner, files=True, source=tiny_base_source), make_dataset(owner)

    def make(**fields):
        return services.submit(owner, lora_request(base, [data], model_name="tiny-chat", fields={
            "max_length": 64, "batch_size": 2, "log_every": 1, "eval_every": 2, "save_every": 2, "keep_checkpoints": 3,
            "sample_every": 3, "sample_prompts": ["Say the number 3 in words."], "sample_max_tokens": 6, **fields}))

    return make


def test_a_lora_sft_job_registers_exactly_one_adapter_with_lineage_and_a_checkpoint_restarts_it(stack, users, submit):
    stack.worker("gpu0", "gpu")
    job = finished(submit(max_steps=4), stack)
    assert job.status == JobStatus.SUCCEEDED, job.error
    version = ModelVersion.objects.get(source_job=job)
    run = TrainingRun.objects.get(job=job)
    assert ModelVersion.objects.filter(source_job=job).count() == 1
    assert (version.kind, version.parent, version.model.name) == ("adapter", run.base_version, "tiny-chat")
    assert version.evaluation["final_metrics"]["loss"] > 0 and "eval_loss" in version.evaluation["final_metrics"]
    assert (version.path / "adapter_model.safetensors").exists() and "adapter_model.safetensors" in version.file_names()
    assert set(job.dataset_uses.values_list("role", flat=True)) == {"train"}
    assert loss_steps(job) == [1, 2, 3, 4]
    assert services.recent_samples(run), "the trainer wrote sample generations"

    checkpoint = services.kept_checkpoints(run)[0]
    again = finished(services.restart_from_checkpoint(users["owner"], job, checkpoint["name"]), stack)
    assert again.status == JobStatus.SUCCEEDED, again.error
    assert again.result["resumed_from"] == checkpoint["path"]
    assert loss_steps(again) == list(range(checkpoint["step"] + 1, 5))
    assert ModelVersion.objects.get(source_job=again).number == version.number + 1


def test_cancel_during_training_stops_within_two_steps_and_registers_nothing(stack, submit, users):
    stack.worker("gpu0", "gpu")
    # Optimizer steps of ~1k tokens (about a second each here): the worker reads the cancel flag
    # at most once a second (workers/tasks/reporter.py), the README's "within two steps or 30 s".
    job = submit(max_steps=200, batch_size=4, grad_accum=4, eval_every=1000, sample_every=0, sample_prompts=[])
    wait_for(lambda: len(loss_steps(job)) >= 2, 180, 0.1, "two training steps")
    jobs.cancel_job(job, users["owner"])
    asked_at = max(loss_steps(job))
    job = finished(job, stack, timeout=120)
    assert job.status == JobStatus.CANCELLED
    # The step in flight when the flag was set (its loss may not be written yet) ends, then at most two more.
    assert max(loss_steps(job)) <= asked_at + 3
    assert not ModelVersion.objects.filter(source_job=job).exists()
    assert not Path(job.params["output_dir"]).exists()
