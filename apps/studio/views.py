from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count
from django.http import Http404, JsonResponse
from django.shortcuts import render
from django.utils import timezone

from apps.accounts.visibility import visible_to
from apps.jobs.models import Job, JobStatus, WorkerNode
from apps.jobs.services import queue_depths
from apps.studio.sections import SECTIONS


def _dashboard_context(user) -> dict:
    horizon = timezone.now() - timedelta(seconds=settings.WORKER_ONLINE_SECONDS)
    workers = WorkerNode.objects.filter(stopped_at__isnull=True, last_seen_at__gte=horizon)
    jobs = visible_to(Job.objects.select_related("owner"), user)
    waiting = dict(Job.objects.filter(status=JobStatus.QUEUED).values_list("queue").annotate(n=Count("id")))
    running = dict(Job.objects.filter(status=JobStatus.RUNNING).values_list("queue").annotate(n=Count("id")))
    broker = queue_depths()
    queues = [{"name": q, "queued": waiting.get(q, 0), "running": running.get(q, 0), "broker": broker.get(q)}
              for q in settings.JOB_QUEUES]
    return {
        "workers": workers,
        "queues": queues,
        "running_jobs": jobs.filter(status=JobStatus.RUNNING)[:20],
        "recent_jobs": jobs.exclude(status=JobStatus.RUNNING)[:10],
    }


def dashboard(request):
    template = "studio/_dashboard_live.html" if request.htmx else "studio/dashboard.html"
    return render(request, template, _dashboard_context(request.user))


def section(request, slug: str):
    if slug not in SECTIONS:
        raise Http404("No such section.")
    title, coming = SECTIONS[slug]
    return render(request, "studio/section.html", {"title": title, "coming": coming, "slug": slug})


@login_not_required
def healthz(request):
    """For load balancers: the database answers. Tells nothing else to anonymous callers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})
