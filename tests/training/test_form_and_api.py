"""The new-run form and the training API with a stand-in pre-flight: the Check button renders
the pre-flight panel, a refused submission shows the errors on their fields and stores nothing,
and presets and the advanced YAML fill the spec."""
import pytest

from apps.jobs.models import Job
from apps.training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def form_data(users, make_base, make_dataset):
    base, data = make_base(users["owner"]), make_dataset(users["owner"])

    def make(**extra):
        return {"method": "sft", "finetune": "lora", "base": f"v:{base.pk}", "train_versions": [str(data.pk)],
                "queue": "gpu", "max_steps": "4", "batch_size": "2", "lora_r": "4", **extra}

    return make


def test_the_check_button_renders_the_pre_flight_panel_and_stores_nothing(client, users, form_data, fake_preflight):
    client.force_login(users["owner"])
    response = client.post("/training/new/", form_data(action="check"), HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert response.status_code == 200 and 'id="preflight-report" data-ok="true"' in page
    assert 'class="loss">hello' in page and 'id="memory-bar"' in page and "Ready to train" in page
    assert not Job.objects.exists()


def test_a_refused_submission_shows_the_errors_on_their_fields_and_stores_nothing(client, users, form_data, fake_preflight):
    fake_preflight.errors = [{"field": "batch_size", "message": "needs 90 GiB, the device has 16 GiB"},
                             {"field": "data_format", "message": "sft trains on chat or qa data, not 'text'"}]
    client.force_login(users["owner"])
    response = client.post("/training/new/", form_data(action="submit"))
    page = response.content.decode()
    assert response.status_code == 422
    assert 'data-field="batch_size"' in page and "needs 90 GiB" in page
    assert 'data-field="train_versions"' in page and "sft trains on chat or qa data" in page
    assert "Refused" in page and not Job.objects.exists()


def test_a_valid_submission_starts_the_run_and_opens_its_page(client, users, form_data, fake_preflight):
    client.force_login(users["owner"])
    response = client.post("/training/new/", form_data(action="submit", advanced="warmup_ratio: 0.1\nseed: 7\n"))
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/training/{run.job_id}/"
    assert run.job.params["warmup_ratio"] == 0.1 and run.job.params["seed"] == 7 and run.job.params["max_steps"] == 4


def test_advanced_yaml_errors_name_the_line_and_the_field(client, users, form_data, fake_preflight):
    client.force_login(users["owner"])
    page = client.post("/training/new/", form_data(action="submit", advanced="seed: 7\nwarmup: 0.1\n")).content.decode()
    assert "warmup: line 2: unknown field" in page and not Job.objects.exists()


def test_a_preset_fills_the_form(client, users):
    client.force_login(users["owner"])
    page = client.get("/training/new/?preset=builtin:sft-lora-small").content.decode()
    assert 'name="lora_r" value="16"' in page and 'name="max_steps" value="200"' in page
    assert "lora_targets" in page  # the fields without their own input land in the advanced YAML


def test_the_api_runs_pre_flight_and_submits_or_refuses_with_field_errors(client, users, make_base, make_dataset,
                                                                           fake_preflight, api_token):
    base, data = make_base(users["owner"]), make_dataset(users["owner"])
    auth = f"Bearer {api_token(users['owner'])}"
    body = {"base_version_id": base.pk, "train_version_ids": [data.pk], "preset": "builtin:sft-lora-small",
            "fields": {"max_steps": 3}, "model_name": "via-api"}
    report = client.post("/api/training/preflight", body, content_type="application/json", HTTP_AUTHORIZATION=auth).json()
    assert report["ok"] and report["sample"]["loss_tokens"] == 3 and not Job.objects.exists()
    fake_preflight.errors = [{"field": "finetune", "message": "QLoRA needs a GPU worker"}]
    refused = client.post("/api/training/runs", body, content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [{"field": "finetune", "message": "QLoRA needs a GPU worker"}]
    assert refused.json()["detail"] == "finetune: QLoRA needs a GPU worker" and not Job.objects.exists()
    fake_preflight.errors = []
    created = client.post("/api/training/runs", body, content_type="application/json", HTTP_AUTHORIZATION=auth)
    assert created.status_code == 201, created.content
    run = created.json()
    assert run["train_version_ids"] == [data.pk] and run["preset"] == "sft-lora-small"
    assert run["job"]["params"]["max_steps"] == 3 and run["job"]["params"]["lora_r"] == 16


def test_the_api_404s_inputs_the_caller_may_not_see(client, users, make_base, make_dataset, fake_preflight, api_token):
    base, data = make_base(users["owner"]), make_dataset(users["owner"])
    response = client.post("/api/training/runs", {"base_version_id": base.pk, "train_version_ids": [data.pk], "model_name": "x"},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {api_token(users['outsider'])}")
    assert response.status_code == 404 and not Job.objects.exists()
