"""Is the dashboard still quick with 16 people watching it while a model trains?
Run: .venv/bin/python bench/dashboard_load.py [--seconds 15] [--clients 16]

A tiny LoRA SFT job trains on a real Celery worker (the `gpu` queue, on CPU here) for the whole
run. While it trains, the dashboard (GET /, as a logged-in user, from daphne) is loaded

1. idle: by 1 client, once a second, for --seconds;
2. under load: by --clients clients (each its own user and session), each once a second, for
   --seconds;

and the figure is p95(under load) / p95(idle), measured in the same run (target <= 1.5). Errors
(any answer but 200, or no answer) are counted too; there should be none. Everything runs in a
throw-away data dir with its own SQLite file and embedded Redis; the machine is noisy, so read the
ratio, not the absolute times. Nothing here asserts a timing.

`load()` is shared with tests/reliability/test_dashboard_load.py, which asserts 0 errors.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.dispatch import p95, wait_http  # noqa: E402 (one nearest-rank p95 and health wait for the benches)

RATIO_TARGET = 1.5


def load(url: str, session_ids: list[str], seconds: float, path: str = "/") -> dict:
    """One thread per session id: each GETs url+path once a second (on its own schedule, started
    a fraction of a second apart like people who opened the page at different times) for
    `seconds`. Returns {"latencies": [s, ...], "errors": ["what", ...], "requests": n}."""
    import requests

    latencies, errors, lock = [], [], threading.Lock()
    start = time.monotonic() + 0.2
    end = start + seconds

    def client(index: int, session_id: str) -> None:
        http = requests.Session()
        http.cookies.set("sessionid", session_id)
        tick = start + index / max(len(session_ids), 1)
        while tick < end:
            time.sleep(max(0.0, tick - time.monotonic()))  # the load's pace, not a wait for a condition
            began = time.monotonic()
            try:
                response = http.get(url + path, timeout=30, allow_redirects=False)
                elapsed = time.monotonic() - began
                problem = None if response.status_code == 200 and b"Dashboard" in response.content else \
                    f"{response.status_code} {response.headers.get('Location', '')}".strip()
            except requests.RequestException as exc:
                elapsed, problem = time.monotonic() - began, type(exc).__name__
            with lock:
                latencies.append(elapsed)
                if problem:
                    errors.append(problem)
            tick += 1.0

    threads = [threading.Thread(target=client, args=(i, sid), daemon=True) for i, sid in enumerate(session_ids)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 60)
    return {"latencies": latencies, "errors": errors, "requests": len(latencies)}


def session_for(user) -> str:
    """A logged-in session for `user`, as the login form would make (without the password hash)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def make_training_inputs(owner, folder: Path):
    """A tiny Llama base version and a tiny chat dataset version, both with their files."""
    import hashlib
    import json

    from apps.datasets.models import Dataset, DatasetVersion
    from apps.registry.models import ModelVersion, RegisteredModel
    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer
    from tests.training.conftest import CHAT_RECORDS

    source = build_tiny_llama(folder / "model", tokenizer_dir=train_tokenizer(folder / "tokenizer"))
    model = RegisteredModel.objects.create(owner=owner, name="tiny")
    base = ModelVersion.objects.create(model=model, number=1, kind="base", source="import:folder", created_by=owner,
                                       architecture="LlamaForCausalLM", parameter_count=100_000, context_length=256)
    shutil.copytree(source, base.path)
    dataset = Dataset.objects.create(owner=owner, name="chat-demo")
    body = "".join(json.dumps(r) + "\n" for r in CHAT_RECORDS).encode()
    data = DatasetVersion.objects.create(dataset=dataset, number=1, source="upload", source_format="chat",
                                         canonical="chat", sha256=hashlib.sha256(body).hexdigest(),
                                         rows=len(CHAT_RECORDS), size_bytes=len(body), created_by=owner)
    data.path.parent.mkdir(parents=True, exist_ok=True)
    data.path.write_bytes(body)
    return base, data


