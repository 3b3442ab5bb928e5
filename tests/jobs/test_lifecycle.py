"""The job state machine: claims, leases, the attempt cap, the reaper, cancel, dispatch."""
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.jobs import lifecycle, services
from apps.jobs.models import Job, JobLogLine, JobMetric, JobStatus
from tests.stack import wait_for


@pytest.fixture
def job(owner):
    return services.submit_job(owner, "probe", {"seconds": 0})


def expire_lease(job):
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_submitted_job_is_queued_with_validated_defaults(job):
    assert job.status == JobStatus.QUEUED
    assert job.params == {"seconds": 0.0, "steps": 1}
    assert (job.queue, job.attempts, job.max_attempts) == ("cpu", 0, 3)


def test_a_bad_parameter_is_refused_before_anything_is_stored(owner):
    with pytest.raises(services.InvalidParams) as error:
        services.submit_job(owner, "diagnostics", {"steps": -1})
    assert error.value.field == "steps"
    with pytest.raises(services.InvalidParams, match="queue"):
        services.submit_job(owner, "probe", {}, queue="tpu")
    assert Job.objects.count() == 0


def test_claiming_moves_a_job_to_running_with_a_lease_and_one_attempt(job):
    claimed = lifecycle.claim(job.pk, "w1")
    assert claimed.status == JobStatus.RUNNING
    assert (claimed.attempts, claimed.lease_owner) == (1, "w1")
    assert claimed.lease_expires_at > timezone.now()
    assert claimed.started_at is not None


def test_a_second_claimer_gets_nothing(job):
    assert lifecycle.claim(job.pk, "w1") is not None
    assert lifecycle.claim(job.pk, "w2") is None
    assert Job.objects.get(pk=job.pk).lease_owner == "w1"


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_one_job_produce_exactly_one_winner(owner):
    job = services.submit_job(owner, "probe", {"seconds": 0})
    barrier = threading.Barrier(2)
    results = {}

    def claim(name):
        barrier.wait()
        results[name] = lifecycle.claim(job.pk, name)
        connection.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in ("w1", "w2")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [name for name, got in results.items() if got is not None]
    assert len(winners) == 1
    refreshed = Job.objects.get(pk=job.pk)
    assert (refreshed.attempts, refreshed.lease_owner) == (1, winners[0])


def test_only_the_lease_holder_can_renew_or_finish(job):
    lifecycle.claim(job.pk, "w1")
    assert lifecycle.renew_lease(job.pk, "w1")
    assert not lifecycle.renew_lease(job.pk, "intruder")
    assert not lifecycle.finish(job.pk, "intruder", JobStatus.SUCCEEDED, result={})
    assert lifecycle.finish(job.pk, "w1", JobStatus.SUCCEEDED, result={"ok": 1})
    job.refresh_from_db()
    assert (job.status, job.result, job.progress) == (JobStatus.SUCCEEDED, {"ok": 1}, 1.0)
    assert not lifecycle.renew_lease(job.pk, "w1")  # a finished job has no lease


def test_a_finished_job_is_never_claimed_again(job):
    lifecycle.claim(job.pk, "w1")
    lifecycle.finish(job.pk, "w1", JobStatus.FAILED, error="boom")
    assert lifecycle.claim(job.pk, "w2") is None


def test_the_reaper_requeues_a_job_whose_lease_expired(job):
    lifecycle.claim(job.pk, "dead-worker")
    expire_lease(job)
    report = lifecycle.reap_stale()
    assert report.requeued == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.dispatched_at) == (JobStatus.QUEUED, "", None)
    assert "worker lost" in JobLogLine.objects.get(job=job).message
    assert lifecycle.claim(job.pk, "w2").attempts == 2


def test_the_reaper_leaves_jobs_with_a_live_lease_alone(job):
    lifecycle.claim(job.pk, "w1")
    assert lifecycle.reap_stale() == lifecycle.ReapReport([], [], [])
    assert Job.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_a_job_that_loses_its_worker_three_times_fails_with_worker_lost(job):
    for attempt in (1, 2, 3):
        assert lifecycle.claim(job.pk, f"w{attempt}").attempts == attempt
        expire_lease(job)
        lifecycle.reap_stale()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("worker lost")
    assert lifecycle.claim(job.pk, "w4") is None


def test_the_attempt_cap_holds_even_if_a_stale_message_arrives(job):
    Job.objects.filter(pk=job.pk).update(attempts=3)
    assert lifecycle.claim(job.pk, "w1") is None


def test_cancelling_a_queued_job_means_it_never_starts(job, owner):
    assert services.cancel_job(job, owner) == JobStatus.CANCELLED
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    assert lifecycle.claim(job.pk, "w1") is None


