"""A warm shutdown hands a job back without using up an attempt, and without moving its cap: the
hand-backs are counted in `released_attempts`, the cap `max_attempts` applies to the other
attempts, and `attempts` (the lease's fencing token) only grows."""
import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.jobs import lifecycle, services, snapshot
from apps.jobs.models import Job, JobLogLine, JobStatus

HAND_BACK = "worker shutting down (checkpointed at step 4); the next worker resumes there"


@pytest.fixture
def job(owner):
    return services.submit_job(owner, "probe", {"seconds": 0})


def hand_back(job, worker="w1") -> int:
    """One claim ended by a warm shutdown; returns the attempt number it held."""
    attempt = lifecycle.claim(job.pk, worker).attempts
    assert lifecycle.release(job.pk, worker, attempt, HAND_BACK)
    return attempt


def lose_worker(job, worker) -> None:
    assert lifecycle.claim(job.pk, worker) is not None
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    lifecycle.reap_stale()


def test_several_warm_shutdowns_in_a_row_leave_the_attempt_cap_unchanged(job):
    for expected in range(1, 6):
        assert hand_back(job) == expected  # each start is a new attempt number
    job.refresh_from_db()
    assert (job.status, job.attempts, job.released_attempts, job.max_attempts) == (JobStatus.QUEUED, 5, 5, 3)
    assert job.counted_attempts == 0


def test_a_job_handed_back_more_times_than_its_cap_still_runs_and_succeeds(job):
    for _ in range(job.max_attempts + 4):
        hand_back(job)
    claimed = lifecycle.claim(job.pk, "w2")
    assert claimed is not None and (claimed.attempts, claimed.counted_attempts) == (8, 1)
    assert lifecycle.finish(job.pk, "w2", JobStatus.SUCCEEDED, result={}, attempt=claimed.attempts)
    job.refresh_from_db()
    assert (job.status, job.max_attempts) == (JobStatus.SUCCEEDED, 3)


def test_a_crash_still_uses_up_an_attempt_after_warm_shutdowns(job):
    for _ in range(4):
        hand_back(job)
    lose_worker(job, "w2")
    lose_worker(job, "w3")
    job.refresh_from_db()
    assert (job.status, job.counted_attempts) == (JobStatus.QUEUED, 2)
    assert job.progress_message == ("re-queued: worker lost "
                                    "(attempt 2 of 3 (run 6: 4 handed back at a worker shutdown))")
    lose_worker(job, "w4")
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error == "worker lost: the worker stopped responding on each of 3 attempts"
    assert (job.attempts, job.released_attempts, job.max_attempts) == (7, 4, 3)
    assert lifecycle.claim(job.pk, "w5") is None


def test_warm_shutdowns_between_crashes_do_not_give_back_a_crashed_attempt(job):
    lose_worker(job, "w1")
    hand_back(job, "w2")
    lose_worker(job, "w3")
    hand_back(job, "w4")
    lose_worker(job, "w5")
    job.refresh_from_db()
    assert (job.status, job.attempts, job.released_attempts) == (JobStatus.FAILED, 5, 2)


def test_the_fencing_still_refuses_a_stale_attempt_after_a_hand_back(job):
    """The same worker name claims the job again after handing it back: only the attempt number
    tells the two leases apart, so it must not be reused."""
    stale = hand_back(job, "w1")
    current = lifecycle.claim(job.pk, "w1").attempts
    assert current == stale + 1
    assert not lifecycle.renew_lease(job.pk, "w1", stale)
    assert not lifecycle.release(job.pk, "w1", stale, HAND_BACK)
    assert not lifecycle.finish(job.pk, "w1", JobStatus.SUCCEEDED, result={"stale": True}, attempt=stale)
    job.refresh_from_db()
    assert (job.status, job.attempts, job.released_attempts, job.result) == (JobStatus.RUNNING, current, 1, None)
    assert lifecycle.renew_lease(job.pk, "w1", current)


