"""The real pre-flight (workers/core/training, through the catalog) refusing through the form and
the API: the wrong data format for the method, QLoRA with no GPU worker, and memory over the
worker's budget. A refusal names the field and stores nothing."""
import pytest
from django.utils import timezone

from apps.jobs.models import Job, WorkerNode
from apps.registry.models import RegisteredModel, VersionRequest
from apps.training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def real_inputs(users, make_base, make_dataset, tiny_base_source):
    owner = users["owner"]
    return {"base": make_base(owner, files=True, source=tiny_base_source), "chat": make_dataset(owner, "chat"),
            "text": make_dataset(owner, "text")}


def nothing_stored():
    return not (Job.objects.exists() or TrainingRun.objects.exists() or VersionRequest.objects.exists()
                or RegisteredModel.objects.filter(name="refused").exists())


def api_submit(client, token, inputs, dataset="chat", **extra):
    body = {"base_version_id": inputs["base"].pk, "train_version_ids": [inputs[dataset].pk], "model_name": "refused",
            "fields": {"max_steps": 2, "batch_size": 2, "max_length": 64, "lora_r": 4}, **extra}
    return client.post("/api/training/runs", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")


def form_submit(client, inputs, dataset="chat", **extra):
    data = {"method": "sft", "finetune": "lora", "base": f"v:{inputs['base'].pk}", "train_versions": [str(inputs[dataset].pk)],
            "queue": "gpu", "model_name": "refused", "max_steps": "2", "batch_size": "2", "max_length": "64", "lora_r": "4",
            "action": "submit", **extra}
    return client.post("/training/new/", data)


def test_a_text_dataset_for_sft_is_refused_naming_the_format(client, users, real_inputs, api_token):
    response = api_submit(client, api_token(users["owner"]), real_inputs, dataset="text")
    assert response.status_code == 422, response.content
    errors = response.json()["errors"]
    assert any(e["field"] == "data_format" and "text" in e["message"] for e in errors), errors
    client.force_login(users["owner"])
    page = form_submit(client, real_inputs, dataset="text")
    assert page.status_code == 422 and "data_format" in page.content.decode()
    assert nothing_stored()


def test_qlora_with_no_gpu_worker_is_refused_with_a_clear_reason(client, users, real_inputs, api_token):
    response = api_submit(client, api_token(users["owner"]), real_inputs, finetune="qlora")
    assert response.status_code == 422, response.content
    assert any("GPU" in e["message"] for e in response.json()["errors"]), response.json()
    client.force_login(users["owner"])
    page = form_submit(client, real_inputs, finetune="qlora")
    assert page.status_code == 422 and "GPU" in page.content.decode()
    assert nothing_stored()


def test_a_spec_over_the_workers_memory_is_refused_with_the_breakdown_and_a_suggestion(client, users, real_inputs, api_token):
    now = timezone.now()
    WorkerNode.objects.create(name="small@host", hostname="host", queues=["cpu"], started_at=now, last_seen_at=now,
                              devices={"cpu_cores": 2, "memory_gb": 0.001, "gpus": []})  # ~1 MB
    response = api_submit(client, api_token(users["owner"]), real_inputs, queue="cpu", finetune="full")
    assert response.status_code == 422, response.content
    report = response.json()["report"]
    assert report["memory"]["total"] > report["memory"]["budget"] and report["device"]["name"] == "CPU on small@host"
    assert report["suggestions"]
    client.force_login(users["owner"])
    page = form_submit(client, real_inputs, queue="cpu", finetune="full").content.decode()
    assert 'id="memory-bar" class="memory-bar over"' in page and 'id="preflight-suggestions"' in page
    assert nothing_stored()


def test_a_passing_pre_flight_shows_the_sample_with_its_loss_mask(client, users, real_inputs, api_token):
    body = {"base_version_id": real_inputs["base"].pk, "train_version_ids": [real_inputs["chat"].pk],
            "fields": {"max_steps": 2, "batch_size": 2, "max_length": 64, "lora_r": 4}}
    report = client.post("/api/training/preflight", body, content_type="application/json",
                         HTTP_AUTHORIZATION=f"Bearer {api_token(users['owner'])}").json()
    assert report["ok"], report["errors"]
    segments = report["sample"]["segments"]
    assert any(s["loss"] for s in segments) and any(not s["loss"] for s in segments)
    assert 0 < report["sample"]["loss_tokens"] < report["sample"]["tokens"]
    assert report["memory"]["total"] <= report["memory"]["budget"]
    assert not Job.objects.exists()
