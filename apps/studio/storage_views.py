"""The Storage page (apps/studio/storage.py): the data dir's disk, usage per user and kind (staff
see everyone's, a user their own), the retention settings (staff edit, everyone reads), what the
next sweep deletes, and a button for staff to run it now."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from apps.studio import storage
from apps.studio.models import MAX_RETENTION_DAYS, StorageSettings


class RetentionForm(forms.ModelForm):
    """The two retention fields; their labels and inline help come from the model."""

    class Meta:
        model = StorageSettings
        fields = ["checkpoint_days", "cache_days"]
        widgets = {name: forms.NumberInput(attrs={"min": 0, "max": MAX_RETENTION_DAYS})
                   for name in ("checkpoint_days", "cache_days")}


def _page(request, form: RetentionForm | None = None, status: int = 200):
    context = storage.overview(request.user)
    if request.user.is_staff:
        context["form"] = form or RetentionForm(instance=context["retention"])
    return render(request, "studio/storage.html", context, status=status)


def storage_page(request):
    return _page(request)


@require_POST
def retention_update(request):
    if not request.user.is_staff:
        raise PermissionDenied(_("Only staff change the retention settings."))
    form = RetentionForm(request.POST, instance=StorageSettings.load())
    if not form.is_valid():
        return _page(request, form, status=422)
    storage.update_retention(request.user, **form.cleaned_data)
    messages.success(request, _("Retention saved: the next sweep (within the hour) applies it."))
    return redirect("storage")


@require_POST
def sweep_now(request):
    if not request.user.is_staff:
        raise PermissionDenied(_("Only staff run the retention sweep."))
    done = storage.run_sweep(request.user)
    count = done["checkpoints"] + done["caches"]
    message = ngettext("Sweep done: %(count)d expired item deleted, %(bytes)s freed.",
                       "Sweep done: %(count)d expired items deleted, %(bytes)s freed.", count) % {
        "count": count, "bytes": filesizeformat(done["bytes"])}
    if done["failed"]:
        message += " " + ngettext("%(failed)d item could not be deleted; the server log says why.",
                                  "%(failed)d items could not be deleted; the server log says why.", done["failed"]) % {
            "failed": done["failed"]}
    messages.success(request, message)
    return redirect("storage")
