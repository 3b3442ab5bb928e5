"""The leaderboards' forms. Every choice is among what the user may see (ids, never paths), every
field says what it does, its unit, default and range, and every number is bounded here; the
services and the core check each value again and their errors are attached to the field they
name (`attach`)."""
from __future__ import annotations

import json
import re

from django import forms
from django.utils.text import format_lazy
from django.utils.translation import gettext, gettext_lazy, ngettext
from django.contrib.auth import get_user_model

from apps.accounts.visibility import teammate_ids, visible_to
from apps.datasets.models import DatasetVersion
from apps.leaderboards.models import DIMENSIONS, BenchmarkVersion, ExternalEndpoint
from apps.registry.models import ModelAlias, ModelVersion, VersionKind

MAX_SAMPLES = 100_000
MAX_NEW_TOKENS = 8192
MAX_FEWSHOT_ROWS = 32  # as the core's spec (workers/core/evaluation/spec.py MAX_FEWSHOT)
MAX_TEMPLATE = 8000
MAX_TOOLS_CHARS = 20_000
MAX_CHOICES = 500  # rows offered in one select
# Canonical dataset formats that are evaluation shapes (workers/core/data/schema.py): the
# benchmark's shape is its dataset version's canonical format.
EVAL_SHAPES = ("multiple_choice", "qa", "code", "text", "chat")
# Scorer choices as the core's spec knows them (workers/core/evaluation/spec.py, extract.py,
# likelihood.py); the core checks them again on save, so a stale label here fails loudly.
PARADIGMS = [("likelihood", gettext_lazy("likelihood — log-likelihood of each option (multiple choice)")),
             ("generation", gettext_lazy("generation — greedy output, then an answer extractor (qa, multiple choice)")),
             ("code", gettext_lazy("code — run the completion against the tests in the sandbox, pass@1 (code)")),
             ("perplexity", gettext_lazy("perplexity — bits per byte over a sliding window (text)")),
             ("judge", gettext_lazy("judge — an LLM rates each answer 1–10 (chat prompts)"))]
NORMALIZATIONS = [("none", gettext_lazy("none (sum of token log-probabilities)")),
                  ("per-token", gettext_lazy("per token (mean per token)")),
                  ("per-character", gettext_lazy("per character (sum / characters)"))]
CONTINUATIONS = [("letter", gettext_lazy("letter (score ' A', ' B', …)")),
                 ("text", gettext_lazy("text (score each option's own text)"))]
EXTRACTORS = [("final_number", gettext_lazy("final number (#### n, \\boxed{}, \"The answer is\", then the last number)")),
              ("last_number", gettext_lazy("last number")), ("gsm8k", gettext_lazy("#### n only (GSM8K)")),
              ("boxed", gettext_lazy("\\boxed{…} only")), ("option", gettext_lazy("option letter (multiple choice)")),
              ("regex", gettext_lazy("regex (the answer pattern below)")),
              ("tool_call", gettext_lazy("tool call (the calculator call's result, agent benchmarks)"))]
CHAT_TEMPLATES = [("", gettext_lazy("the model's own")), ("chatml", "ChatML"),
                  ("chatml-tools", gettext_lazy("ChatML with tool calls"))]
# The settings of each paradigm, as fields of the form (workers/core/evaluation/spec.py SCORER_SETTINGS).
SCORER_FIELDS = {"likelihood": ("normalization", "continuation", "circular"), "generation": ("extractor", "answer_pattern"),
                 "code": ("timeout_s",), "perplexity": ("window", "stride"), "judge": ("repeats", "temperature")}
TARGET_FIELDS = ("model_version", "alias", "deployment", "endpoint", "target")


def attach(form: forms.Form, field: str, reason: str, aliases: dict | None = None) -> None:
    """A service's RefusedInput(field, reason) on the form field it names (or the form's top)."""
    name = (aliases or {}).get(field, field)
    if "." in name or "[" in name:  # a core field such as scorer.extractor or fewshot[2].answer
        head = re.split(r"[.\[]", name, maxsplit=1)[0]
        tail = re.split(r"\.", name)[-1]
        name = tail if tail in form.fields else head
    if name in form.fields:  # the page prefixes a field's errors with its name
        form.add_error(name, reason if name == field else f"{field}: {reason}")
    else:
        form.add_error(None, f"{field}: {reason}")


