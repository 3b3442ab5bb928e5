"""A job kind is declared once (workers/core/kinds.py); the job model's choices, the web side's
task catalog and the Celery tasks all follow from that one entry."""
from __future__ import annotations

import pytest

from apps.jobs.models import Job, JobKind
from workers.core.kinds import CORE_JOBS
from workers.tasks import catalog


def test_the_job_model_offers_exactly_the_declared_kinds_with_their_labels():
    assert JobKind.choices == [(name, job.label) for name, job in CORE_JOBS.items()]
    assert Job._meta.get_field("kind").choices == JobKind.choices


def test_the_catalog_routes_every_declared_kind_to_its_task_and_queue():
    assert set(catalog.KINDS) == set(CORE_JOBS)
    for name, job in CORE_JOBS.items():
        assert catalog.task_name(name) == job.task_name
        assert catalog.KINDS[name].default_queue in ("gpu", "cpu", "serve", "agent")


def test_only_kinds_that_touch_no_file_are_generic():
    assert catalog.GENERIC_KINDS == ("diagnostics", "probe")
    assert set(catalog.APP_KINDS) == set(CORE_JOBS) - set(catalog.GENERIC_KINDS)
    with pytest.raises(catalog.InvalidParams, match="leaderboards"):
        catalog.check_generic_kind("evaluate")


def test_every_declared_kind_has_a_registered_celery_task_and_an_importable_runner():
    from puyu_site.celery import app

    app.loader.import_default_modules()
    for name, job in CORE_JOBS.items():
        assert job.task_name in app.tasks, f"{name}: no Celery task named {job.task_name}"
        assert callable(job.run), name


def test_the_migrations_hold_every_declared_kind(db):
    """A kind added to the declaration without its migration would fail here (and in makemigrations --check)."""
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.state import ProjectState
    from django.apps import apps

    loader = MigrationLoader(None, ignore_no_migrations=True)
    changes = MigrationAutodetector(loader.project_state(), ProjectState.from_apps(apps)).changes(graph=loader.graph)
    assert "jobs" not in changes
