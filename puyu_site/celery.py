"""The Celery app. Configuration lives in Django settings under the CELERY_ namespace."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "puyu_site.settings")

app = Celery("puyu")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Tasks live in workers/tasks, not in the apps (the apps never import the worker core).
app.conf.imports = ("workers.tasks.jobs", "workers.tasks.registry", "workers.tasks.datasets", "workers.tasks.training", "workers.tasks.serving", "workers.tasks.maintenance", "workers.tasks.presence", "workers.tasks.leaderboards", "workers.tasks.playground")
# Jobs are published to their own queue (apps/jobs/services._publish); this route covers a task
# sent by name without one: agent turns always go to the `agent` queue's threads-pool worker.
app.conf.task_routes = {"playground.agent_turn": {"queue": "agent"}}
