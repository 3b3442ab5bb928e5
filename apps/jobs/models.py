"""The job model family: one row per job is the truth; Celery messages carry only its id."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.studio.labels import core_text_lazy, job_title
from workers.tasks.catalog import kind_choices


class JobStatus(models.TextChoices):
    QUEUED = "QUEUED", _("Queued")
    RUNNING = "RUNNING", _("Running")
    SUCCEEDED = "SUCCEEDED", _("Succeeded")
    FAILED = "FAILED", _("Failed")
    CANCELLED = "CANCELLED", _("Cancelled")


FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


# Declared once with the kind itself (workers/core/kinds.py, through the task catalog); the label
# in the reader's language where the catalogue has it (apps/studio/labels.py).
JobKind = models.TextChoices("JobKind", [(name.upper(), (name, core_text_lazy(label))) for name, label in kind_choices()])


class Job(models.Model):
    kind = models.CharField(max_length=40, choices=JobKind.choices, db_index=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    title = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    queue = models.CharField(max_length=20, default="cpu")
    params = models.JSONField(default=dict, blank=True)
    resources = models.JSONField(default=dict, blank=True, help_text="requested resources, e.g. {'gpus': 1}")
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")

    # `attempts` counts every claim and is the lease's fencing token (it never goes back);
    # `released_attempts` counts the claims a warm shutdown handed back (checkpointed, not failed).
    # The cap `max_attempts` applies to the difference, `counted_attempts`: a worker that restarts
    # many times never fails the job, and the cap the job was created with is the cap shown.
    attempts = models.PositiveSmallIntegerField(default=0)
    released_attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The heartbeat proves the worker lives; this proves the job moves: set at claim and by every
    # progress, log or metric write. The reaper fails a RUNNING job whose last sign of
    # progress is older than JOB_NO_PROGRESS_SECONDS (a hung job).
    progress_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    celery_task_id = models.CharField(max_length=80, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="when its message was published to the broker (cleared when a publish fails)")

    progress = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=200, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="readable reason for FAILED")

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "lease_expires_at"]), models.Index(fields=["owner", "-created_at"])]
        constraints = [models.CheckConstraint(condition=models.Q(released_attempts__lte=models.F("attempts")),
                                              name="job_released_attempts_within_attempts")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def counted_attempts(self) -> int:
        """The attempts that count against `max_attempts`: those not handed back at a warm shutdown."""
        return self.attempts - self.released_attempts

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def display_title(self) -> str:
        return job_title(self.kind, self.title) if self.title else str(self)

    @property
    def log_path(self):
        """The full log file; paths are built from ids only."""
        return settings.JOB_LOG_DIR / str(int(self.pk)) / "job.log"


class JobLogLine(models.Model):
    """The last N log lines of a job (the full log is a file under the data dir)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    level = models.CharField(max_length=10, default="info")
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_job_log_seq")]


class JobMetric(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=80)
    step = models.IntegerField()
    value = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "step"]
        # Idempotent recording: a retried or resumed job rewrites a point, never duplicates it.
        constraints = [models.UniqueConstraint(fields=["job", "name", "step"], name="unique_job_metric_point")]


class WorkerNode(models.Model):
    """A Celery worker process as last seen through its own heartbeat."""

    name = models.CharField(max_length=200, unique=True)  # celery node name, e.g. gpu0@host
    hostname = models.CharField(max_length=200)
    queues = models.JSONField(default=list)
    pid = models.IntegerField(null=True)
    devices = models.JSONField(default=dict)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
