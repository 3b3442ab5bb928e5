"""Submit forms, one per job kind. Field ranges are checked again by the core spec (the single
source of truth), whose errors are attached to the field they name."""
from django import forms
from django.conf import settings

QUEUE_CHOICES = [(q, q) for q in settings.JOB_QUEUES]


class JobFormBase(forms.Form):
    kind: str = ""
    title = forms.CharField(max_length=200, required=False)
    queue = forms.ChoiceField(choices=QUEUE_CHOICES)

    def params(self) -> dict:
        return {k: v for k, v in self.cleaned_data.items() if k not in ("title", "queue")}


class DiagnosticsForm(JobFormBase):
    kind = "diagnostics"
    steps = forms.IntegerField(min_value=1, max_value=10_000, initial=20)
    matmul_size = forms.IntegerField(min_value=16, max_value=16_384, initial=512, help_text="square matrix side")
    bandwidth_mb = forms.IntegerField(min_value=1, max_value=8_192, initial=64, help_text="MB copied per step")
    device = forms.ChoiceField(choices=[("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")], initial="auto")
    min_step_seconds = forms.FloatField(min_value=0, max_value=600, initial=0, help_text="stretch each step (soak test)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["queue"].initial = "gpu"


class ProbeForm(JobFormBase):
    kind = "probe"
    seconds = forms.FloatField(min_value=0, max_value=3600, initial=10, help_text="at most an hour")
    steps = forms.IntegerField(min_value=1, max_value=100_000, initial=10)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["queue"].initial = "cpu"


# Only the generic kinds (catalog.GENERIC_KINDS) have a form here: the others are created by
# their app's pages, which choose every path from what the user may see.
FORMS = {form.kind: form for form in (DiagnosticsForm, ProbeForm)}
