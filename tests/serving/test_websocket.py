"""The token stream over the websocket for the playground: visibility like the job socket,
start/delta/end events, and closing the socket cancels the answer."""
import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from puyu_site.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def headers(client, user):
    client.force_login(user)
    return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()), (b"origin", b"http://testserver"),
            (b"host", b"testserver")]


async def chat(path, hdrs, then_close_after=None):
    communicator = WebsocketCommunicator(application, path, headers=hdrs)
    connected, code = await communicator.connect(timeout=5)
    if not connected:
        return connected, code, []
    await communicator.send_json_to({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
    events = []
    while True:
        event = await communicator.receive_json_from(timeout=10)
        events.append(event)
        if event["event"] in ("end", "error") or (then_close_after and event["event"] == then_close_after):
            break
    await communicator.disconnect()
    return connected, code, events


def test_a_teammate_gets_the_answer_as_start_delta_end_and_the_outsider_is_refused(client, users, deployment, replica):
    path = f"/ws/deployments/{deployment.pk}/chat/"
    with replica():
        connected, _, events = async_to_sync(chat)(path, headers(client, users["teammate"]))
        refused = async_to_sync(chat)(path, headers(client, users["outsider"]))
    assert connected and [e["event"] for e in events] == ["start", "delta", "delta", "end"]
    assert "".join(e.get("text", "") for e in events[1:3]) == "Hello world"
    assert events[-1]["usage"]["total_tokens"] == 7 and events[-1]["finish_reason"] == "stop"
    assert refused[:2] == (False, 4404)


def test_closing_the_socket_mid_answer_cancels_it(client, users, deployment, replica):
    with replica(script=lambda request: "hold") as fake:
        _, _, events = async_to_sync(chat)(f"/ws/deployments/{deployment.pk}/chat/", headers(client, users["owner"]), "delta")
        assert events[-1] == {"event": "delta", "text": "partial"}
        deadline = time.monotonic() + 10
        while not fake.cancelled and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fake.cancelled == [fake.requests[0]["id"]]