def test_a_refused_hand_back_writes_nothing(job):
    attempt = lifecycle.claim(job.pk, "w1").attempts
    lines = JobLogLine.objects.filter(job=job).count()
    assert not lifecycle.release(job.pk, "intruder", attempt, HAND_BACK)
    assert not lifecycle.release(job.pk, "w1", attempt + 1, HAND_BACK)
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.released_attempts, job.max_attempts) == (JobStatus.RUNNING, "w1", 0, 3)
    assert JobLogLine.objects.filter(job=job).count() == lines
    lifecycle.finish(job.pk, "w1", JobStatus.SUCCEEDED, result={}, attempt=attempt)
    assert not lifecycle.release(job.pk, "w1", attempt, HAND_BACK)  # a finished job is not handed back
    assert Job.objects.get(pk=job.pk).status == JobStatus.SUCCEEDED


def test_the_database_refuses_more_hand_backs_than_attempts(job):
    with pytest.raises(IntegrityError), transaction.atomic():
        Job.objects.filter(pk=job.pk).update(released_attempts=1)
    assert Job.objects.get(pk=job.pk).released_attempts == 0


def test_the_api_and_the_live_status_show_the_cap_the_job_was_created_with(client, owner, job):
    hand_back(job)
    hand_back(job)
    claimed = lifecycle.claim(job.pk, "w1")
    client.force_login(owner)
    body = client.get(f"/api/jobs/{job.pk}").json()
    assert {k: body[k] for k in ("attempts", "released_attempts", "counted_attempts", "max_attempts")} == {
        "attempts": 3, "released_attempts": 2, "counted_attempts": 1, "max_attempts": 3}
    status = snapshot.job_snapshot(claimed)  # what a (re)connecting page is sent first
    assert (status["attempts"], status["released_attempts"], status["counted_attempts"]) == (3, 2, 1)
    assert lifecycle.attempt_text(claimed, "w1") == "attempt 1 of 3 on w1 (run 3: 2 handed back at a worker shutdown)"


def test_the_job_page_shows_counted_attempts_of_the_cap_and_the_hand_backs_apart(client, owner, job):
    hand_back(job)
    hand_back(job)
    lifecycle.claim(job.pk, "w1")
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert '<span id="job-attempts">1</span>' in page and "of 3" in page
    assert '<span id="job-released-count">2</span>' in page
    assert 'id="job-released" class="muted" hidden' not in page


def test_a_job_never_handed_back_shows_no_hand_back_count(client, owner, job):
    lifecycle.claim(job.pk, "w1")
    client.force_login(owner)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert '<span id="job-attempts">1</span>' in page
    assert 'id="job-released" class="muted" hidden' in page


def test_the_migration_moves_logged_hand_backs_off_an_inflated_cap_without_changing_what_may_run(job, owner):
    """Rows from before: each hand-back raised max_attempts. Whatever the log tail still shows,
    attempts < max_attempts + released_attempts stays what it was, and the reverse undoes it."""
    migration = importlib.import_module("apps.jobs.migrations.0008_released_attempts")
    other = services.submit_job(owner, "probe", {"seconds": 0})
    # job: 3 hand-backs and a crash, cap raised to 6 the old way; other: 2 hand-backs, one line left
    Job.objects.filter(pk=job.pk).update(attempts=4, max_attempts=6)
    Job.objects.filter(pk=other.pk).update(attempts=2, max_attempts=5)
    for _ in range(3):
        lifecycle.append_log_line(job.pk, "warning", f"re-queued: {HAND_BACK}")
    lifecycle.append_log_line(job.pk, "warning", "worker lost: no heartbeat from w9")
    lifecycle.append_log_line(other.pk, "warning", f"re-queued: {HAND_BACK}")

    migration.move_hand_backs_off_the_cap(django_apps, None)
    job.refresh_from_db()
    other.refresh_from_db()
    assert (job.attempts, job.released_attempts, job.max_attempts, job.counted_attempts) == (4, 3, 3, 1)
    assert (other.released_attempts, other.max_attempts) == (1, 4)  # one line left: 4 + 1 is still 5

    migration.put_hand_backs_on_the_cap(django_apps, None)
    job.refresh_from_db()
    other.refresh_from_db()
    assert (job.released_attempts, job.max_attempts, other.released_attempts, other.max_attempts) == (0, 6, 0, 5)
