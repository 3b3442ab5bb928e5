"""`make run`'s launcher: one command starts Redis, the web server, the workers and beat,
creates the first admin, and Ctrl-C stops every process it started."""
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from puyu_site.launcher import worker_plan
from puyu_site.redis_server import free_port
from tests.stack import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_without_gpus_one_gpu_queue_worker_runs_on_the_cpu_and_threads_are_shared():
    plan = {name: (command, env) for name, command, env in worker_plan(cores=8, gpus=0)}
    assert set(plan) == {"gpu0", "serve0", "cpu", "control"}
    assert plan["gpu0"][1] == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    assert "solo" in plan["gpu0"][0] and "threads" in plan["control"][0]


def test_model_replicas_get_their_own_solo_serve_worker_so_they_never_block_training():
    plan = {name: command for name, command, _ in worker_plan(cores=8, gpus=0)}
    serve = plan["serve0"]
    assert serve[serve.index("-Q") + 1] == "serve" and serve[serve.index("-P") + 1] == "solo"
    assert all(command[command.index("-Q") + 1] != "serve" for name, command in plan.items() if name != "serve0")


def test_with_gpus_each_gpu_gets_its_own_pinned_worker():
    plan = worker_plan(cores=16, gpus=4)
    gpu_workers = [(name, env["CUDA_VISIBLE_DEVICES"]) for name, _, env in plan if name.startswith("gpu")]
    assert gpu_workers == [("gpu0", "0"), ("gpu1", "1"), ("gpu2", "2"), ("gpu3", "3")]
    serve_workers = [(name, env["CUDA_VISIBLE_DEVICES"]) for name, _, env in plan if name.startswith("serve")]
    assert serve_workers == [("serve0", "0"), ("serve1", "1"), ("serve2", "2"), ("serve3", "3")]
    assert {env["OMP_NUM_THREADS"] for name, _, env in plan if name != "control"} == {"1"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.slow
@pytest.mark.integration
def test_the_launcher_starts_everything_creates_an_admin_and_stops_it_all_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "DJANGO_SUPERUSER", "DATABASE_URL"))}
    env.update(PUYU_DATA_DIR=str(tmp_path), PUYU_PORT=str(port), PYTHONUNBUFFERED="1")
    log = open(tmp_path / "launcher.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "puyu_site.launcher"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_for(healthy, 90, 0.3, "the web server")
        db = tmp_path / "puyu.sqlite3"
        wait_for(lambda: len(sqlite3.connect(db).execute("select name from jobs_workernode").fetchall()) == 4, 90, 0.5,
                 "four workers to report in")
        output = (tmp_path / "launcher.log").read_text()
        password = (tmp_path / "admin_password.txt").read_text().strip()
        assert f"username 'admin', password '{password}'" in output
        assert "started the embedded Redis" in output
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
        assert len(pids) == 6  # web, gpu0, serve0, cpu, control, beat
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    output = (tmp_path / "launcher.log").read_text()
    assert code == 0, output[-3000:]
    assert "[puyu] stopped" in output
    assert not [pid for pid in pids if alive(pid)]
    redis_port = int(re.search(r"redis://127.0.0.1:(\d+)/0", output).group(1))
    from puyu_site.redis_server import ping

    assert not ping(redis_port)
