"""Registry jobs: the core writes the files; on success the version is registered in the same
transaction that marks the job SUCCEEDED (exactly one version per job)."""
from apps.registry.services import register_version
from puyu_site.celery import app
from workers.tasks.base import JobTask


class RegistryJobTask(JobTask):
    abstract = True

    def record(self, job, result):
        version = register_version(job, result)
        return {**result, "version_id": version.pk, "version": str(version)}


@app.task(base=RegistryJobTask, bind=True, name="registry.import")
def model_import(self, job_id: int):
    return RegistryJobTask.run(self, job_id)


@app.task(base=RegistryJobTask, bind=True, name="registry.merge")
def model_merge(self, job_id: int):
    return RegistryJobTask.run(self, job_id)


@app.task(base=RegistryJobTask, bind=True, name="registry.quantize")
def model_quantize(self, job_id: int):
    return RegistryJobTask.run(self, job_id)
