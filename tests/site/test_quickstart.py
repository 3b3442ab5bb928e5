"""The Quick start: eight steps whose check marks come from what each user has made (so they survive
reloads and differ per user), each linking to its stage's page with defaults filled in."""
import pytest

from apps.accounts.system import system_user
from apps.datasets.models import Dataset, DatasetVersion
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
