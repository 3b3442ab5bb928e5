"""Training pages: the runs list, the new-run form with its pre-flight panel, the run page (live
charts through the job page's code, samples, checkpoints, spec), compare, and presets."""
from __future__ import annotations

from django.contrib import messages
from django.utils.translation import gettext, gettext_lazy
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from apps.accounts.visibility import can_manage, get_visible_or_404, visible_to
from apps.jobs.models import JobMetric, JobStatus
from apps.jobs.snapshot import job_snapshot
from apps.training import compare as comparing
from apps.training import presets, services
from apps.training.forms import MAIN_FIELDS, PresetForm, TrainingForm
from apps.training.models import TrainingPreset, TrainingRun

MAX_COMPARE = 50


def visible_runs(user):
    return visible_to(TrainingRun.objects.select_related("job", "job__owner", "base_version__model", "target_model"),
                      user, "job__owner")


def _run(user, job_id: int) -> TrainingRun:
    return get_visible_or_404(TrainingRun.objects.select_related("job", "job__owner", "base_version__model", "target_model"),
                              user, "job__owner", job_id=job_id)


def run_list(request):
    runs = list(visible_runs(request.user)[:200])
    job_ids = [r.job_id for r in runs]
    last_loss = {}
    for job_id, step, value in (JobMetric.objects.filter(job_id__in=job_ids, name="loss").order_by("job_id", "step")
                                .values_list("job_id", "step", "value")):
        last_loss[job_id] = value
    datasets = {}
    from apps.datasets.models import DatasetVersionUse

    for use in DatasetVersionUse.objects.filter(job_id__in=job_ids, role="train").select_related("version__dataset"):
        datasets.setdefault(use.job_id, []).append(str(use.version))
    rows = [{"run": r, "loss": last_loss.get(r.job_id), "datasets": datasets.get(r.job_id, [])} for r in runs]
    return render(request, "training/run_list.html", {"rows": rows})


def _preset_initial(request, form_data) -> dict:
    key = form_data.get("preset")
    if not key:
        return {}
    try:
        _, fields = presets.preset_fields(request.user, key)
    except services.TrainingError as exc:
        messages.error(request, exc.reason)
        return {}
    initial = {name: fields[name] for name in MAIN_FIELDS if name in fields}
    rest = {k: v for k, v in fields.items() if k not in MAIN_FIELDS and k not in ("method", "finetune")}
    if rest:
        import yaml

        initial["advanced"] = yaml.safe_dump(rest, sort_keys=False)
    for name in ("method", "finetune"):
        if name in fields:
            initial[name] = fields[name]
    return initial


# The parts of the pre-flight's memory estimate, in the bar's order, as its legend names them.
MEMORY_PARTS = (("weights", gettext_lazy("weights")), ("gradients", gettext_lazy("gradients")),
                ("optimizer", gettext_lazy("optimizer")), ("activations", gettext_lazy("activations")),
                ("runtime", gettext_lazy("runtime (trainer, data, libraries)")))


def with_memory_bar(report: dict | None) -> dict | None:
    """Adds `memory_bar`: each part's share of max(budget, total) in percent, for the bar."""
    if not report or not report.get("memory"):
        return report
    memory = report["memory"]
    scale = max(float(memory.get("budget") or 0), float(memory.get("total") or 0), 1.0)
    parts = [{"name": name, "label": label, "percent": round(100 * float(memory.get(name) or 0) / scale, 2)}
             for name, label in MEMORY_PARTS]
    return {**report, "memory_bar": parts, "memory_percent": round(100 * float(memory.get("total") or 0) / float(memory["budget"]), 1)
            if memory.get("budget") else None}


def _request_from(form: TrainingForm):
    """The TrainingRequest, or None with the problem attached to the form."""
    if not form.is_valid():
        return None
    try:
        return form.to_request()
    except services.TrainingError as exc:
        form.add_error("advanced" if exc.field not in form.fields or exc.reason.startswith("line") else exc.field,
                       f"{exc.field}: {exc.reason}")
        return None


