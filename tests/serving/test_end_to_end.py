"""End to end: the official `openai` client against the live daphne server, a real Redis, real
Celery workers on queue "serve" running the inference core's replica on tiny models."""
import json
import shutil
import threading

import openai
import pytest

from apps.registry.models import ModelVersion, RegisteredModel, VersionKind
from apps.serving import services
from apps.serving.models import ApiKey, Deployment, UsageDay
from tests.stack import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# Small and quick on two busy cores; the engine's KV cache stays bounded.
ENGINE = {"max_concurrent": 8, "heartbeat_seconds": 1.0, "claim_idle_seconds": 2.0, "drain_seconds": 5.0,
          "metrics_every_seconds": 1.0}


@pytest.fixture(autouse=True)
def stop_deployments_first(stack):
    """Stop the deployments before the stack: a replica then drains and ends in a second or two,
    instead of holding its worker's warm shutdown until the stack kills it."""
    yield
    from apps.jobs.models import FINISHED_STATUSES, Job

    for deployment in Deployment.objects.exclude(state__in=("stopped", "failed")):
        services.stop(deployment.owner, deployment)
    try:
        wait_for(lambda: not Job.objects.filter(kind="serve").exclude(status__in=FINISHED_STATUSES).exclude(
            status="QUEUED").exists(), 20, 0.2, "replicas to stop")
    except AssertionError:
        pass  # the stack's own teardown kills what is left


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("serving-models")
    return build_tiny_llama(root / "tiny", tokenizer_dir=train_tokenizer(root / "tokenizer"))


def register(owner, source, name="tiny") -> ModelVersion:
    """A registry version whose folder is a copy of `source` (as an import would leave it)."""
    model = RegisteredModel.objects.create(owner=owner, name=name, architecture="LlamaForCausalLM")
    version = ModelVersion.objects.create(model=model, number=1, kind=VersionKind.BASE, source="import:folder",
                                          created_by=owner, architecture="LlamaForCausalLM", has_chat_template=True)
    shutil.copytree(source, version.path)
    return version


def deploy(owner, version, name="tiny-chat", **options) -> Deployment:
    engine = {**ENGINE, **options.pop("engine", {})}
    return services.create_deployment(owner, name=name, model=version.model, version=version, engine_options=engine, **options)


def wait_ready(stack, deployment, replicas=1, timeout=180):
    def ready():
        services.reconcile(deployment.pk)  # beat does this too; here we do not wait for its tick
        states = list(deployment.replica_set.values_list("state", flat=True))
        return states.count("ready") >= replicas
    try:
        wait_for(ready, timeout, 0.5, f"{replicas} ready replica(s)")
    except AssertionError:
        raise AssertionError("\n".join(stack.log(name)[-3000:] for name in list(stack.procs)))


def client_for(url, key, timeout=60.0):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=timeout)


