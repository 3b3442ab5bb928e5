from django import forms
from django.utils.translation import gettext, gettext_lazy

from apps.accounts.visibility import visible_to
from apps.datasets.models import Dataset, DatasetVersion
from apps.registry.models import ModelVersion

FORMAT_CHOICES = [("", gettext_lazy("detect automatically")), ("text", gettext_lazy("raw text (pretraining)")), ("alpaca", gettext_lazy("Alpaca")),
                  ("sharegpt", gettext_lazy("ShareGPT conversations")), ("messages", gettext_lazy("OpenAI messages")), ("preference", gettext_lazy("preference pairs")),
                  ("multiple_choice", gettext_lazy("multiple choice (MMLU/C-Eval)")), ("qa", gettext_lazy("question + answer (GSM8K)")),
                  ("code", gettext_lazy("code problems with tests (HumanEval)"))]


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
            raise forms.ValidationError(gettext("line %(number)s: expected `field = column`, got %(line)s")
                                                % {"number": number, "line": repr(line.strip())})
        mapping[field.strip()] = column.strip()
    return mapping


class UploadForm(forms.Form):
    file = forms.FileField(label=gettext_lazy("File"), help_text=gettext_lazy("JSON Lines, JSON, CSV, Parquet or text (UTF-8), JSON may be .gz; up to the server's upload limit"), )
    dataset = forms.ModelChoiceField(label=gettext_lazy("Dataset"), help_text=gettext_lazy('add a new version to one of your datasets, or leave it to make a new dataset'), queryset=Dataset.objects.none(), required=False, empty_label=gettext_lazy("— a new dataset —"))
    dataset_name = forms.CharField(label=gettext_lazy("Dataset name"), help_text=gettext_lazy("the new dataset's name (up to 100 characters)"), max_length=100, required=False)
    description = forms.CharField(label=gettext_lazy("Description"), help_text=gettext_lazy('optional: where the data comes from and what it is for'), widget=forms.Textarea(attrs={"rows": 2}), required=False)
    format = forms.ChoiceField(label=gettext_lazy("Format"), help_text=gettext_lazy('leave on auto-detect unless detection picks the wrong one (alpaca, sharegpt, messages, qa, ...)'), choices=FORMAT_CHOICES, required=False)
    column_map = forms.CharField(label=gettext_lazy("Column map"), widget=forms.Textarea(attrs={"rows": 3, "placeholder": gettext_lazy("instruction = prompt\noutput = response"),
                                                                                   "translate": "no"}),  # field = column: code
                                 required=False, help_text=gettext_lazy("only if your columns are named differently: one `field = column` per line"))
    tokenizer = forms.ModelChoiceField(label=gettext_lazy("Tokenizer"), queryset=ModelVersion.objects.none(), required=False, empty_label=gettext_lazy("— characters only —"),
                                       help_text=gettext_lazy("count tokens with this model's tokenizer"))
    max_length = forms.IntegerField(label=gettext_lazy("Max length"), min_value=0, required=False, help_text=gettext_lazy("mark this length on the histogram"))

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
            self.add_error("dataset_name", gettext_lazy("name the new dataset, or choose an existing one"))
        return data


