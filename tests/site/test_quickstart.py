"""The Quick start: eight steps whose check marks come from what each user has made (so they survive
reloads and differ per user), each linking to its stage's page with defaults filled in."""
import re

import pytest

from apps.accounts.system import system_user
from apps.datasets.models import Dataset, DatasetVersion
from apps.jobs.models import Job, JobStatus
from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import login_client

pytestmark = pytest.mark.django_db


def _starter():
    system = system_user()
    model = RegisteredModel.objects.create(owner=system, name="SmolLM2-135M-Instruct")
    version = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:starter", dtype="float32",
                                          size_bytes=1, files=[], created_by=system)
    ModelAlias.objects.create(model=model, name="starter", version=version, updated_by=system)
    return version


def _steps(client):
    page = client.get("/start/").content.decode()
    return page, {key: f'id="step-{key}" data-done="true"' in page
                  for key in ("data", "clean", "train", "evaluate", "deploy", "chat", "leaderboard", "feedback")}


def test_a_new_user_sees_eight_open_steps_and_the_first_links_to_generation_with_defaults(client, users):
    starter = _starter()
    login_client(client, users["outsider"])
    page, done = _steps(client)
    assert not any(done.values()) and "0 of 8 done" in page
    assert 'href="/datasets/generate/?generator=tool_use&amp;n=1000&amp;dataset_name=calculator-tool-use"' in page
    assert f"base=v%3A{starter.pk}" in page  # the training step starts from the starter model
    form = client.get("/datasets/generate/?generator=tool_use&n=1000&dataset_name=calculator-tool-use").content.decode()
    assert '<option value="tool_use" selected>' in form and 'value="calculator-tool-use"' in form


def test_steps_are_checked_from_the_users_own_data_and_not_from_another_users(client, users):
    _starter()
    owner = users["owner"]
    dataset = Dataset.objects.create(owner=owner, name="calculator-tool-use")
    common = dict(dataset=dataset, source_format="messages", canonical="chat", sha256="0" * 64, rows=10, size_bytes=10,
                  created_by=owner)
    made = DatasetVersion.objects.create(number=1, source="generator", **common)
    DatasetVersion.objects.create(number=2, source="cleaning", parent=made, **common)
    login_client(client, owner)
    page, done = _steps(client)
    assert done["data"] and done["clean"] and not done["train"] and "2 of 8 done" in page
    assert f"train_versions={made.pk + 1}" in page  # training takes the cleaned version
    login_client(client, users["outsider"])
    _, done = _steps(client)
    assert not done["data"] and not done["clean"]


def test_the_playground_link_preselects_the_deployment_and_the_calculator(client, users):
    from apps.serving.models import Deployment

    starter = _starter()
    deployment = Deployment.objects.create(owner=users["owner"], name="calc", model=starter.model, version=starter, state="ready")
    login_client(client, users["owner"])
    page = client.get(f"/playground/?deployment={deployment.pk}&tools=calculator").content.decode()
    assert f'<option value="{deployment.pk}" selected>' in page
    assert '<input type="checkbox" name="tools" value="calculator" id="id_tools_0" checked>' in page


def _job(owner, kind, status=JobStatus.SUCCEEDED):
    return Job.objects.create(owner=owner, kind=kind, status=status)


def _data(owner):
    dataset = Dataset.objects.create(owner=owner, name="calculator-tool-use")
    version = DatasetVersion.objects.create(dataset=dataset, number=1, source="generator", source_format="messages",
                                            canonical="chat", sha256="0" * 64, rows=1, size_bytes=10, created_by=owner)
    version.path.parent.mkdir(parents=True, exist_ok=True)
    version.path.write_text('{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]}\n')
    return version


def _tuned(owner, starter):
    """What a finished Quick start training run leaves: its run and the adapter it registered."""
    from apps.training.models import TrainingRun

    job = _job(owner, "train")
    model = RegisteredModel.objects.create(owner=owner, name="smollm2-calculator")
    TrainingRun.objects.create(job=job, method="sft", finetune="lora", base_version=starter, target_model=model,
                               checkpoint_dir="/ckpt")
    return ModelVersion.objects.create(model=model, number=1, kind="adapter", parent=starter, source="train",
                                       source_job=job, files=[], created_by=owner)


