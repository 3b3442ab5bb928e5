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
3. Scale with workers. `--scale-jobs` (default 1,000; 0 skips it) probe jobs with seconds=0 are
   submitted at one instant, to 1 and then 4 solo Celery workers on queue cpu (each warmed up
   by a job first): one transaction of apps.jobs.services.submit_job calls, so the rows commit
   together and every message is published right after the commit, and all of them queue
   (submitted one by one, the submitter was the bottleneck: on 2 cores it shares the CPUs with
   the workers). Per job, submit->RUNNING is its started_at (the claim) minus that instant;
   jobs/s is the burst's size over that instant to the last finish. The figures are the 4-worker
   run over the 1-worker run of the same invocation: jobs/s x (higher is better) and p95 x
   (lower is better). A seconds=0 job is all job-system work (claim, log line, progress,
   finish, Celery's own), so on 2 cores 4 workers share them with the database and Redis.

`--database postgres` runs all of it on a private PostgreSQL server (tests/stack.py's
PostgresServer: initdb + pg_ctl in a temporary folder, stopped at the end) instead of the SQLite
file, e.g. `.venv/bin/python bench/dispatch.py --database postgres --pairs 0 --noop-jobs 0`
for the scale figures alone on PostgreSQL.

Everything runs in a throw-away data dir with its own database and embedded Redis; the
machine is noisy, so read the ratios, not the absolute times. Nothing here asserts a timing.
The data dir (with web.log and the workers' logs) is removed afterwards unless the run fails or
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


def wait_online(names: list[str], timeout: float = 120) -> None:
    """Until each worker (node `name@<host>`) has announced itself."""
    from apps.jobs.models import WorkerNode

    deadline = time.monotonic() + timeout
    while {node.split("@", 1)[0] for node in WorkerNode.objects.values_list("name", flat=True)} < set(names):
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers {names} did not report within {timeout:.0f} s")
        time.sleep(0.2)


def wait_all(job_ids: list[int], timeout: float) -> None:
    from apps.jobs.models import FINISHED_STATUSES, Job, JobStatus

    deadline = time.monotonic() + timeout
    while Job.objects.filter(pk__in=job_ids).exclude(status__in=FINISHED_STATUSES).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(job_ids)} jobs did not finish within {timeout:.0f} s")
        time.sleep(0.25)
    failed = Job.objects.filter(pk__in=job_ids).exclude(status=JobStatus.SUCCEEDED).values_list("pk", "status", "error")
    if failed:
        raise RuntimeError(f"jobs ended unsuccessfully: {list(failed)[:5]}")


def burst(user, jobs: int, timeout: float) -> dict:
    """Submit `jobs` no-op probes at one instant to the running workers (one transaction: the
    rows commit together, their messages are published by its on-commit hooks); wait for all."""
    from django.db import transaction
    from django.utils import timezone

    from apps.jobs import services
    from apps.jobs.models import Job

    start = time.perf_counter()
    with transaction.atomic():
        ids = [services.submit_job(user, "probe", {"seconds": 0, "steps": 1}, queue="cpu").pk for _ in range(jobs)]
        submitted_at = timezone.now()
    published = time.perf_counter() - start  # rows written, committed, every message sent
    wait_all(ids, timeout)
    rows = list(Job.objects.filter(pk__in=ids).values_list("started_at", "finished_at", "lease_owner"))
    latencies = [(started - submitted_at).total_seconds() * 1000 for started, _, _ in rows]
    span = (max(finished for _, finished, _ in rows) - submitted_at).total_seconds()
    owners = {owner.rsplit(":", 1)[0] for *_, owner in rows}
    return {"jobs_per_s": jobs / span, "p50": statistics.median(latencies), "p95": p95(latencies),
            "published_s": published, "workers_used": len(owners)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the timed probe job")
    parser.add_argument("--pairs", type=int, default=5, help="in-process / full-system alternations")
    parser.add_argument("--noop-jobs", type=int, default=50, help="no-op jobs for the latency figure")
    parser.add_argument("--scale-jobs", type=int, default=1000, help="no-op jobs per burst for the scale figure (0: skip)")
    parser.add_argument("--scale-workers", type=int, default=4, help="workers of the second burst (the first has 1)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                        help="sqlite: a file in the data dir; postgres: a private PostgreSQL server (initdb, pg_ctl)")
    parser.add_argument("--quick", action="store_true", help="seconds=2, pairs=2, noop-jobs=10, scale-jobs=200")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.pairs, args.noop_jobs, args.scale_jobs = 2.0, 2, 10, 200

    tmp = Path(tempfile.mkdtemp(prefix="puyu-bench-"))
    os.environ.pop("DATABASE_URL", None)
    redis_port = free_port()
    os.environ.update(PUYU_DATA_DIR=str(tmp), REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                      DJANGO_SETTINGS_MODULE="puyu_site.settings", OMP_NUM_THREADS="1",
                      PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING", CUDA_VISIBLE_DEVICES="",
                      # One user queues the whole burst; the per-user limit (20) would refuse it.
                      PUYU_MAX_ACTIVE_JOBS_PER_USER=str(max(1000, 2 * args.scale_jobs)))
    redis_server, procs, ok, postgres = None, [], False, None
    try:
        redis_server = EmbeddedRedis(port=redis_port).start()
        if args.database == "postgres":
            from tests.stack import PostgresServer  # needs no Django settings

            postgres = PostgresServer().start()
            postgres.create_database("puyu")
            os.environ["DATABASE_URL"] = postgres.url("puyu")
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
        print(f"# {os.cpu_count()} CPU cores; one web process (daphne), one solo Celery worker on queue cpu; "
              f"database: {args.database}")

        # -- 1. overhead: alternate in-process (A) and full system (B) --------------------------
        params = {"seconds": args.seconds, "steps": 100}
        inproc, full = [], []
        if args.pairs:
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
        ratio = statistics.median(full) / statistics.median(inproc) if args.pairs else float("nan")
        if args.pairs:
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
        lat_p95 = p95(latencies)
        if latencies:
            print(f"\n## submit-to-RUNNING latency, {args.noop_jobs} no-op jobs one at a time")
            print(f"p50 {statistics.median(latencies):.1f} ms   p95 {lat_p95:.1f} ms   max {max(latencies):.1f} ms   "
                  f"(floor: Redis PING round-trip, median of 50: {ping_ms:.3f} ms)")

        # -- 3. a burst of queued no-op jobs with 1 worker, then with N ---------------------------
        scale = {}
        if args.scale_jobs:
            print(f"\n## {args.scale_jobs} no-op jobs queued at once, 1 and {args.scale_workers} solo workers on queue cpu")
            print(f"{'workers':>7}  {'jobs/s':>7}  {'p50 ms':>8}  {'p95 ms':>8}  {'all sent in s':>13}  {'workers used':>12}")
            workers = ["gpu0"]  # the worker of sections 1 and 2
            for count in (1, args.scale_workers):
                while len(workers) < count:
                    workers.append(f"scale{len(workers)}")
                    spawn(procs, workers[-1], celery_worker_command(workers[-1], "cpu", pool="solo"), env, tmp)
                wait_online(workers)
                warm = [api.submit(0, 1) for _ in range(2 * count)]  # each new worker's first job pays its imports
                wait_all(warm, timeout=120)
                scale[count] = burst(user, args.scale_jobs, timeout=max(600, args.scale_jobs))
                row = scale[count]
                print(f"{count:>7}  {row['jobs_per_s']:>7.1f}  {row['p50']:>8.0f}  {row['p95']:>8.0f}  "
                      f"{row['published_s']:>13.2f}  {row['workers_used']:>12}")

        print("\n## summary")
        if args.pairs:
            print(f"full system / in-process wall time (median of {args.pairs}): {ratio:.3f}   "
                  f"target <= {RATIO_TARGET:.2f}   {verdict(ratio <= RATIO_TARGET)}")
        if latencies:
            print(f"submit-to-RUNNING p95 over {args.noop_jobs} no-op jobs: {lat_p95:.1f} ms   "
                  f"target <= {P95_TARGET_MS:.0f} ms   {verdict(lat_p95 <= P95_TARGET_MS)}   "
                  f"(Redis PING {ping_ms:.3f} ms)")
        if scale:
            one, many = scale[1], scale[args.scale_workers]
            print(f"{args.scale_jobs} queued no-op jobs, {args.scale_workers} workers vs 1: "
                  f"jobs/s x{many['jobs_per_s'] / one['jobs_per_s']:.2f} ({many['jobs_per_s']:.1f} vs {one['jobs_per_s']:.1f}), "
                  f"submit-to-RUNNING p95 x{many['p95'] / one['p95']:.2f} ({many['p95']:.0f} ms vs {one['p95']:.0f} ms)   "
                  f"database: {args.database}")
        ok = True
        return 0
    finally:
        stop(procs)
        if redis_server:
            redis_server.stop()
        if postgres:
            postgres.stop()
        if ok and os.environ.get("PUYU_BENCH_KEEP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"# kept the data dir and the process logs in {tmp}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
