"""Submit forms, one per job kind. Field ranges are checked again by the core spec (the single
source of truth), whose errors are attached to the field they name."""
from django import forms
from django.utils.translation import gettext_lazy
from django.conf import settings

QUEUE_CHOICES = [("gpu", gettext_lazy("gpu: the training and evaluation workers")), ("cpu", gettext_lazy("cpu: the light-work workers"))]


class JobFormBase(forms.Form):
    kind: str = ""
    title = forms.CharField(label=gettext_lazy("Title"), max_length=200, required=False, help_text=gettext_lazy("optional; shown in the job list (default: the kind and its number)"))
    queue = forms.ChoiceField(label=gettext_lazy("Queue"), choices=QUEUE_CHOICES, help_text=gettext_lazy("which workers run it (serving and agent workers take no generic jobs)"))

    def params(self) -> dict:
        return {k: v for k, v in self.cleaned_data.items() if k not in ("title", "queue")}


class DiagnosticsForm(JobFormBase):
    kind = "diagnostics"
    steps = forms.IntegerField(label=gettext_lazy("Steps"), min_value=1, max_value=10_000, initial=20, help_text=gettext_lazy("measurements to take (1-10,000; default 20)"))
    matmul_size = forms.IntegerField(label=gettext_lazy("Matmul size"), min_value=16, max_value=16_384, initial=512,
                                     help_text=gettext_lazy("side of the square matrices multiplied per step (16-16,384; default 512)"))
    bandwidth_mb = forms.IntegerField(label=gettext_lazy("Bandwidth mb"), min_value=1, max_value=8_192, initial=64, help_text=gettext_lazy("MB copied per step (1-8,192; default 64)"))
    device = forms.ChoiceField(label=gettext_lazy("Device"), choices=[("auto", gettext_lazy("auto")), ("cpu", gettext_lazy("cpu")), ("cuda", gettext_lazy("cuda"))], initial="auto",
                               help_text=gettext_lazy("auto: the GPU when the worker has one, else the CPU"))
    min_step_seconds = forms.FloatField(label=gettext_lazy("Min step seconds"), min_value=0, max_value=600, initial=0,
                                        help_text=gettext_lazy("seconds each step lasts at least, to make a soak test (0-600; default 0)"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["queue"].initial = "gpu"


class ProbeForm(JobFormBase):
    kind = "probe"
    seconds = forms.FloatField(label=gettext_lazy("Seconds"), min_value=0, max_value=3600, initial=10, help_text=gettext_lazy("how long it waits in all (0-3,600 s; default 10)"))
    steps = forms.IntegerField(label=gettext_lazy("Steps"), min_value=1, max_value=100_000, initial=10, help_text=gettext_lazy("progress steps the wait is split into (1-100,000; default 10)"))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["queue"].initial = "cpu"


# Only the generic kinds (catalog.GENERIC_KINDS) have a form here: the others are created by
# their app's pages, which choose every path from what the user may see.
FORMS = {form.kind: form for form in (DiagnosticsForm, ProbeForm)}
