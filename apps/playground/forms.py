"""The playground's forms. Every choice is among what the user may use (ids, never paths or URLs
of the server), every field says what it does with its unit, default and range, and every value
is bounded here; the services check each one again and their RefusedInput(field, reason) lands
on the field it names (`attach`)."""
from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django.utils.text import format_lazy
from django.utils.translation import gettext, gettext_lazy

from apps.accounts.system import SYSTEM_USERNAME
from apps.accounts.visibility import visible_to
from apps.registry.services import STARTER_ALIAS
from apps.serving.models import Deployment, DeploymentState
from apps.studio.widgets import CodeCheckboxSelectMultiple, CodeRadioSelect

MAX_SYSTEM_PROMPT = 8_000
MAX_MESSAGE = 32_000  # as the agent core's MAX_MESSAGE_CHARS (workers/core/agents/job.py)
MAX_TOKENS = 4096
MAX_TITLE = 200
MAX_CHOICES = 500
MAX_SCHEMA_CHARS = 20_000
MAX_DATASET_NAME = 100
MAX_SELECTED = 1000  # conversations in one feedback export

# The agent core's built-in tools (workers/core/agents/tools/__init__.py BUILTIN_TOOLS), as the
# form offers them; the core refuses an unknown name, so a stale entry here fails loudly.
BUILTIN_TOOLS = [
    ("calculator", gettext_lazy("Calculator — exact arithmetic (+ − × ÷, powers, parentheses), never eval")),
    ("python", gettext_lazy("Python — runs a short program in the sandbox (no network, time and memory limits)")),
    ("datetime", gettext_lazy("Date and time — the current date and time, in any time zone")),
    ("unit_converter", gettext_lazy("Units — length, mass, temperature, volume, time, data size")),
    ("document_search", gettext_lazy("Document search — the documents you attach to this conversation (hybrid BM25 + "
                                     "embeddings, cited)")),
]
PROTOCOLS = [
    ("auto", gettext_lazy("auto — native where the deployment's chat template renders tools, else ReAct")),
    ("native", gettext_lazy("native — OpenAI tool calls (the model writes <tool_call> blocks its template knows)")),
    ("react", gettext_lazy("ReAct — Thought / Action / Action Input / Observation as text; works with any chat model")),
]
HTTP_METHODS = [("GET", "GET"), ("POST", "POST")]


def ready_deployments(user):
    """The deployments a user may chat with now: visible and ready."""
    return (visible_to(Deployment.objects.select_related("owner", "model", "version"), user)
            .filter(state=DeploymentState.READY).order_by("owner__username", "name"))


def deployment_label(d: Deployment) -> str:
    return f"{d.served_name} — {d.follows}"


def serve_slots_line(user) -> str:
    """"2 of 3 serve slots free (used by alice/smollm2)": what a new deployment would find, as
    the deploy form shows it (apps/serving/slots.py)."""
    from apps.serving import slots

    return slots.queue_slots("serve").summary(user)


def http_tool_choices(user) -> list[tuple[str, str]]:
    from apps.playground.models import HttpTool

    return [(str(t.pk), f"{t.name} — {t.method} {t.url_template}")
            for t in HttpTool.objects.filter(owner=user).order_by("name")[:MAX_CHOICES]]


