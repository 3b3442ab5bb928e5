"""Dataset jobs: the core validates, normalizes, cleans or generates; on success the version is
registered in the transaction that marks the job SUCCEEDED (at most one version per job)."""
from apps.datasets.services import forget_refused_upload, record_job_result
from puyu_site.celery import app
from workers.tasks.base import JobTask


class DatasetJobTask(JobTask):
    abstract = True

    def record(self, job, result):
        return record_job_result(job, result)

    def forget_refused(self, job):
        forget_refused_upload(job)


@app.task(base=DatasetJobTask, bind=True, name="datasets.import")
def dataset_import(self, job_id: int):
    return DatasetJobTask.run(self, job_id)


@app.task(base=DatasetJobTask, bind=True, name="datasets.clean")
def dataset_clean(self, job_id: int):
    return DatasetJobTask.run(self, job_id)


@app.task(base=DatasetJobTask, bind=True, name="datasets.generate")
def dataset_generate(self, job_id: int):
    return DatasetJobTask.run(self, job_id)
