"""`make run`: start the whole studio in the foreground and stop all of it on Ctrl-C.

Starts a Redis (REDIS_URL when set, else the bundled redis-server on a free loopback port,
persisting under the data dir), migrates, creates the first admin, then runs daphne, one Celery
worker per GPU for queue `gpu` (one on the CPU when there is no GPU), one `serve` worker per GPU
(or one on the CPU) hosting several model replicas at once (its serve slots, see serve_slots), a
worker for queue `cpu`, a light worker for the `control` queue (the reaper must not wait behind
long jobs), and beat.

A child that dies (the OOM killer takes a training worker) is restarted with exponential backoff
(1 s, 2 s, 4 s … at most 30 s) while the others, the web server included, keep running; its job
is re-queued by the reaper and resumes from its checkpoint. Only Ctrl-C / SIGTERM, or a child that
keeps crashing (more than PUYU_RESTART_LIMIT exits within PUYU_RESTART_WINDOW_SECONDS), stops
everything; the exit status says which. Restarts are printed and written to
`<data dir>/launcher_status.json` (atomically), which the dashboard shows. No Django imports: the
children load the settings with the REDIS_URL chosen here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from puyu_site.env import SettingError, env_float, env_int, env_path, env_str
from puyu_site.redis_server import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def celery_worker_command(name: str, queues: str, pool: str = "solo", concurrency: int = 1, loglevel: str = "INFO",
                          host: str = "%h") -> list[str]:
    """`host`: the host part of the node name (`name@host`), which the job system records as the
    lease owner of each job the worker runs; celery's %h is this machine's host name."""
    return [PYTHON, "-m", "celery", "-A", "puyu_site", "worker", "-Q", queues, "-P", pool, "-c", str(concurrency),
            "-n", f"{name}@{host}", "--loglevel", loglevel, "--without-gossip", "--without-mingle"]


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


# A serve slot holds one replica (its own engine). What one takes with the engine's CPU defaults,
# measured: SmolLM2-135M in fp32 +1.3 GiB (weights, the exclusive lane's copy, 256 MiB of KV
# cache); the tiny test Llama as much (the manager's buffers grow with the KV token count). The
# OS, the web server and the other workers keep SLOT_RESERVE_BYTES.
SLOT_MEMORY_BYTES = 3 * 2**29  # 1.5 GiB
SLOT_RESERVE_BYTES = 2 * 2**30
MAX_DEFAULT_SERVE_SLOTS = 8
MAX_SERVE_SLOTS = 64


def total_memory_bytes() -> int:
    """The machine's RAM, or the container's memory limit (cgroup v2) when that is lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small laptop
        total = 8 * 10**9
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def default_serve_slots(memory_bytes: int, serve_workers: int = 1) -> int:
    """Replicas one serve worker hosts unless PUYU_SERVE_SLOTS says: (RAM - 2 GiB) / 1.5 GiB,
    shared by the serve workers, 1 to 8. A laptop with 8 GB gets 3, one with 16 GB 8. Total RAM,
    not what is free at start: the count must not change from one start to the next, and a slot
    is a limit, not a reservation (an idle studio holds no replica)."""
    slots = (memory_bytes - SLOT_RESERVE_BYTES) // SLOT_MEMORY_BYTES // max(1, serve_workers)
    return int(max(1, min(MAX_DEFAULT_SERVE_SLOTS, slots)))


def serve_slots(serve_workers: int = 1) -> int:
    """PUYU_SERVE_SLOTS (strict: a whole number from 1 to 64), else the default from memory."""
    return env_int("PUYU_SERVE_SLOTS", default_serve_slots(total_memory_bytes(), serve_workers),
                   minimum=1, maximum=MAX_SERVE_SLOTS)


