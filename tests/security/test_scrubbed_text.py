"""Errors and log lines are free text (exception messages, tracebacks): what users see of them
names no server folder. The data dir becomes relative, the code and the Python installation a
placeholder, when the text is stored (so the page, the API, the live stream and the downloadable
log agree)."""
from __future__ import annotations

import sys

import pytest
from django.conf import settings

from apps.jobs import lifecycle, services
from apps.jobs.models import Job, JobStatus
from workers.tasks.reporter import DatabaseReporter

REPO = str(settings.BASE_DIR)


def traceback_text() -> str:
    return (f'Traceback (most recent call last):\n  File "{sys.prefix}/lib/python3.11/site-packages/torch/nn.py", line 3\n'
            f'  File "{REPO}/workers/core/model_jobs.py", line 9\n'
            f"FileNotFoundError: {settings.MODEL_STORE_DIR}/abc/config.json is missing")


def assert_no_server_folder(text: str) -> None:
    for folder in (REPO, sys.prefix, str(settings.DATA_DIR)):
        assert folder not in text, f"{folder} shown in {text!r}"


@pytest.mark.promise("job params never show server paths or secrets")
def test_a_failed_jobs_error_names_data_dir_files_relatively_and_hides_other_server_folders(users):
    job = services.submit_job(users["owner"], "probe", {"seconds": 0})
    claimed = lifecycle.claim(job.pk, "w1")
    assert claimed is not None
    lifecycle.finish(job.pk, "w1", JobStatus.FAILED, error=traceback_text(), attempt=claimed.attempts)
    error = Job.objects.get(pk=job.pk).error
    assert_no_server_folder(error)
    assert "models/abc/config.json is missing" in error
    assert "(server path)/workers/core/model_jobs.py" in error


def test_a_log_line_with_a_traceback_is_stored_and_written_to_the_log_file_scrubbed(users, settings, tmp_path):
    settings.JOB_LOG_DIR = tmp_path  # job ids restart with each test database: keep this log apart
    job = services.submit_job(users["owner"], "probe", {"seconds": 0})
    claimed = lifecycle.claim(job.pk, "w1")
    reporter = DatabaseReporter(claimed, "w1")
    try:
        reporter.log(traceback_text(), "error")
    finally:
        reporter.close()
    line = Job.objects.get(pk=job.pk).log_lines.get().message
    assert_no_server_folder(line)
    assert "models/abc/config.json" in line
    assert_no_server_folder(Job.objects.get(pk=job.pk).log_path.read_text())
