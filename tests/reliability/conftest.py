"""Fixtures for the fault promises: the training app's tiny Llama, registry and dataset rows
(re-used from tests/training), and a tiny LoRA SFT job whose losses are reproducible, so a
resumed run can be compared step by step with an uninterrupted one."""
from __future__ import annotations

import os
import signal

import pytest

from apps.jobs.models import Job, JobMetric, JobStatus
from tests.stack import wait_for
from tests.training.conftest import (fake_preflight, lora_request, make_base, make_dataset,  # noqa: F401 (fixtures)
                                     tiny_base_source)

# ~1k tokens an optimizer step: long enough to signal a worker mid-run, short enough for CI.
TRAINING = {"max_steps": 16, "max_length": 64, "batch_size": 2, "grad_accum": 3, "log_every": 1, "eval_every": 1000,
            "save_every": 4, "keep_checkpoints": 3, "sample_every": 0, "sample_prompts": []}


def status_of(job) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


def losses(job) -> dict[int, float]:
    return dict(JobMetric.objects.filter(job=job, name="loss").values_list("step", "value"))


def finished(job, stack, timeout=240, worker="gpu0"):
    try:
        wait_for(lambda: status_of(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED), timeout, 0.25,
                 f"job {job.pk} to finish")
    except AssertionError as exc:  # say where it stuck: the job's row, its worker, the reaper
        row = Job.objects.filter(pk=job.pk).values("status", "attempts", "max_attempts", "lease_owner",
                                                   "lease_expires_at", "dispatched_at", "progress_message").get()
        logs = "\n".join(f"--- {name}.log\n{stack.log(name)[-2500:]}" for name in (worker, "control", "beat"))
        raise AssertionError(f"{exc}\n{row}\n{logs}") from None
    job.refresh_from_db()
    return job


def terminate(stack, name: str) -> int:
    """SIGTERM to the worker's main process (what the launcher and systemd send): a warm shutdown."""
    proc = stack.procs.pop(name)
    os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(60)


@pytest.fixture
def submit_training(users, make_base, make_dataset, tiny_base_source, fake_preflight, lora_request):  # noqa: F811
    """Submit the tiny LoRA SFT run (the pre-flight is the stand-in: these tests prove the job system)."""
    from apps.training import services

    owner = users["owner"]
    base, data = make_base(owner, files=True, source=tiny_base_source), make_dataset(owner)

    def submit(**fields):
        return services.submit(owner, lora_request(base, [data], model_name="tiny-chat", fields={**TRAINING, **fields}))

    return submit
