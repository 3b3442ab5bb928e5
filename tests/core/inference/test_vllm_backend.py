"""The vllm backend's child process without vLLM: PUYU_VLLM_PYTHON points at a script that runs a
small stand-in server (stdlib only: /health, /metrics, streamed /v1/chat/completions and
/v1/completions in vLLM's shapes). What is checked: start-up failures carry the child's log,
a killed child fails check() and the replica, stop() and the replica's death leave no process
behind, and a replica with backend "vllm" serves the Redis protocol through it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.core.inference.test_replica import events_of, push, replica, wait_ready, wait_until
from workers.core.inference.engine import EngineConfig, EngineRequest
from workers.core.inference.errors import EngineFailure
from workers.core.inference.sampling import SamplingParams

FAKE_SERVER = textwrap.dedent('''
    """A stand-in for vLLM's OpenAI server (see the test module)."""
    import json, os, subprocess, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    print("fake vLLM starting with", " ".join(args), flush=True)
    if os.environ.get("FAKE_VLLM_ARGS"):
        open(os.environ["FAKE_VLLM_ARGS"], "w").write(json.dumps(args))
    if os.environ.get("FAKE_VLLM_MODE") == "crash":
        print("RuntimeError: fake engine could not allocate its KV cache", flush=True)
        sys.exit(3)
    if os.environ.get("FAKE_VLLM_GRANDCHILD"):  # like vLLM's engine-core process
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open(os.environ["FAKE_VLLM_GRANDCHILD"], "w").write(str(child.pid))
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def send(self, status, body, kind="application/json"):
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.send(200, b"")
            elif self.path == "/metrics":
                text = ('vllm:num_requests_running{engine="0"} 0.0\\n'
                        'vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1.0\\n')
                self.send(200, text.encode(), "text/plain")
            else:
                self.send(404, b"{}")

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            chat = self.path.endswith("/chat/completions")
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            words = ["Hello", " from", " the", " stand-in", " server"] * 100
            try:
                for i in range(body.get("max_tokens") or 16):
                    last = i + 1 == (body.get("max_tokens") or 16)
                    choice = {"index": 0, "finish_reason": "length" if last else None, "token_ids": [100 + i]}
                    choice.update({"delta": {"content": words[i]}} if chat else {"text": words[i]})
                    chunk = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": 1, "model": body["model"], "choices": [choice]}
                    if i == 0:
                        chunk["prompt_token_ids"] = [1, 2, 3]
                    self.wfile.write(f"data: {json.dumps(chunk)}\\n\\n".encode())
                    self.wfile.flush()
                    time.sleep(float(os.environ.get("FAKE_VLLM_TOKEN_S", "0.01")))
                self.wfile.write(b"data: [DONE]\\n\\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away: vLLM aborts the request
            self.close_connection = True

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """PUYU_VLLM_PYTHON → a script that runs the stand-in server with the studio's Python."""
    server = tmp_path / "fake_vllm_server.py"
    server.write_text(FAKE_SERVER)
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{server}" "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("PUYU_VLLM_PYTHON", str(python))
    return tmp_path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def backend_for(model_dir, **config):
    from workers.core.inference.backends import create_backend

    return create_backend("vllm", EngineConfig(device="cpu", max_concurrent=4, **config), model_dir)


def test_a_child_that_dies_while_starting_fails_load_with_its_exit_code_and_log(fake_vllm, serve_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_MODE", "crash")
    backend = backend_for(serve_model_dir)
    with pytest.raises(EngineFailure) as raised:
        backend.load()
    message = str(raised.value)
    assert "exited with code 3 while starting" in message
    assert "could not allocate its KV cache" in message  # the log's tail
    assert backend.workdir is None  # its files were removed


def test_the_child_gets_the_planned_command_line_and_a_loopback_port(fake_vllm, serve_model_dir, monkeypatch):
    import json

    monkeypatch.setenv("FAKE_VLLM_ARGS", str(fake_vllm / "args.json"))
    backend = backend_for(serve_model_dir, kv_cache_bytes=8 * 1024**2)
    backend.load()
    try:
        args = json.loads((fake_vllm / "args.json").read_text())
        assert args[:2] == ["-m", "vllm.entrypoints.launchers.api_server.entry"]
        assert args[args.index("--model") + 1] == str(serve_model_dir)
        assert args[args.index("--kv-cache-memory-bytes") + 1] == str(8 * 1024**2)
        assert int(args[args.index("--port") + 1]) == backend.server.port and args[args.index("--host") + 1] == "127.0.0.1"
        # the tiny chat model's template is ChatML with <tool_call>: parsed tool calls with hermes
        assert args[args.index("--tool-call-parser") + 1] == "hermes"
        assert backend.stats()["kv_capacity_tokens"] == 1600  # 100 blocks x 16, from /metrics
    finally:
        backend.close()


def test_a_killed_child_fails_check_and_its_running_requests_with_a_clear_error(fake_vllm, serve_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_TOKEN_S", "0.2")
    backend = backend_for(serve_model_dir)
    backend.load()
    try:
        backend.check()  # healthy: no error
        handle = backend.submit(EngineRequest(prompt="Hi", sampling=SamplingParams(max_tokens=200)))
        assert next(handle.events(timeout=10))["type"] == "delta"
        os.kill(backend.server.process.pid, signal.SIGKILL)
        final = handle.result(timeout=10)
        assert final["type"] == "error" and final["status"] == 500 and "retry" in final["message"]
        assert final["usage"]["completion_tokens"] >= 1
        wait_until(lambda: backend.server.exit_code() is not None, "the child's exit", timeout=10)
        with pytest.raises(EngineFailure, match=r"the vLLM server \(pid \d+\) exited with code -9"):
            backend.check()
    finally:
        backend.close()


def test_close_stops_the_whole_process_group_engine_core_included(fake_vllm, serve_model_dir, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_GRANDCHILD", str(fake_vllm / "grandchild.pid"))
    backend = backend_for(serve_model_dir)
    backend.load()
    server_pid = backend.server.process.pid
    grandchild = int((fake_vllm / "grandchild.pid").read_text())
    assert os.getpgid(server_pid) == server_pid != os.getpgid(0)  # its own group
    assert alive(grandchild)
    backend.close()
    assert not alive(server_pid)
    wait_until(lambda: not alive(grandchild), "the grandchild's exit", timeout=10)


ORPHAN_CHECK = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from workers.core.inference.engine import EngineConfig
    from workers.core.inference.vllm_backend import VllmBackend
    backend = VllmBackend(EngineConfig(device="cpu"), sys.argv[2])
    backend.load()
    print(backend.server.process.pid, flush=True)
    time.sleep(600)
''')


def test_the_child_dies_with_the_replica_process_even_when_that_is_killed(fake_vllm, serve_model_dir):
    from workers.core.inference.vllm_server import REPO

    script = fake_vllm / "replica_process.py"
    script.write_text(ORPHAN_CHECK)
    replica = subprocess.Popen([sys.executable, str(script), str(REPO), str(serve_model_dir)], stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "TMPDIR": str(fake_vllm)})  # its workdir: not cleaned up
    try:
        server_pid = int(replica.stdout.readline())
        assert alive(server_pid)
        replica.kill()  # SIGKILL: no close(), no finally: only PR_SET_PDEATHSIG is left to act
        replica.wait(10)
        wait_until(lambda: not alive(server_pid), "the orphaned server's exit", timeout=10)
    finally:
        replica.kill()


def test_a_replica_with_backend_vllm_serves_the_redis_protocol_and_fails_when_its_child_is_killed(
        fake_vllm, serve_model_dir, monkeypatch):
    import redis

    monkeypatch.setenv("FAKE_VLLM_TOKEN_S", "0.05")
    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    deployment_id = int.from_bytes(os.urandom(3), "big") + 1
    running = replica(deployment_id, serve_model_dir, "v1", backend="vllm")
    try:
        wait_ready(client, deployment_id, "v1")
        request_id = push(client, deployment_id, max_tokens=5)
        events = events_of(client, request_id)
        assert [e["type"] for e in events][0] == "start" and events[-1]["type"] == "end"
        assert "".join(e["text"] for e in events if e["type"] == "delta") == "Hello from the stand-in server"
        assert events[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}

        cancelled = push(client, deployment_id, max_tokens=400)
        wait_until(lambda: any(e["type"] == "delta" for e in events_of_now(client, cancelled)), "a first delta", timeout=10)
        client.set(f"puyu:serve:req:{cancelled}:cancel", 1, ex=60)
        assert events_of(client, cancelled)[-1]["finish_reason"] == "cancelled"

        server = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_fake_server_of(int(p), os.getpid())]
        assert len(server) == 1
        os.kill(server[0], signal.SIGKILL)
        running.thread.join(15)
        assert not running.thread.is_alive()
        [outcome] = running.outcome
        assert isinstance(outcome, EngineFailure) and "exited with code -9" in str(outcome)
        assert not client.exists(f"puyu:serve:{deployment_id}:replica:v1")  # the replica is gone
    finally:
        running.reporter.stop_requested = True
        running.thread.join(30)
        client.close()


def events_of_now(client, request_id):
    from workers.core.inference import protocol

    return [protocol.decode(f["event"]) for _id, f in client.xrange(protocol.events_stream(request_id))]


def _is_fake_server_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            ppid = int(stat.read().split(")")[-1].split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return ppid == parent and b"fake_vllm_server.py" in cmdline.read()
    except OSError:
        return False
