import json

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import AsyncClient

from apps.registry.models import ModelVersion, RegisteredModel, VersionKind
from apps.serving import services
from apps.serving.models import ApiKey
from tests.serving.fake_replica import FakeReplica
from workers.tasks import serving_protocol as protocol


@pytest.fixture
def make_version(db):
    """A registry version row with an (empty) folder under the test run's model store (which the
    worker processes of the end-to-end tests read too): enough where replicas are faked."""
    def make(owner, name="tiny", number=1, kind=VersionKind.BASE):
        model, _ = RegisteredModel.objects.get_or_create(owner=owner, name=name)
        version = ModelVersion.objects.create(model=model, number=number, kind=kind, source="import:folder", created_by=owner,
                                              architecture="LlamaForCausalLM", has_chat_template=True)
        version.path.mkdir(parents=True)
        return version

    return make


@pytest.fixture
def deployment(users, make_version):
    version = make_version(users["owner"])
    deployment = services.create_deployment(users["owner"], name="tiny-chat", model=version.model, version=version)
    # ids repeat between tests (rolled back): start from an empty request stream
    redis.Redis.from_url(settings.REDIS_URL).delete(protocol.requests_stream(deployment.pk))
    return deployment


@pytest.fixture
def make_key():
    def make(user, **limits):
        return ApiKey.issue(user, limits.pop("name", "test key"), **limits)[1]

    return make


@pytest.fixture
def replica(deployment):
    """A fake replica (scripted answers over the real Redis protocol) registered as the
    deployment's replica, so the deployment is ready."""
    from apps.serving.models import Replica

    def start(script=None, state="ready", reads=True):
        rid = Replica.objects.filter(deployment=deployment).values_list("replica_id", flat=True).first()
        return FakeReplica(settings.REDIS_URL, deployment.pk, rid, script=script, state=state, reads=reads)

    return start


class Api:
    """Calls the OpenAI endpoints through Django's async test client, in one event loop per call."""

    def __init__(self) -> None:
        self.client = AsyncClient()

    def _headers(self, key):
        return {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path, key=None):
        return async_to_sync(self.client.get)(path, headers=self._headers(key))

    def post(self, path, body, key=None):
        async def call():
            response = await self.client.post(path, data=json.dumps(body), content_type="application/json",
                                              headers=self._headers(key))
            if response.streaming:
                response.chunks = [chunk async for chunk in response.streaming_content]
            return response

        return async_to_sync(call)()


def sse_events(response) -> list:
    """The `data:` payloads of an SSE response (JSON decoded; "[DONE]" kept as a string)."""
    text = b"".join(response.chunks).decode()
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.fixture
def api():
    return Api()

