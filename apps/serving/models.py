"""Deployments (a registry version or alias served by N replica jobs), their replicas, the API
keys that call them and the tokens each key used per day.

A deployment's OpenAI `model` id is "<owner username>/<deployment name>"; the key's own
deployments may also be called by their bare name (see access.resolve_model)."""
from __future__ import annotations

import secrets

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

# One hash for every secret the studio issues (API tokens and serving keys).
from apps.accounts.models import hash_token

KEY_PREFIX = "sk-puyu-"


class DeploymentState(models.TextChoices):
    STARTING = "starting", _("Starting")
    READY = "ready", _("Ready")
    DRAINING = "draining", _("Draining")
    STOPPED = "stopped", _("Stopped")
    FAILED = "failed", _("Failed")


ACTIVE_STATES = (DeploymentState.STARTING, DeploymentState.READY, DeploymentState.DRAINING)


class Deployment(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="deployments")
    name = models.SlugField(max_length=60)
    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="deployments")
    # Exactly one of: a pinned version, or the name of an alias of `model` that the deployment follows.
    version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="deployments")
    alias = models.SlugField(max_length=40, blank=True)
    replicas = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(0)])
    queue = models.CharField(max_length=20, default="serve")
    engine_options = models.JSONField(default=dict, blank=True, help_text="ReplicaSpec fields (validated by the core's spec)")
    max_queue = models.PositiveIntegerField(default=64)
    request_timeout_s = models.FloatField(default=120.0)
    state = models.CharField(max_length=10, choices=DeploymentState.choices, default=DeploymentState.STARTING, db_index=True)
    state_reason = models.TextField(blank=True)
    restarts = models.PositiveIntegerField(default=0)
    max_restarts = models.PositiveIntegerField(default=3)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_deployment_name_per_owner")]

    def __str__(self) -> str:
        return self.served_name

    @property
    def served_name(self) -> str:
        """The OpenAI `model` id."""
        return f"{self.owner.username}/{self.name}"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def follows(self) -> str:
        return f"{self.model.name}@{self.alias}" if self.alias else str(self.version)


class Replica(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="replica")
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="+")
    replica_id = models.CharField(max_length=40)
    # queued | starting | loading | ready | draining | stopped | failed (job state + the Redis hash)
    state = models.CharField(max_length=10, default="queued")
    STATES = {"queued": pgettext_lazy("replica state", "queued"), "starting": pgettext_lazy("replica state", "starting"),
              "loading": pgettext_lazy("replica state", "loading"), "ready": pgettext_lazy("replica state", "ready"),
              "draining": pgettext_lazy("replica state", "draining"), "stopped": pgettext_lazy("replica state", "stopped"),
              "failed": pgettext_lazy("replica state", "failed")}
    # Why the studio drains it ("stopped by alice", "scaled down to 1 replica(s)"): set, its job's
    # end is the normal one (SUCCEEDED); blank, a cancel of the job itself (CANCELLED).
    stop_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["deployment", "replica_id"], name="unique_replica_id")]

    def __str__(self) -> str:
        return f"{self.deployment} replica {self.replica_id}"



class ApiKey(models.Model):
    """An OpenAI-style key (`sk-puyu-…`). Only its SHA-256 is stored; the secret is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="serving_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=20)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(default=60, help_text="requests per minute; 0 = no limit")
    token_quota_per_day = models.PositiveIntegerField(default=1_000_000, help_text="prompt + completion tokens per UTC day; 0 = no limit")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str, **limits) -> tuple[ApiKey, str]:
        """A new key with the given limits (staff, tests) or the settings' defaults."""
        limits.setdefault("rate_limit_per_minute", settings.SERVING_DEFAULT_RATE_LIMIT_PER_MINUTE)
        limits.setdefault("token_quota_per_day", settings.SERVING_DEFAULT_TOKEN_QUOTA_PER_DAY)
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        key = cls.objects.create(user=user, name=name[:100], prefix=raw[: len(KEY_PREFIX) + 6], key_hash=hash_token(raw), **limits)
        return key, raw

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])


class UsageDay(models.Model):
    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="usage")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="usage")
    date = models.DateField()
    requests = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["-date", "key", "deployment"]
        constraints = [models.UniqueConstraint(fields=["key", "deployment", "date"], name="unique_usage_day")]

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