def test_the_openai_client_lists_chats_streams_and_completes_through_a_real_replica(stack, users, tiny_source):
    owner, outsider = users["owner"], users["outsider"]
    stack.worker("serve0", "serve")
    stack.beat()
    url = stack.web()
    deployment = deploy(owner, register(owner, tiny_source))
    wait_ready(stack, deployment)
    key = ApiKey.issue(owner, "e2e")[1]
    client = client_for(url, key)

    assert [m.id for m in client.models.list().data] == ["owner/tiny-chat"]
    reply = client.chat.completions.create(model="owner/tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens >= 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="owner/tiny-chat", messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content  # greedy: the same answer either way
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    text = client.completions.create(model="owner/tiny-chat", prompt="ROMEO:", max_tokens=6, temperature=0)
    assert text.choices[0].text and text.usage.completion_tokens >= 1

    usage = UsageDay.objects.get(deployment=deployment)
    assert usage.requests == 3 and usage.completion_tokens >= 3

    stranger = client_for(url, ApiKey.issue(outsider, "mine")[1])
    assert stranger.models.list().data == []
    with pytest.raises(openai.NotFoundError):
        stranger.chat.completions.create(model="owner/tiny-chat", messages=[{"role": "user", "content": "Hi"}])
    ApiKey.objects.filter(user=owner).update(revoked_at=deployment.created_at)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_a_deployment_is_recorded_ready_as_soon_as_its_replica_is_without_waiting_for_beat(stack, users, tiny_source):
    """No beat and no control worker here: only the replica's own word can mark it ready (a
    first chat on `make run` once waited up to a reconcile tick for it)."""
    owner = users["owner"]
    stack.worker("serve0", "serve")
    deployment = deploy(owner, register(owner, tiny_source))
    assert deployment.state == "starting"
    wait_for(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready", 180, 0.2, "the deployment ready")
    assert list(deployment.replica_set.values_list("state", flat=True)) == ["ready"]


def test_a_model_trained_to_call_a_tool_returns_tool_calls_to_the_openai_client(stack, users, tmp_path):
    from tests.fixtures.tool_model import CALL, MESSAGES, TOOLS, build_tool_model

    owner = users["owner"]
    stack.worker("serve0", "serve")
    url = stack.web()
    deployment = deploy(owner, register(owner, build_tool_model(tmp_path / "tool-model"), name="weather"), name="weather")
    wait_ready(stack, deployment)
    client = client_for(url, ApiKey.issue(owner, "tools")[1])
    reply = client.chat.completions.create(model="owner/weather", messages=MESSAGES, tools=TOOLS, tool_choice="auto",
                                           temperature=0, max_tokens=80)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == CALL["name"]
    assert json.loads(call.function.arguments) == CALL["arguments"]

    chunks = list(client.chat.completions.create(model="owner/weather", messages=MESSAGES, tools=TOOLS, temperature=0,
                                                 max_tokens=80, stream=True))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather" and json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def run_concurrently(count, call):
    results: list = [None] * count

    def one(index):
        try:
            results[index] = call(index)
        except Exception as exc:  # recorded and asserted on by the test
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    return results


def test_two_replicas_share_twenty_concurrent_requests_and_overload_answers_429(stack, users, tiny_source):
    owner = users["owner"]
    stack.worker("serve0", "serve")
    stack.worker("serve1", "serve")
    url = stack.web()
    deployment = deploy(owner, register(owner, tiny_source), replicas=2, max_queue=64)
    wait_ready(stack, deployment, replicas=2)
    client = client_for(url, ApiKey.issue(owner, "load", rate_limit_per_minute=0)[1], timeout=120)

    def ask(index):
        raw = client.chat.completions.with_raw_response.create(
            model="owner/tiny-chat", messages=[{"role": "user", "content": f"Tell me about {index}"}], max_tokens=16)
        return raw.headers["X-Puyu-Replica"], raw.parse()

    results = run_concurrently(20, ask)
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures
    assert len({replica for replica, _ in results}) == 2  # both replicas served some
    assert all(reply.usage.completion_tokens >= 1 for _, reply in results)

    Deployment.objects.filter(pk=deployment.pk).update(max_queue=2)
    overload = run_concurrently(12, lambda i: client.chat.completions.create(
        model="owner/tiny-chat", messages=[{"role": "user", "content": "Go on and on"}], max_tokens=64))
    limited = [r for r in overload if isinstance(r, openai.RateLimitError)]
    assert limited, overload
    assert limited[0].response.headers["Retry-After"] == "1" and limited[0].body["code"] == "queue_full"
    assert all(not isinstance(r, Exception) or isinstance(r, openai.RateLimitError) for r in overload), overload


# A replica killed mid-stream (one and two replicas): tests/reliability/test_replica_faults.py.


@pytest.mark.timeout(900)
def test_smollm2_answers_a_chat_request_coherently_through_the_api(stack, users):
    from apps.registry import services as registry
    from workers.tasks import registry as registry_tasks

    owner = users["owner"]
    job = registry.start_import(owner, source="starter", model_name="SmolLM2-135M-Instruct")
    registry_tasks.model_import.run(job.pk)
    version = ModelVersion.objects.get(source_job=job)
    stack.worker("serve0", "serve")
    url = stack.web()
    deployment = deploy(owner, version, name="smol")
    wait_ready(stack, deployment, timeout=300)
    client = client_for(url, ApiKey.issue(owner, "smol")[1], timeout=300)
    reply = client.chat.completions.create(model="owner/smol", temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    answer = reply.choices[0].message.content
    print("SmolLM2 says:", answer)
    assert "Paris" in answer