class SamplingMixin(forms.Form):
    """Sampling settings shared by a new chat, side-by-side and the conversation's settings."""

    temperature = forms.FloatField(
        label=gettext_lazy("Temperature"), min_value=0.0, max_value=2.0, initial=0.7,
        widget=forms.NumberInput(attrs={"step": "0.1"}),
        help_text=gettext_lazy("Randomness of each token: 0 always picks the likeliest (repeatable answers), 1 samples as the model "
                  "learned, above 1 gets erratic. Default 0.7, range 0–2."))
    top_p = forms.FloatField(
        label=gettext_lazy("Top-p"), min_value=0.01, max_value=1.0, initial=1.0,
        widget=forms.NumberInput(attrs={"step": "0.01"}),
        help_text=gettext_lazy("Sample only among the likeliest tokens whose probabilities add up to this share. 1 = all tokens; "
                  "0.9 cuts the unlikely tail. Default 1, range 0.01–1."))
    max_tokens = forms.IntegerField(
        label=gettext_lazy("Max tokens"), min_value=1, max_value=MAX_TOKENS, initial=512,
        help_text=format_lazy(gettext_lazy(
            "The longest answer, in tokens (about ¾ of a word each); the answer stops there. Default 512, range 1–{max}. "
            "With tools: per model call."), max=f"{MAX_TOKENS:,}"))

    def sampling(self) -> dict:
        data = self.cleaned_data
        return {"temperature": data["temperature"], "top_p": data["top_p"], "max_tokens": data["max_tokens"]}