def visible_dataset_versions(user):
    return visible_to(DatasetVersion.objects.select_related("dataset"), user, "dataset__owner")


# ---- evaluate -----------------------------------------------------------------------------------

def target_choices(user) -> list:
    """Grouped choices: registry versions, aliases, deployments as served, and external endpoints
    (only when an admin allowed some)."""
    from apps.serving.models import Deployment

    versions = visible_to(ModelVersion.objects.select_related("model"), user, "model__owner").order_by("-created_at")
    aliases = visible_to(ModelAlias.objects.select_related("model", "version"), user, "model__owner")
    groups = [
        (gettext("Registry versions"), [(f"v:{v.pk}", v.choice_label) for v in versions[:MAX_CHOICES]]),
        (gettext("Aliases (resolved when you submit)"), [
            (f"a:{a.pk}", gettext("%(model)s@%(alias)s (now v%(number)s)")
             % {"model": a.model.name, "alias": a.name, "number": a.version.number}) for a in aliases[:MAX_CHOICES]]),
    ]
    deployments = list(visible_to(Deployment.objects.select_related("model"), user)[:MAX_CHOICES])
    if deployments:
        groups.append((gettext("Deployments, as served"), [
            (f"d:{d.pk}", gettext("%(deployment)s (%(model)s, %(state)s)")
             % {"deployment": d.name, "model": d.model.name, "state": d.get_state_display().lower()}) for d in deployments]))
    endpoints = allowed_endpoints()
    if endpoints:
        groups.append((gettext("External endpoints (admin-allowed)"), [(f"e:{e.pk}", f"{e.name} ({e.model_name})")
                                                                       for e in endpoints]))
    return groups


def allowed_endpoints() -> list[ExternalEndpoint]:
    from apps.leaderboards import services

    return [e for e in ExternalEndpoint.objects.filter(enabled=True)[:MAX_CHOICES] if services.endpoint_allowed(e)]


def judge_choices(user) -> list:
    """Who may judge `judge` benchmarks: a running deployment, or an allowed endpoint."""
    from apps.serving.models import Deployment

    deployments = [d for d in visible_to(Deployment.objects.select_related("model"), user)[:MAX_CHOICES] if d.is_active]
    groups = []
    if deployments:
        groups.append((gettext("Deployments"), [(f"d:{d.pk}", gettext("%(deployment)s (%(model)s)")
                                                 % {"deployment": d.name, "model": d.model.name}) for d in deployments]))
    endpoints = allowed_endpoints()
    if endpoints:
        groups.append((gettext("External endpoints"), [(f"e:{e.pk}", f"{e.name} ({e.model_name})") for e in endpoints]))
    return groups


def suite_version_choices(user) -> list[tuple[str, str]]:
    from apps.leaderboards import services

    choices = []
    for suite in services.visible_suites(user).select_related("owner")[:MAX_CHOICES]:
        latest = suite.versions.order_by("-number").first()
        if latest is not None:
            count = latest.items.count()
            benchmarks = ngettext("%(n)s benchmark", "%(n)s benchmarks", count) % {"n": count}
            choices.append((str(latest.pk), gettext("%(suite)s v%(number)s (%(benchmarks)s)")
                            % {"suite": suite.name, "number": latest.number, "benchmarks": benchmarks}))
    return choices


