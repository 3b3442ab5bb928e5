"""The new-run form: inputs are chosen among what the user may see (ids, never paths); the main
hyperparameters are fields, the rest an "advanced" YAML mapping. The core spec checks every value
again (pre-flight), and its errors are attached to the field they name."""
from __future__ import annotations

import dataclasses

from django import forms
from django.conf import settings
from django.utils.translation import gettext, gettext_lazy, pgettext_lazy

from apps.accounts.visibility import visible_to
from apps.datasets.models import DatasetVersion
from apps.registry.models import ModelAlias, ModelVersion, VersionKind
from apps.studio.labels import queue_label
from apps.training import presets
from apps.training.services import FINETUNES, METHODS, TrainingError, TrainingRequest

# The hyperparameters shown as fields (the rest go in the advanced YAML).
MAIN_FIELDS = {
    "learning_rate": forms.FloatField, "batch_size": forms.IntegerField, "grad_accum": forms.IntegerField,
    "max_steps": forms.IntegerField, "epochs": forms.FloatField, "max_length": forms.IntegerField,
    "lora_r": forms.IntegerField, "lora_alpha": forms.IntegerField, "lora_dropout": forms.FloatField,
    "save_every": forms.IntegerField, "eval_every": forms.IntegerField, "seed": forms.IntegerField,
}
FIELD_LABELS = {
    "learning_rate": gettext_lazy("Learning rate"), "batch_size": gettext_lazy("Batch size"),
    "grad_accum": gettext_lazy("Grad accum"), "max_steps": gettext_lazy("Max steps"), "epochs": gettext_lazy("Epochs"),
    "max_length": gettext_lazy("Max length"), "lora_r": gettext_lazy("Lora r"), "lora_alpha": gettext_lazy("Lora alpha"),
    "lora_dropout": gettext_lazy("Lora dropout"), "save_every": gettext_lazy("Save every"),
    "eval_every": gettext_lazy("Eval every"), "seed": gettext_lazy("Seed"),
}
# What each main hyperparameter does, with its unit; the default and range are added from the spec.
FIELD_HELP = {
    "learning_rate": gettext_lazy("How far each optimizer step moves the weights (a factor, no unit). LoRA often "
                                  "uses 1e-4 to 1e-3, full fine-tuning 1e-5 to 5e-5."),
    "batch_size": gettext_lazy("Sequences per step on each device: more is faster per sample and needs more memory."),
    "grad_accum": gettext_lazy("Steps whose gradients add up before one optimizer update (steps): the effective "
                               "batch is batch size × grad accum, without the memory of a bigger batch."),
    "max_steps": gettext_lazy("Optimizer updates to run (steps); 0 trains for the epochs instead."),
    "epochs": gettext_lazy("Passes over the training data (epochs; a fraction is allowed); used only when max steps is 0."),
    "max_length": gettext_lazy("Longest training sequence (tokens): longer samples are truncated; memory grows with it."),
    "lora_r": gettext_lazy("Rank of the LoRA adapters (dimensions): higher learns more and needs more memory. "
                           "LoRA and QLoRA only."),
    "lora_alpha": gettext_lazy("Scale of the LoRA update, which is multiplied by alpha / r (no unit); often twice r. "
                               "LoRA and QLoRA only."),
    "lora_dropout": gettext_lazy("Share of the adapters' inputs dropped at random while training (a probability), "
                                 "against overfitting. LoRA and QLoRA only."),
    "save_every": gettext_lazy("A checkpoint every this many optimizer steps (steps), and one at the end."),
    "eval_every": gettext_lazy("The loss on the eval data every this many optimizer steps (steps)."),
    "seed": gettext_lazy("Random seed (a whole number) for shuffling, the eval split and new weights: the same "
                         "seed repeats a run."),
}
METHOD_CHOICES = {"pretrain": gettext_lazy("pretrain — pretraining from scratch"),
                  "cpt": gettext_lazy("cpt — continued pretraining"), "sft": gettext_lazy("sft — supervised fine-tuning"),
                  "dpo": gettext_lazy("dpo — DPO"), "orpo": gettext_lazy("orpo — ORPO")}
FINETUNE_CHOICES = {"full": pgettext_lazy("finetune", "full"), "lora": pgettext_lazy("finetune", "lora"),
                    "qlora": pgettext_lazy("finetune", "qlora")}