def _agent_suite():
    from apps.leaderboards.models import Suite, SuiteVersion
    from apps.leaderboards.services import AGENT_SUITE

    system = system_user()
    suite = Suite.objects.create(owner=system, name=AGENT_SUITE)
    SuiteVersion.objects.create(suite=suite, number=1, created_by=system)
    return suite


def _evaluated(owner, version, suite, status=JobStatus.SUCCEEDED):
    from apps.leaderboards.models import EvaluationRun

    return EvaluationRun.objects.create(job=_job(owner, "evaluate", status), suite_version=suite.versions.get(),
                                        model_version=version, target_label=str(version), request_key=f"k{version.pk}")


def _not_checked_for_the_others(client, users, *keys):
    """Check marks are each user's own: the teammate (who may see the owner's objects) and the
    outsider have none of `keys` checked."""
    for other in ("teammate", "outsider"):
        login_client(client, users[other])
        _, done = _steps(client)
        assert not any(done[key] for key in keys), other


def _action(page, step, key="action"):
    """The href of a step's button (`key` "action" for its main one, else step-<step>-<key>-action)."""
    marker = f'id="step-{step}-action"' if key == "action" else f'id="step-{step}-{key}-action"'
    tag = page[page.rindex("<a ", 0, page.index(marker)):page.index(marker)]
    return tag.split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")


def test_the_train_button_opens_the_form_filled_with_the_few_minute_quick_start_preset(client, users):
    from workers.core.training.presets import BUILTIN_PRESETS

    starter = _starter()
    data = _data(users["owner"])
    login_client(client, users["owner"])
    page, _ = _steps(client)
    href = _action(page, "train")
    assert "preset=builtin%3Aquickstart-lora" in href and f"base=v%3A{starter.pk}" in href
    assert f"train_versions={data.pk}" in href and "model_name=smollm2-calculator" in href
    preset = BUILTIN_PRESETS["quickstart-lora"]
    # A few minutes on 2 CPU cores: bench/tool_use.py took 14 min for 15 steps of 4 x 1,024 tokens;
    # the preset trains on at most half as many tokens.
    assert preset["max_steps"] * preset["batch_size"] * preset["max_length"] <= 15 * 4 * 1024 // 2
    form = client.get(href).content.decode()
    assert 'value="builtin:quickstart-lora" selected' in form
    assert f'value="v:{starter.pk}" selected' in form and f'value="{data.pk}" selected' in form
    for name, value in {"max_steps": 15, "batch_size": 4, "max_length": 384, "learning_rate": 0.001}.items():
        assert re.search(rf'<input [^>]*name="{name}" value="{value}"', form), name


def test_the_clean_button_opens_the_cleaning_form_of_the_users_data_and_is_checked_by_a_cleaned_version(client, users):
    _starter()
    login_client(client, users["owner"])
    page, done = _steps(client)
    assert _action(page, "clean") == "/datasets/" and not done["clean"]  # no data yet: the datasets list
    made = _data(users["owner"])
    page, done = _steps(client)
    assert _action(page, "clean") == f"/datasets/versions/{made.pk}/#clean-form" and not done["clean"]
    assert 'id="clean-form"' in client.get(_action(page, "clean")).content.decode()
    DatasetVersion.objects.create(dataset=made.dataset, number=2, source="cleaning", parent=made, source_format="messages",
                                  canonical="chat", sha256="1" * 64, rows=9, size_bytes=9, created_by=users["owner"])
    page, done = _steps(client)
    assert done["clean"] and "calculator-tool-use v2" in page
    _not_checked_for_the_others(client, users, "clean")


