from django.contrib import messages
from django.utils.translation import gettext
from django.contrib.auth import get_user_model
from django.db.models import Count, Max, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.visibility import can_manage, get_visible_or_404, teammate_ids, visible_to
from apps.jobs.models import Job
from apps.leaderboards import views as evaluations  # the model card's scores and its "Evaluate" button
from apps.registry import services
from apps.registry.downloads import version_archive_response
from apps.registry.forms import AliasForm, ImportForm, QuantizeForm, visible_models
from apps.registry.lineage import lineage_figure
from apps.registry.models import AliasMove, ModelVersion, RegisteredModel, VersionKind
from apps.serving.models import Deployment
from apps.studio.streaming import StreamingFileResponse  # streams under daphne (no whole-file list)

SIZE_BUCKETS = {"small": (0, 100_000_000), "medium": (100_000_000, 1_000_000_000), "large": (1_000_000_000, 10**15)}


def _visible_version(user, version_id) -> ModelVersion:
    versions = ModelVersion.objects.select_related("model", "model__owner", "parent", "adapter", "source_job")
    return get_visible_or_404(versions, user, owner_field="model__owner", pk=version_id)


def model_list(request):
    models = visible_models(request.user).annotate(version_count=Count("versions"), latest=Max("versions__created_at"))
    f = {key: request.GET.get(key, "") for key in ("q", "architecture", "kind", "owner", "size")}
    if f["q"]:
        models = models.filter(Q(name__icontains=f["q"]) | Q(description__icontains=f["q"]))
    if f["architecture"]:
        models = models.filter(architecture=f["architecture"])
    if f["kind"]:
        models = models.filter(versions__kind=f["kind"]).distinct()
    if f["owner"]:
        models = models.filter(owner__username=f["owner"])
    if f["size"] in SIZE_BUCKETS:
        low, high = SIZE_BUCKETS[f["size"]]
        models = models.filter(versions__parameter_count__gte=low, versions__parameter_count__lt=high).distinct()
    context = {
        "models": models, "filters": f, "kinds": VersionKind.choices,
        "architectures": visible_models(request.user).exclude(architecture="").values_list("architecture", flat=True).distinct(),
        "owners": get_user_model().objects.filter(pk__in=teammate_ids(request.user)).order_by("username"),
    }
    return render(request, "registry/_model_table.html" if request.htmx else "registry/model_list.html", context)


def model_import(request):
    form = ImportForm(request.POST or None, request.FILES or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            upload = services.store_upload(data["archive"]) if data["source"] == "archive" else ""
            job = services.start_import(request.user, source=data["source"], model=data["model"], model_name=data["model_name"],
                                        description=data["description"], folder=data["folder"], upload=upload,
                                        hub_id=data["hub_id"], base_version=data["base_version"])
        except (services.RegistryError, services.jobs.InvalidParams) as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.reason)
        else:
            messages.success(request, gettext("Import started: the new version appears when the job succeeds."))
            return redirect("job-detail", job_id=job.pk)
    return render(request, "registry/model_import.html", {"form": form})


def model_detail(request, model_id: int):
    model = get_visible_or_404(RegisteredModel.objects.select_related("owner"), request.user, pk=model_id)
    versions = model.versions.select_related("parent", "adapter")
    return render(request, "registry/model_detail.html", {
        "model": model, "versions": versions, "evaluations": evaluations.version_scores(request.user, versions),
        "evaluate_version": versions.order_by("-created_at", "-id").first(),
        "aliases": model.aliases.select_related("version", "updated_by"),
        "moves": AliasMove.objects.filter(alias__model=model).select_related("alias", "from_version", "to_version", "moved_by")[:50],
        "can_manage": can_manage(request.user, model), "alias_form": AliasForm(),
    })


def serving_deployments(user, version: ModelVersion, aliases: list[str]):
    """The deployments `user` may see that serve `version`: pinned to it, or following one of its
    `aliases` (the alias names that point to it now)."""
    serving = Deployment.objects.filter(Q(version=version) | Q(version__isnull=True, model=version.model_id, alias__in=aliases))
    return visible_to(serving.select_related("owner", "model", "version"), user)


def version_detail(request, version_id: int):
    version = _visible_version(request.user, version_id)
    aliases = list(version.aliases.all())
    return render(request, "registry/version_detail.html", {
        "version": version, "model": version.model, "can_manage": can_manage(request.user, version.model),
        "lineage": lineage_figure(version, request.user), "quantize_form": QuantizeForm(),
        "blockers": services.usage_blockers(version), "aliases": aliases,
        "deployments": serving_deployments(request.user, version, [a.name for a in aliases]),
        "evaluations": evaluations.version_scores(request.user, [version]), "evaluate_version": version,
    })


def version_download(request, version_id: int):
    return version_archive_response(_visible_version(request.user, version_id))


def version_file(request, version_id: int, name: str):
    version = _visible_version(request.user, version_id)
    if name not in version.file_names():  # only files the version recorded, never a path from the URL
        raise Http404("No such file in this version.")
    return StreamingFileResponse((version.path / name).open("rb"), as_attachment=True, filename=name.rsplit("/", 1)[-1])


def _act(request, version_id, action, success):
    version = _visible_version(request.user, version_id)
    try:
        result = action(version)
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
    except (services.RegistryError, services.jobs.InvalidParams) as exc:
        messages.error(request, exc.reason)
    else:
        messages.success(request, success)
        if isinstance(result, Job):  # merge and quantize: follow the job
            return redirect("job-detail", job_id=result.pk)
        if result == "deleted":
            return redirect("model-detail", model_id=version.model_id)
    return redirect("version-detail", version_id=version.pk)


@require_POST
def version_merge(request, version_id: int):
    return _act(request, version_id, lambda v: services.start_merge(request.user, v), gettext("Merge started."))


@require_POST
def version_quantize(request, version_id: int):
    form = QuantizeForm(request.POST)
    _visible_version(request.user, version_id)  # 404 for an outsider before anything else
    if not form.is_valid():
        messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        return redirect("version-detail", version_id=version_id)
    return _act(request, version_id, lambda v: services.start_quantize(request.user, v, form.cleaned_data["method"],
                                                                      form.cleaned_data["eval_text"]),
                gettext("Quantization started."))


@require_POST
def version_delete(request, version_id: int):
    def delete(v):
        services.delete_version(request.user, v)
        return "deleted"

    return _act(request, version_id, delete, gettext("Version deleted; its files are removed."))


@require_POST
def version_notes(request, version_id: int):
    return _act(request, version_id, lambda v: services.update_notes(request.user, v, request.POST.get("notes", "")),
                gettext("Notes saved."))


@require_POST
def alias_move(request, model_id: int):
    model = get_visible_or_404(RegisteredModel.objects.all(), request.user, pk=model_id)
    form = AliasForm(request.POST)
    if form.is_valid():
        version = model.versions.filter(pk=form.cleaned_data["version"]).first()
        try:
            if version is None:
                raise services.RegistryError("version", gettext("choose a version of this model"))
            services.move_alias(request.user, model, form.cleaned_data["name"], version)
            messages.success(request, gettext('Alias %(name)s → %(version)s.') % {"name": form.cleaned_data['name'], "version": version})
        except services.PermissionDenied as exc:
            messages.error(request, str(exc))
        except services.RegistryError as exc:
            messages.error(request, exc.reason)
    else:
        messages.error(request, gettext("alias: use letters, digits, - and _"))
    return redirect("model-detail", model_id=model.pk)
