from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext
from django.views.decorators.http import require_POST

from apps.accounts.visibility import can_manage, get_visible_or_404, visible_to
from apps.datasets import services
from apps.datasets.charts import funnel_chart, stats_charts
from apps.datasets.forms import CleanForm, GenerateForm, UploadForm, tokenizer_versions
from apps.datasets.models import Dataset, DatasetUpload, DatasetVersion
from apps.jobs.models import Job
from apps.jobs.services import InvalidParams
from apps.studio.streaming import StreamingFileResponse  # streams under daphne (no whole-file list)
from workers.tasks.catalog import render_preview

PAGE = 25


def _version(user, version_id) -> DatasetVersion:
    return get_visible_or_404(DatasetVersion.objects.select_related("dataset", "dataset__owner", "parent", "source_job"),
                              user, "dataset__owner", pk=version_id)


def dataset_list(request):
    datasets = visible_to(Dataset.objects.select_related("owner"), request.user).annotate(version_count=Count("versions"))
    q = request.GET.get("q", "")
    if q:
        datasets = datasets.filter(Q(name__icontains=q) | Q(description__icontains=q))
    return render(request, "datasets/dataset_list.html", {"datasets": datasets, "q": q})


def dataset_upload(request):
    form = UploadForm(request.POST or None, request.FILES or None, user=request.user,
                      initial={"dataset": request.GET.get("dataset")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            upload, job = services.upload_file(
                request.user, data["file"], dataset=data["dataset"], dataset_name=data["dataset_name"],
                description=data["description"], fmt=data["format"], column_map=data["column_map"],
                tokenizer_dir=str(data["tokenizer"].path) if data["tokenizer"] else "", max_length=data["max_length"] or 0)
        except (services.DatasetError, InvalidParams) as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.reason)
        else:
            messages.success(request, gettext("%(file)s uploaded: every record is being validated.")
                             % {"file": upload.filename})
            return redirect("dataset-upload-detail", upload_id=upload.pk)
    return render(request, "datasets/upload.html", {"form": form})


def dataset_generate(request):
    # The Quick start links here with its defaults (?generator=tool_use&n=1000&dataset_name=...).
    form = GenerateForm(request.POST or None, initial={k: v for k, v in request.GET.items() if k in ("generator", "n", "dataset_name")})
    if request.method == "POST" and form.is_valid():
        try:
            job = services.start_generate(request.user, **form.cleaned_data)
        except services.DatasetError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.reason)
        else:
            return redirect("job-detail", job_id=job.pk)
    return render(request, "datasets/generate.html", {"form": form})


def dataset_detail(request, dataset_id: int):
    dataset = get_visible_or_404(Dataset.objects.select_related("owner"), request.user, pk=dataset_id)
    uploads = list(dataset.uploads.all()[:20])
    # A file the import refused has no report: the table shows its job's error in full (file,
    # line, reason) where it would say "validating…".
    latest = {upload_id: (status, error) for upload_id, status, error in Job.objects.filter(
        dataset_request__upload__in=uploads).order_by("id").values_list("dataset_request__upload", "status", "error")}
    for upload in uploads:
        status, error = latest.get(upload.pk, ("", ""))
        upload.refused = error if status == "FAILED" and not upload.report else ""
    return render(request, "datasets/dataset_detail.html", {
        "dataset": dataset, "versions": dataset.versions.select_related("parent"),
        "uploads": uploads, "can_manage": can_manage(request.user, dataset)})


def upload_detail(request, upload_id: int):
    upload = visible_to(DatasetUpload.objects.select_related("dataset"), request.user, "dataset__owner").filter(pk=upload_id).first()
    if upload is None:
        # A refused first upload is removed with the dataset it created; this page (which the
        # uploader watches, polling it) then says why, from the failed job.
        job = get_visible_or_404(services.refused_upload_jobs(upload_id), request.user)
        return render(request, "datasets/upload_refused.html", {"job": job, "filename": job.params.get("filename", ""),
                                                                 "dataset_name": job.result["removed_dataset"]})
    jobs = list(Job.objects.filter(dataset_request__upload=upload).order_by("-id"))
    return render(request, "datasets/upload_detail.html", {
        "upload": upload, "jobs": jobs, "report": upload.report,
        "bad": (upload.report["total"] - upload.report["valid"]) if upload.report else 0,
        "failed": next((j for j in jobs if j.status == "FAILED"), None) if not upload.report else None, "can_manage": can_manage(request.user, upload.dataset),
        "version": DatasetVersion.objects.filter(source_job__in=jobs).first()})