class CleanForm(forms.Form):
    normalize = forms.BooleanField(label=gettext_lazy("Normalize"), help_text=gettext_lazy('Unicode NFKC, whitespace and line-end normalisation (on by default)'), required=False, initial=True)
    languages = forms.CharField(label=gettext_lazy("Languages"), required=False, help_text=gettext_lazy("keep only these (e.g. en,zh); empty keeps all"))
    quality = forms.BooleanField(label=gettext_lazy("Quality"), help_text=gettext_lazy('drop records the quality filters below reject (on by default)'), required=False, initial=True)
    min_chars = forms.IntegerField(label=gettext_lazy("Min chars"), help_text=gettext_lazy('records shorter than this many characters are dropped (0 or more; default 20)'), initial=20, min_value=0)
    max_chars = forms.IntegerField(label=gettext_lazy("Max chars"), help_text=gettext_lazy('records longer than this many characters are dropped (1 or more; default 100,000)'), initial=100_000, min_value=1)
    max_symbol_ratio = forms.FloatField(label=gettext_lazy("Max symbol ratio"), help_text=gettext_lazy('largest share of symbol characters such as # or … allowed (0-1; default 0.1)'), initial=0.1, min_value=0)
    max_digit_ratio = forms.FloatField(label=gettext_lazy("Max digit ratio"), help_text=gettext_lazy('largest share of digits allowed (0-1; default 0.3)'), initial=0.3, min_value=0)
    max_duplicate_line_fraction = forms.FloatField(label=gettext_lazy("Max duplicate line fraction"), help_text=gettext_lazy('largest share of repeated lines inside one record (0-1; default 0.3)'), initial=0.3, min_value=0)
    max_top_ngram_fraction = forms.FloatField(label=gettext_lazy("Max top ngram fraction"), help_text=gettext_lazy('largest share of the text taken by its most frequent word 2-gram (0-1; default 0.2)'), initial=0.2, min_value=0)
    require_stop_words = forms.IntegerField(label=gettext_lazy("Require stop words"), help_text=gettext_lazy("English records need at least this many common words such as 'the' (0 turns it off; default 2)"), initial=2, min_value=0)
    dedup_exact = forms.BooleanField(label=gettext_lazy("Dedup exact"), help_text=gettext_lazy('drop records whose normalised text was seen before (on by default)'), required=False, initial=True)
    dedup_near = forms.BooleanField(label=gettext_lazy("Dedup near"), help_text=gettext_lazy('drop near-duplicates found with MinHash (on by default)'), required=False, initial=True)
    near_threshold = forms.FloatField(label=gettext_lazy("Near threshold"), help_text=gettext_lazy('estimated Jaccard similarity at or above which two records count as near-duplicates (0.1-1; default 0.8)'), initial=0.8, min_value=0.1, max_value=1.0)
    pii = forms.BooleanField(label=gettext_lazy("Pii"), help_text=gettext_lazy('mask e-mail addresses, phone numbers, ID card numbers and IP addresses (on by default)'), required=False, initial=True)
    decontaminate = forms.BooleanField(label=gettext_lazy("Decontaminate"), help_text=gettext_lazy('drop records sharing a long word n-gram with the evaluation sets chosen below (on by default)'), required=False, initial=True)
    decontam_ngram = forms.IntegerField(label=gettext_lazy("Decontam ngram"), help_text=gettext_lazy('n-gram length, in words, for decontamination (3 or more; default 13)'), initial=13, min_value=3)
    eval_versions = forms.ModelMultipleChoiceField(label=gettext_lazy("Eval versions"), queryset=DatasetVersion.objects.none(), required=False,
                                                   help_text=gettext_lazy("evaluation sets to decontaminate against"))

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        if user is not None:
            self.fields["eval_versions"].queryset = visible_to(
                DatasetVersion.objects.select_related("dataset"), user, "dataset__owner")

    def cleaning(self) -> dict:
        return {k: v for k, v in self.cleaned_data.items() if k != "eval_versions"}


class GenerateForm(forms.Form):
    generator = forms.ChoiceField(label=gettext_lazy("Generator"), help_text=gettext_lazy('what to generate: arithmetic problems for evaluation, or calculator tool-use dialogues for agent training'), choices=[("arithmetic", gettext_lazy("arithmetic word problems (question + answer)")),
                                           ("arithmetic_zh", gettext_lazy("Chinese arithmetic word problems (中文, question + answer)")),
                                           ("tool_use", gettext_lazy("calculator tool-use dialogues (OpenAI messages)")),
                                           ("tool_use_sharegpt", gettext_lazy("calculator tool-use dialogues (ShareGPT)"))])
    n = forms.IntegerField(help_text=gettext_lazy('how many records (1-1,000,000; default 1,000)'), min_value=1, max_value=1_000_000, initial=1000, label=gettext_lazy("Records"))
    seed = forms.IntegerField(label=gettext_lazy("Seed"), help_text=gettext_lazy('the random seed: the same seed and count give the same records (default 0)'), initial=0)
    dataset_name = forms.CharField(label=gettext_lazy("Dataset name"), help_text=gettext_lazy("the new dataset's name (up to 100 characters)"), max_length=100)