def test_cancelling_a_running_job_raises_its_flag_and_the_reaper_honours_it_if_the_worker_died(job, owner):
    lifecycle.claim(job.pk, "w1")
    assert services.cancel_job(job, owner) == JobStatus.RUNNING
    assert Job.objects.get(pk=job.pk).cancel_requested
    expire_lease(job)
    assert lifecycle.reap_stale().cancelled == [job.pk]
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_a_teammate_may_not_cancel_or_retry(job, users):
    with pytest.raises(services.PermissionDenied):
        services.cancel_job(job, users["teammate"])
    lifecycle.request_cancel(job)
    with pytest.raises(services.PermissionDenied):
        services.retry_job(Job.objects.get(pk=job.pk), users["teammate"])


def test_retry_creates_a_new_job_with_the_same_parameters(job, owner):
    services.cancel_job(job, owner)
    job.refresh_from_db()
    again = services.retry_job(job, owner)
    assert again.pk != job.pk
    assert (again.kind, again.params, again.queue, again.retry_of_id, again.status) == (
        job.kind, job.params, job.queue, job.pk, JobStatus.QUEUED)


def test_a_running_job_cannot_be_retried(job, owner):
    lifecycle.claim(job.pk, "w1")
    with pytest.raises(services.InvalidParams, match="only finished jobs"):
        services.retry_job(Job.objects.get(pk=job.pk), owner)


@pytest.mark.django_db(transaction=True)
def test_a_submitted_job_is_stamped_dispatched_with_its_row_and_its_publish_writes_nothing_after(owner, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from puyu_site.celery import app as celery_app

    published = []
    with CaptureQueriesContext(connection) as queries:
        monkeypatch.setattr(celery_app, "send_task", lambda *args, **kwargs: published.append(len(queries.captured_queries)))
        job = services.submit_job(owner, "probe", {"seconds": 0})
    assert len(published) == 1
    after = [q["sql"] for q in queries.captured_queries[published[0]:]]
    # a write after the publish would race the worker's claim for SQLite's one writer
    assert not [sql for sql in after if sql.lstrip().upper().startswith(("UPDATE", "INSERT"))], after
    stamped = Job.objects.get(pk=job.pk).dispatched_at
    assert stamped is not None and timezone.now() - stamped < timedelta(seconds=30)


@pytest.mark.django_db(transaction=True)
def test_a_job_submitted_while_redis_is_down_waits_undispatched_and_goes_out_when_it_is_back(owner, redis_server):
    redis_server.stop()
    started = time.monotonic()
    job = services.submit_job(owner, "probe", {"seconds": 0})
    assert time.monotonic() - started < 5  # the web request is not held hostage by the outage
    job.refresh_from_db()
    assert job.dispatched_at is None and job.status == JobStatus.QUEUED
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=60))
    assert list(lifecycle.undispatched().values_list("pk", flat=True)) == [job.pk]
    assert not services.dispatch(job.pk)
    redis_server.start()
    from workers.tasks.maintenance import maintain

    assert maintain()["dispatched"] == [job.pk]
    assert Job.objects.get(pk=job.pk).dispatched_at is not None
    assert not lifecycle.undispatched().exists()


@pytest.mark.django_db(transaction=True)
def test_a_running_job_stops_within_two_steps_of_a_cancel(owner):
    from workers.tasks.jobs import probe

    job = services.submit_job(owner, "probe", {"seconds": 60, "steps": 120})  # 0.5 s a step
    runner = threading.Thread(target=lambda: (probe.run(job.pk), connection.close()))
    runner.start()
    wait_for(lambda: Job.objects.get(pk=job.pk).progress > 0, 15, message="the job to make progress")
    services.cancel_job(Job.objects.get(pk=job.pk), owner)
    asked = time.monotonic()
    runner.join(30)
    stopped_after = time.monotonic() - asked
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED
    assert stopped_after < 2 * 0.5 + 1.0  # two steps, plus the 1 s cancel-flag poll
    assert "cancelled on request" in job.log_lines.last().message


@pytest.mark.django_db(transaction=True)
def test_the_task_records_metrics_logs_and_the_result(owner):
    from workers.tasks.jobs import diagnostics

    job = services.submit_job(owner, "diagnostics", {"steps": 3, "matmul_size": 32, "bandwidth_mb": 1})
    assert diagnostics.run(job.pk) == JobStatus.SUCCEEDED
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.result["device"] == "cpu"
    assert JobMetric.objects.filter(job=job, name="matmul_gflops").count() == 3
    assert job.log_path.read_text().count("\n") >= 3
    assert diagnostics.run(job.pk) == "skipped"  # a duplicate delivery does nothing