def parse_advanced(text: str) -> dict:
    """The advanced YAML mapping, with errors that name the line. Bounded (size, nesting, aliases)
    before it is built: see catalog.load_yaml."""
    from workers.tasks import catalog

    if not (text or "").strip():
        return {}
    try:
        data, root = catalog.load_yaml(text, "advanced")
    except catalog.InvalidParams as exc:
        raise TrainingError(exc.field, exc.reason) from None
    if not isinstance(data, dict):
        raise TrainingError("advanced", "line 1: " + gettext("expected a mapping of field: value"))
    where = {key.value: f"line {key.start_mark.line + 1}" for key, _ in presets.scalar_keys(root, "advanced")}
    return presets.check_fields(data, where)


def base_choices(user) -> list[tuple[str, str]]:
    versions = visible_to(ModelVersion.objects.select_related("model"), user, "model__owner").exclude(kind=VersionKind.ADAPTER)
    aliases = visible_to(ModelAlias.objects.select_related("model", "version"), user, "model__owner")
    return ([("", gettext("— none: pretrain from scratch —"))]
            + [(f"a:{a.pk}", f"{a.model.name}@{a.name} (→ v{a.version.number})") for a in aliases[:200]]
            + [(f"v:{v.pk}", v.choice_label) for v in versions[:500]])


def dataset_choices(user) -> list[tuple[str, str]]:
    versions = visible_to(DatasetVersion.objects.select_related("dataset"), user, "dataset__owner")
    return [(str(v.pk), v.choice_label) for v in versions[:500]]


def spec_defaults() -> dict:
    """The core's TrainSpec defaults, shown as placeholders and in the help (a blank field keeps the
    default): the dataclass's own field defaults, read without building (and validating) a spec."""
    from workers.tasks import catalog

    spec_class = catalog.CORE_JOBS["train"].spec_class
    return {f.name: f.default for f in dataclasses.fields(spec_class) if f.default is not dataclasses.MISSING}


def spec_ranges() -> dict:
    """{field: (lowest, highest)} as TrainSpec.validate checks them (workers/core/training/spec.py RANGES)."""
    from workers.tasks import catalog

    return catalog.CORE_JOBS["train"].spec_class.RANGES