def test_the_evaluate_step_offers_the_fine_tuned_and_the_base_version_and_checks_once_both_are_scored(client, users):
    starter = _starter()
    suite = _agent_suite()
    owner = users["owner"]
    tuned = _tuned(owner, starter)
    login_client(client, owner)
    page, done = _steps(client)
    assert _action(page, "evaluate") == f"/leaderboards/evaluate/?target=v%3A{tuned.pk}&suite={suite.pk}"
    assert _action(page, "evaluate", "base") == f"/leaderboards/evaluate/?target=v%3A{starter.pk}&suite={suite.pk}"
    form = client.get(_action(page, "evaluate", "base")).content.decode()
    assert f'<option value="v:{starter.pk}" selected>' in form
    _evaluated(owner, tuned, suite)
    _evaluated(owner, starter, suite, status=JobStatus.FAILED)  # a failed run scores nothing
    page, done = _steps(client)
    assert not done["evaluate"] and not done["leaderboard"]
    assert 'id="step-evaluate-base-action" data-done="false"' in page
    _evaluated(owner, starter, suite)
    page, done = _steps(client)
    assert done["evaluate"] and done["leaderboard"] and 'id="step-evaluate-base-action" data-done="true"' in page
    _not_checked_for_the_others(client, users, "evaluate", "leaderboard")


def test_the_deploy_step_is_checked_by_a_running_deployment_of_a_fine_tuned_version_only(client, users):
    from apps.serving.models import Deployment

    starter = _starter()
    owner = users["owner"]
    Deployment.objects.create(owner=owner, name="base", model=starter.model, version=starter, state="ready")
    tuned = _tuned(owner, starter)
    stopped = Deployment.objects.create(owner=owner, name="old", model=tuned.model, version=tuned, state="stopped")
    login_client(client, owner)
    page, done = _steps(client)
    assert not done["deploy"] and _action(page, "deploy") == f"/deployments/new/?serves=v{tuned.pk}"
    following = Deployment.objects.create(owner=owner, name="calc", model=tuned.model, alias="prod", state="ready")
    ModelAlias.objects.create(model=tuned.model, name="prod", version=tuned, updated_by=owner)
    page, done = _steps(client)
    assert done["deploy"] and f'href="/deployments/{following.pk}/"' in page and stopped.name not in page
    assert f"deployment={following.pk}" in _action(page, "chat")  # the chat step talks to it
    _not_checked_for_the_others(client, users, "deploy")


def test_the_chat_step_is_checked_by_a_calculator_conversation_with_an_answer(client, users):
    from apps.playground.models import Conversation, Message

    _starter()
    owner = users["owner"]
    chat = Conversation.objects.create(owner=owner, title="sums", tools=["calculator"])
    question = Message.objects.create(conversation=chat, role="user", content="12 * 34?")
    Message.objects.create(conversation=chat, parent=question, role="assistant", status="failed")
    Conversation.objects.create(owner=owner, title="no tools")
    login_client(client, owner)
    _, done = _steps(client)
    assert not done["chat"]  # asked, never answered
    Message.objects.create(conversation=chat, parent=question, role="assistant", content="408", status="done")
    page, done = _steps(client)
    assert done["chat"] and f'href="/playground/c/{chat.pk}/"' in page
    _not_checked_for_the_others(client, users, "chat")


def test_the_feedback_button_opens_feedback_and_the_step_is_checked_by_a_preference_export(client, users):
    from apps.playground.models import FeedbackExport

    _starter()
    owner = users["owner"]
    login_client(client, owner)
    page, done = _steps(client)
    assert _action(page, "feedback") == "/playground/feedback/" and not done["feedback"]
    assert client.get("/playground/feedback/").status_code == 200
    FeedbackExport.objects.create(owner=owner, job=_job(owner, "dataset_import"), kind="sft", records=3)
    FeedbackExport.objects.create(owner=owner, job=_job(owner, "dataset_import", JobStatus.FAILED), kind="preference", records=2)
    _, done = _steps(client)
    assert not done["feedback"]  # SFT data, or an export that failed, is not a preference dataset
    export = FeedbackExport.objects.create(owner=owner, job=_job(owner, "dataset_import"), kind="preference", records=4)
    page, done = _steps(client)
    assert done["feedback"] and "4 preference records exported" in page and f'href="/jobs/{export.job_id}/"' in page
    _not_checked_for_the_others(client, users, "feedback")