class EvaluateForm(forms.Form):
    target = forms.ChoiceField(
        label=gettext_lazy("Model to evaluate"),
        help_text=gettext_lazy("A registry version (its files are scored in the worker), an alias (resolved to its version now and "
                  "recorded), a deployment as it is served (its quantization and backend included), or an external "
                  "OpenAI-compatible endpoint an admin allowed."))
    suite = forms.ChoiceField(
        label=gettext_lazy("Suite"),
        help_text=gettext_lazy("The benchmarks to run, with their weights in the overall average. The run lands on this suite's leaderboard."))
    max_samples = forms.IntegerField(
        label=gettext_lazy("Max samples per benchmark"), min_value=0, max_value=MAX_SAMPLES, initial=0, required=False,
        help_text=format_lazy(gettext_lazy(
            "Rows scored per benchmark, from the top of each set (the same rows every time). 0 or blank = every row. "
            "Range 0–{max}. Fewer rows: a quicker run and a wider interval."), max=f"{MAX_SAMPLES:,}"))
    max_new_tokens = forms.IntegerField(
        label=gettext_lazy("Max new tokens"), min_value=1, max_value=MAX_NEW_TOKENS, initial=256,
        help_text=format_lazy(gettext_lazy(
            "Tokens a generation or code benchmark may write per answer (greedy). Default 256, range 1–{max}. "
            "Likelihood and perplexity benchmarks generate nothing and ignore it."), max=MAX_NEW_TOKENS))

    judge = forms.ChoiceField(
        label=gettext_lazy("Judge"), required=False,
        help_text=gettext_lazy("Only for suites with judge benchmarks (chat prompts rated by an LLM): the deployment or endpoint "
                  "that rates each answer 1–10. Blank = no judge; a judge benchmark then refuses to run."))

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["target"].choices = [("", gettext("— choose a model —"))] + target_choices(user)
        self.fields["suite"].choices = suite_version_choices(user)
        judges = judge_choices(user)
        if judges:
            self.fields["judge"].choices = [("", gettext("— no judge —"))] + judges
        else:
            del self.fields["judge"]

    def submit_kwargs(self) -> dict:
        """The keyword arguments of services.submit_evaluation from the cleaned data."""
        from apps.leaderboards import services
        from apps.serving.models import Deployment

        data = self.cleaned_data
        kind, _, pk = data["target"].partition(":")
        kwargs = {"max_samples": data.get("max_samples") or 0, "max_new_tokens": data["max_new_tokens"]}
        if kind == "v":
            kwargs["model_version"] = visible_to(ModelVersion.objects.all(), self.user, "model__owner").get(pk=pk)
        elif kind == "a":
            kwargs["alias"] = visible_to(ModelAlias.objects.select_related("version"), self.user, "model__owner").get(pk=pk)
        elif kind == "d":
            kwargs["deployment"] = visible_to(Deployment.objects.all(), self.user).get(pk=pk)
        else:
            kwargs["endpoint"] = ExternalEndpoint.objects.get(pk=pk, enabled=True)
        judge_kind, _, judge_pk = (data.get("judge") or "").partition(":")
        if judge_kind == "d":
            kwargs["judge_deployment"] = visible_to(Deployment.objects.all(), self.user).get(pk=judge_pk)
        elif judge_kind == "e":
            kwargs["judge_endpoint"] = ExternalEndpoint.objects.get(pk=judge_pk, enabled=True)
        kwargs["suite_version"] = services.visible_suite_versions(self.user).get(pk=data["suite"])
        return kwargs


# ---- benchmarks ---------------------------------------------------------------------------------

def dataset_version_choices(user, shapes=EVAL_SHAPES) -> list[tuple[str, str]]:
    versions = visible_dataset_versions(user).filter(canonical__in=shapes).order_by("dataset__name", "-number")
    return [(str(v.pk), v.choice_label) for v in versions[:MAX_CHOICES]]


def _lf(text):
    return text.replace("\r\n", "\n").replace("\r", "\n") if isinstance(text, str) else text


def parse_row_indices(text: str) -> list[int]:
    """'0, 3, 7' → [0, 3, 7]: at most MAX_FEWSHOT_ROWS non-negative integers, in the order given."""
    parts = [p for p in re.split(r"[,\s]+", (text or "").strip()) if p]
    if len(parts) > MAX_FEWSHOT_ROWS:
        raise forms.ValidationError(gettext("at most %(n)s rows") % {"n": MAX_FEWSHOT_ROWS})
    rows = []
    for part in parts:
        if not part.isdigit() or len(part) > 9:
            raise forms.ValidationError(gettext("%(part)s is not a row number (0 is the first row)") % {"part": repr(part[:20])})
        if int(part) in rows:
            raise forms.ValidationError(gettext("row %(row)s is listed twice") % {"row": part})
        rows.append(int(part))
    return rows


