"""The deployment checks Django ships pass in production, and the Celery workers refuse pickle
(a pickled message is code execution on the worker for anyone who can reach Redis)."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.stack import wait_for

BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.mark.promise("check --deploy passes")
def test_check_deploy_passes_with_the_production_environment(tmp_path, promise_figure):
    env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update({"PUYU_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "studio.example.org",
                "PUYU_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"})
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=BASE_DIR,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    promise_figure("0 warnings at --fail-level WARNING")


class Canary:
    """Unpickling this creates the canary file: if the worker ever deserialises pickle, it shows."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.promise("Celery refuses pickle")
def test_a_pickled_message_to_a_real_worker_is_refused_and_nothing_runs(stack, tmp_path, promise_figure):
    import redis
    from django.conf import settings
    from kombu import Connection, Exchange, Queue

    canary = tmp_path / "canary"
    stack.worker("cpu0", queues="cpu")
    wait_for(lambda: "ready." in stack.log("cpu0"), 60, 0.2, "the worker to start")

    task_id = str(uuid.uuid4())
    headers = {"lang": "py", "task": "jobs.maintain", "id": task_id, "root_id": task_id, "parent_id": None,
               "group": None, "retries": 0, "eta": None, "expires": None, "argsrepr": "()", "kwargsrepr": "{}"}
    queue = Queue("cpu", Exchange("cpu", type="direct"), routing_key="cpu")
    with Connection(settings.CELERY_BROKER_URL) as connection:
        connection.Producer().publish(((Canary(canary),), {}, {}), serializer="pickle", exchange=queue.exchange,
                                      routing_key="cpu", declare=[queue], headers=headers)

    wait_for(lambda: "Refusing to deserialize" in stack.log("cpu0"), 60, 0.2, "the worker to refuse the message")
    assert not canary.exists()
    assert "application/x-python-serialize" in stack.log("cpu0")
    # Refused for good: not left in the queue to be retried.
    assert redis.Redis.from_url(settings.REDIS_URL).llen("cpu") == 0
    assert stack.procs["cpu0"].poll() is None  # and the worker keeps running
    promise_figure("refused with ContentDisallowed, canary not created")