def shown(value) -> str:
    """A number as the help shows it: 0.0002, 1e-9, 1000, 131,072."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return f"{value:g}".replace("e-0", "e-").replace("e+0", "e+")


def hyperparameter_field(name: str, default) -> forms.Field:
    """A main hyperparameter as an optional field: inline help (what, unit, default, range), the
    default as placeholder and the spec's range as the input's min and max."""
    low, high = spec_ranges()[name]
    field_class = MAIN_FIELDS[name]
    attrs = {"min": shown(low).replace(",", ""), "max": shown(high).replace(",", ""),
             "placeholder": gettext("default %(value)s") % {"value": shown(default)}}
    help_text = gettext("%(help)s Default %(default)s; from %(low)s to %(high)s.") % {
        "help": FIELD_HELP[name], "default": shown(default), "low": shown(low), "high": shown(high)}
    return field_class(label=FIELD_LABELS[name], required=False, help_text=help_text, widget=field_class.widget(attrs=attrs))


def queue_help() -> str:
    """Which online workers serve each queue, with the device the pre-flight will check against."""
    from apps.training.services import online_workers

    parts = []
    for queue in settings.JOB_QUEUES:
        nodes = online_workers(queue)
        described = []
        for node in nodes:
            gpus = (node.devices or {}).get("gpus") or []
            devices = ", ".join(g.get("name", "GPU") for g in gpus) or gettext("CPU only")
            described.append(f"{node.name} ({devices})")
        parts.append(gettext("%(queue)s: %(workers)s") % {"queue": queue_label(queue),
                                                          "workers": ", ".join(described) or gettext("no worker online")})
    return "; ".join(parts)


class TrainingForm(forms.Form):
    preset = forms.ChoiceField(label=gettext_lazy("Preset"), required=False, help_text=gettext_lazy("fills the hyperparameters; you can still edit them"))
    method = forms.ChoiceField(label=gettext_lazy("Method"), help_text=gettext_lazy("pretrain (raw text, from scratch), cpt (continued pretraining on raw text), sft (chat or instructions), dpo (preference pairs)"), choices=[(m, METHOD_CHOICES[m]) for m in METHODS], initial="sft")
    finetune = forms.ChoiceField(label=gettext_lazy("Finetune"), help_text=gettext_lazy('lora: small adapters, little memory (default); full: every weight, most memory; qlora: LoRA on 4-bit weights (GPU)'), choices=[(f, FINETUNE_CHOICES[f]) for f in FINETUNES], initial="lora")
    base = forms.ChoiceField(help_text=gettext_lazy('the model version (or the alias it follows) to start from; empty with pretrain trains from scratch'), required=False, label=gettext_lazy("Base model (version or alias)"))
    train_versions = forms.MultipleChoiceField(help_text=gettext_lazy('one or more dataset versions whose format fits the method'), label=gettext_lazy("Dataset version(s)"))
    eval_versions = forms.MultipleChoiceField(required=False, label=gettext_lazy("Eval version (optional)"),
                                              help_text=gettext_lazy("blank: a held-out fraction of the training data"))
    model_name = forms.CharField(required=False, max_length=100, label=gettext_lazy("Register into model"),
                                 help_text=gettext_lazy("blank: the base version's model"))
    queue = forms.ChoiceField(label=gettext_lazy("Queue"), help_text=gettext_lazy('which workers run it: gpu (training and evaluation workers) or cpu'), choices=[(q, queue_label(q)) for q in settings.JOB_QUEUES], initial="gpu")
    advanced = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}),
                               label=gettext_lazy("Advanced (YAML)"), help_text=gettext_lazy("any other spec field, e.g. `warmup_ratio: 0.05`"))
    dry_run = forms.BooleanField(label=gettext_lazy("Dry run"), required=False, help_text=gettext_lazy("with Start training: run a few measured steps, estimate the "
                                                           "whole run's time and peak memory, register nothing (Check only validates)"))

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["preset"].choices = [("", gettext("— none —"))] + [
            (p["key"], p["name"] + ("" if p["owner"] is None else f" ({p['owner']})")) for p in presets.choices(user)]
        self.fields["base"].choices = base_choices(user)
        options = dataset_choices(user)
        self.fields["train_versions"].choices = options
        self.fields["eval_versions"].choices = options
        self.fields["queue"].help_text = queue_help()
        defaults = spec_defaults()
        for name in MAIN_FIELDS:
            self.fields[name] = hyperparameter_field(name, defaults[name])
        # Keep the advanced textarea last, after the main hyperparameters.
        self.order_fields([*[f for f in self.fields if f not in ("advanced", "dry_run")], "advanced", "dry_run"])

    def hyperparameters(self) -> dict:
        fields = {name: self.cleaned_data[name] for name in MAIN_FIELDS if self.cleaned_data.get(name) not in (None, "")}
        advanced = parse_advanced(self.cleaned_data.get("advanced", ""))
        both = sorted(set(fields) & set(advanced))
        if both:
            raise TrainingError("advanced", gettext("%(field)s is set both as a field and in the YAML; keep one")
                                                    % {"field": both[0]})
        return {**fields, **advanced}

    def to_request(self) -> TrainingRequest:
        data = self.cleaned_data
        preset_name = ""
        if data.get("preset"):
            preset_name = dict(self.fields["preset"].choices).get(data["preset"], "")
        return TrainingRequest(
            method=data["method"], finetune=data["finetune"], base=data.get("base") or None,
            train_versions=data["train_versions"], eval_versions=data.get("eval_versions") or [],
            model_name=data.get("model_name", ""), queue=data["queue"], preset=preset_name,
            fields=self.hyperparameters(), dry_run=bool(data.get("dry_run")),
        )

    def attach_errors(self, errors: list[dict]) -> None:
        """Pre-flight errors (field, message) on the form field they name, else on the form."""
        for error in errors:
            name, message = error.get("field", ""), error.get("message", "")
            target = name if name in self.fields else ("train_versions" if name in ("train_files", "data_format")
                                                        else "base" if name == "base_model_dir" else None)
            if target is None and name and name not in ("spec",):
                message = f"{name}: {message}"
            if target and target in self.errors and message in self.errors[target]:
                continue
            self.add_error(target, message)


class PresetForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Name"), help_text=gettext_lazy("the preset's name (up to 100 characters)"), max_length=100)
    description = forms.CharField(label=gettext_lazy("Description"), help_text=gettext_lazy('optional: what the preset is for'), required=False, widget=forms.Textarea(attrs={"rows": 2}))
    fields_yaml = forms.CharField(help_text=gettext_lazy('the training fields this preset fills in, as YAML (e.g. learning_rate: 2e-4)'), label=gettext_lazy("Fields (YAML)"), widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false"}))

    def clean_fields_yaml(self):
        try:
            return parse_advanced(self.cleaned_data["fields_yaml"])
        except TrainingError as exc:
            raise forms.ValidationError(f"{exc.field}: {exc.reason}") from None