@pytest.mark.django_db(transaction=True)
def test_a_job_that_raises_fails_once_with_a_readable_reason(owner, monkeypatch):
    from workers.tasks import base
    from workers.tasks.jobs import probe

    def explode(kind, params, reporter):
        raise MemoryError("out of memory while allocating 3 GiB")

    monkeypatch.setattr(base, "run_core_job", explode)
    job = services.submit_job(owner, "probe", {})
    assert probe.run(job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.error == "MemoryError: out of memory while allocating 3 GiB"
    assert job.attempts == 1
    assert "Traceback" in job.log_lines.last().message


def test_metrics_are_idempotent_per_job_name_and_step(job):
    from workers.tasks.reporter import DatabaseReporter

    lifecycle.claim(job.pk, "w1")
    reporter = DatabaseReporter(Job.objects.get(pk=job.pk), "w1")
    reporter.metric("loss", 1, 2.5)
    reporter.metric("loss", 1, 2.0)  # a resumed job re-reports step 1
    reporter.close()
    assert list(JobMetric.objects.filter(job=job).values_list("step", "value")) == [(1, 2.0)]


def test_the_log_tail_in_the_database_is_bounded_while_the_file_keeps_everything(job, settings):
    from workers.tasks.reporter import DatabaseReporter

    settings.JOB_LOG_TAIL_LINES = 20
    lifecycle.claim(job.pk, "w1")
    reporter = DatabaseReporter(Job.objects.get(pk=job.pk), "w1")
    for i in range(1, 151):
        reporter.log(f"line {i}")
    reporter.close()
    kept = list(JobLogLine.objects.filter(job=job).values_list("seq", flat=True))
    assert len(kept) <= 20 + 50 and kept[-1] == 150 and kept[0] > 1
    assert job.log_path.read_text().count("\n") == 150


def test_a_batch_of_log_lines_and_its_progress_is_one_fenced_write_that_goes_on_from_the_claims_line(job):
    from workers.tasks.reporter import DatabaseReporter

    with transaction.atomic():  # as the task's run: the claim and its first line commit together
        claimed = lifecycle.claim(job.pk, "w1")
        first = lifecycle.append_log_line(job.pk, "info", "attempt 1 of 3 on w1")
    reporter = DatabaseReporter(claimed, "w1", first)
    reporter.log_batch(["step one", "step two"], progress=(0.5, "turn 1 of at most 2"))
    reporter.log("step three")
    job.refresh_from_db()
    assert list(job.log_lines.order_by("seq").values_list("seq", "message")) == [
        (1, "attempt 1 of 3 on w1"), (2, "step one"), (3, "step two"), (4, "step three")]
    assert (job.progress, job.progress_message) == (0.5, "turn 1 of at most 2")
    Job.objects.filter(pk=job.pk).update(lease_owner="w2")  # the reaper gave the job to another worker
    reporter.log_batch(["late step"], progress=(0.9, "late"))
    reporter.close()
    job.refresh_from_db()
    assert reporter.lost.is_set() and job.progress == 0.5 and not job.log_lines.filter(message="late step").exists()
    assert [line.split(" ", 3)[-1].strip() for line in job.log_path.read_text().splitlines()[-4:]] == [
        "attempt 1 of 3 on w1", "step one", "step two", "step three"]


def test_progress_reports_an_eta(job):
    from workers.tasks.reporter import DatabaseReporter

    lifecycle.claim(job.pk, "w1")
    reporter = DatabaseReporter(Job.objects.get(pk=job.pk), "w1")
    time.sleep(0.3)
    reporter.progress(0.25, "step 1/4")
    reporter.close()
    job.refresh_from_db()
    assert job.progress == 0.25 and job.progress_message == "step 1/4"
    assert 0.5 < job.eta_seconds < 3.0  # 0.3 s per quarter → ~0.9 s left


def test_a_succeeded_job_drops_its_in_flight_message_and_eta_but_a_failed_one_keeps_where_it_stopped(job, users):
    from apps.jobs import services
    from workers.tasks.reporter import DatabaseReporter

    other = services.submit_job(users["owner"], "probe", {"seconds": 0})
    for each, status in ((job, JobStatus.SUCCEEDED), (other, JobStatus.FAILED)):
        lifecycle.claim(each.pk, "w1")
        reporter = DatabaseReporter(Job.objects.get(pk=each.pk), "w1")
        reporter.progress(0.625, "step 5/8")
        reporter.close()
        lifecycle.finish(each.pk, "w1", status, result={} if status == JobStatus.SUCCEEDED else None)
        each.refresh_from_db()
    assert (job.progress_message, job.eta_seconds, job.progress) == ("", None, 1.0)
    assert (other.progress_message, other.eta_seconds) == ("step 5/8", None)


@pytest.mark.django_db(transaction=True)
def test_a_worker_shutting_down_publishes_a_message_it_takes_again_without_claiming_the_job(owner, monkeypatch):
    """A threads pool keeps taking messages until its consumer stops: a replica handed back by one
    slot came straight back to another slot of the same stopping worker, loaded, drained again
    and counted an attempt."""
    from workers.tasks import base, reporter
    from workers.tasks.jobs import probe

    job = services.submit_job(owner, "probe", {"seconds": 0})
    message = Job.objects.get(pk=job.pk).celery_task_id
    monkeypatch.setitem(reporter._suspend, "requested", True)
    monkeypatch.setattr(base, "HAND_BACK_PAUSE_SECONDS", 0)
    assert probe.run(job.pk) == "handed back"
    job.refresh_from_db()
    assert (job.status, job.attempts, job.started_at) == (JobStatus.QUEUED, 0, None)
    assert job.celery_task_id != message  # published again, for the next worker
    assert not job.log_lines.exists()
