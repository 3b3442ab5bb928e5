"""Idempotency records: one per user and Idempotency-Key (API) or one-time form token (`_once`).

The unique constraint is what makes two concurrent requests with one key create one object:
the second insert fails, and that request waits for the first one's response instead of running.

Also the storage settings: how long checkpoints and prediction caches are kept (one row).
"""
from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

MAX_RETENTION_DAYS = 3650


class IdempotencyRecord(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # "api:<Idempotency-Key>" or "form:<_once token>": the two never collide.
    key = models.CharField(max_length=300)
    # SHA-256 of what the request asked for (method, path, body): the same key with another
    # request is refused rather than answered with an unrelated response.
    fingerprint = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The first response, kept to replay. status_code is null while the first request runs;
    # body is null when the response must not be replayed (it held a secret, or was streamed).
    status_code = models.PositiveSmallIntegerField(null=True)
    content_type = models.CharField(max_length=200, blank=True)
    location = models.CharField(max_length=2000, blank=True)
    body = models.BinaryField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_once_per_user")]

    def __str__(self) -> str:
        return f"{self.key} ({self.status_code or 'running'})"


class StorageSettings(models.Model):
    """How long the data dir keeps what can be made again (apps/studio/storage.py): one row
    (pk=1), edited by staff on the Storage page, applied by the maintenance beat task."""

    checkpoint_days = models.PositiveIntegerField(
        _("keep checkpoints for (days)"), default=0, validators=[MaxValueValidator(MAX_RETENTION_DAYS)],
        help_text=_("Checkpoint folders of a finished training run (succeeded, failed or cancelled) are deleted this "
                    "many days after it finished. The registered model or adapter is never touched, nor the "
                    "checkpoints of a run that is queued or running. In days, 0 to 3650; 0 keeps them forever "
                    "(the default)."))
    cache_days = models.PositiveIntegerField(
        _("keep prediction caches for (days)"), default=0, validators=[MaxValueValidator(MAX_RETENTION_DAYS)],
        help_text=_("Cached model predictions and per-sample files of evaluations are deleted this many days after "
                    "the last evaluation that used them finished; scores on the leaderboards stay. In days, 0 to 3650; "
                    "0 keeps them forever (the default)."))
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    updated_at = models.DateTimeField(null=True, blank=True)
    # Claimed by a conditional UPDATE, so two beat ticks never sweep at once.
    last_sweep_at = models.DateTimeField(null=True, blank=True)
    last_sweep = models.JSONField(default=dict, blank=True, help_text="what the last sweep deleted: counts and bytes")

    class Meta:
        verbose_name = _("storage settings")
        verbose_name_plural = _("storage settings")

    def __str__(self) -> str:
        return str(_("Storage settings"))

    @classmethod
    def load(cls) -> "StorageSettings":
        return cls.objects.get_or_create(pk=1)[0]
