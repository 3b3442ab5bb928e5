"""Real processes for integration and browser tests: Celery workers, beat and daphne, started
with the same command lines `make run` uses, against the test database file and test Redis."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from django.db import connection

from puyu_site.launcher import BASE_DIR, celery_beat_command, celery_worker_command, daphne_command
from puyu_site.redis_server import free_port


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        db_path = connection.settings_dict["NAME"]
        self.env = {**os.environ, "DATABASE_URL": f"sqlite:///{db_path}", "PYTHONUNBUFFERED": "1"}

    def _spawn(self, name: str, command: list[str], extra_env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(command, cwd=BASE_DIR, env={**self.env, **(extra_env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def worker(self, name: str = "gpu0", queues: str = "gpu,cpu") -> subprocess.Popen:
        return self._spawn(name, celery_worker_command(name, queues, loglevel="INFO"), {"CUDA_VISIBLE_DEVICES": ""})

    def beat(self) -> subprocess.Popen:
        # The control queue is served by a threads worker as in `make run`.
        self._spawn("control", celery_worker_command("control", "control", pool="threads", concurrency=2))
        return self._spawn("beat", celery_beat_command(self.log_dir / "celerybeat-schedule"))

    def web(self) -> str:
        port = free_port()
        self._spawn("web", daphne_command("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}"
        import urllib.request

        def up():
            try:
                return urllib.request.urlopen(url + "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(up, 30, 0.2, "daphne to answer /healthz")
        return url

    def kill(self, name: str) -> None:
        """SIGKILL, as when the machine or the OOM killer takes a worker."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
