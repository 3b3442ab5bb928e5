"""A plain reply's engine request leaves from inside the send's transaction, once everything it
depends on was read and checked and before any row is written; when that transaction does not
commit, the request is cancelled and its quota reservation given back (against a replica that is
ready but never takes a request, so the request's fate shows in Redis)."""
import time

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from apps.playground import replies, services
from apps.playground.models import Message
from apps.serving import gateway
from tests.serving.fake_replica import FakeReplica
from workers.tasks import serving_protocol as protocol

pytestmark = pytest.mark.django_db(transaction=True)  # a send in its own (outermost) transaction


def queued(deployment) -> int:
    return redis.Redis.from_url(settings.REDIS_URL).xlen(protocol.requests_stream(deployment.pk))


def reserved(user) -> int:
    key = services.playground_key(user)
    counter = gateway.quota_key(key.key_hash[:24], timezone.now().date().isoformat())
    return int(redis.Redis.from_url(settings.REDIS_URL).get(counter) or 0)


def busy_replica(deployment) -> FakeReplica:
    rid = deployment.replica_set.values_list("replica_id", flat=True).first()
    return FakeReplica(settings.REDIS_URL, deployment.pk, rid, reads=False)


def test_the_request_is_queued_before_the_messages_are_stored_and_the_reply_names_it(users, conversation, monkeypatch):
    seen = []  # requests queued when each row was written
    save = Message.save

    def save_and_look(message, *args, **kwargs):
        seen.append((message.role, queued(conversation.deployment)))
        return save(message, *args, **kwargs)

    monkeypatch.setattr(Message, "save", save_and_look)
    with busy_replica(conversation.deployment):
        (asked,), (reply,) = services.send(users["owner"], conversation, content="Hi")
        stored = Message.objects.get(pk=reply.pk).request_id
        entries = redis.Redis.from_url(settings.REDIS_URL, decode_responses=True).xrange(
            protocol.requests_stream(conversation.deployment_id))
    replies.wait([reply.pk])  # the replica is gone: the stream fails the answer and ends
    assert seen == [("user", 1), ("assistant", 1)]
    request = protocol.decode(entries[0][1]["request"])
    assert stored == request["id"]  # "stop" can cancel it at once
    assert request["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_a_send_that_does_not_commit_cancels_its_request_and_gives_back_its_reservation(users, conversation,
                                                                                      monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(services, "_store_reply", fail)  # after the request left, before the reply is stored
    with busy_replica(conversation.deployment):
        with pytest.raises(RuntimeError, match="the disk is full"):
            services.send(users["owner"], conversation, content="Hi")
        deadline = time.monotonic() + 10
        while (queued(conversation.deployment) or reserved(users["owner"])) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not conversation.messages.exists()
    assert queued(conversation.deployment) == 0 and reserved(users["owner"]) == 0