class BenchmarkForm(forms.Form):
    name = forms.RegexField(label=gettext_lazy("Name"), 
        regex=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", max_length=64,
        help_text=gettext_lazy("A short label, unique among your benchmarks: 1–64 letters, digits, '-', '_' or '.'. It cannot change later."))
    title = forms.CharField(label=gettext_lazy("Title"), max_length=200, required=False, help_text=gettext_lazy("Optional display title, e.g. \"MMLU (5-shot)\"."))
    description = forms.CharField(label=gettext_lazy("Description"), required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 2}),
                                  help_text=gettext_lazy("Optional: where the data comes from, its licence, what it measures."))
    dataset_version = forms.ChoiceField(
        label=gettext_lazy("Dataset version"),
        help_text=gettext_lazy("The rows to score: a version of a dataset you may see, in an evaluation shape (multiple_choice, qa, "
                  "code or text — its canonical format is the benchmark's shape). Upload or import one under Datasets."))
    template = forms.CharField(label=gettext_lazy("Template"), 
        required=False, strip=False, max_length=MAX_TEMPLATE, widget=forms.Textarea(attrs={"rows": 4}),
        help_text=gettext_lazy("The prompt of one row, with its fields in braces: multiple_choice {question} {options} {subject}; qa "
                  "{question}; code {prompt} {task_id} {entry_point}; text {text}. Write a literal brace as {{ or }}. "
                  "Blank = the shape's default, e.g. \"{question}\\n{options}\\nAnswer:\". At most 8,000 characters."))
    answer_template = forms.CharField(label=gettext_lazy("Answer template"), 
        required=False, strip=False, max_length=200, initial=" {answer}",
        help_text=gettext_lazy("How a few-shot row's answer follows its prompt. Default \" {answer}\" (a space, then the answer)."))
    fewshot_version = forms.ChoiceField(
        label=gettext_lazy("Few-shot rows from"), required=False,
        help_text=gettext_lazy("Optional: a dev version (same shape) whose fixed rows are shown before every prompt — never re-sampled, "
                  "so the prompt and its hash stay the same. Blank = zero-shot."))
    fewshot_rows = forms.CharField(
        label=gettext_lazy("Few-shot row numbers"), required=False, max_length=400,
        help_text=format_lazy(gettext_lazy(
            "Which rows of that version, in order, e.g. \"0, 1, 2, 3, 4\" for 5-shot (0 is the first row). At most {max}."),
            max=MAX_FEWSHOT_ROWS))
    fewshot_separator = forms.CharField(
        label=gettext_lazy("Few-shot separator"), required=False, strip=False, max_length=200, initial="\n\n", widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy("Written between the few-shot blocks and before the prompt. Default: a blank line."))
    paradigm = forms.ChoiceField(
        label=gettext_lazy("Scorer"), choices=PARADIGMS,
        help_text=gettext_lazy("How an answer is scored. The settings below apply to the scorer named in their label; the others are ignored."))
    normalization = forms.ChoiceField(
        label=gettext_lazy("Likelihood: normalisation"), choices=NORMALIZATIONS, initial="none", required=False,
        help_text=gettext_lazy("How option log-likelihoods compare. per-character favours neither long nor short options."))
    continuation = forms.ChoiceField(
        label=gettext_lazy("Likelihood: what is scored"), choices=CONTINUATIONS, initial="letter", required=False,
        help_text=gettext_lazy("The option letter after the prompt (MMLU style), or each option's own text (ARC/HellaSwag style)."))
    circular = forms.BooleanField(
        label=gettext_lazy("Likelihood: circular evaluation"), required=False,
        help_text=gettext_lazy("Ask every rotation of the options; a question counts right only if every rotation is (OpenCompass CircularEval)."))
    extractor = forms.ChoiceField(
        label=gettext_lazy("Generation: answer extractor"), choices=EXTRACTORS, initial="last_number", required=False,
        help_text=gettext_lazy("How the answer is read from the output. An explicit \"#### n\", \\boxed{} or \"The answer is\" wins "
                  "over a stray number; <think> blocks are skipped."))
    answer_pattern = forms.CharField(
        label=gettext_lazy("Generation: answer pattern"), required=False, max_length=300,
        help_text=gettext_lazy("For the regex extractor: a regular expression whose first group (or whole match) is the answer. "
                  "At most 300 characters, 1 s per output."))
    timeout_s = forms.FloatField(
        label=gettext_lazy("Code: timeout per problem (s)"), required=False, min_value=0.1, max_value=60, initial=3.0,
        help_text=gettext_lazy("Wall-clock seconds each program may run in the sandbox before it is killed. Default 3, range 0.1–60."))
    window = forms.IntegerField(
        label=gettext_lazy("Perplexity: window (tokens)"), required=False, min_value=0, max_value=1_000_000, initial=0,
        help_text=gettext_lazy("Tokens the model sees at once. 0 = the model's context length."))
    stride = forms.IntegerField(
        label=gettext_lazy("Perplexity: stride (tokens)"), required=False, min_value=0, max_value=1_000_000, initial=0,
        help_text=gettext_lazy("How far the window moves each step. 0 = half the window."))
    repeats = forms.IntegerField(
        label=gettext_lazy("Judge: judgments per answer"), required=False, min_value=1, max_value=10, initial=1,
        help_text=gettext_lazy("How many times the judge rates each answer; the mean is the score and the spread is shown. Default 1, range 1–10."))
    temperature = forms.FloatField(
        label=gettext_lazy("Judge: temperature"), required=False, min_value=0, max_value=2, initial=0.0,
        help_text=gettext_lazy("The judge's sampling temperature. Default 0 (greedy); above 0 makes repeated judgments differ. Range 0–2."))
    dimension = forms.ChoiceField(label=gettext_lazy("Dimension"), 
        choices=DIMENSIONS, initial="knowledge",
        help_text=gettext_lazy("The capability it counts toward in the leaderboard's per-dimension averages and radar."))
    chat = forms.BooleanField(
        label=gettext_lazy("Use the model's chat template"), required=False,
        help_text=gettext_lazy("Send the prompt as a user turn through the model's chat template (instruct models). Off: the raw prompt (base models)."))
    chat_template = forms.ChoiceField(
        label=gettext_lazy("Chat template"), required=False, choices=CHAT_TEMPLATES,
        help_text=gettext_lazy("With the chat template on, for a local model: its own template, or a named one (ChatML; ChatML with "
                  "Hermes/Qwen-style tool calls) for a model without one. Remote targets apply their own."))
    tools = forms.CharField(
        label=gettext_lazy("Tools (JSON)"), required=False, max_length=MAX_TOOLS_CHARS, widget=forms.Textarea(attrs={"rows": 3}),
        help_text=gettext_lazy("Optional, for agent benchmarks with the tool-call extractor: a JSON list of OpenAI-style tool "
                  "definitions offered to the model. Blank = none."))

    def __init__(self, user, *args, creating: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        choices = dataset_version_choices(user)
        self.fields["dataset_version"].choices = [("", gettext("— choose a dataset version —"))] + choices
        self.fields["fewshot_version"].choices = [("", gettext("— none (zero-shot) —"))] + dataset_version_choices(
            user, ("multiple_choice", "qa"))
        if not creating:
            del self.fields["name"]

    GROUPS = (
        (gettext_lazy("The benchmark"), ("name", "title", "description", "dataset_version", "dimension")),
        (gettext_lazy("The prompt"), ("template", "answer_template", "fewshot_version", "fewshot_rows", "fewshot_separator", "chat",
                        "chat_template", "tools")),
        (gettext_lazy("The scorer (only the chosen scorer's settings apply)"), ("paradigm",) + tuple(f for fs in SCORER_FIELDS.values() for f in fs)),
    )

    def groups(self):
        """(legend, bound fields) per fieldset of the page."""
        return [(legend, [self[name] for name in names if name in self.fields]) for legend, names in self.GROUPS]

    def clean_fewshot_rows(self):
        return parse_row_indices(self.cleaned_data.get("fewshot_rows", ""))

    # Browsers send a textarea's line breaks as CRLF: the prompt (and so the version hash) must
    # not depend on the browser or on whether the text went through a form.
    def clean_template(self):
        return _lf(self.cleaned_data.get("template"))

    def clean_answer_template(self):
        return _lf(self.cleaned_data.get("answer_template"))

    def clean_fewshot_separator(self):
        return _lf(self.cleaned_data.get("fewshot_separator"))

    def clean_description(self):
        return _lf(self.cleaned_data.get("description"))

    def clean_tools(self):
        text = (self.cleaned_data.get("tools") or "").strip()
        if not text:
            return None
        try:
            tools = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(gettext("is not JSON (%(error)s)") % {"error": exc}) from None
        if not isinstance(tools, list):
            raise forms.ValidationError(gettext_lazy("must be a JSON list of tool definitions"))
        return tools

    def clean(self):
        data = super().clean()
        if data.get("fewshot_rows") and not data.get("fewshot_version"):
            self.add_error("fewshot_version", gettext_lazy("choose the version the few-shot rows come from"))
        if data.get("fewshot_version") and not data.get("fewshot_rows"):
            self.add_error("fewshot_rows", gettext_lazy("list the rows to show (e.g. 0, 1, 2), or leave the version blank"))
        if data.get("paradigm") == "generation" and data.get("extractor") == "regex" and not data.get("answer_pattern"):
            self.add_error("answer_pattern", gettext_lazy("the regex extractor needs a pattern"))
        return data

    def service_kwargs(self) -> dict:
        """The keyword arguments of services.create_benchmark / edit_benchmark."""
        data = self.cleaned_data
        versions = visible_dataset_versions(self.user)
        dataset_version = versions.get(pk=data["dataset_version"])
        paradigm = data["paradigm"]
        scorer = {"paradigm": paradigm}
        for key in SCORER_FIELDS[paradigm]:
            value = data.get(key)
            if value is None or value == "":
                value = self.fields[key].initial
            if key in ("window", "stride", "repeats"):
                value = int(value or 0)
            elif key in ("timeout_s", "temperature"):
                value = float(value)
            scorer[key] = value
        if paradigm == "generation" and scorer["extractor"] != "regex":
            scorer["answer_pattern"] = ""
        return {
            "dataset_version": dataset_version, "shape": dataset_version.canonical,
            "template": data.get("template") or "", "answer_template": data.get("answer_template") or " {answer}",
            "fewshot_version": versions.get(pk=data["fewshot_version"]) if data.get("fewshot_version") else None,
            "fewshot_rows": tuple(data.get("fewshot_rows") or ()),
            "fewshot_separator": data["fewshot_separator"] if data.get("fewshot_separator") else "\n\n",
            "scorer": scorer, "dimension": data["dimension"], "chat": bool(data.get("chat")), "tools": data.get("tools"),
            "chat_template": data.get("chat_template") or "",
            "title": data.get("title") or "", "description": data.get("description") or "",
        }


def benchmark_initial(version: BenchmarkVersion) -> dict:
    """The form's values from a saved version (the edit form, and "new from this one")."""
    definition = version.definition or {}
    scorer = dict(definition.get("scorer") or {})
    tools = definition.get("tools")
    initial = {
        "title": version.benchmark.title, "description": version.benchmark.description,
        "dataset_version": str(version.dataset_version_id), "template": definition.get("template", ""),
        "answer_template": definition.get("answer_template", " {answer}"),
        "fewshot_version": str(version.fewshot_version_id or ""),
        "fewshot_rows": ", ".join(str(i) for i in version.fewshot_rows or []),
        "fewshot_separator": definition.get("fewshot_separator", "\n\n"), "paradigm": scorer.pop("paradigm", "likelihood"),
        "dimension": version.benchmark.dimension, "chat": bool(definition.get("chat")),
        "chat_template": definition.get("chat_template", ""),
        "tools": json.dumps(tools, indent=2, ensure_ascii=False) if tools else "",
    }
    initial.update({k: v for k, v in scorer.items() if k in BenchmarkForm.base_fields})
    return initial


# ---- suites -------------------------------------------------------------------------------------

class SuiteForm(forms.Form):
    """Name and description, then one weight field per benchmark version offered (`w_<id>`): a
    blank or zero weight leaves it out."""

    name = forms.RegexField(label=gettext_lazy("Name"), regex=r"^\w[\w .\-]{0,63}$", max_length=64,
                            help_text=gettext_lazy("1–64 letters, digits, spaces, '.', '-' or '_', unique among your suites. It cannot change later."))
    description = forms.CharField(label=gettext_lazy("Description"), required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 2}),
                                  help_text=gettext_lazy("Optional: what the suite is for (e.g. \"the checks before a release\")."))

    def __init__(self, user, benchmark_versions, *args, creating: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.benchmark_versions = list(benchmark_versions)
        for bv in self.benchmark_versions:
            self.fields[f"w_{bv.pk}"] = forms.FloatField(
                label=f"{bv}", required=False, min_value=0, max_value=1000,
                help_text=gettext("Weight of %(benchmark)s in the weighted overall average (0–1000; blank or 0 = not in "
                                  "the suite).") % {"benchmark": bv.benchmark.name})
        if not creating:
            del self.fields["name"]

    def weight_fields(self):
        return [(bv, self[f"w_{bv.pk}"]) for bv in self.benchmark_versions]

    def clean(self):
        data = super().clean()
        if not self.errors and not self.items():
            raise forms.ValidationError(gettext_lazy("items: give at least one benchmark a weight above 0"))
        return data

    def items(self) -> list[tuple[BenchmarkVersion, float]]:
        data = self.cleaned_data
        return [(bv, float(data[f"w_{bv.pk}"])) for bv in self.benchmark_versions if data.get(f"w_{bv.pk}")]


# ---- OpenCompass import -------------------------------------------------------------------------

MAX_SUMMARY_BYTES = 2 * 1024 * 1024


class ImportForm(forms.Form):
    summary = forms.FileField(
        label=gettext_lazy("OpenCompass summary CSV"),
        help_text=gettext_lazy("The summary_*.csv an OpenCompass run writes under outputs/<run>/summary/: columns dataset, version, "
                  "metric, mode, then one column per model (a score in percent, or \"-\"). At most 2 MB."))

    def clean_summary(self):
        upload = self.cleaned_data["summary"]
        if upload.size > MAX_SUMMARY_BYTES:
            raise forms.ValidationError(gettext("is %(size)s bytes; at most %(max)s")
                                        % {"size": f"{upload.size:,}", "max": f"{MAX_SUMMARY_BYTES:,}"})
        return upload


# ---- leaderboard filters ------------------------------------------------------------------------

KINDS = list(VersionKind.choices) + [("deployment", gettext_lazy("Deployment as served")),
                                     ("endpoint", gettext_lazy("External endpoint")),
                                     ("imported", gettext_lazy("Imported (OpenCompass)"))]
SIZE_LIMITS = [("", gettext_lazy("any")), ("100000000", gettext_lazy("≤ 100M parameters")), ("1000000000", "≤ 1B"),
               ("3000000000", "≤ 3B"), ("8000000000", "≤ 8B"), ("15000000000", "≤ 15B"), ("80000000000", "≤ 80B")]


class BoardFilterForm(forms.Form):
    kind = forms.ChoiceField(help_text=gettext_lazy('only runs of this kind of model (base, adapter, merged, ...)'), choices=[("", gettext_lazy("any"))] + KINDS, required=False, label=gettext_lazy("Kind"))
    owner = forms.ChoiceField(help_text=gettext_lazy('only models of this owner'), required=False, label=gettext_lazy("Owner"))
    size_max = forms.ChoiceField(help_text=gettext_lazy('only models up to this many parameters'), choices=SIZE_LIMITS, required=False, label=gettext_lazy("Max size"))
    since = forms.DateField(help_text=gettext_lazy('only runs evaluated on or after this day'), required=False, label=gettext_lazy("Evaluated since"), widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        owners = get_user_model().objects.filter(pk__in=teammate_ids(user)).order_by("username").values_list("username", flat=True)
        self.fields["owner"].choices = [("", gettext("anyone"))] + [(o, o) for o in owners[:MAX_CHOICES]]

    def filters(self) -> dict:
        """board.leaderboard's keyword filters; a field that does not validate is left out."""
        data = getattr(self, "cleaned_data", {}) if self.is_bound else {}
        return {"kind": data.get("kind") or None, "owner": data.get("owner") or None,
                "size_max": int(data["size_max"]) if data.get("size_max") else None, "since": data.get("since") or None}
