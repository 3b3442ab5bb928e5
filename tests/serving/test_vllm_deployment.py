"""A deployment with `backend: vllm`, end to end: daphne, a real Redis, a Celery serve worker whose
replica starts vLLM's own OpenAI server (from `make vllm`'s .venv-vllm) on SmolLM2, and the
official `openai` client against the studio's /v1 API. One server start for the whole story (it
takes minutes on CPU): a streamed chat and a completion, a cancelled stream that vLLM stops (its
own /metrics show it stops running and generating), then the server child killed: the replica fails with a clear
error, the deployment (no restarts allowed) fails with it, and nothing of vLLM is left running."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from workers.core.inference.errors import BackendUnavailable
from workers.core.inference.vllm_server import vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.integration]

try:
    vllm_python()
    MISSING = ""
except BackendUnavailable as error:
    MISSING = str(error)
ENTRY = "vllm.entrypoints.launchers.api_server.entry"
BENCH_SMOLLM2 = Path("/tmp/puyu-bench/smollm2")  # bench/serving.py's converted copy, reused when present


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory):
    if (BENCH_SMOLLM2 / "config.json").exists():
        return BENCH_SMOLLM2
    from workers.core.modelstore.gguf import convert_gguf, find_starter_gguf
    from workers.core.reporting import ConsoleReporter

    folder = tmp_path_factory.mktemp("smollm2") / "smollm2"
    convert_gguf(find_starter_gguf(), folder, ConsoleReporter())
    return folder


def vllm_server_of(model_dir: Path):
    """(the server process, its port) started for `model_dir`, found by its command line."""
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if ENTRY in cmdline and str(model_dir) in cmdline:
            return process, int(cmdline[cmdline.index("--port") + 1])
    return None, 0


def vllm_metric(port: int, name: str, **labels) -> float:
    import httpx2
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


@pytest.mark.skipif(bool(MISSING), reason=f"run make vllm ({MISSING})")
@pytest.mark.timeout(1500)
def test_a_vllm_deployment_streams_cancels_and_fails_clearly_when_its_server_dies(stack, users, smollm2_folder):
    import psutil

    from apps.jobs.models import Job
    from apps.serving import services
    from apps.serving.models import ApiKey, Deployment
    from tests.serving.test_end_to_end import client_for, deploy, register, wait_ready
    from tests.stack import wait_for

    owner = users["owner"]
    stack.worker("serve0", "serve")
    url = stack.web()
    version = register(owner, smollm2_folder, name="smol")
    deployment = deploy(owner, version, name="smol", max_restarts=0,
                        engine={"backend": "vllm", "max_concurrent": 4, "kv_cache_bytes": 64 * 1024**2,
                                "chat_template": "chatml-tools"})  # tools on: vLLM's hermes parser
    wait_ready(stack, deployment, timeout=900)  # vLLM loads SmolLM2 in ~2-4 min on two busy cores
    server, port = vllm_server_of(version.path)
    assert server is not None and server.ppid() == stack.procs["serve0"].pid  # the replica's child
    client = client_for(url, ApiKey.issue(owner, "vllm")[1], timeout=300)

    chunks = list(client.chat.completions.create(
        model="owner/smol", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip(), chunks
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 10 and 1 <= usage.completion_tokens <= 24
    assert server.cmdline()[server.cmdline().index("--tool-call-parser") + 1] == "hermes"
    weather = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    reply = client.chat.completions.create(model="owner/smol", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                           tools=[weather], max_tokens=40, temperature=0)
    # vLLM took the tools (a 135M model may or may not call one): an answer, and a call only if well formed
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert all(call.function.name == "get_weather" for call in reply.choices[0].message.tool_calls or [])
    completion = client.completions.create(model="owner/smol", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert completion.choices[0].text and completion.usage.completion_tokens == 8  # no EOS that early

    # A long answer, cancelled after a few tokens: it must stop in vLLM, not just in the studio.
    # (vLLM does not count client aborts in request_success_total; it stops running the request
    # and generating its tokens, which its gauges and counters show.)
    generated = vllm_metric(port, "vllm:generation_tokens_total")
    stream = client.chat.completions.create(
        model="owner/smol", messages=[{"role": "user", "content": "Write a long story about a dragon and a knight."}],
        max_tokens=1000, temperature=0, stream=True)
    seen = 0
    for chunk in stream:
        seen += bool(chunk.choices and chunk.choices[0].delta.content)
        if seen == 3:
            break
    stream.close()  # the client goes away: the web cancels, the replica closes its request to vLLM
    wait_for(lambda: vllm_metric(port, "vllm:num_requests_running") == 0, 10, 0.2, "vLLM to stop running it")
    made = vllm_metric(port, "vllm:generation_tokens_total")
    time.sleep(2)
    assert vllm_metric(port, "vllm:generation_tokens_total") == made  # nothing more is generated for it
    assert made - generated < 150, made - generated  # far from the story it was asked for

    group = [p for p in psutil.process_iter() if _pgid(p.pid) == server.pid]
    assert len(group) >= 2  # the API server and vLLM's engine-core process
    os.kill(server.pid, signal.SIGKILL)
    job = Job.objects.get(pk=deployment.replica_set.get().job_id)
    wait_for(lambda: Job.objects.get(pk=job.pk).status == "FAILED", 60, 0.5, "the replica job to fail")
    error = Job.objects.get(pk=job.pk).error
    assert "vLLM server" in error and "exited with code -9" in error, error
    services.reconcile(deployment.pk)
    deployment = Deployment.objects.get(pk=deployment.pk)
    assert deployment.state == "failed" and "vLLM server" in deployment.state_reason, deployment.state_reason
    wait_for(lambda: not any(_running(p) for p in group), 30, 0.5, "every process of the vLLM server to end")


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