def run_new(request):
    if request.method == "POST":
        form = TrainingForm(request.user, request.POST)
        req = _request_from(form)
        report = None
        checking = request.POST.get("action") == "check"
        if req is not None:
            if checking:
                report = services.preflight(request.user, req)
            else:
                try:
                    job = services.submit(request.user, req)
                except services.PreflightRefused as exc:
                    report = exc.report
                    form.attach_errors(exc.errors)
                except services.PermissionDenied as exc:
                    form.add_error(None, str(exc))
                except services.TrainingError as exc:
                    form.attach_errors([{"field": exc.field, "message": exc.reason}])
                else:
                    messages.success(request, gettext('%(job)s queued on %(queue)s.') % {"job": job, "queue": job.queue})
                    return redirect("training-run", job_id=job.pk)
        if req is None and checking:  # the form's own errors, shown in the panel too
            report = {"ok": False, "errors": [{"field": name, "message": str(message)}
                                              for name, errors in form.errors.items() for message in errors]}
        report = with_memory_bar(report)
        if checking and report is not None and form.is_valid() and form.cleaned_data.get("dry_run"):
            # Check only validates: say what the ticked box will do, so it does not look ignored.
            report["dry_run_note"] = gettext("Dry run is ticked: Check only validates. Start training then runs a few "
                                             "measured steps, estimates the whole run's time and peak memory, and registers "
                                             "nothing.")
        if checking and request.htmx:
            return render(request, "training/_preflight.html", {"report": report, "form": form})
        return render(request, "training/run_new.html", {"form": form, "report": report}, status=200 if checking else 422)
    initial = {**{k: v for k, v in request.GET.items() if k in ("method", "finetune", "base", "queue", "model_name")},
               **_preset_initial(request, request.GET)}
    if request.GET.get("preset"):
        initial["preset"] = request.GET["preset"]
    if request.GET.getlist("train_versions"):
        initial["train_versions"] = request.GET.getlist("train_versions")
    form = TrainingForm(request.user, initial=initial)
    template = "training/_form.html" if request.htmx else "training/run_new.html"
    return render(request, template, {"form": form, "report": None})


def run_detail(request, job_id: int):
    run = _run(request.user, job_id)
    job = run.job
    uses = list(job.dataset_uses.select_related("version__dataset"))
    version = getattr(job, "produced_version", None)  # the reverse one-to-one raises an AttributeError subclass
    restarts = visible_to(TrainingRun.objects.filter(restarted_from_job=job).select_related("job"), request.user, "job__owner")
    return render(request, "training/run_detail.html", {
        "run": run, "job": job, "snapshot": job_snapshot(job), "can_manage": can_manage(request.user, job),
        "train_versions": [u.version for u in uses if u.role == "train"],
        "eval_versions": [u.version for u in uses if u.role == "eval"],
        "checkpoints": services.kept_checkpoints(run), "samples": services.recent_samples(run),
        "version": version, "evaluate_version": version if job.status == JobStatus.SUCCEEDED else None,
        "restarts": restarts, "command": "python -m workers.core train spec.yaml",
        "retries": visible_to(job.retries.all(), request.user),
    })


def run_samples(request, job_id: int):
    run = _run(request.user, job_id)
    return render(request, "training/_samples.html", {"run": run, "job": run.job, "samples": services.recent_samples(run)})


def run_checkpoints(request, job_id: int):
    run = _run(request.user, job_id)
    return render(request, "training/_checkpoints.html", {"run": run, "job": run.job, "checkpoints": services.kept_checkpoints(run),
                                                          "can_manage": can_manage(request.user, run.job)})


def run_spec(request, job_id: int):
    run = _run(request.user, job_id)
    response = HttpResponse(services.spec_yaml(run.job), content_type="application/yaml")
    response["Content-Disposition"] = f'attachment; filename="train-{run.job_id}-spec.yaml"'
    return response


@require_POST
def run_restart(request, job_id: int):
    run = _run(request.user, job_id)
    try:
        job = services.restart_from_checkpoint(request.user, run.job, request.POST.get("checkpoint", ""))
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
    except services.TrainingError as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
    else:
        messages.success(request, gettext("%(job)s queued from %(job2)s's %(get)s.") % {"job": job, "job2": run.job, "get": request.POST.get('checkpoint')})
        return redirect("training-run", job_id=job.pk)
    return redirect("training-run", job_id=run.job_id)


def compare_ids(request) -> list[int]:
    raw = ",".join(request.GET.getlist("jobs"))
    ids = []
    for part in raw.split(","):
        part = part.strip()
        if part.isdigit() and int(part) not in ids:
            ids.append(int(part))
    return ids[:MAX_COMPARE]


