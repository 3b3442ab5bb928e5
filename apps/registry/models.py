"""The model registry: models, their versions (base, adapter, merged, quantized) with lineage,
and aliases that deployments and evaluations follow. Files live under the data dir at a path
built from the version's uuid only."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _


class RegisteredModel(models.Model):
    name = models.CharField(max_length=100)
    architecture = models.CharField(max_length=100, blank=True, db_index=True)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="registered_models")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_model_name_per_owner")]

    def __str__(self) -> str:
        return self.name


class VersionKind(models.TextChoices):
    BASE = "base", _("Base")
    ADAPTER = "adapter", _("Adapter")
    MERGED = "merged", _("Merged")
    QUANTIZED = "quantized", _("Quantized")


class ModelVersion(models.Model):
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=VersionKind.choices)
    # Lineage: an adapter's base; a merged version's base (and `adapter`); a quantized version's source.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    adapter = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="merged_into")
    source = models.CharField(max_length=40, help_text="import:folder, import:archive, import:starter, import:hub, or a job kind")
    source_detail = models.CharField(max_length=300, blank=True)
    source_job = models.OneToOneField("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_version")

    architecture = models.CharField(max_length=100, blank=True)
    parameter_count = models.BigIntegerField(default=0)
    context_length = models.IntegerField(null=True, blank=True)
    dtype = models.CharField(max_length=40, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    has_chat_template = models.BooleanField(default=False)
    files = models.JSONField(default=list, help_text="[{path, size, sha256}]")
    adapter_config = models.JSONField(null=True, blank=True)
    quantization = models.JSONField(null=True, blank=True)
    evaluation = models.JSONField(default=dict, blank=True, help_text="e.g. perplexity before/after quantization")
    notes = models.TextField(blank=True)

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [models.UniqueConstraint(fields=["model", "number"], name="unique_version_number")]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.number}"

    @property
    def choice_label(self) -> str:
        """"smollm v2 (adapter, 135,000,000 parameters)": the version among a form's choices."""
        return gettext("%(version)s (%(kind)s, %(parameters)s parameters)") % {
            "version": self, "kind": self.get_kind_display().lower(), "parameters": f"{self.parameter_count:,}"}

    @property
    def path(self):
        return settings.MODEL_STORE_DIR / str(self.uid)

    @property
    def owner_id(self):
        return self.model.owner_id

    def file_names(self) -> set[str]:
        return {f["path"] for f in self.files}


class ModelAlias(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.SlugField(max_length=40)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="unique_alias_per_model")]
        verbose_name_plural = "model aliases"

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


class AliasMove(models.Model):
    alias = models.ForeignKey(ModelAlias, on_delete=models.CASCADE, related_name="moves")
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    to_version = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    moved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    moved_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-moved_at", "-id"]


class VersionUse(models.Model):
    """A job that reads a version (merge, quantize, training, evaluation, serving…): deleting a
    version is refused while such a job is queued or running."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="uses")
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="model_uses")
    role = models.CharField(max_length=20)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "job", "role"], name="unique_version_use")]


class VersionRequest(models.Model):
    """What a registry job will register when it succeeds: the model the new version joins, its
    kind and lineage, and the uuid its files are written under. One per job."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="version_request")
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=12, choices=VersionKind.choices)
    uid = models.UUIDField(default=uuid.uuid4, unique=True)
    parent = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    adapter = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=40)
    upload = models.CharField(max_length=200, blank=True, help_text="uploaded archive file name under UPLOAD_DIR")
    # The first-run starter: once registered, the version gets the alias STARTER_ALIAS and a
    # deployment of this name follows it (in the same transaction, so never a version without it).
    deploy_as = models.CharField(max_length=60, blank=True)


class FirstRunRecord(models.Model):
    """What the first run did once in this data dir's database ("starter": the starter model was
    queued). No foreign key on purpose: deleting the model, its versions, aliases, deployment or
    the import job leaves the record, so the next start does not make them again."""

    name = models.CharField(max_length=40, unique=True)
    done_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name
