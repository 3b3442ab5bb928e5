"""`make run` end to end and under a crash: the real launcher (`python -m puyu_site.launcher`)
starts its own Redis, the web server, the workers and beat on the test database, and creates the
first admin. A tiny training job submitted here is published to the test session's Redis, which
the studio does not read: to the studio that message is lost, and its beat publishes it again
(the lost-message check). Then `kill -9` of the `gpu` worker (what the OOM killer does) leaves
the web answering, the launcher restarts the worker with backoff and says so (output, status file,
dashboard), the job resumes as attempt 2 and succeeds, and Ctrl-C stops every process."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from apps.jobs.models import FINISHED_STATUSES, Job, JobStatus, WorkerNode
from puyu_site.redis_server import free_port
from tests.reliability.conftest import losses
from tests.stack import database_url, wait_for

ROOT = Path(__file__).resolve().parents[2]


def healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
    except OSError:
        return False


class Launcher:
    """The launcher as a user starts it, on this test's database file, Redis and data dir."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port, self.log_path = free_port(), log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_SUPERUSER", "REDIS_URL"))}
        env.update(PUYU_DATA_DIR=str(data_dir), PUYU_PORT=str(self.port), PYTHONUNBUFFERED="1",
                   DATABASE_URL=database_url(), PUYU_JOB_MESSAGE_CHECK_SECONDS="1",
                   PUYU_STARTER="off")  # this test is about crashes: no starter import beside its training job
        self.proc = subprocess.Popen([sys.executable, "-m", "puyu_site.launcher"], cwd=ROOT, env=env,
                                     stdout=open(log_path, "w"), stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pid_of(self, name: str) -> int:
        return int(re.findall(rf"\[puyu\] (?:re)?started {name} \(pid (\d+)\)", self.output())[-1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(90)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.promise("a crashed worker under make run: web stays up, worker restarts, job resumes")
def test_the_launcher_runs_everything_restarts_a_killed_gpu_worker_while_the_web_answers_and_stops_it_all_on_ctrl_c(
        transactional_db, submit_training, settings, client, owner, tmp_path, promise_figure):
    import redis

    status_file = settings.DATA_DIR / "launcher_status.json"
    launcher = Launcher(settings.DATA_DIR, tmp_path / "launcher.log")
    try:
        wait_for(lambda: healthy(launcher.port), 120, 0.3, f"the web server\n{launcher.output()[-2000:]}")
        wait_for(lambda: WorkerNode.objects.filter(name__startswith="gpu0@").exists(), 120, 0.3, "the gpu worker")
        output = launcher.output()
        password = (settings.DATA_DIR / "admin_password.txt").read_text().strip()
        assert "Created the first admin account: username 'admin'; its password is in" in output
        assert password not in output and "started the embedded Redis" in output  # kept in a mode-600 file only
        pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
        assert len(pids) == 7  # web, gpu0, serve0, cpu, agent, control, beat

        job = submit_training()
        wait_for(lambda: len(losses(job)) >= 2, 240, 0.1, f"two training steps\n{launcher.output()[-2000:]}")
        assert job.log_lines.filter(message__contains="message was lost by the broker").exists()
        killed = launcher.pid_of("worker gpu0")
        os.kill(killed, signal.SIGKILL)

        wait_for(lambda: "[puyu] restarted worker gpu0" in launcher.output(), 30, 0.1, "the launcher to restart gpu0")
        assert healthy(launcher.port)  # the web never went down
        assert ("[puyu] worker gpu0 exited with status -9; restarting in 1 s (restart 1 of 5 in 10 min)"
                in launcher.output())
        pids.append(launcher.pid_of("worker gpu0"))
        assert pids[-1] != killed and launcher.proc.poll() is None
        wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=FINISHED_STATUSES).exists(), 240, 0.25,
                 f"the job to finish\n{launcher.output()[-3000:]}")
        job.refresh_from_db()
        assert job.status == JobStatus.SUCCEEDED, job.error
        assert job.attempts == 2 and sorted(losses(job)) == list(range(1, job.params["max_steps"] + 1))
        client.force_login(owner)
        assert "worker gpu0 restarted 1 time, last at" in client.get("/").content.decode()
    finally:
        code = launcher.stop()
        status_file.unlink(missing_ok=True)
        (settings.DATA_DIR / "admin_password.txt").unlink(missing_ok=True)
        redis.Redis.from_url(settings.REDIS_URL).delete("gpu")  # the first message, which nobody read
    output = launcher.output()
    assert code == 0 and "[puyu] stopped" in output, output[-3000:]
    assert not [pid for pid in pids if alive(pid)]
    from puyu_site.redis_server import ping

    assert not ping(int(re.search(r"redis://127.0.0.1:(\d+)/0", output).group(1)))
    promise_figure("web answered throughout; gpu0 restarted after 1 s; job SUCCEEDED on attempt 2")


def test_the_start_up_steps_run_in_one_process_in_order(db, monkeypatch, settings, tmp_path):
    from django.contrib.auth import get_user_model

    from puyu_site import launcher

    command = launcher.setup_command()
    assert command[:4] == [sys.executable, "-m", "puyu_site.launcher", "--setup"]
    assert [step[0] for step in json.loads(command[4])] == ["check", "migrate", "ensure_admin", "starter",
                                                             "builtin_benchmarks"]
    settings.DATA_DIR = tmp_path  # ensure_admin writes the generated password there
    monkeypatch.setenv("PUYU_STARTER", "off")
    assert launcher.run_setup_steps([["ensure_admin"], ["starter"]]) == 0
    assert get_user_model().objects.filter(is_superuser=True, username="admin").exists()


def test_a_failing_start_up_step_stops_the_others_and_says_which(db, monkeypatch, settings, tmp_path, capsys):
    from django.contrib.auth import get_user_model

    from puyu_site import launcher

    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("PUYU_STARTER", "sometimes")
    assert launcher.run_setup_steps([["starter"], ["ensure_admin"]]) == 1
    err = capsys.readouterr().err
    assert "[puyu] start-up step `manage.py starter` failed: PUYU_STARTER" in err
    assert not get_user_model().objects.filter(is_superuser=True).exists()  # ensure_admin never ran
