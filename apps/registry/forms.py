from django import forms
from django.utils.translation import gettext_lazy

from apps.accounts.visibility import visible_to
from apps.registry.models import ModelVersion, RegisteredModel
from apps.registry.services import import_choices

SOURCES = [("folder", gettext_lazy("A folder in the import directory")),
           ("archive", gettext_lazy("An uploaded archive (.zip, .tar, .tar.gz)")),
           ("starter", gettext_lazy("The packaged starter model (SmolLM2-135M-Instruct)")),
           ("hub", gettext_lazy("A model hub id (needs a network)"))]


class ImportForm(forms.Form):
    source = forms.ChoiceField(label=gettext_lazy("Source"), help_text=gettext_lazy('where the model comes from'), choices=SOURCES, widget=forms.RadioSelect, initial="starter")
    model = forms.ModelChoiceField(label=gettext_lazy("Model"), queryset=RegisteredModel.objects.none(), required=False,
                                   empty_label=gettext_lazy("— a new model —"), help_text=gettext_lazy("add a version to one of your models"))
    model_name = forms.CharField(label=gettext_lazy("Model name"), max_length=100, required=False, help_text=gettext_lazy("for a new model"))
    description = forms.CharField(label=gettext_lazy("Description"), help_text=gettext_lazy('optional: what the model is and where it came from'), widget=forms.Textarea(attrs={"rows": 2}), required=False)
    folder = forms.ChoiceField(label=gettext_lazy("Folder"), help_text=gettext_lazy("a model folder placed in the server's import directory by an administrator"), required=False)
    archive = forms.FileField(label=gettext_lazy("Archive"), help_text=gettext_lazy('.zip, .tar or .tar.gz of a Hugging Face model folder (safetensors only)'), required=False)
    hub_id = forms.CharField(label=gettext_lazy("Hub id"), max_length=200, required=False, help_text=gettext_lazy("e.g. HuggingFaceTB/SmolLM2-135M-Instruct"))
    base_version = forms.ModelChoiceField(label=gettext_lazy("Base version"), queryset=ModelVersion.objects.none(), required=False, empty_label="—",
                                          help_text=gettext_lazy("for an adapter: the version it was trained on (needed to merge it)"))

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
            self.add_error("folder", gettext_lazy("choose a folder (put model folders in the import directory first)"))
        if source == "archive" and not data.get("archive"):
            self.add_error("archive", gettext_lazy("choose an archive to upload"))
        if source == "hub" and not data.get("hub_id"):
            self.add_error("hub_id", gettext_lazy("give a hub id like org/name"))
        if not data.get("model") and not data.get("model_name"):
            self.add_error("model_name", gettext_lazy("name the new model, or choose an existing one"))
        return data


class QuantizeForm(forms.Form):
    method = forms.ChoiceField(label=gettext_lazy("Method"), help_text=gettext_lazy('int8 weight-only runs anywhere and halves the size; NF4 needs a GPU and quarters it'), choices=[("int8", gettext_lazy("int8 weight-only (torchao; CPU and GPU)")), ("nf4", gettext_lazy("4-bit NF4 (bitsandbytes; GPU only)"))])
    eval_text = forms.CharField(label=gettext_lazy("Eval text"), widget=forms.Textarea(attrs={"rows": 4}), required=False,
                                help_text=gettext_lazy("text to measure the perplexity change on (optional)"))


class AliasForm(forms.Form):
    name = forms.SlugField(label=gettext_lazy("Name"), help_text=gettext_lazy('letters, digits, - and _ (up to 40), e.g. production'), max_length=40)
    version = forms.IntegerField(label=gettext_lazy("Version"), help_text=gettext_lazy('the version number the alias points to'), )


def visible_models(user):
    return visible_to(RegisteredModel.objects.select_related("owner"), user)
