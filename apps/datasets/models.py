"""Datasets: uploads waiting for a decision, and immutable versions stored once in a normalized
JSONL form (see workers/core/data/schema.py) under the data dir, at a path built from ids."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext, pgettext_lazy

# Where a version came from (DatasetVersion.source), as the pages name it.
SOURCES = {"upload": pgettext_lazy("dataset source", "upload"), "cleaning": pgettext_lazy("dataset source", "cleaning"),
           "generator": pgettext_lazy("dataset source", "generator"), "hub": pgettext_lazy("dataset source", "hub"),
           "feedback": pgettext_lazy("dataset source", "feedback"), "builtin": pgettext_lazy("dataset source", "builtin")}
# The canonical formats (workers/core/data/schema.py CANONICAL_FORMATS) where a sentence or a
# choice names one as a word; shown as itself, a format is code.
FORMATS = {"text": pgettext_lazy("dataset format", "text"), "chat": pgettext_lazy("dataset format", "chat"),
           "preference": pgettext_lazy("dataset format", "preference"),
           "multiple_choice": pgettext_lazy("dataset format", "multiple_choice"),
           "qa": pgettext_lazy("dataset format", "qa"), "code": pgettext_lazy("dataset format", "code")}


class Dataset(models.Model):
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="datasets")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_dataset_name_per_owner")]

    def __str__(self) -> str:
        return self.name


class DatasetUpload(models.Model):
    """An uploaded file and its validation report, until the user creates a version from it."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="uploads")
    filename = models.CharField(max_length=255)
    stored_name = models.CharField(max_length=80)  # a uuid under UPLOAD_DIR, never the user's name
    size_bytes = models.BigIntegerField()
    format = models.CharField(max_length=20, blank=True, help_text="explicit override; blank = detect")
    column_map = models.JSONField(default=dict, blank=True)
    report = models.JSONField(null=True, blank=True)
    # The upload created its dataset: when the import refuses the file and the dataset holds
    # nothing else, the dataset goes with it (services.forget_refused_upload).
    created_dataset = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def path(self):
        return settings.UPLOAD_DIR / self.stored_name

    @property
    def owner_id(self):
        return self.dataset.owner_id


class DatasetVersion(models.Model):
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    source = models.CharField(max_length=20, help_text="upload, cleaning, generator, hub, feedback")
    source_detail = models.CharField(max_length=300, blank=True)
    source_format = models.CharField(max_length=20)
    canonical = models.CharField(max_length=20)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    source_job = models.OneToOneField("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_dataset")
    sha256 = models.CharField(max_length=64, db_index=True)
    rows = models.IntegerField()
    size_bytes = models.BigIntegerField()
    excluded = models.JSONField(default=dict, blank=True, help_text="{count, lines (first 1000), reasons}")
    stats = models.JSONField(default=dict, blank=True)
    cleaning_report = models.JSONField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [models.UniqueConstraint(fields=["dataset", "number"], name="unique_dataset_version_number")]

    def __str__(self) -> str:
        return f"{self.dataset.name} v{self.number}"

    @property
    def source_label(self):
        return SOURCES.get(self.source, self.source)

    @property
    def canonical_label(self):
        return FORMATS.get(self.canonical, self.canonical)

    @property
    def choice_label(self) -> str:
        """"gsm8k v1 (qa, 1,319 rows)": the version among a form's choices."""
        return gettext("%(version)s (%(format)s, %(rows)s rows)") % {
            "version": self, "format": self.canonical_label, "rows": f"{self.rows:,}"}

    @property
    def path(self):
        return settings.DATASET_STORE_DIR / f"{self.uid}.jsonl"


class DatasetVersionUse(models.Model):
    """A job that reads a version: deleting the version is refused while the job is active, and
    the version page lists every job that used it."""

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="uses")
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="dataset_uses")
    role = models.CharField(max_length=20)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "job", "role"], name="unique_dataset_use")]


class DatasetRequest(models.Model):
    """What a dataset job will register when it succeeds (one per job)."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="dataset_request")
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="+")
    uid = models.UUIDField(default=uuid.uuid4, unique=True)
    upload = models.ForeignKey(DatasetUpload, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    parent = models.ForeignKey(DatasetVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=20)