def run_compare(request):
    ids = compare_ids(request)
    found = {r.job_id: r.job for r in visible_runs(request.user).filter(job_id__in=ids)}
    if len(found) != len(ids):
        raise Http404("No such run, or you may not see it.")
    jobs = [found[i] for i in ids]
    return render(request, "training/compare.html", {
        "jobs": jobs, "curves": comparing.curves(jobs), "diff": comparing.config_diff(jobs),
    })


# ---- presets --------------------------------------------------------------------------------

def preset_list(request):
    form = PresetForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                preset = presets.save(request.user, name=form.cleaned_data["name"], description=form.cleaned_data["description"],
                                      fields=form.cleaned_data["fields_yaml"])
            except services.TrainingError as exc:
                form.add_error("name" if exc.field == "name" else "fields_yaml", f"{exc.field}: {exc.reason}")
            else:
                messages.success(request, gettext('Preset %(name)s saved.') % {"name": preset.name})
                return redirect("training-presets")
    return render(request, "training/presets.html", {"presets": presets.choices(request.user), "form": form,
                                                     "import_error": None})


@require_POST
def preset_import(request):
    text = request.POST.get("yaml", "")
    upload = request.FILES.get("file")
    if upload is not None:  # a bounded read: one byte past the limit is enough to refuse it
        text = upload.read(presets.MAX_YAML_BYTES + 1).decode("utf-8", errors="replace")
    try:
        preset = presets.import_yaml(request.user, text)
    except services.TrainingError as exc:
        return render(request, "training/presets.html", {
            "presets": presets.choices(request.user), "form": PresetForm(), "import_error": f"{exc.field}: {exc.reason}",
            "import_text": text}, status=422)
    messages.success(request, gettext('Preset %(name)s imported.') % {"name": preset.name})
    return redirect("training-presets")


def preset_export(request, key: str):
    try:
        name, fields = presets.preset_fields(request.user, key)
    except services.TrainingError as exc:
        raise Http404(exc.reason) from None
    description = ""
    if key.isdigit():
        description = TrainingPreset.objects.get(pk=int(key)).description
    response = HttpResponse(presets.export_yaml(name, fields, description), content_type="application/yaml")
    response["Content-Disposition"] = f'attachment; filename="preset-{key.replace(":", "-")}.yaml"'
    return response


@require_POST
def preset_clone(request, key: str):
    try:
        preset = presets.clone(request.user, key, request.POST.get("name", ""))
    except services.TrainingError as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
    else:
        messages.success(request, gettext('Cloned as %(name)s.') % {"name": preset.name})
    return redirect("training-presets")


def preset_edit(request, preset_id: int):
    import yaml

    preset = get_visible_or_404(TrainingPreset.objects.select_related("owner"), request.user, pk=preset_id)
    manage = can_manage(request.user, preset)
    form = PresetForm(request.POST or None, initial={"name": preset.name, "description": preset.description,
                                                    "fields_yaml": yaml.safe_dump(preset.fields, sort_keys=False)})
    if request.method == "POST":
        if not manage:
            messages.error(request, gettext("only the preset's owner or staff can change it"))
            return redirect("training-preset", preset_id=preset.pk)
        if form.is_valid():
            try:
                presets.save(request.user, name=form.cleaned_data["name"], description=form.cleaned_data["description"],
                             fields=form.cleaned_data["fields_yaml"], preset=preset)
            except services.TrainingError as exc:
                form.add_error("name" if exc.field == "name" else "fields_yaml", f"{exc.field}: {exc.reason}")
            else:
                messages.success(request, gettext('Preset %(name)s saved.') % {"name": preset.name})
                return redirect("training-presets")
    return render(request, "training/preset_edit.html", {"preset": preset, "form": form, "can_manage": manage})


@require_POST
def preset_delete(request, preset_id: int):
    preset = get_visible_or_404(TrainingPreset.objects.all(), request.user, pk=preset_id)
    if not can_manage(request.user, preset):
        messages.error(request, gettext("only the preset's owner or staff can delete it"))
    else:
        preset.delete()
        messages.success(request, gettext('Preset %(name)s deleted.') % {"name": preset.name})
    return redirect("training-presets")

