"""How much does the job system cost on top of the work itself? Run: .venv/bin/python bench/dispatch.py

1. Overhead. The same core job (the "probe", which only waits `--seconds` over 100 steps) runs
   alternately in this process (run_core_job + ConsoleReporter: the baseline) and through the
   full system: POST /api/jobs to daphne -> row in SQLite -> Celery message in Redis -> worker
   claims it, runs it with the DatabaseReporter -> SUCCEEDED, observed by polling GET
   /api/jobs/<id> every 20 ms. The figure is median(full system) / median(in-process); 1.00
   means no overhead. Target <= 1.05. "in worker s" is the probe's own timing inside the worker:
   the rest of the full-system time is submit, dispatch, claim, finish and the polling.
2. Dispatch latency. `--noop-jobs` probes with seconds=0 are submitted one at a time on an idle
   system; each latency is the job's started_at (written by the worker's claim) minus the wall
   clock just before the POST. Target: p95 <= 100 ms on 2 cores. The floor for comparison is
   the Redis PING round-trip measured in the same run.

Everything runs in a throw-away data dir with its own SQLite file and embedded Redis; the
machine is noisy, so read the ratios, not the absolute times. Nothing here asserts a timing.
The data dir (with web.log and worker.log) is removed afterwards unless the run fails or
PUYU_BENCH_KEEP=1 is set.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from puyu_site.launcher import celery_worker_command, daphne_command  # noqa: E402 (no Django imports)
from puyu_site.redis_server import EmbeddedRedis, free_port  # noqa: E402

RATIO_TARGET, P95_TARGET_MS = 1.05, 100.0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1] if ordered else float("nan")  # nearest rank


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.headers = base, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def submit(self, seconds: float, steps: int) -> int:
        body = {"kind": "probe", "params": {"seconds": seconds, "steps": steps}, "queue": "cpu"}
        return self.call("POST", "/api/jobs", body)["id"]

    def wait(self, job_id: int, timeout: float, interval: float = 0.02) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.call("GET", f"/api/jobs/{job_id}")
            if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                if job["status"] != "SUCCEEDED":
                    raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
                return job
            time.sleep(interval)
        raise RuntimeError(f"job {job_id} did not finish within {timeout:.0f} s")


def spawn(procs: list, name: str, command: list[str], env: dict, log_dir: Path) -> None:
    log = open(log_dir / f"{name}.log", "ab")
    procs.append((name, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)))


def stop(procs: list) -> None:
    for _, proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for _, proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the timed probe job")
    parser.add_argument("--pairs", type=int, default=5, help="in-process / full-system alternations")
    parser.add_argument("--noop-jobs", type=int, default=50, help="no-op jobs for the latency figure")
    parser.add_argument("--quick", action="store_true", help="seconds=2, pairs=2, noop-jobs=10")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.pairs, args.noop_jobs = 2.0, 2, 10

    tmp = Path(tempfile.mkdtemp(prefix="puyu-bench-"))
    os.environ.pop("DATABASE_URL", None)
    redis_port = free_port()
    os.environ.update(PUYU_DATA_DIR=str(tmp), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                      DJANGO_SETTINGS_MODULE="puyu_site.settings", OMP_NUM_THREADS="1",
                      PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING", CUDA_VISIBLE_DEVICES="")
    redis_server, procs, ok = None, [], False
    try:
        redis_server = EmbeddedRedis(port=redis_port).start()
        import django

        django.setup()
        import redis
        from django.contrib.auth.models import User
        from django.core.management import call_command

        from apps.accounts.models import APIToken
        from apps.jobs.models import Job, JobStatus
        from workers.core.kinds import run_core_job
        from workers.core.reporting import ConsoleReporter

        call_command("migrate", "--noinput", verbosity=0)
        user = User.objects.create_user("bench")
        api_token = APIToken.issue(user, "bench")[1]

        env = dict(os.environ)
        web_port = free_port()
        spawn(procs, "web", daphne_command("127.0.0.1", web_port), env, tmp)
        spawn(procs, "worker", celery_worker_command("gpu0", "cpu", pool="solo"), env, tmp)
        base = f"http://127.0.0.1:{web_port}"
        wait_http(base + "/healthz", 60)
        api = Api(base, api_token)
        api.wait(api.submit(0, 1), timeout=120)  # the worker is up and has run one job
        print(f"# {os.cpu_count()} CPU cores; one web process (daphne), one solo Celery worker on queue cpu")

        # -- 1. overhead: alternate in-process (A) and full system (B) --------------------------
        params = {"seconds": args.seconds, "steps": 100}
        inproc, full = [], []
        print(f"\n## {args.seconds:g} s probe job (100 steps), {args.pairs} alternations")
        print(f"{'pair':>4}  {'in-process s':>12}  {'full system s':>13}  {'ratio':>6}  {'(in worker s)':>13}")
        with open(os.devnull, "w") as devnull:
            for pair in range(1, args.pairs + 1):
                start = time.perf_counter()
                run_core_job("probe", params, ConsoleReporter(stream=devnull))
                inproc.append(time.perf_counter() - start)
                start = time.perf_counter()
                job = api.wait(api.submit(args.seconds, 100), timeout=args.seconds * 5 + 60)
                full.append(time.perf_counter() - start)
                print(f"{pair:>4}  {inproc[-1]:>12.3f}  {full[-1]:>13.3f}  {full[-1] / inproc[-1]:>6.3f}  "
                      f"{job['result']['seconds']:>13.3f}")
        ratio = statistics.median(full) / statistics.median(inproc)
        print(f"median  {statistics.median(inproc):>10.3f}  {statistics.median(full):>13.3f}  {ratio:>6.3f}")

        # -- 2. submit-to-RUNNING latency on an idle system ------------------------------------
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        pings = []
        for _ in range(50):
            start = time.perf_counter()
            client.ping()
            pings.append((time.perf_counter() - start) * 1000)
        client.close()
        ping_ms = statistics.median(pings)

        latencies = []
        for _ in range(args.noop_jobs):
            sent = time.time()
            job_id = api.submit(0, 1)
            deadline = time.monotonic() + 60
            while (job := Job.objects.get(pk=job_id)).status != JobStatus.SUCCEEDED:
                if job.is_finished or time.monotonic() > deadline:
                    raise RuntimeError(f"no-op job {job_id} is {job.status} {job.error}")
                time.sleep(0.01)
            latencies.append((job.started_at.timestamp() - sent) * 1000)
        lat_p50, lat_p95 = statistics.median(latencies), p95(latencies)
        print(f"\n## submit-to-RUNNING latency, {args.noop_jobs} no-op jobs one at a time")
        print(f"p50 {lat_p50:.1f} ms   p95 {lat_p95:.1f} ms   max {max(latencies):.1f} ms   "
              f"(floor: Redis PING round-trip, median of 50: {ping_ms:.3f} ms)")

        print("\n## summary")
        print(f"full system / in-process wall time (median of {args.pairs}): {ratio:.3f}   "
              f"target <= {RATIO_TARGET:.2f}   {verdict(ratio <= RATIO_TARGET)}")
        print(f"submit-to-RUNNING p95 over {args.noop_jobs} no-op jobs: {lat_p95:.1f} ms   "
              f"target <= {P95_TARGET_MS:.0f} ms   {verdict(lat_p95 <= P95_TARGET_MS)}   "
              f"(Redis PING {ping_ms:.3f} ms)")
        ok = True
        return 0
    finally:
        stop(procs)
        if redis_server:
            redis_server.stop()
        if ok and os.environ.get("PUYU_BENCH_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"# kept the data dir and the process logs in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
