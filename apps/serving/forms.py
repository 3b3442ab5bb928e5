from django import forms
from django.utils.translation import gettext, gettext_lazy
from django.conf import settings

from apps.accounts.visibility import visible_to
from apps.registry.models import ModelAlias, ModelVersion
from apps.serving import slots
from apps.studio.labels import queue_label


def serve_choices(user) -> list[tuple[str, list[tuple[str, str]]]]:
    """What a user may deploy, grouped by model: "v<id>" pins a version, "a<alias id>" follows an alias."""
    versions = visible_to(ModelVersion.objects.select_related("model"), user, "model__owner").order_by("model__name", "-number")
    aliases = visible_to(ModelAlias.objects.select_related("model", "version"), user, "model__owner").order_by("model__name", "name")
    groups: dict[str, list[tuple[str, str]]] = {}
    for alias in aliases:
        label = gettext("follow @%(alias)s (now v%(number)s)") % {"alias": alias.name, "number": alias.version.number}
        groups.setdefault(alias.model.name, []).append((f"a{alias.pk}", label))
    for version in versions:
        label = gettext("v%(number)s (%(kind)s)") % {"number": version.number, "kind": version.get_kind_display()}
        groups.setdefault(version.model.name, []).append((f"v{version.pk}", label))
    return [(name, options) for name, options in groups.items()]


class DeploymentForm(forms.Form):
    name = forms.SlugField(label=gettext_lazy("Name"), max_length=60, help_text=gettext_lazy("letters, digits, - and _; the API model id is <you>/<name>"))
    serves = forms.ChoiceField(label=gettext_lazy("Model version or alias"), help_text=gettext_lazy("an alias is followed: moving it rolls the replicas over"))
    replicas = forms.IntegerField(label=gettext_lazy("Replicas"), help_text=gettext_lazy('model copies serving requests in parallel (1-16; default 1); each takes a serve slot'), min_value=1, max_value=16, initial=1)
    queue = forms.ChoiceField(label=gettext_lazy("Queue"), help_text=gettext_lazy('the workers that host the replicas (default serve)'), initial="serve")
    engine_options = forms.CharField(label=gettext_lazy("Engine options"), widget=forms.Textarea(attrs={"rows": 3, "placeholder": gettext_lazy('{"max_concurrent": 8}')}), required=False,
                                     help_text=gettext_lazy("JSON: engine fields of the replica spec (dtype, device, KV cache budget, batch sizes, backend…)"))
    max_queue = forms.IntegerField(label=gettext_lazy("Max queue"), min_value=1, max_value=100_000, initial=64, help_text=gettext_lazy("requests waiting or running; past it the API answers 429"))
    request_timeout_s = forms.FloatField(help_text=gettext_lazy('a request still unanswered after this many seconds fails with 504 (1-3,600; default 120)'), min_value=1, max_value=3600, initial=120, label=gettext_lazy("Request timeout (s)"))
    max_restarts = forms.IntegerField(label=gettext_lazy("Max restarts"), min_value=0, max_value=100, initial=3, help_text=gettext_lazy("failed replicas restarted before the deployment fails"))

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["serves"].choices = [("", "—")] + serve_choices(user)
        # Free slots per queue, before the user submits (the free ones go to queued jobs first).
        self.queue_slots = {q: slots.queue_slots(q) for q in settings.JOB_QUEUES}
        self.fields["queue"].choices = [(q, gettext("%(queue)s: %(summary)s") % {
            "queue": queue_label(q), "summary": self.queue_slots[q].summary(user)}) for q in settings.JOB_QUEUES]

    def target(self):
        """(model, version, alias name) for the chosen option."""
        value = self.cleaned_data["serves"]
        if value.startswith("a"):
            alias = visible_to(ModelAlias.objects.select_related("model"), self.user, "model__owner").get(pk=int(value[1:]))
            return alias.model, None, alias.name
        version = visible_to(ModelVersion.objects.select_related("model"), self.user, "model__owner").get(pk=int(value[1:]))
        return version.model, version, ""


class KeyForm(forms.Form):
    """A new API key. Its limits are the studio's defaults (settings); only staff may set others
    (a user choosing their own quota would make it no quota): for everyone else the limit fields
    are not in the form, so posted values are ignored."""

    name = forms.CharField(label=gettext_lazy("Name"), max_length=100, help_text=gettext_lazy("e.g. the script or machine that will use it"))
    rate_limit_per_minute = forms.IntegerField(label=gettext_lazy("Rate limit per minute"), min_value=0, max_value=100_000, help_text=gettext_lazy("requests per minute (0: no limit)"))
    token_quota_per_day = forms.IntegerField(label=gettext_lazy("Token quota per day"), min_value=0, max_value=10**12, help_text=gettext_lazy("tokens per UTC day (0: no limit)"))

    def __init__(self, *args, staff: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if staff:
            self.fields["rate_limit_per_minute"].initial = settings.SERVING_DEFAULT_RATE_LIMIT_PER_MINUTE
            self.fields["token_quota_per_day"].initial = settings.SERVING_DEFAULT_TOKEN_QUOTA_PER_DAY
        else:
            del self.fields["rate_limit_per_minute"], self.fields["token_quota_per_day"]