def serve_worker_command(name: str, slots: int, loglevel: str = "INFO", host: str = "%h") -> list[str]:
    """A serve worker: a threads pool with one thread per slot. Each replica task holds its thread
    for the replica's life; with prefetch 1 and late acks the worker takes no more replica
    messages than it has slots, so a replica that finds none waits in the queue, where any
    worker with a free slot takes it."""
    return celery_worker_command(name, "serve", pool="threads", concurrency=slots, loglevel=loglevel, host=host)


def worker_plan(cores: int, gpus: int, slots: int | None = None) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, command, extra env) for each worker. Torch threads = cores ÷ busy ML workers: on 2
    cores two workers with 2 threads each ran 7× slower than with 1 each (ENVIRONMENT.md). A
    serve worker's replicas share its setting, each using that many threads while it decodes
    (1 on 2 cores): only busy replicas compete for the cores. `slots`: replicas per serve worker
    (None: serve_slots())."""
    plan = []
    # Per device: a `gpu` worker (training, evaluation) and a `serve` worker (model replicas,
    # which run for as long as their deployment does and must never block training); + `cpu`.
    ml_workers = 2 * max(gpus, 1) + 1
    threads = str(max(1, cores // ml_workers))
    slots = serve_slots(max(gpus, 1)) if slots is None else slots
    if gpus:
        for index in range(gpus):
            plan.append((f"gpu{index}", celery_worker_command(f"gpu{index}", "gpu"),
                         {"CUDA_VISIBLE_DEVICES": str(index), "OMP_NUM_THREADS": threads}))
        for index in range(gpus):
            plan.append((f"serve{index}", serve_worker_command(f"serve{index}", slots),
                         {"CUDA_VISIBLE_DEVICES": str(index), "OMP_NUM_THREADS": threads}))
    else:
        plan.append(("gpu0", celery_worker_command("gpu0", "gpu"), {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}))
        plan.append(("serve0", serve_worker_command("serve0", slots), {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}))
    plan.append(("cpu", celery_worker_command("cpu", "cpu", pool="prefork", concurrency=1),
                 {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads}))
    # Agent turns (the playground's tools): a threads pool, so a chat never waits behind training.
    plan.append(("agent", celery_worker_command("agent", "agent", pool="threads", concurrency=4),
                 {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}))
    plan.append(("control", celery_worker_command("control", "control", pool="threads", concurrency=2),
                 {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}))
    return plan


STATUS_FILE = "launcher_status.json"

# The management commands run before anything starts, in order. call_command skips the system
# checks that `manage.py <command>` runs first, so they run once, as the first step.
# starter and builtin_benchmarks only queue jobs (once per data dir): start-up never waits for
# them; the dashboard shows their progress. Both run on the `cpu` queue, one at a time: the
# starter's import goes first, as the first chat waits for it.
SETUP_STEPS = (("check",), ("migrate", "--noinput", "-v", "0"), ("ensure_admin",), ("starter",),
               ("builtin_benchmarks",))


def setup_command(steps=SETUP_STEPS) -> list[str]:
    """One process for every start-up step (run_setup_steps): Django is set up, and the system
    checks run, once instead of once per `manage.py` process. Measured on two busy cores, used data
    dir: four `manage.py` processes 12.6-15.4 s, one process 1.9 s (without the checks)."""
    return [PYTHON, "-m", "puyu_site.launcher", "--setup", json.dumps([list(step) for step in steps])]


def run_setup_steps(steps: list[list[str]]) -> int:
    """Run management commands in this process, in order, as `manage.py <step>` would; stop at the
    first that fails, saying which. Django is imported here only: the launcher itself must not."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "puyu_site.settings")
    import django
    from django.core.management import call_command
    from django.core.management.base import CommandError

    django.setup()
    for step in steps:
        try:
            call_command(*step)
        except CommandError as exc:
            print(f"[puyu] start-up step `manage.py {' '.join(step)}` failed: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    crashes: deque = field(default_factory=deque)  # monotonic times of recent exits
    restarts: int = 0
    last_exit: int | None = None
    last_restart_at: str | None = None
    restart_at: float | None = None  # monotonic time of a scheduled restart


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _window_text(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


class Supervisor:
    def __init__(self, status_path: Path | None = None, *, restart_limit: int = 5, window: float = 600.0,
                 backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        self.children: list[Child] = []
        self.stopping = False
        self.status_path = status_path
        self.restart_limit, self.window = restart_limit, window
        self.backoff, self.max_backoff = backoff, max_backoff

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> None:
        child = Child(name, command, env)
        self.children.append(child)
        self._start(child)

    def _start(self, child: Child) -> None:
        # Own session: Ctrl-C reaches only the supervisor, which stops children in order.
        child.proc = subprocess.Popen(child.command, cwd=BASE_DIR, env=child.env, start_new_session=True)
        child.restart_at = None
        verb = "restarted" if child.restarts else "started"
        print(f"[puyu] {verb} {child.name} (pid {child.proc.pid})", flush=True)
        self.write_status()

    def stop_all(self, grace: float = 30.0) -> None:
        self.stopping = True
        running = [c for c in reversed(self.children) if c.proc is not None]
        for child in running:
            if child.proc.poll() is None:
                child.proc.terminate()
        deadline = time.monotonic() + grace
        for child in running:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # A worker in warm shutdown checkpoints its training job and hands it back; one that
                # takes longer is killed. Its job's lease expires and the reaper re-queues it.
                print(f"[puyu] {child.name} did not stop in {grace:.0f} s; killing it", flush=True)
                child.proc.kill()
                child.proc.wait()
        self.write_status()

    def check(self, now: float | None = None) -> int | None:
        """One pass of the watch loop: note exits, schedule and perform restarts. Returns an exit
        status when the launcher must stop (a child keeps crashing), else None."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.restart_at is not None:
                if now >= child.restart_at and not self.stopping:
                    child.restarts += 1
                    child.last_restart_at = _now_iso()
                    self._start(child)
                continue
            code = child.proc.poll() if child.proc is not None else None
            if code is None:
                continue
            child.last_exit = code
            child.crashes.append(now)
            while child.crashes and child.crashes[0] < now - self.window:
                child.crashes.popleft()
            crashes = len(child.crashes)
            if crashes > self.restart_limit:
                print(f"[puyu] {child.name} exited with status {code}, {crashes} times within "
                      f"{_window_text(self.window)}; it keeps crashing, so stopping everything", flush=True)
                self.write_status()
                return 1
            delay = min(self.max_backoff, self.backoff * 2 ** (crashes - 1))
            child.restart_at = now + delay
            print(f"[puyu] {child.name} exited with status {code}; restarting in {delay:g} s "
                  f"(restart {crashes} of {self.restart_limit} in {_window_text(self.window)})", flush=True)
            self.write_status()
        return None

    def watch(self, interval: float = 0.5) -> int:
        while not self.stopping:
            status = self.check()
            if status is not None:
                return status
            time.sleep(interval)
        return 0

    def status(self) -> dict:
        children = {}
        for child in self.children:
            running = child.proc is not None and child.proc.poll() is None and child.restart_at is None
            children[child.name] = {
                "pid": child.proc.pid if child.proc is not None else None,
                "state": "running" if running else ("restarting" if child.restart_at is not None else "stopped"),
                "restarts": child.restarts, "last_exit_status": child.last_exit, "last_restart_at": child.last_restart_at,
            }
        return {"updated_at": _now_iso(), "launcher_pid": os.getpid(), "stopping": self.stopping, "children": children}

    def write_status(self) -> None:
        """Atomically (write a temp file, then rename): the dashboard never reads half a file."""
        if self.status_path is None:
            return
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1))
            os.replace(tmp, self.status_path)
        except OSError as exc:  # a full disk must not take the studio down
            print(f"[puyu] could not write {self.status_path.name}: {exc}", flush=True)


# Staged start: every worker imports Django and the tasks at start (about 3 s of a core each), and
# on two cores six of them at once kept daphne from answering for 13 s. What a chat with the
# starter needs starts first: the web server, the serve workers (the replicas), the control worker
# (its reconcile marks a replica ready) and beat; the rest once the web server answers, or after
# HEAD_START_MAX_SECONDS whatever happens. Jobs queued meanwhile wait in Redis, as always.
CHAT_PATH_QUEUES = ("serve", "control")
HEAD_START_MAX_SECONDS = 20.0


def chat_path_first(plan):
    """(the workers a chat needs, the others) of worker_plan's list, each in its order."""
    first = [entry for entry in plan if entry[0].rstrip("0123456789") in CHAT_PATH_QUEUES]
    return first, [entry for entry in plan if entry not in first]


def wait_for_web(supervisor: Supervisor, host: str, port: int, limit: float) -> bool:
    """Wait until the web server accepts connections (True), `limit` seconds pass, the launcher is
    told to stop or the web server exits (False: the watch loop restarts it; nothing else waits)."""
    address = ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host, port)
    deadline = time.monotonic() + limit
    web = supervisor.children[0]
    while time.monotonic() < deadline and not supervisor.stopping and web.proc.poll() is None:
        try:
            socket.create_connection(address, timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def main() -> int:
    try:
        host = env_str("PUYU_HOST", "127.0.0.1")
        port = env_int("PUYU_PORT", 8000, minimum=1, maximum=65535)
        data_dir = env_path("PUYU_DATA_DIR", BASE_DIR / "var")
        redis_url = env_str("REDIS_URL", "")
        production = env_str("PUYU_ENV", "development", choices=("development", "production")) == "production"
        restart_limit = env_int("PUYU_RESTART_LIMIT", 5, minimum=0, maximum=1000)
        restart_window = env_float("PUYU_RESTART_WINDOW_SECONDS", 600.0, minimum=1.0)
        stop_grace = env_float("PUYU_STOP_GRACE_SECONDS", 30.0, minimum=1.0)
        gpus = gpu_count()
        slots = serve_slots(max(gpus, 1))
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
    supervisor = Supervisor(data_dir / STATUS_FILE, restart_limit=restart_limit, window=restart_window)

    def on_signal(signum, frame):
        supervisor.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    status = 0
    try:
        steps = SETUP_STEPS + ((("collectstatic", "--noinput", "-v", "0"),) if production else ())
        subprocess.run(setup_command(steps), cwd=BASE_DIR, env=env, check=True)
        first, later = chat_path_first(worker_plan(os.cpu_count() or 1, gpus, slots))
        supervisor.spawn("web", daphne_command(host, port), env)
        for name, command, extra in first:
            supervisor.spawn(f"worker {name}", command, {**env, **extra})
        supervisor.spawn("beat", celery_beat_command(data_dir / "celerybeat-schedule"), env)
        wait_for_web(supervisor, host, port, HEAD_START_MAX_SECONDS)
        for name, command, extra in later:
            supervisor.spawn(f"worker {name}", command, {**env, **extra})
        print(f"[puyu] each serve worker hosts up to {slots} model replicas (PUYU_SERVE_SLOTS)", flush=True)
        print(f"[puyu] Puyu Studio is up: http://{host}:{port}/  (Ctrl-C stops everything)", flush=True)
        status = supervisor.watch()
    except subprocess.CalledProcessError as exc:
        print(f"[puyu] the start-up steps failed with status {exc.returncode} (the lines above say which)",
              file=sys.stderr)
        status = 1
    finally:
        print("[puyu] stopping…", flush=True)
        supervisor.stop_all(stop_grace)
        if redis:
            redis.stop()
        print("[puyu] stopped", flush=True)
    return status


if __name__ == "__main__":
    if sys.argv[1:2] == ["--setup"]:  # the start-up steps' own process (setup_command)
        sys.exit(run_setup_steps(json.loads(sys.argv[2])))
    sys.exit(main())
