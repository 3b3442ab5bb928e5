"""`make run`: start the whole studio in the foreground and stop all of it on Ctrl-C.

Starts a Redis (REDIS_URL when set, else the bundled redis-server on a free loopback port,
persisting under the data dir), migrates, creates the first admin, then runs daphne, one Celery
worker per GPU for queue `gpu` (one on the CPU when there is no GPU), a worker for queue `cpu`,
a light worker for the `control` queue (the reaper must not wait behind long jobs), and beat.
If any of them dies, everything is stopped and the exit status says so. No Django imports: the
children load the settings with the REDIS_URL chosen here.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from puyu_site.env import SettingError, env_int, env_path, env_str
from puyu_site.redis_server import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def celery_worker_command(name: str, queues: str, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO") -> list[str]:
    return [PYTHON, "-m", "celery", "-A", "puyu_site", "worker", "-Q", queues, "-P", pool, "-c", str(concurrency),
            "-n", f"{name}@%h", "--loglevel", loglevel, "--without-gossip", "--without-mingle"]


def celery_beat_command(schedule_file: Path, loglevel: str = "INFO") -> list[str]:
    return [PYTHON, "-m", "celery", "-A", "puyu_site", "beat", "-s", str(schedule_file), "--loglevel", loglevel]


def daphne_command(host: str, port: int) -> list[str]:
    return [PYTHON, "-m", "daphne", "-b", host, "-p", str(port), "puyu_site.asgi:application"]


def gpu_count() -> int:
    """GPUs by nvidia-smi: the launcher must not import torch (or initialise CUDA)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def worker_plan(cores: int, gpus: int) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, command, extra env) for each worker. Torch threads = cores ÷ busy ML workers: on 2
    cores two workers with 2 threads each ran 7× slower than with 1 each (ENVIRONMENT.md)."""
    plan = []
    # Per device: a `gpu` worker (training, evaluation) and a `serve` worker (model replicas,
    # which run for as long as their deployment does and must never block training); + `cpu`.
    ml_workers = 2 * max(gpus, 1) + 1
    threads = str(max(1, cores // ml_workers))
    if gpus:
        for index in range(gpus):
            plan.append((f"gpu{index}", celery_worker_command(f"gpu{index}", "gpu"),
                         {"CUDA_VISIBLE_DEVICES": str(index), "OMP_NUM_THREADS": threads}))
        for index in range(gpus):
            plan.append((f"serve{index}", celery_worker_command(f"serve{index}", "serve"),
                         {"CUDA_VISIBLE_DEVICES": str(index), "OMP_NUM_THREADS": threads}))
    else:
        plan.append(("gpu0", celery_worker_command("gpu0", "gpu"), {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}))
        plan.append(("serve0", celery_worker_command("serve0", "serve"), {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}))
    plan.append(("cpu", celery_worker_command("cpu", "cpu", pool="prefork", concurrency=1),
                 {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}))
    plan.append(("control", celery_worker_command("control", "control", pool="threads", concurrency=2),
                 {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}))
    return plan


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
        proc = subprocess.Popen(command, cwd=BASE_DIR, env=env, start_new_session=True)
        self.children.append((name, proc))
        print(f"[puyu] started {name} (pid {proc.pid})", flush=True)

    def stop_all(self, grace: float = 10.0) -> None:
        self.stopping = True
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # A worker in warm shutdown waits for its job; kill it. The job's lease expires and
                # the reaper re-queues it on the next start.
                print(f"[puyu] {name} did not stop in {grace:.0f} s; killing it", flush=True)
                proc.kill()
                proc.wait()

    def watch(self) -> int:
        while not self.stopping:
            for name, proc in self.children:
                code = proc.poll()
                if code is not None:
                    print(f"[puyu] {name} exited with status {code}; stopping everything", flush=True)
                    return 1
            time.sleep(0.5)
        return 0


def main() -> int:
    try:
        host = env_str("PUYU_HOST", "127.0.0.1")
        port = env_int("PUYU_PORT", 8000, minimum=1, maximum=65535)
        data_dir = env_path("PUYU_DATA_DIR", BASE_DIR / "var")
        redis_url = env_str("REDIS_URL", "")
        production = env_str("PUYU_ENV", "development", choices=("development", "production")) == "production"
    except SettingError as exc:
        print(f"[puyu] configuration error: {exc}", file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)

    redis = None
    if not redis_url:
        redis = EmbeddedRedis(persist_dir=data_dir / "redis").start()
        redis_url = redis.url
        print(f"[puyu] started the embedded Redis at {redis_url}", flush=True)

    env = {**os.environ, "REDIS_URL": redis_url, "PUYU_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    supervisor = Supervisor()

    def on_signal(signum, frame):
        supervisor.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        manage = [PYTHON, str(BASE_DIR / "manage.py")]
        steps = [manage + ["migrate", "--noinput", "-v", "0"], manage + ["ensure_admin"]]
        if production:
            steps.append(manage + ["collectstatic", "--noinput", "-v", "0"])
        for step in steps:
            subprocess.run(step, cwd=BASE_DIR, env=env, check=True)
        supervisor.spawn("web", daphne_command(host, port), env)
        for name, command, extra in worker_plan(os.cpu_count() or 1, gpu_count()):
            supervisor.spawn(f"worker {name}", command, {**env, **extra})
        supervisor.spawn("beat", celery_beat_command(data_dir / "celerybeat-schedule"), env)
        print(f"[puyu] Puyu Studio is up: http://{host}:{port}/  (Ctrl-C stops everything)", flush=True)
        status = supervisor.watch()
    except subprocess.CalledProcessError as exc:
        print(f"[puyu] {' '.join(exc.cmd[1:3])} failed with status {exc.returncode}", file=sys.stderr)
        status = 1
    finally:
        print("[puyu] stopping…", flush=True)
        supervisor.stop_all()
        if redis:
            redis.stop()
        print("[puyu] stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
