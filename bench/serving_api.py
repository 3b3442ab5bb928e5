"""Full-stack overhead of the OpenAI-compatible API. Run: .venv/bin/python bench/serving_api.py [--rounds N]

Everything is real and local: an embedded Redis, a fresh SQLite studio (migrated), daphne serving
the studio, and one replica of a tiny Llama (`python -m workers.core serve`, the inference core
the Celery task runs) reading the deployment's request stream.

Per round, alternating (same prompt, greedy, 8 new tokens):
  D = direct: XADD the protocol request and XREAD its events (no web at all);
  A = the API: POST /v1/chat/completions with stream=true over HTTP, time to the first content chunk.
Printed: p50 of A's time to first token minus the replica's own `engine_ttft_s` and `ttft_s`
(from the request's end event), p50 of A − D (what the web adds over talking to Redis directly),
and A/D; then where A's web share goes, on this machine's one clock: POST → the request's
`created` (daphne, middleware, the admission's database read; `created` = the first delta's
Redis entry id, in ms, minus the replica's ttft_s) and the first delta's XADD → the client.
Target: p50 web overhead ≤ 20 ms. Nothing asserts: the machine is shared.

Measured here (2 shared cores, 2026-12-04, other work running): API − engine 20.02 and 20.48 ms
(API 26.5 ms, direct 9.5-9.9 ms, engine 6.7-6.9 ms; the issue's 26.6 ms was before the rate
limit, reservation, admission and XADD became one Redis script), of which POST -> request 15.7 ms
and first delta -> client 1.7 ms. The admission's database read took 8.6 ms of that, most of it Django building the team-visibility subquery of
the model lookup; a key's own deployment is now read without it (3.1 ms): API − engine 19.25 ms
(API 26.3 ms, engine 6.65 ms, ratio API/direct 2.38), POST -> request 13.4 ms, delta -> client
2.1 ms. What is left before the request: daphne and the middleware chain (~3.7 ms in-process, four
of its middlewares are sync-only), the three-query admission (~3 ms) and thread hops.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_environment(data_dir: Path):
    from puyu_site.redis_server import EmbeddedRedis, free_port

    redis_server = EmbeddedRedis(port=free_port()).start()
    os.environ.update(PUYU_ENV="development", PUYU_DATA_DIR=str(data_dir), REDIS_URL=redis_server.url,
                      DJANGO_SETTINGS_MODULE="puyu_site.settings", OMP_NUM_THREADS="1", LOG_LEVEL="WARNING")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return redis_server


def create_deployment():
    from django.contrib.auth.models import User

    from apps.registry.models import ModelVersion, RegisteredModel
    from apps.serving import services
    from apps.serving.models import ApiKey
    from tests.fixtures.tiny_models import build_tiny_llama

    user = User.objects.create(username="bench")
    model = RegisteredModel.objects.create(owner=user, name="tiny")
    version = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=user)
    build_tiny_llama(version.path)
    deployment = services.create_deployment(user, name="bench", model=model, version=version, max_queue=1000,
                                            engine_options={"max_concurrent": 4})
    replica = deployment.replica_set.get()
    params = services.replica_params(deployment, version, replica.replica_id)
    key = ApiKey.issue(user, "bench", rate_limit_per_minute=0, token_quota_per_day=0)[1]
    return deployment, params, key


def mark_ready(deployment) -> None:
    """Record the replica and the deployment as ready, as the studio's reconcile does once the
    replica's hash says so (the replica runs outside Celery here, so no task records it): the
    admission then takes the path of a serving deployment."""
    from apps.serving.models import DeploymentState, Replica

    Replica.objects.filter(deployment=deployment).update(state="ready")
    type(deployment).objects.filter(pk=deployment.pk).update(state=DeploymentState.READY)


def start_replica(params: dict, log_dir: Path) -> subprocess.Popen:
    spec = log_dir / "replica.json"
    spec.write_text(json.dumps(params))
    log = open(log_dir / "replica.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "workers.core", "serve", str(spec)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def start_web(log_dir: Path) -> tuple[subprocess.Popen, int]:
    from puyu_site.launcher import daphne_command
    from puyu_site.redis_server import free_port

    port = free_port()
    log = open(log_dir / "web.log", "wb")
    proc = subprocess.Popen(daphne_command("127.0.0.1", port), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    return proc, port


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate every child, then kill those still running after 10 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def web_up(port: int) -> bool:
    """Whether daphne answers /healthz on this port."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False


MESSAGES = [{"role": "user", "content": "Tell me a story about a king."}]


