"""Fixtures for the playground: a data dir of each test's own, deployments (with a scripted
replica over the real Redis where an answer must stream: tests/serving/fake_replica.py), a
conversation, API calls with a user's token, and websocket headers for a signed-in user."""
from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings as django_settings

from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving import services as serving
from apps.serving.models import DeploymentState, Replica
from tests.conftest import own_data_dir
from tests.serving.fake_replica import FakeReplica
from workers.tasks import serving_protocol as protocol


@pytest.fixture(autouse=True)
def data_dir(tmp_path, settings, monkeypatch):
    """Each test's own data dir (the agent core confines document paths to PUYU_DATA_DIR)."""
    return own_data_dir(tmp_path, settings, monkeypatch)


@pytest.fixture
def make_deployment(db):
    """A ready deployment of a fresh model version (an empty folder: replicas are faked)."""
    def make(owner, name="tiny-chat", model="tiny", template=""):
        registered, _ = RegisteredModel.objects.get_or_create(owner=owner, name=model)
        version = ModelVersion.objects.create(model=registered, number=registered.versions.count() + 1, kind="base",
                                              source="import:folder", created_by=owner, architecture="LlamaForCausalLM",
                                              has_chat_template=True)
        version.path.mkdir(parents=True)
        if template:
            (version.path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
        deployment = serving.create_deployment(owner, name=name, model=registered, version=version)
        deployment.state = DeploymentState.READY
        deployment.save(update_fields=["state"])
        # ids repeat between tests (rolled back): start from an empty request stream
        redis.Redis.from_url(django_settings.REDIS_URL).delete(protocol.requests_stream(deployment.pk))
        return deployment

    return make


@pytest.fixture
def deployment(users, make_deployment):
    return make_deployment(users["owner"])


@pytest.fixture
def replica():
    """A scripted replica of a deployment, registered as its replica (so it is "ready")."""
    def start(deployment, script=None):
        rid = Replica.objects.filter(deployment=deployment).values_list("replica_id", flat=True).first()
        return FakeReplica(django_settings.REDIS_URL, deployment.pk, rid, script=script)

    return start


@pytest.fixture
def conversation(users, deployment):
    from apps.playground import services

    return services.create_conversation(users["owner"], deployment=deployment, system_prompt="Be brief.",
                                        settings={"temperature": 0.0, "max_tokens": 16})


@pytest.fixture
def api(client, api_token):
    """call(user, method, path, body=None) through the JSON API with the user's token."""
    def call(user, method, path, body=None, **extra):
        kwargs = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
        return getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {api_token(user)}", **kwargs, **extra)

    return call


@pytest.fixture
def ws_headers():
    """Headers of a websocket opened by `user`'s signed-in browser on this site (a browser of
    their own: logging another user in on the same client would end the first one's session)."""
    from django.test import Client

    def make(user):
        client = Client()
        client.force_login(user)
        return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), (b"origin", b"http://testserver"),
                (b"host", b"testserver")]

    return make
