"""The version card as a newcomer reads it: buttons to the next steps (deploy, evaluate), an adapter's
facts taken from its base, and final metrics written as numbers a person writes."""
from __future__ import annotations

import pytest

from apps.registry.models import ModelVersion, RegisteredModel
from apps.studio.templatetags.numbers import metric
from tests.conftest import login_client


def _version(owner, number, **fields):
    model, _ = RegisteredModel.objects.get_or_create(owner=owner, name="card")
    defaults = dict(kind="base", source="upload", dtype="float32", size_bytes=10, parameter_count=1000, files=[],
                    created_by=owner)
    return ModelVersion.objects.create(model=model, number=number, **{**defaults, **fields})


@pytest.mark.django_db
def test_a_version_page_offers_deploy_with_the_version_preselected_and_evaluate(client, users):
    owner = users["owner"]
    version = _version(owner, 1, architecture="LlamaForCausalLM", context_length=2048)
    login_client(client, owner)
    page = client.get(f"/models/versions/{version.pk}/").content.decode()
    assert f'href="/deployments/new/?serves=v{version.pk}"' in page and 'id="evaluate-version-button"' in page
    form = client.get(f"/deployments/new/?serves=v{version.pk}").content.decode()
    assert f'<option value="v{version.pk}" selected>' in form


@pytest.mark.django_db
def test_a_deploy_link_with_a_version_the_user_cannot_see_preselects_nothing(client, users):
    hidden = _version(users["outsider"], 1)
    login_client(client, users["owner"])
    form = client.get(f"/deployments/new/?serves=v{hidden.pk}").content.decode()
    assert f'value="v{hidden.pk}"' not in form


@pytest.mark.django_db
def test_an_adapter_shows_its_base_architecture_and_context_instead_of_a_dash(client, users):
    owner = users["owner"]
    base = _version(owner, 1, architecture="LlamaForCausalLM", context_length=8192)
    adapter = _version(owner, 2, kind="adapter", parent=base, architecture="", context_length=None)
    login_client(client, owner)
    page = client.get(f"/models/versions/{adapter.pk}/").content.decode()
    assert "LlamaForCausalLM <small class=\"muted\">(its base)</small>" in page
    assert "8192 <small class=\"muted\">(its base)</small>" in page


@pytest.mark.parametrize("value, shown", [(7900.0, "7,900"), (12, "12"), (0.231456, "0.2315"), (1.23456e-5, "1.235e-05"),
                                          (True, True), ("n/a", "n/a")])
def test_metrics_are_written_as_counts_or_four_significant_digits(value, shown):
    assert metric(value) == shown


@pytest.mark.django_db
def test_the_card_lists_the_deployments_of_its_version_that_the_viewer_may_see(client, users):
    from apps.accounts.system import system_user
    from apps.registry.models import ModelAlias
    from apps.serving.models import Deployment

    system = system_user()
    built_in = _version(system, 1)  # every signed-in user sees a built-in version
    other = _version(system, 2)
    ModelAlias.objects.create(model=built_in.model, name="prod", version=built_in, updated_by=system)
    pinned = Deployment.objects.create(owner=users["owner"], name="pinned", model=built_in.model, version=built_in)
    following = Deployment.objects.create(owner=users["owner"], name="following", model=built_in.model, alias="prod")
    theirs = Deployment.objects.create(owner=users["outsider"], name="theirs", model=built_in.model, version=built_in)
    elsewhere = Deployment.objects.create(owner=users["owner"], name="elsewhere", model=built_in.model, version=other)
    seen = {}
    for name in ("owner", "teammate", "outsider"):
        login_client(client, users[name])
        page = client.get(f"/models/versions/{built_in.pk}/").content.decode()
        section = page[page.index('id="version-deployments"'):]
        section = section[:section.index("</section>")]
        seen[name] = {d.name for d in (pinned, following, theirs, elsewhere) if f'href="/deployments/{d.pk}/"' in section}
    assert seen["owner"] == seen["teammate"] == {"pinned", "following"}
    assert seen["outsider"] == {"theirs"}


@pytest.mark.django_db
def test_a_version_nobody_deployed_says_so_and_links_to_deploy_it(client, users):
    from apps.serving.models import Deployment

    version = _version(users["owner"], 1)
    Deployment.objects.create(owner=users["outsider"], name="hidden", model=version.model, version=version)
    login_client(client, users["teammate"])
    page = client.get(f"/models/versions/{version.pk}/").content.decode()
    empty = page[page.index('id="version-deployments-empty"'):]
    assert "Not deployed yet" in empty and f'href="/deployments/new/?serves=v{version.pk}"' in empty[:400]
