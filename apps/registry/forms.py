from django import forms

from apps.accounts.visibility import visible_to
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import import_choices

SOURCES = [("folder", "A folder in the import directory"), ("archive", "An uploaded archive (.zip, .tar, .tar.gz)"),
           ("starter", "The packaged starter model (SmolLM2-135M-Instruct)"), ("hub", "A model hub id (needs a network)")]


class ImportForm(forms.Form):
    source = forms.ChoiceField(choices=SOURCES, widget=forms.RadioSelect, initial="starter")
    model = forms.ModelChoiceField(queryset=RegisteredModel.objects.none(), required=False,
                                   empty_label="— a new model —", help_text="add a version to one of your models")
    model_name = forms.CharField(max_length=100, required=False, help_text="for a new model")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    folder = forms.ChoiceField(required=False)
    archive = forms.FileField(required=False)
    hub_id = forms.CharField(max_length=200, required=False, help_text="e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    base_version = forms.ModelChoiceField(queryset=ModelVersion.objects.none(), required=False, empty_label="—",
                                          help_text="for an adapter: the version it was trained on (needed to merge it)")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["model"].queryset = RegisteredModel.objects.filter(owner=user) if user else RegisteredModel.objects.none()
        self.fields["folder"].choices = [("", "—")] + import_choices()
        if user:
            self.fields["base_version"].queryset = visible_to(
                ModelVersion.objects.select_related("model").exclude(kind="adapter"), user, "model__owner")

    def clean(self):
        data = super().clean()
        source = data.get("source")
        if source == "folder" and not data.get("folder"):
            self.add_error("folder", "choose a folder (put model folders in the import directory first)")
        if source == "archive" and not data.get("archive"):
            self.add_error("archive", "choose an archive to upload")
        if source == "hub" and not data.get("hub_id"):
            self.add_error("hub_id", "give a hub id like org/name")
        if not data.get("model") and not data.get("model_name"):
            self.add_error("model_name", "name the new model, or choose an existing one")
        return data


class QuantizeForm(forms.Form):
    method = forms.ChoiceField(choices=[("int8", "int8 weight-only (torchao; CPU and GPU)"), ("nf4", "4-bit NF4 (bitsandbytes; GPU only)")])
    eval_text = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                                help_text="text to measure the perplexity change on (optional)")


class AliasForm(forms.Form):
    name = forms.SlugField(max_length=40)
    version = forms.IntegerField()


def visible_models(user):
    return visible_to(RegisteredModel.objects.select_related("owner"), user)
