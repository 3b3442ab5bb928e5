"""`make run`'s launcher: the worker plan, and the supervisor that restarts a crashed child with
backoff and stops everything only when one keeps crashing. (The real launcher end to end, with a
killed worker and Ctrl-C, is tests/reliability/test_launcher.py.)"""
import json
import os
import signal
import sys

from puyu_site.launcher import worker_plan
from tests.stack import wait_for


def test_without_gpus_one_gpu_queue_worker_runs_on_the_cpu_and_threads_are_shared():
    plan = {name: (command, env) for name, command, env in worker_plan(cores=8, gpus=0)}
    assert set(plan) == {"gpu0", "serve0", "cpu", "agent", "control"}
    assert plan["gpu0"][1] == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    assert "solo" in plan["gpu0"][0] and "threads" in plan["control"][0]


def test_agent_turns_get_a_threads_pool_worker_of_their_own():
    agent = {name: command for name, command, _ in worker_plan(cores=2, gpus=0)}["agent"]
    assert agent[agent.index("-Q") + 1] == "agent" and agent[agent.index("-P") + 1] == "threads"


def test_model_replicas_get_their_own_serve_worker_so_they_never_block_training():
    plan = {name: command for name, command, _ in worker_plan(cores=8, gpus=0, slots=3)}
    serve = plan["serve0"]
    assert serve[serve.index("-Q") + 1] == "serve" and serve[serve.index("-P") + 1] == "threads"  # tests/serving/test_slots.py
    assert all(command[command.index("-Q") + 1] != "serve" for name, command in plan.items() if name != "serve0")


def test_with_gpus_each_gpu_gets_its_own_pinned_worker():
    plan = worker_plan(cores=16, gpus=4)
    gpu_workers = [(name, env["CUDA_VISIBLE_DEVICES"]) for name, _, env in plan if name.startswith("gpu")]
    assert gpu_workers == [("gpu0", "0"), ("gpu1", "1"), ("gpu2", "2"), ("gpu3", "3")]
    serve_workers = [(name, env["CUDA_VISIBLE_DEVICES"]) for name, _, env in plan if name.startswith("serve")]
    assert serve_workers == [("serve0", "0"), ("serve1", "1"), ("serve2", "2"), ("serve3", "3")]
    assert {env["OMP_NUM_THREADS"] for name, _, env in plan if name != "control"} == {"1"}


def supervised(tmp_path, **options):
    from puyu_site.launcher import Supervisor

    supervisor = Supervisor(tmp_path / "launcher_status.json", **options)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    supervisor.spawn("web", sleeper, dict(os.environ))
    supervisor.spawn("worker gpu0", sleeper, dict(os.environ))
    return supervisor


def test_a_crashed_child_is_restarted_with_backoff_while_the_others_keep_running(tmp_path, capsys):
    supervisor = supervised(tmp_path, backoff=0.05)
    try:
        web, worker = (child.proc for child in supervisor.children)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        assert supervisor.check() is None
        assert "[puyu] worker gpu0 exited with status -9; restarting in 0.05 s (restart 1 of 5 in 10 min)" in capsys.readouterr().out
        wait_for(lambda: supervisor.check() is None and supervisor.children[1].proc.pid != worker.pid, 5, 0.02, "the restart")
        assert web.poll() is None and supervisor.children[1].proc.poll() is None
        status = json.loads((tmp_path / "launcher_status.json").read_text())
        assert status["children"]["worker gpu0"]["restarts"] == 1 and status["children"]["worker gpu0"]["state"] == "running"
        assert status["children"]["worker gpu0"]["last_exit_status"] == -9 and status["children"]["web"]["restarts"] == 0
    finally:
        supervisor.stop_all(grace=5)
    assert all(child.proc.poll() is not None for child in supervisor.children)


def test_the_backoff_doubles_and_a_child_that_keeps_crashing_stops_everything(tmp_path, capsys):
    supervisor = supervised(tmp_path, restart_limit=2, window=600, backoff=1.0)
    try:
        worker = supervisor.children[1]
        delays = []
        for crash in range(3):
            os.kill(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
            now = 1000.0 + crash * 10
            status = supervisor.check(now=now)
            if status is not None:
                break
            delays.append(worker.restart_at - now)
            supervisor.check(now=worker.restart_at)  # the backoff has passed: restart
        assert delays == [1.0, 2.0]
        assert status == 1
        assert "it keeps crashing, so stopping everything" in capsys.readouterr().out
        assert supervisor.children[0].proc.poll() is None  # the web server was never touched
    finally:
        supervisor.stop_all(grace=5)


def test_the_dashboard_shows_how_often_the_launcher_restarted_a_worker(client, owner, settings):
    (settings.DATA_DIR / "launcher_status.json").write_text(json.dumps({"children": {
        "worker gpu0": {"restarts": 2, "state": "running", "last_restart_at": "2026-12-03T11:00:05+00:00"},
        "web": {"restarts": 0, "state": "running"}}}))
    try:
        client.force_login(owner)
        page = client.get("/").content.decode()
    finally:
        (settings.DATA_DIR / "launcher_status.json").unlink()
    assert "worker gpu0 restarted 2 times, last at 2026-12-03 11:00:05" in page
    assert "web restarted" not in page


def test_the_workers_a_first_chat_needs_start_before_the_others():
    from puyu_site.launcher import chat_path_first

    first, later = chat_path_first(worker_plan(cores=2, gpus=2, slots=2))
    assert [name for name, *_ in first] == ["serve0", "serve1", "control"]
    assert [name for name, *_ in later] == ["gpu0", "gpu1", "cpu", "agent"]
