"""One slow end-to-end check on a real model: the packaged SmolLM2-135M-Instruct, imported as the
registry does (starter import), fine-tuned with LoRA for a few steps through the UI path — the
new-run form posted by a logged-in user, the real pre-flight, a real Celery worker — into a
registered adapter version whose base is SmolLM2."""
import pytest

from apps.jobs.models import JobStatus
from apps.registry import services as registry
from apps.registry.models import ModelVersion
from apps.training.models import TrainingRun
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_logged_in_user_fine_tunes_smollm2_with_lora_from_the_form(stack, client, users, make_dataset):
    from workers.tasks.registry import model_import

    owner = users["owner"]
    imported = registry.start_import(owner, source="starter", model_name="SmolLM2-135M-Instruct")
    model_import.run(imported.pk)  # in this process, as the registry tests do
    imported.refresh_from_db()
    assert imported.status == JobStatus.SUCCEEDED, imported.error
    base = ModelVersion.objects.get(source_job=imported)
    data = make_dataset(owner)

    stack.worker("gpu0", "gpu")
    client.force_login(owner)
    response = client.post("/training/new/", {
        "method": "sft", "finetune": "lora", "base": f"v:{base.pk}", "train_versions": [str(data.pk)], "queue": "gpu",
        "model_name": "smollm2-chat", "max_steps": "3", "batch_size": "1", "max_length": "96", "lora_r": "4",
        "lora_alpha": "8", "save_every": "3", "eval_every": "100", "action": "submit",
    })
    assert response.status_code == 302, response.content.decode()[-3000:]
    run = TrainingRun.objects.get()
    wait_for(lambda: TrainingRun.objects.filter(pk=run.pk, job__status__in=("SUCCEEDED", "FAILED", "CANCELLED")).exists(),
             600, 1, f"the SmolLM2 run\n{stack.log('gpu0')[-3000:]}")
    run.job.refresh_from_db()
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    version = ModelVersion.objects.get(source_job=run.job)
    assert (version.kind, version.parent, version.model.name) == ("adapter", base, "smollm2-chat")
    assert version.evaluation["final_metrics"]["loss"] > 0
    assert list(run.job.metrics.filter(name="loss").values_list("step", flat=True)) == [1, 2, 3]
