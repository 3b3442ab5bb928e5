from django.contrib import admin

from apps.jobs.models import Job, JobLogLine, JobMetric, WorkerNode


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "owner", "status", "queue", "attempts", "released_attempts", "progress", "created_at")
    list_filter = ("kind", "status", "queue")
    search_fields = ("title", "owner__username")
    readonly_fields = ("attempts", "released_attempts", "lease_owner", "lease_expires_at", "heartbeat_at", "celery_task_id", "dispatched_at")


@admin.register(WorkerNode)
class WorkerNodeAdmin(admin.ModelAdmin):
    list_display = ("name", "hostname", "queues", "last_seen_at", "stopped_at")


admin.site.register(JobLogLine)
admin.site.register(JobMetric)
