"""The job kinds the core can run: name → (spec class, runner). The Celery tasks and the command
line both look kinds up here, so a kind is defined once."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from workers.core.dataset_jobs import (
    DatasetCleanSpec,
    DatasetGenerateSpec,
    DatasetImportSpec,
    run_dataset_clean,
    run_dataset_generate,
    run_dataset_import,
)
from workers.core.inference.replica import ReplicaSpec, run_replica
from workers.core.training.job import TrainSpec, run_training
from workers.core.diagnostics import DiagnosticsSpec, run_diagnostics
from workers.core.modelstore.atomic import disk_full_is_clear
from workers.core.model_jobs import (
    ModelImportSpec,
    ModelMergeSpec,
    ModelQuantizeSpec,
    run_model_import,
    run_model_merge,
    run_model_quantize,
)
from workers.core.probe import ProbeSpec, run_probe
from workers.core.reporting import Reporter
from workers.core.specs import build_spec


@dataclass(frozen=True)
class CoreJob:
    spec_class: type
    run: Callable[[Any, Reporter], dict]


CORE_JOBS: dict[str, CoreJob] = {
    "diagnostics": CoreJob(DiagnosticsSpec, run_diagnostics),
    "probe": CoreJob(ProbeSpec, run_probe),
    "model_import": CoreJob(ModelImportSpec, run_model_import),
    "model_merge": CoreJob(ModelMergeSpec, run_model_merge),
    "model_quantize": CoreJob(ModelQuantizeSpec, run_model_quantize),
    "dataset_import": CoreJob(DatasetImportSpec, run_dataset_import),
    "dataset_clean": CoreJob(DatasetCleanSpec, run_dataset_clean),
    "dataset_generate": CoreJob(DatasetGenerateSpec, run_dataset_generate),
    "train": CoreJob(TrainSpec, run_training),
    "serve": CoreJob(ReplicaSpec, run_replica),
}


def run_core_job(kind: str, params: dict | None, reporter: Reporter) -> dict:
    job = CORE_JOBS[kind]
    spec = build_spec(job.spec_class, params)
    with disk_full_is_clear(f"the {kind.replace('_', ' ')} output"):  # inner writers name it more precisely
        return job.run(spec, reporter)
