"""Training: one TrainingRun per training job (what it trains, from what, into which model), and
hyperparameter presets users save, clone and share with their teams (like XTuner's configs).

The datasets a run reads are DatasetVersionUse rows (roles "train" / "eval") and its base model is
a VersionUse row (role "base"), so deleting them is refused while the run is active."""
from __future__ import annotations

from django.conf import settings
from django.db import models


class TrainingPreset(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_presets")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    fields = models.JSONField(default=dict, help_text="TrainSpec fields (hyperparameters only, no paths)")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_training_preset_per_owner")]

    def __str__(self) -> str:
        return self.name


class TrainingRun(models.Model):
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="training_run")
    method = models.CharField(max_length=12)
    finetune = models.CharField(max_length=12)
    # Null for pretraining from scratch.
    base_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="training_runs")
    target_model = models.ForeignKey("registry.RegisteredModel", on_delete=models.CASCADE, related_name="training_runs")
    preset = models.CharField(max_length=120, blank=True)
    checkpoint_dir = models.CharField(max_length=500)
    dry_run = models.BooleanField(default=False)
    restarted_from = models.CharField(max_length=500, blank=True, help_text="the checkpoint this run started from")
    restarted_from_job = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Training run #{self.job_id}"

    SUMMARY_FIELDS = ("learning_rate", "lr_schedule", "batch_size", "grad_accum", "max_steps", "epochs", "max_length",
                      "lora_r", "lora_alpha", "seed")

    @property
    def owner_id(self):
        return self.job.owner_id

    @property
    def spec_summary(self) -> dict:
        """The main hyperparameters of the spec (the full spec is the job's params)."""
        params = self.job.params
        adapter_only = ("lora_r", "lora_alpha")
        return {k: params[k] for k in self.SUMMARY_FIELDS
                if k in params and (self.finetune in ("lora", "qlora") or k not in adapter_only)}
