"""One thin task per job kind; the lifecycle is in JobTask, the work in workers.core."""
from puyu_site.celery import app
from workers.tasks.base import JobTask


@app.task(base=JobTask, bind=True, name="jobs.diagnostics")
def diagnostics(self, job_id: int):
    return JobTask.run(self, job_id)


@app.task(base=JobTask, bind=True, name="jobs.probe")
def probe(self, job_id: int):
    return JobTask.run(self, job_id)
