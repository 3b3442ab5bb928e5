"""Idempotency records: one per user and Idempotency-Key (API) or one-time form token (`_once`).

The unique constraint is what makes two concurrent requests with one key create one object:
the second insert fails, and that request waits for the first one's response instead of running.
"""
from django.conf import settings
from django.db import models
from django.utils import timezone


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
