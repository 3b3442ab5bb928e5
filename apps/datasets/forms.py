from django import forms

from apps.accounts.visibility import visible_to
from apps.datasets.models import Dataset, DatasetVersion
from apps.registry.models import ModelVersion

FORMAT_CHOICES = [("", "detect automatically"), ("text", "raw text (pretraining)"), ("alpaca", "Alpaca"),
                  ("sharegpt", "ShareGPT conversations"), ("messages", "OpenAI messages"), ("preference", "preference pairs"),
                  ("multiple_choice", "multiple choice (MMLU/C-Eval)"), ("qa", "question + answer (GSM8K)"),
                  ("code", "code problems with tests (HumanEval)")]


def tokenizer_versions(user):
    return visible_to(ModelVersion.objects.select_related("model").exclude(kind="adapter"), user, "model__owner")


def parse_column_map(text: str) -> dict[str, str]:
    """`field = column` per line → {field: column}; the error names the line."""
    mapping = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        field, sep, column = line.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise forms.ValidationError(f"line {number}: expected `field = column`, got {line.strip()!r}")
        mapping[field.strip()] = column.strip()
    return mapping


class UploadForm(forms.Form):
    file = forms.FileField()
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False, empty_label="— a new dataset —")
    dataset_name = forms.CharField(max_length=100, required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    format = forms.ChoiceField(choices=FORMAT_CHOICES, required=False)
    column_map = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "placeholder": "instruction = prompt\noutput = response"}),
                                 required=False, help_text="only if your columns are named differently: one `field = column` per line")
    tokenizer = forms.ModelChoiceField(queryset=ModelVersion.objects.none(), required=False, empty_label="— characters only —",
                                       help_text="count tokens with this model's tokenizer")
    max_length = forms.IntegerField(min_value=0, required=False, help_text="mark this length on the histogram")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        if user is not None:
            self.fields["dataset"].queryset = Dataset.objects.filter(owner=user)
            self.fields["tokenizer"].queryset = tokenizer_versions(user)

    def clean_column_map(self):
        return parse_column_map(self.cleaned_data.get("column_map") or "")

    def clean(self):
        data = super().clean()
        if not data.get("dataset") and not (data.get("dataset_name") or "").strip():
            self.add_error("dataset_name", "name the new dataset, or choose an existing one")
        return data


class CleanForm(forms.Form):
    normalize = forms.BooleanField(required=False, initial=True)
    languages = forms.CharField(required=False, help_text="keep only these (e.g. en,zh); empty keeps all")
    quality = forms.BooleanField(required=False, initial=True)
    min_chars = forms.IntegerField(initial=20, min_value=0)
    max_chars = forms.IntegerField(initial=100_000, min_value=1)
    max_symbol_ratio = forms.FloatField(initial=0.1, min_value=0)
    max_digit_ratio = forms.FloatField(initial=0.3, min_value=0)
    max_duplicate_line_fraction = forms.FloatField(initial=0.3, min_value=0)
    max_top_ngram_fraction = forms.FloatField(initial=0.2, min_value=0)
    require_stop_words = forms.IntegerField(initial=2, min_value=0)
    dedup_exact = forms.BooleanField(required=False, initial=True)
    dedup_near = forms.BooleanField(required=False, initial=True)
    near_threshold = forms.FloatField(initial=0.8, min_value=0.1, max_value=1.0)
    pii = forms.BooleanField(required=False, initial=True)
    decontaminate = forms.BooleanField(required=False, initial=True)
    decontam_ngram = forms.IntegerField(initial=13, min_value=3)
    eval_versions = forms.ModelMultipleChoiceField(queryset=DatasetVersion.objects.none(), required=False,
                                                   help_text="evaluation sets to decontaminate against")

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        if user is not None:
            self.fields["eval_versions"].queryset = visible_to(
                DatasetVersion.objects.select_related("dataset"), user, "dataset__owner")

    def cleaning(self) -> dict:
        return {k: v for k, v in self.cleaned_data.items() if k != "eval_versions"}


class GenerateForm(forms.Form):
    generator = forms.ChoiceField(choices=[("arithmetic", "arithmetic word problems (question + answer)"),
                                           ("arithmetic_zh", "Chinese arithmetic word problems (中文, question + answer)"),
                                           ("tool_use", "calculator tool-use dialogues (OpenAI messages)"),
                                           ("tool_use_sharegpt", "calculator tool-use dialogues (ShareGPT)")])
    n = forms.IntegerField(min_value=1, max_value=1_000_000, initial=1000, label="Records")
    seed = forms.IntegerField(initial=0)
    dataset_name = forms.CharField(max_length=100)
