"""The contamination flag beside a score: was the model's training data decontaminated against
this benchmark's data?

The lineage walked: the model version and its ancestors (parent, adapter) → the training jobs
that produced them → each dataset version they trained on (DatasetVersionUse role "train") →
that version and its parents, back through the cleaning jobs that made them. A cleaning job
with decontamination on records the evaluation versions it removed overlaps with (role
"decontamination", apps/datasets/services.start_clean); a training dataset counts as
decontaminated against a benchmark when one cleaning job in its chain used a version with the
benchmark's data hash (sha256), whichever dataset that version belongs to.

    clean         every training dataset in the ancestry was decontaminated against it (✓)
    contaminated  at least one was not (⚠)
    unknown       no training lineage: an imported model (or an external endpoint)
"""
from __future__ import annotations

from apps.datasets.models import DatasetVersion, DatasetVersionUse
from apps.jobs.models import Job
from apps.registry.models import ModelVersion

CLEAN, CONTAMINATED, UNKNOWN = "clean", "contaminated", "unknown"
MAX_NODES = 500  # versions walked per lineage: a bound, far above any real chain


def _model_jobs(version: ModelVersion) -> set[int]:
    """The jobs that produced the version and its ancestors."""
    jobs, seen, stack = set(), set(), [version.pk]
    while stack and len(seen) < MAX_NODES:
        pk = stack.pop()
        if pk is None or pk in seen:
            continue
        seen.add(pk)
        row = ModelVersion.objects.filter(pk=pk).values("source_job_id", "parent_id", "adapter_id").first()
        if row is None:
            continue
        if row["source_job_id"]:
            jobs.add(row["source_job_id"])
        stack += [row["parent_id"], row["adapter_id"]]
    return jobs


def _decontaminated_against(version_id: int) -> frozenset[str]:
    """The sha256 of every evaluation version a cleaning job in the dataset version's chain
    (itself, its parent, ...) decontaminated it against."""
    cleaning_jobs, seen, pk = [], set(), version_id
    while pk is not None and pk not in seen and len(seen) < MAX_NODES:
        seen.add(pk)
        row = DatasetVersion.objects.filter(pk=pk).values("source_job_id", "parent_id").first()
        if row is None:
            break
        if row["source_job_id"]:
            cleaning_jobs.append(row["source_job_id"])
        pk = row["parent_id"]
    decontaminating = [job.pk for job in Job.objects.filter(pk__in=cleaning_jobs, kind="dataset_clean")
                       if (job.params.get("cleaning") or {}).get("decontaminate", True) is not False]
    return frozenset(DatasetVersionUse.objects.filter(job_id__in=decontaminating, role="decontamination")
                     .values_list("version__sha256", flat=True))


def training_lineage(version: ModelVersion | None) -> list[frozenset[str]]:
    """One entry per training dataset version in the version's ancestry: the data hashes it was
    decontaminated against. Empty: no training lineage."""
    if version is None:
        return []
    train = (DatasetVersionUse.objects.filter(job_id__in=_model_jobs(version), role="train")
             .values_list("version_id", flat=True).distinct())
    return [_decontaminated_against(pk) for pk in train]


def flag_from(lineage: list[frozenset[str]], data_hash: str) -> str:
    if not lineage:
        return UNKNOWN
    return CLEAN if all(data_hash in hashes for hashes in lineage) else CONTAMINATED


def flag(model_version: ModelVersion | None, benchmark_version) -> str:
    """"clean" | "contaminated" | "unknown" (module doc)."""
    return flag_from(training_lineage(model_version), benchmark_version.dataset_version.sha256)