@require_POST
def upload_exclude(request, upload_id: int):
    upload = get_visible_or_404(DatasetUpload.objects.select_related("dataset"), request.user, "dataset__owner", pk=upload_id)
    try:
        job = services.start_import(request.user, upload, exclude_invalid=True)
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
    except services.DatasetError as exc:
        messages.error(request, exc.reason)
    else:
        return redirect("job-detail", job_id=job.pk)
    return redirect("dataset-upload-detail", upload_id=upload.pk)


def version_detail(request, version_id: int):
    version = _version(request.user, version_id)
    q = request.GET.get("q", "").strip()
    if q:
        rows = [{"number": n, "record": r} for n, r in services.search_rows(version, q)]
        page = None
    else:
        page = Paginator(range(version.rows), PAGE).get_page(request.GET.get("page"))
        offset = (page.number - 1) * PAGE
        rows = [{"number": offset + i + 1, "record": r} for i, r in enumerate(services.read_rows(version, offset=offset, limit=PAGE))]
    return render(request, "datasets/version_detail.html", {
        "version": version, "dataset": version.dataset, "rows": rows, "page": page, "q": q,
        "charts": stats_charts(version.stats, version.stats.get("max_length")),
        "funnel": funnel_chart(version.cleaning_report) if version.cleaning_report else "",
        "uses": version.uses.select_related("job").order_by("-job_id")[:50], "blockers": services.usage_blockers(version),
        "can_manage": can_manage(request.user, version.dataset), "clean_form": CleanForm(user=request.user),
        "tokenizers": tokenizer_versions(request.user)[:50],
    })


def version_render(request, version_id: int):
    """The exact text and tokens the trainer will see for one row, loss-masked tokens marked."""
    version = _version(request.user, version_id)
    model_version = tokenizer_versions(request.user).filter(pk=request.GET.get("tokenizer") or 0).first()
    if model_version is None:
        raise Http404("Choose a model version whose tokenizer to use.")
    try:
        row = max(int(request.GET.get("row", 1)), 1)
    except ValueError:
        row = 1
    records = services.read_rows(version, offset=row - 1, limit=1)
    if not records:
        raise Http404("No such row.")
    rendered = render_preview(records[0], version.canonical, model_version.path)
    return render(request, "datasets/_rendered.html", {"rendered": rendered, "row": row, "model_version": model_version})


def version_download(request, version_id: int):
    version = _version(request.user, version_id)
    name = f"{version.dataset.name}-v{version.number}.jsonl".replace("/", "_")
    return StreamingFileResponse(version.path.open("rb"), as_attachment=True, filename=name, content_type="application/jsonl")


@require_POST
def version_clean(request, version_id: int):
    version = _version(request.user, version_id)
    form = CleanForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect("dataset-version-detail", version_id=version.pk)
    try:
        job = services.start_clean(request.user, version, form.cleaning(), form.cleaned_data["eval_versions"])
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
    except (services.DatasetError, InvalidParams) as exc:
        messages.error(request, str(exc))
    else:
        return redirect("job-detail", job_id=job.pk)
    return redirect("dataset-version-detail", version_id=version.pk)


@require_POST
def version_delete(request, version_id: int):
    version = _version(request.user, version_id)
    try:
        services.delete_version(request.user, version)
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
    except services.DatasetError as exc:
        messages.error(request, exc.reason)
    else:
        messages.success(request, gettext("%(version)s deleted.") % {"version": version})
        return redirect("dataset-detail", dataset_id=version.dataset_id)
    return redirect("dataset-version-detail", version_id=version.pk)
