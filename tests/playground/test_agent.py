"""An agent turn end to end in this process, as the `agent` worker runs it: the task body calls the
agent core, which asks the deployment (a scripted replica over the real Redis, through the
serving-protocol client) and runs the calculator; the answer, its trace, model version and
token usage are saved, the conversation's socket relays every step as it happens, and the
worker that records the answer pushes its end to the conversation (the socket sends it once)."""
import asyncio
import json

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from apps.jobs.models import Job
from apps.playground import services
from apps.playground.models import Message
from apps.playground.replies import group_name
from apps.serving.models import UsageDay
from puyu_site.asgi import application
from tests.serving.fake_replica import end_event

pytestmark = pytest.mark.django_db(transaction=True)  # the task's heartbeat and the socket use other threads


def calculator_script(request):
    """First call: ask the calculator; once its result is in the conversation: answer with it."""
    messages = request["messages"]
    if messages[-1]["role"] == "tool":
        result = json.loads(messages[-1]["content"])["result"]
        return [{"type": "start", "replica": "fake", "prompt_tokens": 30},
                end_event(f"12 × 34 = {result}", 30, 6)]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "calculator", "arguments": json.dumps({"expression": "12*34"})}}
    return [{"type": "start", "replica": "fake", "prompt_tokens": 20}, end_event("", 20, 9, tool_calls=[call])]


@pytest.fixture
def agent_conversation(users, deployment):
    return services.create_conversation(users["owner"], deployment=deployment, tools=["calculator"], protocol="native")


def run_task(job_id: int) -> Job:
    from workers.tasks.playground import agent_turn

    agent_turn.run(job_id)
    return Job.objects.get(pk=job_id)


def test_a_calculator_call_runs_in_the_worker_and_lands_in_the_trace_and_the_saved_answer(
        users, agent_conversation, replica):
    owner = users["owner"]
    (_,), (reply,) = services.send(owner, agent_conversation, content="What is 12*34?")
    with replica(agent_conversation.deployment, script=calculator_script) as fake:
        job = run_task(reply.job_id)
    assert job.status == "SUCCEEDED", job.error
    assert fake.requests[0]["tools"][0]["function"]["name"] == "calculator"  # native tool calling
    reply.refresh_from_db()
    assert (reply.status, reply.content) == ("done", "12 × 34 = 408")
    assert reply.model_version == agent_conversation.deployment.version
    tools = [step for step in reply.trace if step["type"] == "tool"]
    assert [(s["tool"], s["arguments"], s["observation"], s["status"]) for s in tools] == [
        ("calculator", {"expression": "12*34"}, '{"result": 408}', "ok")]
    assert [step["type"] for step in reply.trace] == ["model", "tool", "model", "final"]
    assert reply.usage == {"prompt_tokens": 50, "completion_tokens": 15, "total_tokens": 65}
    day = UsageDay.objects.get(key=services.playground_key(owner), deployment=agent_conversation.deployment)
    assert (day.prompt_tokens, day.completion_tokens) == (50, 15)
    assert job.result["message_id"] == reply.pk


def test_the_socket_relays_each_step_as_it_happens_and_then_the_answer(users, agent_conversation, replica, ws_headers):
    headers = ws_headers(users["owner"])

    async def scenario():
        socket = WebsocketCommunicator(application, f"/ws/playground/conversations/{agent_conversation.pk}/",
                                       headers=headers)
        assert (await socket.connect(timeout=5))[0]
        await socket.receive_json_from(timeout=5)  # snapshot
        await socket.send_json_to({"action": "send", "content": "What is 12*34?"})
        asked = await socket.receive_json_from(timeout=5)
        placeholder = (await socket.receive_json_from(timeout=5))["message"]
        job = await sync_to_async(run_task)(placeholder["job_id"])
        events = []
        while not events or events[-1]["event"] != "end":
            events.append(await socket.receive_json_from(timeout=10))
        # The worker's pushed end and the job's status both announce it: the page hears it once.
        once = await socket.receive_nothing(timeout=1)
        await socket.disconnect()
        return asked, placeholder, job, events, once

    with replica(agent_conversation.deployment, script=calculator_script):
        asked, placeholder, job, events, once = async_to_sync(scenario)()
    assert once
    assert asked["message"]["role"] == "user" and placeholder["status"] == "streaming" and job.status == "SUCCEEDED"
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert [s["type"] for s in steps] == ["model", "tool", "model", "final"]
    assert steps[1]["observation"] == '{"result": 408}'
    assert all(e["message_id"] == placeholder["id"] for e in events)
    end = events[-1]
    assert (end["status"], end["content"], end["html"]) == ("done", "12 × 34 = 408", "<p>12 × 34 = 408</p>\n")
    assert [s["type"] for s in end["trace"]] == ["model", "tool", "model", "final"]


def test_the_worker_that_records_the_answer_pushes_its_end_to_the_conversation(users, agent_conversation, replica):
    """Not only through the job's status (the job's group): the end event, with the saved answer,
    reaches whoever listens on the conversation's group without a socket reading it back."""
    (_,), (reply,) = services.send(users["owner"], agent_conversation, content="What is 12*34?")

    async def scenario():
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(group_name(agent_conversation.pk), channel)
        job = await sync_to_async(run_task)(reply.job_id)
        while True:
            message = await asyncio.wait_for(layer.receive(channel), 10)
            for event in message["events"]:
                if event["event"] == "end":
                    return job, event

    with replica(agent_conversation.deployment, script=calculator_script):
        job, end = async_to_sync(scenario)()
    assert job.status == "SUCCEEDED"
    assert (end["message_id"], end["status"], end["content"]) == (reply.pk, "done", "12 × 34 = 408")
    assert end["html"] == "<p>12 × 34 = 408</p>\n" and [s["type"] for s in end["trace"]] == ["model", "tool", "model", "final"]
    assert end["usage"] == {"prompt_tokens": 50, "completion_tokens": 15, "total_tokens": 65}


def test_a_used_up_quota_refuses_the_turn_before_the_model_is_called_and_the_answer_says_why(
        users, agent_conversation, replica):
    owner = users["owner"]
    (_,), (reply,) = services.send(owner, agent_conversation, content="What is 12*34?")
    key = services.playground_key(owner)
    key.token_quota_per_day = 10
    key.save()
    services.record_usage(owner, agent_conversation.deployment_id, {"prompt_tokens": 10, "completion_tokens": 1})
    with replica(agent_conversation.deployment, script=calculator_script) as fake:
        job = run_task(reply.job_id)
    assert job.status == "FAILED" and fake.requests == []
    reply = Message.objects.get(pk=reply.pk)
    assert reply.status == "failed" and "10 playground tokens" in reply.error


def test_stopping_a_queued_turn_cancels_its_job_and_the_answer_is_stopped(users, agent_conversation):
    owner = users["owner"]
    (_,), (reply,) = services.send(owner, agent_conversation, content="What is 12*34?")
    stopped = services.stop_reply(owner, reply)
    assert stopped.status == "stopped" and Job.objects.get(pk=reply.job_id).status == "CANCELLED"
    assert run_task(reply.job_id).status == "CANCELLED"  # a late delivery does not run it
