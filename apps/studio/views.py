import hashlib
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.cache import cache
from django.db import connection
from django.db.models import Count
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.safestring import mark_safe

from apps.accounts.visibility import teammate_ids, visible_to
from apps.jobs.models import Job, JobStatus, WorkerNode
from apps.jobs.services import queue_depths
from apps.studio.sections import SECTIONS


def launcher_restarts() -> list[dict]:
    """Children that `make run`'s launcher restarted (or is restarting), from the status file it
    writes atomically under the data dir; [] when there is none or it cannot be read."""
    import json

    try:
        with open(settings.DATA_DIR / "launcher_status.json", encoding="utf-8") as fh:
            children = json.loads(fh.read(65536)).get("children", {})
        return [{"name": str(name)[:60], "restarts": int(c.get("restarts") or 0), "state": str(c.get("state", ""))[:20],
                 "last_restart_at": parse_datetime(str(c.get("last_restart_at") or ""))}
                for name, c in children.items() if c.get("restarts") or c.get("state") == "restarting"]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


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
        "launcher_restarts": launcher_restarts(),
        "queues": queues,
        "running_jobs": jobs.filter(status=JobStatus.RUNNING)[:20],
        "recent_jobs": jobs.exclude(status=JobStatus.RUNNING)[:10],
    }


# Everyone who sees the same jobs sees the same live panel: render it once per scope and keep it
# this long, so a room full of open dashboards (each refreshing every few seconds) costs one
# render a second, not one per viewer (bench/dashboard_load.py).
LIVE_PANEL_SECONDS = 1.0


def _live_panel(request) -> str:
    user = request.user
    scope = "all" if user.is_superuser else ",".join(map(str, sorted(set(teammate_ids(user).values_list("pk", flat=True)))))
    key = "dashboard-live:" + hashlib.sha256(scope.encode()).hexdigest()
    html = cache.get(key)
    if html is None:
        html = render_to_string("studio/_dashboard_live.html", _dashboard_context(user), request=request)
        cache.set(key, html, LIVE_PANEL_SECONDS)
    return mark_safe(html)  # rendered (and escaped) by the template engine above


def dashboard(request):
    live = _live_panel(request)
    if request.htmx:
        return HttpResponse(live)
    return render(request, "studio/dashboard.html", {"live_panel": live})


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


@login_not_required
def favicon(request):
    """Browsers ask for /favicon.ico whatever the page links: answer instead of a 404 on every page
    (resolved per request: in production the static name carries its content hash)."""
    from django.http import HttpResponsePermanentRedirect
    from django.templatetags.static import static

    return HttpResponsePermanentRedirect(static("favicon.svg"))


def quickstart(request):
    """The chain from data to agent in eight steps, each checked from what the user has made."""
    from apps.studio.quickstart import starter_version, steps_for

    steps = steps_for(request.user)
    return render(request, "studio/quickstart.html", {
        "steps": steps, "done": sum(s.done for s in steps), "starter": starter_version(),
        "next_step": next((s for s in steps if not s.done), None)})