class ConversationForm(SamplingMixin):
    """A new chat (and, with `editing`, a conversation's settings: its deployment stays)."""

    deployment = forms.ChoiceField(
        label=gettext_lazy("Deployment"), error_messages={"invalid_choice": gettext_lazy("choose a ready deployment you may use")},
        help_text=gettext_lazy("The model that answers: one of the deployments you may use that is ready now. Start one on the "
                  "Serving page."))
    title = forms.CharField(
        label=gettext_lazy("Title"), max_length=MAX_TITLE, required=False,
        help_text=gettext_lazy("Blank: named after your first message."))
    system_prompt = forms.CharField(
        label=gettext_lazy("System prompt"), max_length=MAX_SYSTEM_PROMPT, required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": gettext_lazy("You are a helpful assistant.")}),
        help_text=format_lazy(gettext_lazy(
            "Instructions the model sees before the conversation. Blank: none (the chat template's own default, if it "
            "has one). At most {max} characters."), max=f"{MAX_SYSTEM_PROMPT:,}"))
    tools = forms.MultipleChoiceField(
        label=gettext_lazy("Tools"), choices=BUILTIN_TOOLS, required=False, widget=CodeCheckboxSelectMultiple,
        help_text=gettext_lazy("With tools, each answer runs as an agent turn on a worker (queue agent): the model may call them, "
                  "and every step shows in the trace. Without tools the answer streams straight from the deployment."))
    http_tools = forms.MultipleChoiceField(
        label=gettext_lazy("Your HTTP tools"), required=False, widget=forms.CheckboxSelectMultiple,
        help_text=gettext_lazy("Endpoints you described on the HTTP tools page; calls go only to hosts on the administrator's allowlist."))
    protocol = forms.ChoiceField(
        label=gettext_lazy("Tool protocol"), choices=PROTOCOLS, initial="auto", widget=CodeRadioSelect,
        help_text=gettext_lazy("How the model is told about tools and asks for them. Only used with tools."))

    field_order = ["deployment", "title", "system_prompt", "temperature", "top_p", "max_tokens", "tools", "http_tools",
                   "protocol"]

    def __init__(self, user, *args, editing=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.editing = editing
        if editing is not None:
            del self.fields["deployment"]  # a conversation keeps the deployment it was started with
        else:
            ready = list(ready_deployments(user)[:MAX_CHOICES])
            self.fields["deployment"].choices = [("", gettext("— choose a deployment —"))] + [
                (str(d.pk), deployment_label(d)) for d in ready]
            # A new studio opens on the starter model's deployment (made on first run, see
            # apps/registry/services.py queue_starter) unless the page asked for another.
            starter = next((d for d in ready if d.name == STARTER_ALIAS and d.owner.username == SYSTEM_USERNAME), None)
            if starter is not None and not self.initial.get("deployment"):
                # The form's initial (the page passes deployment="" when none was asked for) wins over
                # a field's initial when the select is drawn: set it there.
                self.initial["deployment"] = str(starter.pk)
        choices = http_tool_choices(user)
        if choices:
            self.fields["http_tools"].choices = choices
        else:
            del self.fields["http_tools"]

    def clean_deployment(self):
        value = self.cleaned_data["deployment"]
        deployment = ready_deployments(self.user).filter(pk=int(value)).first() if value.isdigit() else None
        if deployment is None:
            raise forms.ValidationError(gettext_lazy("choose a ready deployment you may use"))
        return deployment

    def service_kwargs(self) -> dict:
        """Keyword arguments of services.create_conversation / update_conversation."""
        data = self.cleaned_data
        kwargs = {"title": data["title"].strip(), "system_prompt": data["system_prompt"], "settings": self.sampling(),
                  "tools": list(data["tools"]), "protocol": data["protocol"],
                  "http_tool_ids": [int(pk) for pk in data.get("http_tools") or ()]}
        if self.editing is None:
            kwargs["deployment"] = data["deployment"]
        return kwargs


def conversation_initial(conversation) -> dict:
    """The settings form's values from a stored conversation."""
    stored = conversation.settings or {}
    return {"title": conversation.title, "system_prompt": conversation.system_prompt,
            "temperature": stored.get("temperature", 0.7), "top_p": stored.get("top_p", 1.0),
            "max_tokens": stored.get("max_tokens", 512), "tools": list(conversation.tools or []),
            "protocol": conversation.protocol or "auto",
            "http_tools": [str(pk) for pk in conversation.http_tools.values_list("pk", flat=True)]}


class DocumentForm(forms.Form):
    document = forms.FileField(
        label=gettext_lazy("Attach a document"),
        help_text=format_lazy(gettext_lazy(
            "A .txt, .md or .pdf file of at most {max} MiB: the document search tool finds passages in it and cites them."),
            max=settings.PLAYGROUND_MAX_DOCUMENT_BYTES // 2**20)
        if hasattr(settings, "PLAYGROUND_MAX_DOCUMENT_BYTES") else
        gettext_lazy("A .txt, .md or .pdf file: the document search tool finds passages in it and cites them."))


class SideBySideForm(SamplingMixin):
    deployments = forms.MultipleChoiceField(
        label=gettext_lazy("Deployments"), widget=forms.CheckboxSelectMultiple,
        error_messages={"invalid_choice": gettext_lazy("choose ready deployments you may use")},
        help_text=gettext_lazy("Two to four ready deployments: each answers the same message in its own column, at the same time."))
    content = forms.CharField(
        label=gettext_lazy("Message"), max_length=MAX_MESSAGE, widget=forms.Textarea(attrs={"rows": 4}),
        help_text=format_lazy(gettext_lazy("What every model is asked. At most {max} characters."), max=f"{MAX_MESSAGE:,}"))
    system_prompt = forms.CharField(
        label=gettext_lazy("System prompt"), max_length=MAX_SYSTEM_PROMPT, required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy("The same instructions for every model. Blank: none."))

    field_order = ["deployments", "content", "system_prompt", "temperature", "top_p", "max_tokens"]

    def __init__(self, user, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["deployments"].choices = [(str(d.pk), deployment_label(d)) for d in ready_deployments(user)[:MAX_CHOICES]]

    def clean_deployments(self):
        ids = [int(v) for v in self.cleaned_data["deployments"] if v.isdigit()]
        if not 2 <= len(ids) <= 4:
            raise forms.ValidationError(gettext_lazy("tick two to four deployments"))
        chosen = list(ready_deployments(self.user).filter(pk__in=ids))
        if len(chosen) != len(ids):
            raise forms.ValidationError(gettext_lazy("choose ready deployments you may use"))
        return sorted(chosen, key=lambda d: ids.index(d.pk))

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {"deployments": data["deployments"], "content": data["content"], "system_prompt": data["system_prompt"],
                "settings": self.sampling()}


class BattleForm(forms.Form):
    content = forms.CharField(
        label=gettext_lazy("Your prompt"), max_length=MAX_MESSAGE, widget=forms.Textarea(attrs={"rows": 4}),
        help_text=gettext_lazy("Two anonymous models answer it side by side; their names are shown after you vote."))


class VoteForm(forms.Form):
    outcome = forms.ChoiceField(label=gettext_lazy("Outcome"), help_text=gettext_lazy('which answer was better; the names are shown after you vote'), choices=[("a", gettext_lazy("A is better")), ("b", gettext_lazy("B is better")), ("tie", gettext_lazy("Tie")),
                                         ("both_bad", gettext_lazy("Both are bad"))])


class FeedbackExportForm(forms.Form):
    kind = forms.ChoiceField(help_text=gettext_lazy('preference: chosen/rejected pairs for DPO; sft: the rated-up answers as chat data'), 
        label=gettext_lazy("Dataset kind"), widget=CodeRadioSelect, initial="preference",
        choices=[("preference", gettext_lazy("Preference pairs (chosen / rejected) — for DPO: every \"this one is better\", and a "
                                "thumbs-up answer against a thumbs-down sibling")),
                 ("sft", gettext_lazy("SFT chats — every conversation path that ends in a thumbs-up answer, for supervised fine-tuning"))])
    dataset_name = forms.SlugField(
        label=gettext_lazy("Dataset name"), max_length=MAX_DATASET_NAME, initial="playground-feedback",
        help_text=gettext_lazy("A new dataset, or a new version of yours with this name (letters, digits, - and _)."))
    conversations = forms.MultipleChoiceField(
        label=gettext_lazy("Conversations"), required=False, widget=forms.CheckboxSelectMultiple,
        help_text=gettext_lazy("The conversations whose feedback goes in. None ticked: all of yours with feedback."))

    def __init__(self, conversation_choices, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["conversations"].choices = conversation_choices

    def clean_conversations(self):
        ids = [int(v) for v in self.cleaned_data["conversations"] if v.isdigit()]
        if len(ids) > MAX_SELECTED:
            raise forms.ValidationError(gettext("tick at most %(n)s conversations") % {"n": MAX_SELECTED})
        return ids or None


SCHEMA_EXAMPLE = json.dumps({"type": "object", "properties": {"city": {"type": "string", "description": "a city name"}},
                             "required": ["city"]}, indent=2)


class HttpToolForm(forms.Form):
    name = forms.RegexField(
        label=gettext_lazy("Name"), max_length=64, regex=r"^[a-zA-Z][a-zA-Z0-9_]*$",
        error_messages={"invalid": gettext_lazy("letters, digits and _, starting with a letter")},
        help_text=gettext_lazy("How the model calls it, e.g. get_weather (letters, digits and _; not a built-in tool's name)."))
    description = forms.CharField(
        label=gettext_lazy("Description"), max_length=1000, widget=forms.Textarea(attrs={"rows": 2}),
        help_text=gettext_lazy("What it does and when to use it: the model reads this to decide."))
    method = forms.ChoiceField(label=gettext_lazy("Method"), choices=HTTP_METHODS, initial="GET",
                               help_text=gettext_lazy("GET sends the arguments in the URL template; POST also sends them as a JSON body."))
    url_template = forms.CharField(
        label=gettext_lazy("URL template"), max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "https://api.example.org/weather?city={city}", "translate": "no"}),
        help_text=gettext_lazy("https:// or http:// URL on an allowlisted host; {name} is replaced by that argument (URL-encoded)."))
    parameters_schema = forms.CharField(
        label=gettext_lazy("Arguments (JSON schema)"), max_length=MAX_SCHEMA_CHARS,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}), initial=SCHEMA_EXAMPLE,
        help_text=gettext_lazy("An object schema: each property is an argument the model fills in."))

    def clean_parameters_schema(self):
        try:
            schema = json.loads(self.cleaned_data["parameters_schema"])
        except ValueError as exc:
            raise forms.ValidationError(gettext("is not JSON (%(error)s)") % {"error": exc}) from None
        if not isinstance(schema, dict):
            raise forms.ValidationError(gettext_lazy("must be a JSON object (a schema with \"type\": \"object\")"))
        return schema

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {key: data[key] for key in ("name", "description", "method", "url_template", "parameters_schema")}