def direct_request(redis, deployment_id: int) -> dict:
    from workers.tasks import serving_protocol as protocol

    request_id = uuid.uuid4().hex
    now = time.time()
    request = {"id": request_id, "kind": "chat", "messages": MESSAGES, "tools": None, "tool_choice": None, "max_tokens": 8,
               "temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "stop": [], "seed": None,
               "stream": True, "created": now, "deadline": now + 60}
    started = time.perf_counter()
    redis.xadd(protocol.requests_stream(deployment_id), {"request": protocol.encode(request)})
    first, last_id = None, "0-0"
    while True:
        for _, entries in redis.xread({protocol.events_stream(request_id): last_id}, block=5000) or ():
            for entry_id, fields in entries:
                last_id = entry_id
                event = protocol.decode(fields["event"])
                if event["type"] == "delta" and first is None:
                    first = time.perf_counter() - started
                if event["type"] in ("end", "error"):
                    return {"ttft": first, "end": event}


def api_request(port: int, key: str, redis) -> dict:
    from workers.tasks import serving_protocol as protocol

    body = json.dumps({"model": "bench/bench", "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": True})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started, sent_at = time.perf_counter(), time.time()
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"API answered {response.status}: {response.read()[:300]!r}")
    first, request_id = None, None
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        request_id = chunk["id"].split("-", 1)[1]
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first, first_at = time.perf_counter() - started, time.time()
    connection.close()
    entries = [(entry_id, protocol.decode(f["event"])) for entry_id, f in redis.xrange(protocol.events_stream(request_id))]
    end = next(e for _, e in entries if e["type"] == "end")
    # The hops, on this machine's one clock: the first delta's XADD (its entry id, in ms) and the
    # request's `created` (that XADD minus the replica's ttft_s, which it measures from `created`).
    delta_at = next(int(i.split("-")[0]) / 1000 for i, e in entries if e["type"] == "delta")
    ttft_s = end["timing"].get("ttft_s")
    hops = {"web_in": delta_at - ttft_s - sent_at if ttft_s is not None else None, "web_out": first_at - delta_at}
    return {"ttft": first, "end": end, **hops}


def p50(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="puyu-bench-api-"))
    redis_server = setup_environment(work)
    procs = []
    try:
        import redis as redis_lib

        from workers.tasks import serving_protocol as protocol

        deployment, params, key = create_deployment()
        redis = redis_lib.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
        procs.append(start_replica(params, work))
        web, port = start_web(work)
        procs.append(web)
        wait(lambda: redis.hget(protocol.replica_key(deployment.pk, params["replica_id"]), "state") == "ready", 120, "the replica")
        mark_ready(deployment)
        wait(lambda: web_up(port), 60, "daphne")
        for _ in range(3):  # warm up both paths (first-request imports, connections)
            direct_request(redis, deployment.pk)
            api_request(port, key, redis)
        direct, api = [], []
        for _ in range(args.rounds):
            direct.append(direct_request(redis, deployment.pk))
            api.append(api_request(port, key, redis))
        api_ttft = [r["ttft"] for r in api]
        engine = [r["end"]["timing"].get("engine_ttft_s") for r in api]
        replica_ttft = [r["end"]["timing"].get("ttft_s") for r in api]
        summary = {
            "rounds": args.rounds,
            "api_ttft_p50_ms": round(1000 * p50(api_ttft), 2),
            "direct_ttft_p50_ms": round(1000 * p50([r["ttft"] for r in direct]), 2),
            "engine_ttft_p50_ms": round(1000 * p50(engine), 2),
            "api_minus_engine_ttft_p50_ms": round(1000 * p50([a - e for a, e in zip(api_ttft, engine) if e is not None]), 2),
            "api_minus_replica_ttft_p50_ms": round(1000 * p50([a - e for a, e in zip(api_ttft, replica_ttft) if e is not None]), 2),
            "api_minus_direct_p50_ms": round(1000 * (p50(api_ttft) - p50([r["ttft"] for r in direct])), 2),
            "api_over_direct_ratio": round(p50(api_ttft) / p50([r["ttft"] for r in direct]), 3),
            "web_in_p50_ms": round(1000 * p50([r["web_in"] for r in api]), 2),
            "web_out_p50_ms": round(1000 * p50([r["web_out"] for r in api]), 2),
        }
        print(f"time to first token, p50 over {args.rounds} alternating rounds:")
        print(f"  API (HTTP, SSE)          {summary['api_ttft_p50_ms']:8.2f} ms")
        print(f"  direct (Redis protocol)  {summary['direct_ttft_p50_ms']:8.2f} ms")
        print(f"  engine's own             {summary['engine_ttft_p50_ms']:8.2f} ms")
        print(f"  API − engine             {summary['api_minus_engine_ttft_p50_ms']:8.2f} ms   (target ≤ 20 ms)")
        print(f"  API − replica ttft_s     {summary['api_minus_replica_ttft_p50_ms']:8.2f} ms")
        print(f"  API − direct             {summary['api_minus_direct_p50_ms']:8.2f} ms   (ratio {summary['api_over_direct_ratio']})")
        print(f"    of which POST -> request XADD'd      {summary['web_in_p50_ms']:8.2f} ms   (±1 ms: Redis entry ids)")
        print(f"    and replica's first delta -> client {summary['web_out_p50_ms']:8.2f} ms")
        print(json.dumps(summary))
    finally:
        stop_processes(procs)
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
