"""The training task: the core trains (and resumes from its checkpoint folder after a lost
worker, on the next claim); on success exactly one model version is registered with its final
metrics, in the transaction that marks the job SUCCEEDED. Dry runs register nothing."""
from apps.registry.models import ModelVersion
from apps.registry.services import register_version
from puyu_site.celery import app
from workers.tasks.base import JobTask


class TrainingJobTask(JobTask):
    abstract = True

    def record(self, job, result):
        if result.get("dry_run") is not None or not hasattr(job, "version_request"):
            return result
        version = register_version(job, result)
        evaluation = {**(version.evaluation or {}), "final_metrics": result.get("final_metrics") or {},
                      "checkpoints": [c.get("name") for c in result.get("checkpoints") or []],
                      "resumed_from": result.get("resumed_from") or ""}
        ModelVersion.objects.filter(pk=version.pk).update(evaluation=evaluation)
        return {**result, "version_id": version.pk, "version": str(version)}


@app.task(base=TrainingJobTask, bind=True, name="training.train")
def train(self, job_id: int):
    return TrainingJobTask.run(self, job_id)
