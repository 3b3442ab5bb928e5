"""Every job kind, declared once: its label, spec class, runner, Celery task and queue, and where
users create it. The command line and the Celery tasks run kinds from here; the web side's task
catalog (`workers/tasks/catalog.py`) and the job model's choices (`apps/jobs/models.py`) are
derived from this table, so a new kind is one entry (plus the migration its choices need).

Runners are named "module:function" and imported when a job runs, so listing the kinds imports
only the light spec modules (no torch) and the web process stays fast to start.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from workers.core.agents.job import AgentTurnSpec
from workers.core.dataset_jobs import DatasetCleanSpec, DatasetGenerateSpec, DatasetImportSpec
from workers.core.diagnostics import DiagnosticsSpec
from workers.core.evaluation.arena import ArenaRatingsSpec
from workers.core.evaluation.builtins import BuiltinBenchmarksSpec
from workers.core.evaluation.spec import EvaluateSpec
from workers.core.inference.replica import ReplicaSpec
from workers.core.model_jobs import ModelImportSpec, ModelMergeSpec, ModelQuantizeSpec
from workers.core.modelstore.atomic import disk_full_is_clear
from workers.core.probe import ProbeSpec
from workers.core.reporting import Reporter
from workers.core.specs import build_spec
from workers.core.training.spec import TrainSpec


@dataclass(frozen=True)
class CoreJob:
    label: str
    spec_class: type
    runner: str  # "module:function" taking (spec, reporter) and returning the result dict
    task_name: str  # the Celery task (workers/tasks) that runs it
    default_queue: str  # gpu, cpu or serve
    # Where users create jobs of this kind; "" for the generic kinds anyone may submit with their
    # own parameters (they touch no file). Every other kind carries server paths, so only its
    # app's service creates it, deriving each path from ids the caller may see.
    created_through: str = ""

    @property
    def run(self) -> Callable[[Any, Reporter], dict]:
        module, _, function = self.runner.partition(":")
        return getattr(importlib.import_module(module), function)


CORE_JOBS: dict[str, CoreJob] = {
    "diagnostics": CoreJob("Worker diagnostics", DiagnosticsSpec, "workers.core.diagnostics:run_diagnostics",
                           "jobs.diagnostics", "gpu"),
    "probe": CoreJob("Pipeline probe", ProbeSpec, "workers.core.probe:run_probe", "jobs.probe", "cpu"),
    "model_import": CoreJob(
        "Model import", ModelImportSpec, "workers.core.model_jobs:run_model_import", "registry.import", "cpu",
        "the model registry (POST /api/models/import, /api/models/import/archive, or Models → Import)"),
    "model_merge": CoreJob(
        "Adapter merge", ModelMergeSpec, "workers.core.model_jobs:run_model_merge", "registry.merge", "cpu",
        "the model registry (POST /api/versions/{id}/merge, or a version's page)"),
    "model_quantize": CoreJob(
        "Quantization", ModelQuantizeSpec, "workers.core.model_jobs:run_model_quantize", "registry.quantize", "cpu",
        "the model registry (POST /api/versions/{id}/quantize, or a version's page)"),
    "dataset_import": CoreJob(
        "Dataset import", DatasetImportSpec, "workers.core.dataset_jobs:run_dataset_import", "datasets.import", "cpu",
        "the datasets app (POST /api/datasets/upload or /api/datasets/import-hub, or Datasets → Upload)"),
    "dataset_clean": CoreJob(
        "Dataset cleaning", DatasetCleanSpec, "workers.core.dataset_jobs:run_dataset_clean", "datasets.clean", "cpu",
        "the datasets app (POST /api/dataset-versions/{id}/clean, or a version's page)"),
    "dataset_generate": CoreJob(
        "Dataset generation", DatasetGenerateSpec, "workers.core.dataset_jobs:run_dataset_generate",
        "datasets.generate", "cpu",
        "the datasets app (POST /api/datasets/generate, or Datasets → Generate)"),
    "train": CoreJob("Training", TrainSpec, "workers.core.training.job:run_training", "training.train", "gpu",
                     "the training app (POST /api/training/runs, or Training → New run)"),
    "serve": CoreJob("Model replica", ReplicaSpec, "workers.core.inference.replica:run_replica", "serving.replica", "serve",
                     "a deployment (POST /api/deployments; its replicas are started and restarted by the deployment)"),
    "evaluate": CoreJob("Evaluation", EvaluateSpec, "workers.core.evaluation.runner:run_evaluation",
                        "leaderboards.evaluate", "gpu",
                        "the leaderboards (POST /api/evaluations, a model card's Evaluate button, or Leaderboards → Evaluate)"),
    "arena_ratings": CoreJob("Arena ratings", ArenaRatingsSpec, "workers.core.evaluation.arena:run_arena_ratings",
                             "leaderboards.ratings", "cpu",
                             "the leaderboards (POST /api/arena/ratings, or Leaderboards → Arena → Recompute)"),
    "benchmark_builtins": CoreJob("Built-in benchmarks", BuiltinBenchmarksSpec,
                                  "workers.core.evaluation.builtins:run_builtin_benchmarks", "leaderboards.builtins", "cpu",
                                  "the studio itself, once per data dir (manage.py builtin_benchmarks, or at start-up)"),
    "agent_turn": CoreJob("Agent turn", AgentTurnSpec, "workers.core.agents.job:run_agent_turn", "playground.agent_turn",
                          "agent",
                          "the playground (POST /api/playground/conversations/{id}/messages, or the chat page)"),
}


def run_core_job(kind: str, params: dict | None, reporter: Reporter) -> dict:
    job = CORE_JOBS[kind]
    spec = build_spec(job.spec_class, params)
    with disk_full_is_clear(f"the {kind.replace('_', ' ')} output"):  # inner writers name it more precisely
        return job.run(spec, reporter)
