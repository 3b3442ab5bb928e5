from django.contrib import messages
from django.utils.translation import gettext
from django.contrib.auth import get_user_model
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from apps.accounts.visibility import can_manage, get_visible_or_404, teammate_ids, visible_to
from apps.jobs import services
from apps.jobs.forms import FORMS
from apps.jobs.models import Job, JobKind, JobStatus
from apps.jobs.snapshot import job_snapshot
from apps.studio.streaming import StreamingFileResponse  # streams under daphne (no whole-file list)
from workers.tasks.catalog import public_params

PAGE_SIZE = 50


def job_list(request):
    jobs = visible_to(Job.objects.select_related("owner"), request.user)
    filters = {key: request.GET.get(key, "") for key in ("kind", "status", "owner")}
    if filters["kind"]:
        jobs = jobs.filter(kind=filters["kind"])
    if filters["status"]:
        jobs = jobs.filter(status=filters["status"])
    if filters["owner"]:
        jobs = jobs.filter(owner__username=filters["owner"])
    owners = get_user_model().objects.filter(pk__in=teammate_ids(request.user)).order_by("username")
    context = {
        "jobs": jobs[:PAGE_SIZE], "count": jobs.count(), "filters": filters, "owners": owners,
        "kinds": JobKind.choices, "statuses": JobStatus.choices,
    }
    template = "jobs/_job_table.html" if request.htmx else "jobs/job_list.html"
    return render(request, template, context)


def job_new(request, kind: str = "diagnostics"):
    form_class = FORMS.get(kind)
    if form_class is None:
        raise Http404("No such job kind.")
    form = form_class(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.submit_generic_job(request.user, kind, form.params(), queue=form.cleaned_data["queue"],
                                              title=form.cleaned_data["title"])
        except services.InvalidParams as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.reason)
        else:
            messages.success(request, gettext('%(job)s queued on %(queue)s.') % {"job": job, "queue": job.queue})
            return redirect("job-detail", job_id=job.pk)
    return render(request, "jobs/job_new.html", {"form": form, "kind": kind,
                                                 "kinds": {name: JobKind(name).label for name in FORMS}})


def job_detail(request, job_id: int):
    job = get_visible_or_404(Job.objects.select_related("owner", "retry_of"), request.user, pk=job_id)
    return render(request, "jobs/job_detail.html", {
        "params": public_params(job.kind, job.params),
        "job": job, "snapshot": job_snapshot(job), "can_manage": can_manage(request.user, job),
        "retries": visible_to(job.retries.all(), request.user),
    })


def _act(request, job_id: int, action):
    job = get_visible_or_404(Job.objects.all(), request.user, pk=job_id)
    try:
        return job, action(job, request.user)
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
    except services.InvalidParams as exc:
        messages.error(request, exc.reason)
    return job, None


@require_POST
def job_cancel(request, job_id: int):
    job, status = _act(request, job_id, services.cancel_job)
    if status == JobStatus.RUNNING:
        messages.info(request, gettext("Cancel requested: the worker stops at its next step."))
    elif status == JobStatus.CANCELLED:
        messages.info(request, gettext("Job cancelled."))
    # Pages that embed the job (e.g. a training run) send their own path back as `next`.
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(back)
    return redirect("job-detail", job_id=job.pk)


@require_POST
def job_retry(request, job_id: int):
    job, new_job = _act(request, job_id, services.retry_job)
    return redirect("job-detail", job_id=(new_job or job).pk)


def job_log_download(request, job_id: int):
    job = get_visible_or_404(Job.objects.all(), request.user, pk=job_id)
    path = job.log_path
    if not path.exists():
        raise Http404("This job has written no log yet.")
    return StreamingFileResponse(path.open("rb"), as_attachment=True, filename=f"job-{job.pk}.log", content_type="text/plain")