def training_request(base, data, max_steps: int):
    from apps.training.services import TrainingRequest

    fields = {"max_steps": max_steps, "batch_size": 2, "max_length": 64, "save_every": max_steps, "eval_every": max_steps,
              "log_every": 1, "lora_r": 4, "lora_alpha": 8}
    return TrainingRequest(method="sft", finetune="lora", base=f"v:{base.pk}", train_versions=[data.pk], queue="gpu",
                           fields=fields, model_name="tiny-chat")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=16, help="clients in the loaded phase")
    args = parser.parse_args()

    from puyu_site.launcher import celery_worker_command, daphne_command
    from puyu_site.redis_server import EmbeddedRedis, free_port

    tmp = Path(tempfile.mkdtemp(prefix="puyu-bench-"))
    os.environ.pop("DATABASE_URL", None)
    redis_port = free_port()
    os.environ.update(PUYU_DATA_DIR=str(tmp), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                      DJANGO_SETTINGS_MODULE="puyu_site.settings", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE",
                      PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING", CUDA_VISIBLE_DEVICES="",
                      PUYU_WORKER_HEARTBEAT_SECONDS="1")
    redis_server, procs, ok = None, [], False
    try:
        redis_server = EmbeddedRedis(port=redis_port).start()
        import django

        django.setup()
        from django.contrib.auth.models import Group, User
        from django.core.management import call_command

        from apps.jobs.models import Job, JobMetric, JobStatus
        from apps.training import services

        call_command("migrate", "--noinput", verbosity=0)
        team = Group.objects.create(name="lab")
        users = [User.objects.create_user(f"viewer{i}") for i in range(args.clients)]
        for user in users:
            user.groups.add(team)

        env = dict(os.environ)
        web_port = free_port()
        for name, command in (("web", daphne_command("127.0.0.1", web_port)),
                              ("worker", celery_worker_command("gpu0", "gpu", pool="solo"))):
            log = open(tmp / f"{name}.log", "ab")
            procs.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        base_url = f"http://127.0.0.1:{web_port}"
        base, data = make_training_inputs(users[0], tmp / "build")
        wait_http(base_url + "/healthz", 60)
        job = services.submit(users[0], training_request(base, data, max_steps=100_000))
        deadline = time.monotonic() + 180
        while not JobMetric.objects.filter(job=job, name="loss").exists():
            if Job.objects.get(pk=job.pk).is_finished or time.monotonic() > deadline:
                raise RuntimeError(f"the training job did not start stepping: {Job.objects.get(pk=job.pk).error}")
            time.sleep(0.5)
        sessions = [session_for(user) for user in users]
        load(base_url, sessions[:1], 2.0)  # warm up (first requests import templates etc.)

        print(f"# {os.cpu_count()} CPU cores; daphne, one solo Celery worker training a tiny LoRA SFT job "
              f"(job {job.pk}); GET / as a logged-in user, each client once a second for {args.seconds:g} s")
        steps_before = JobMetric.objects.filter(job=job, name="loss").count()
        idle = load(base_url, sessions[:1], args.seconds)
        loaded = load(base_url, sessions, args.seconds)
        steps = JobMetric.objects.filter(job=job, name="loss").count() - steps_before
        assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING, "the training job stopped during the run"
        print(f"{'phase':<12} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8}")
        for name, result, clients in (("idle", idle, 1), ("under load", loaded, args.clients)):
            lat = sorted(result["latencies"])
            print(f"{name:<12} {clients:>7} {result['requests']:>8} {len(result['errors']):>6} "
                  f"{1000 * lat[len(lat) // 2]:>8.1f} {1000 * p95(lat):>8.1f}")
        ratio = p95(loaded["latencies"]) / p95(idle["latencies"])
        print(f"\ntraining steps during the two phases: {steps}")
        print(f"p95 under load / p95 idle: {ratio:.2f}   target <= {RATIO_TARGET}   "
              f"{'PASS' if ratio <= RATIO_TARGET else 'MISS'}")
        print(f"errors: {len(idle['errors']) + len(loaded['errors'])} {sorted(set(idle['errors'] + loaded['errors']))}")
        ok = True
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if redis_server is not None:
            redis_server.stop()
        if ok and os.environ.get("PUYU_BENCH_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"(logs kept in {tmp})")


if __name__ == "__main__":
    sys.exit(main())
