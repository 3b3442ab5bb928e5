"""Replica jobs used to carry the broker URL (with the Redis password) in their params, which
users see on the job page and in the API. The replica task now passes it at run time; remove it
from the rows written before. (Those jobs keep working: the task rebuilds their params from the
deployment.)"""
from django.db import migrations


def drop_redis_url(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    for job in Job.objects.filter(kind="serve").only("pk", "params").iterator():
        params = job.params if isinstance(job.params, dict) else {}
        if "redis_url" in params:
            params.pop("redis_url")
            Job.objects.filter(pk=job.pk).update(params=params)


class Migration(migrations.Migration):
    dependencies = [
        ("serving", "0001_initial"),
        ("jobs", "0004_add_train_serve_kinds"),
    ]

    operations = [migrations.RunPython(drop_redis_url, migrations.RunPython.noop)]
