"""The conversation's websocket with a scripted replica over the real Redis: tokens stream in
order to the owner and to a teammate watching, the answer is saved with its model version and
usage (on the user's playground key), "stop" cancels the request in the engine and keeps the
partial text, and only the owner may act."""
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from apps.playground import services
from apps.playground.models import Message
from apps.serving.models import UsageDay
from puyu_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


async def open_socket(conversation_id, headers):
    socket = WebsocketCommunicator(application, f"/ws/playground/conversations/{conversation_id}/", headers=headers)
    connected, code = await socket.connect(timeout=5)
    return socket, connected, code


async def events_until(socket, done, timeout=10):
    events = []
    while True:
        event = await socket.receive_json_from(timeout=timeout)
        events.append(event)
        if done(event):
            return events


def ended(event):
    return event["event"] in ("end", "error")


def test_tokens_stream_in_order_to_the_owner_and_a_watching_teammate_and_the_answer_is_saved(
        users, conversation, replica, ws_headers):
    h = {name: ws_headers(user) for name, user in users.items()}

    async def scenario():
        owner, ok, _ = await open_socket(conversation.pk, h["owner"])
        watcher, watching, _ = await open_socket(conversation.pk, h["teammate"])
        assert ok and watching
        first = await owner.receive_json_from(timeout=5)
        assert first["event"] == "snapshot" and first["messages"] == [] and first["may_send"] is True
        assert (await watcher.receive_json_from(timeout=5))["may_send"] is False
        await owner.send_json_to({"action": "send", "content": "Hi <b>there</b>"})
        seen = await events_until(owner, ended)
        watched = await events_until(watcher, ended)
        await owner.disconnect()
        await watcher.disconnect()
        return seen, watched

    with replica(conversation.deployment) as fake:
        seen, watched = async_to_sync(scenario)()
    kinds = [e["event"] for e in seen]
    assert kinds == ["message", "message", "delta", "delta", "end"], seen
    asked, placeholder = seen[0]["message"], seen[1]["message"]
    assert (asked["role"], asked["content"], asked["html"]) == ("user", "Hi <b>there</b>", "<p>Hi &lt;b&gt;there&lt;/b&gt;</p>\n")
    assert placeholder["status"] == "streaming" and placeholder["deployment"] == "owner/tiny-chat"
    assert [(e["text"], e["offset"]) for e in seen[2:4]] == [("Hello", 0), (" world", 5)]
    assert seen[-1]["status"] == "done" and seen[-1]["html"] == "<p>Hello world</p>\n"
    assert [e["event"] for e in watched] == kinds and watched[-1] == seen[-1]

    sent = fake.requests[0]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b>"}]
    assert (sent["max_tokens"], sent["temperature"], sent["stream"]) == (16, 0.0, True)
    reply = Message.objects.get(pk=placeholder["id"])
    assert (reply.content, reply.status, reply.request_id) == ("Hello world", "done", "")
    assert reply.model_version == conversation.deployment.version and reply.usage["total_tokens"] == 7
    usage = UsageDay.objects.get(key=services.playground_key(users["owner"]), deployment=conversation.deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (1, 5, 2)


def test_an_answer_sent_from_the_web_servers_database_thread_still_counts_its_usage(users, conversation, replica):
    """daphne runs a socket's database calls in asgiref's single-thread executor (no outer sync
    thread, unlike async_to_sync in the test above): the answer's stream must not inherit that
    context, or its usage write refuses to run ("would deadlock") and the answer counts nothing."""
    import asyncio
    import threading

    from asgiref.sync import sync_to_async

    def as_daphne_does():
        asyncio.run(sync_to_async(services.send)(users["owner"], conversation, content="Hi"))

    with replica(conversation.deployment):
        sender = threading.Thread(target=as_daphne_does)
        sender.start()
        sender.join(10)
        deadline = time.monotonic() + 10
        while not UsageDay.objects.filter(deployment=conversation.deployment).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert (reply.status, reply.content) == ("done", "Hello world")
    usage = UsageDay.objects.get(key=services.playground_key(users["owner"]), deployment=conversation.deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (1, 5, 2)


def test_stop_cancels_the_request_in_the_engine_and_keeps_the_partial_answer(users, conversation, replica, ws_headers):
    h = {name: ws_headers(user) for name, user in users.items()}

    async def scenario():
        owner, _, _ = await open_socket(conversation.pk, h["owner"])
        await owner.receive_json_from(timeout=5)  # snapshot
        await owner.send_json_to({"action": "send", "content": "Tell me a long story"})
        before = await events_until(owner, lambda e: e["event"] == "delta")
        await owner.send_json_to({"action": "stop"})
        after = await events_until(owner, ended)
        await owner.disconnect()
        return before, after

    with replica(conversation.deployment, script=lambda request: "hold") as fake:
        before, after = async_to_sync(scenario)()
        deadline = time.monotonic() + 5
        while not fake.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.cancelled == [fake.requests[0]["id"]]  # the replica was told to stop this request
    assert before[-1]["text"] == "partial"
    assert (after[-1]["event"], after[-1]["status"], after[-1]["content"]) == ("end", "stopped", "partial")
    reply = Message.objects.get(pk=after[-1]["message_id"])
    assert (reply.status, reply.content) == ("stopped", "partial")


def test_only_the_owner_may_act_a_teammate_watching_is_closed_on_send_and_an_outsider_cannot_subscribe(
        users, conversation, ws_headers):
    h = {name: ws_headers(user) for name, user in users.items()}

    async def scenario():
        teammate, ok, _ = await open_socket(conversation.pk, h["teammate"])
        await teammate.receive_json_from(timeout=5)
        await teammate.send_json_to({"action": "send", "content": "let me in"})
        closed = await teammate.receive_output(timeout=5)
        outsider = await open_socket(conversation.pk, h["outsider"])
        anonymous = await open_socket(conversation.pk, [(b"origin", b"http://testserver"), (b"host", b"testserver")])
        missing = await open_socket(conversation.pk + 1000, h["owner"])
        return ok, closed, outsider[1:], anonymous[1:], missing[1:]

    ok, closed, outsider, anonymous, missing = async_to_sync(scenario)()
    assert ok and closed == {"type": "websocket.close", "code": 4403}
    assert outsider == (False, 4404) and anonymous == (False, 4401) and missing == (False, 4404)
    assert not conversation.messages.exists()


def test_a_refused_send_answers_an_error_naming_the_field(users, conversation, ws_headers):
    h = {name: ws_headers(user) for name, user in users.items()}

    async def scenario():
        owner, _, _ = await open_socket(conversation.pk, h["owner"])
        await owner.receive_json_from(timeout=5)
        await owner.send_json_to({"action": "send", "content": ""})
        empty = await owner.receive_json_from(timeout=5)
        await owner.send_json_to({"action": "regenerate", "message_id": "x"})
        bad_id = await owner.receive_json_from(timeout=5)
        await owner.send_json_to({"action": "dance"})
        unknown = await owner.receive_json_from(timeout=5)
        await owner.send_to(text_data="{not json")
        garbled = await owner.receive_json_from(timeout=5)
        await owner.send_to(text_data="x" * 70_000)
        huge = await owner.receive_json_from(timeout=5)
        await owner.disconnect()
        return empty, bad_id, unknown, garbled, huge

    empty, bad_id, unknown, garbled, huge = async_to_sync(scenario)()
    assert (empty["event"], empty["field"]) == ("error", "content")
    assert bad_id["field"] == "message_id" and unknown["field"] == "action"
    assert garbled["field"] == huge["field"] == "frame"
    assert not conversation.messages.exists()


def answer_with(text):
    from tests.serving.fake_replica import end_event

    return lambda request: [{"type": "start", "replica": "fake", "prompt_tokens": 4},
                            {"type": "delta", "text": text, "tokens": 1}, end_event(text, 4, 1)]


def test_side_by_side_columns_stream_over_one_socket_and_a_battle_never_names_its_models(
        users, deployment, make_deployment, replica, ws_headers):
    from apps.playground import arena, replies

    owner = users["owner"]
    other = make_deployment(owner, name="other", model="other")
    h = ws_headers(owner)

    async def follow_up(conversation_id):
        socket, _, _ = await open_socket(conversation_id, h)
        snapshot = await socket.receive_json_from(timeout=5)
        await socket.send_json_to({"action": "send", "content": "And now?"})
        ends, events = 0, []
        while ends < 2:
            events.append(await socket.receive_json_from(timeout=10))
            ends += events[-1]["event"] == "end"
        await socket.disconnect()
        return snapshot, events

    with replica(deployment, script=answer_with("from tiny")), replica(other, script=answer_with("from other")):
        comparison = services.side_by_side(owner, deployments=[deployment, other], content="Hello both")
        first = list(comparison.conversation.messages.filter(role="assistant").order_by("column"))
        replies.wait([m.pk for m in first])
        snapshot, events = async_to_sync(follow_up)(comparison.conversation_id)
        battle = arena.start_battle(owner, content="Who are you?")
        replies.wait([m.pk for m in arena.answers(battle)])
        _, fight = async_to_sync(follow_up)(battle.conversation_id)

    assert [m.content for m in Message.objects.filter(pk__in=[m.pk for m in first]).order_by("column")] == [
        "from tiny", "from other"]
    assert len(snapshot["messages"]) == 3  # the question and both columns' answers
    deltas = {e["column"]: e["text"] for e in events if e["event"] == "delta"}
    assert deltas == {0: "from tiny", 1: "from other"}
    assert sorted(e["column"] for e in events if e["event"] == "end") == [0, 1]
    shown = [e["message"] for e in fight if e["event"] == "message"]
    assert len(shown) == 4 and all(m["deployment"] is None and m["model_version"] is None for m in shown)
    assert sorted(e["content"] for e in fight if e["event"] == "end") == ["from other", "from tiny"]


def test_the_api_can_wait_for_a_plain_answer(users, conversation, replica, api):
    with replica(conversation.deployment):
        response = api(users["owner"], "post", f"/api/playground/conversations/{conversation.pk}/messages",
                       {"content": "Hi", "wait": True})
    assert response.status_code == 201, response.content
    reply = response.json()["replies"][0]
    assert (reply["status"], reply["content"], reply["usage"]["total_tokens"]) == ("done", "Hello world", 7)
