"""Evaluation and leaderboards (OpenCompass / CompassRank in the studio).

Benchmarks are versioned data: a BenchmarkVersion is a dataset version + the core's benchmark
definition (template, few-shot rows, scorer and its settings, dimension) and carries the version
hash the core computes (workers/core/evaluation/spec.py `benchmark_hash`), shown beside every
score. Editing a benchmark makes a new version; old scores keep theirs. A suite is a named,
versioned list of benchmark versions with weights. An evaluation run is one job: a target (a
registry version, a deployment as served, or an admin-allowed external endpoint) × a suite
version; its scores and per-sample rows are stored when the job succeeds, in the same
transaction. Arena votes feed Bradley–Terry ratings computed by a job.
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

DIMENSIONS = [("knowledge", _("Knowledge")), ("reasoning", _("Reasoning")), ("math", _("Math")), ("code", _("Code")),
              ("language", _("Language")), ("understanding", _("Understanding")), ("exam", _("Exam")),
              ("chinese", _("Chinese")), ("agent", _("Agent"))]


class Benchmark(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="benchmarks")
    name = models.CharField(max_length=64)
    title = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    dimension = models.CharField(max_length=20, choices=DIMENSIONS, default="knowledge")
    builtin_key = models.CharField(max_length=40, blank=True, help_text="the built-in set it was made from")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_benchmark_name_per_owner")]

    def __str__(self) -> str:
        return self.name


class BenchmarkVersion(models.Model):
    benchmark = models.ForeignKey(Benchmark, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    dataset_version = models.ForeignKey("datasets.DatasetVersion", on_delete=models.PROTECT, related_name="benchmark_versions")
    # The few-shot rows are fixed rows of a named dev version (copied into `definition`), never re-sampled.
    fewshot_version = models.ForeignKey("datasets.DatasetVersion", null=True, blank=True, on_delete=models.PROTECT,
                                        related_name="fewshot_of")
    fewshot_rows = models.JSONField(default=list, blank=True, help_text="row indices of fewshot_version")
    # The core's definition without data_path (the version's file is added when a run is queued).
    definition = models.JSONField()
    version_hash = models.CharField(max_length=64, db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["benchmark", "-number"]
        constraints = [models.UniqueConstraint(fields=["benchmark", "number"], name="unique_benchmark_version_number")]

    def __str__(self) -> str:
        return f"{self.benchmark.name} v{self.number}"

    @property
    def owner_id(self):
        return self.benchmark.owner_id

    @property
    def short_hash(self) -> str:
        return self.version_hash[:12]


class Suite(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="suites")
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="unique_suite_name_per_owner")]

    def __str__(self) -> str:
        return self.name


class SuiteVersion(models.Model):
    suite = models.ForeignKey(Suite, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["suite", "-number"]
        constraints = [models.UniqueConstraint(fields=["suite", "number"], name="unique_suite_version_number")]

    def __str__(self) -> str:
        return f"{self.suite.name} v{self.number}"

    @property
    def owner_id(self):
        return self.suite.owner_id


class SuiteItem(models.Model):
    suite_version = models.ForeignKey(SuiteVersion, on_delete=models.CASCADE, related_name="items")
    benchmark_version = models.ForeignKey(BenchmarkVersion, on_delete=models.PROTECT, related_name="suite_items")
    weight = models.FloatField(default=1.0)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["suite_version", "benchmark_version"], name="unique_suite_item")]


class ExternalEndpoint(models.Model):
    """An OpenAI-compatible endpoint an admin allowed (OpenCompass's API-model mode). Created in the
    admin only; its base URL must be on PUYU_EVAL_ENDPOINT_ALLOWLIST. Users pick it by id and never
    see its key."""

    name = models.SlugField(max_length=60, unique=True)
    base_url = models.URLField(max_length=300)
    model_name = models.CharField(max_length=200)
    api_key = models.CharField(max_length=300, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RunTarget(models.TextChoices):
    MODEL = "model", _("Registry version")
    DEPLOYMENT = "deployment", _("Deployment as served")
    ENDPOINT = "endpoint", _("External endpoint")


class EvaluationRun(models.Model):
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="evaluation")
    suite_version = models.ForeignKey(SuiteVersion, on_delete=models.PROTECT, related_name="runs")
    target = models.CharField(max_length=12, choices=RunTarget.choices, default=RunTarget.MODEL)
    # Deleting a version (refused while a run of it is active) takes its runs and scores with it.
    model_version = models.ForeignKey("registry.ModelVersion", null=True, blank=True, on_delete=models.CASCADE,
                                      related_name="evaluation_runs")
    alias_name = models.CharField(max_length=40, blank=True, help_text="the alias asked for, resolved at submit")
    deployment = models.ForeignKey("serving.Deployment", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.ForeignKey(ExternalEndpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    target_label = models.CharField(max_length=200)
    settings = models.JSONField(default=dict, blank=True, help_text="max_samples, max_new_tokens, batch_size, generator")
    # Hash of (target identity, suite version, settings): the same run requested twice is one run.
    request_key = models.CharField(max_length=64, db_index=True)
    model_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.target_label} on {self.suite_version}"

    @property
    def owner_id(self):
        return self.job.owner_id


class BenchmarkScore(models.Model):
    run = models.ForeignKey(EvaluationRun, on_delete=models.CASCADE, related_name="scores")
    benchmark_version = models.ForeignKey(BenchmarkVersion, on_delete=models.PROTECT, related_name="scores")
    metric = models.CharField(max_length=40)  # accuracy, pass@1, bits_per_byte, judge_score
    score = models.FloatField()
    ci_low = models.FloatField(null=True, blank=True)
    ci_high = models.FloatField(null=True, blank=True)
    n = models.IntegerField()
    correct = models.IntegerField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True, help_text="cached/computed counts, perplexity, ...")

    class Meta:
        ordering = ["run", "benchmark_version"]
        constraints = [models.UniqueConstraint(fields=["run", "benchmark_version"], name="unique_run_benchmark_score")]


class SampleResult(models.Model):
    """One sample of one score: the prompt exactly as sent, the raw output, the extracted answer,
    the reference, right or not, and the paradigm's details (each option's log-likelihood, ...)."""

    score = models.ForeignKey(BenchmarkScore, on_delete=models.CASCADE, related_name="samples")
    index = models.IntegerField()
    correct = models.BooleanField(null=True)
    prompt = models.TextField()
    output = models.TextField(blank=True)
    extracted = models.TextField(blank=True)
    reference = models.TextField(blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["score", "index"]
        constraints = [models.UniqueConstraint(fields=["score", "index"], name="unique_sample_index")]


class ImportedSummary(models.Model):
    """An uploaded OpenCompass summary_*.csv; its rows show on leaderboards marked "imported"."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="imported_summaries")
    filename = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "imported summaries"


class ImportedScore(models.Model):
    summary = models.ForeignKey(ImportedSummary, on_delete=models.CASCADE, related_name="scores")
    dataset = models.CharField(max_length=200)
    version = models.CharField(max_length=40, blank=True)
    metric = models.CharField(max_length=80, blank=True)
    mode = models.CharField(max_length=20, blank=True)
    model_name = models.CharField(max_length=200)
    value = models.FloatField(null=True, blank=True)  # "-" in the CSV: not evaluated

    class Meta:
        ordering = ["summary", "dataset", "model_name"]


class ArenaOutcome(models.TextChoices):
    A = "a", _("A is better")
    B = "b", _("B is better")
    TIE = "tie", _("Tie")
    BOTH_BAD = "both_bad", _("Both are bad")


class ArenaVote(models.Model):
    """One blind battle's vote (the Playground's battle page creates them)."""

    voter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="arena_votes")
    model_a = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="+")
    model_b = models.ForeignKey("registry.ModelVersion", on_delete=models.CASCADE, related_name="+")
    outcome = models.CharField(max_length=10, choices=ArenaOutcome.choices)
    prompt = models.TextField(blank=True)
    battle = models.CharField(max_length=64, blank=True, help_text="the battle's id in the Playground")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    @property
    def owner_id(self):
        return self.voter_id


class ArenaRatingSnapshot(models.Model):
    """The ratings a ratings job computed (the latest one is shown)."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="arena_ratings")
    votes = models.IntegerField()
    ratings = models.JSONField(help_text="[{version_id, label, rating, low, high, votes, wins, losses, ties, both_bad}]")
    win_rate = models.JSONField(help_text="{version_id: {version_id: share or null}}")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
