"""The Quick start: the whole chain, data → agent, as eight steps a newcomer can take from one page.
Each step is a link that opens its stage's full page with sensible defaults filled in, and gets its
check mark from the database (what this user has made), so it survives reloads and shows fresh
state. Objects are looked up among what the user may see; the starter model and the built-in
benchmarks belong to the system user and are visible to everyone."""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.db.models import Exists, OuterRef, Q
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from apps.accounts.system import builtin_owner
from apps.datasets.models import DatasetVersion
from apps.jobs.models import JobStatus
from apps.leaderboards.models import EvaluationRun, Suite
from apps.leaderboards.services import AGENT_SUITE
from apps.playground.models import Conversation, Feedback, FeedbackExport, Message, Preference
from apps.registry.models import ModelAlias, ModelVersion, VersionKind
from apps.serving.models import Deployment, DeploymentState
from apps.training.models import TrainingRun

TOOL_DATA_NAME = "calculator-tool-use"
TUNED_MODEL_NAME = "smollm2-calculator"
# The built-in training preset (workers/core/training/presets.py) sized for a few minutes on 2 CPU
# cores: without it the spec's defaults (100 steps of 8 x 1,024 tokens) would take hours.
TRAIN_PRESET = "builtin:quickstart-lora"


@dataclass
class Action:
    """A further button of a step (the main one is the step's own `action` and `href`)."""

    key: str  # the button's id is step-<step key>-<key>-action
    text: str
    href: str
    done: bool = False


@dataclass
class Step:
    key: str
    title: str
    what: str  # what the step does, in a sentence
    stage: str  # the InternLM tool this stage answers
    action: str  # the button's text
    href: str
    done: bool
    result: str = ""  # what was made, once done
    result_href: str = ""
    more: list[Action] = field(default_factory=list)


def _url(name: str, *args, **query) -> str:
    url = reverse(name, args=args)
    query = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{url}?{urlencode(query, doseq=True)}" if query else url


def starter_version():
    alias = ModelAlias.objects.filter(builtin_owner("model__owner"), name="starter").select_related("version").first()
    return alias.version if alias else None


def tuned_versions(user, starter):
    """Versions that count as fine-tuned here: made from the starter (not a quantized copy of it),
    or by a training run of the user's."""
    made_from_starter = Q(parent=starter) & ~Q(kind=VersionKind.QUANTIZED) if starter else Q(pk__in=[])
    return ModelVersion.objects.filter(made_from_starter | Q(source_job__owner=user, source_job__kind="train"))


def serving_deployments(user, versions):
    """The user's starting or ready deployments that pin one of `versions` or follow an alias on one."""
    follows = ModelAlias.objects.filter(model=OuterRef("model"), name=OuterRef("alias"), version__in=versions)
    return (Deployment.objects.filter(owner=user, state__in=(DeploymentState.STARTING, DeploymentState.READY))
            .filter(Q(version__in=versions) | Q(version__isnull=True) & Exists(follows)).order_by("-id"))


def steps_for(user) -> list[Step]:
    starter = starter_version()
    own_versions = DatasetVersion.objects.filter(dataset__owner=user).select_related("dataset").order_by("-id")
    data = own_versions.exclude(source="cleaning").first()
    cleaned = own_versions.filter(source="cleaning").first()
    runs = TrainingRun.objects.filter(job__owner=user, finetune="lora").select_related("job").order_by("-job_id")
    trained = runs.filter(job__status=JobStatus.SUCCEEDED).first()
    tuned = ModelVersion.objects.filter(source_job=trained.job).first() if trained else None
    suite = Suite.objects.filter(builtin_owner(), name=AGENT_SUITE).first()
    # Scored on the agent suite (any of its versions), by this user's finished evaluations.
    evaluated = set(EvaluationRun.objects.filter(job__owner=user, job__status=JobStatus.SUCCEEDED, suite_version__suite=suite)
                    .values_list("model_version_id", flat=True)) if suite else set()
    both_scored = bool(tuned and starter and {tuned.pk, starter.pk} <= evaluated)
    deployment = serving_deployments(user, tuned_versions(user, starter)).first()
    answered = Message.objects.filter(conversation=OuterRef("pk"), role="assistant", status="done")
    # icontains on a JSON list matches its text on every backend (`contains` is PostgreSQL-only).
    chat = (Conversation.objects.filter(owner=user, tools__icontains='"calculator"').filter(Exists(answered))
            .order_by("-id").first())
    feedback = Feedback.objects.filter(user=user).exists() or Preference.objects.filter(user=user).exists()
    export = (FeedbackExport.objects.filter(owner=user, kind="preference", job__status=JobStatus.SUCCEEDED)
              .order_by("-id").first())
    training_source = cleaned or data
    return [
        Step("data", _("Make a dataset and look at it through the model's chat template"),
             _("Generate calculator tool-use dialogues, then read a record rendered with the starter model's template "
               "(what the trainer sees, loss tokens marked)."), _("WanJuan-style data"), _("Generate the dialogues"),
             _url("dataset-generate", generator="tool_use", n=1000, dataset_name=TOOL_DATA_NAME),
             data is not None, str(data or ""),
             _url("dataset-version-render", data.pk, tokenizer=starter.pk if starter else "") if data else ""),
        Step("clean", _("Clean it"), _("Run the cleaning pipeline (deduplication, filters) and read its report."),
             _("WanJuan-style data"), _("Open its cleaning form"),
             _url("dataset-version-detail", data.pk) + "#clean-form" if data else _url("dataset-list"),
             cleaned is not None, str(cleaned or ""), _url("dataset-version-detail", cleaned.pk) if cleaned else ""),
        Step("train", _("Fine-tune the starter model with LoRA"),
             _("A few minutes of LoRA on the calculator dialogues (SFT, the starter model as the base)."),
             _("XTuner"), _("Set up the training run"),
             _url("training-new", method="sft", finetune="lora", preset=TRAIN_PRESET,
                  base=f"v:{starter.pk}" if starter else "", train_versions=training_source.pk if training_source else "",
                  model_name=TUNED_MODEL_NAME),
             tuned is not None, str(tuned or ""), _url("version-detail", tuned.pk) if tuned else ""),
        Step("evaluate", _("Evaluate base and fine-tuned on the agent benchmark"),
             _("Score both on calculator tool use: tool-call, argument and final-answer accuracy."),
             _("OpenCompass"), _("Evaluate the fine-tuned version"),
             _url("evaluate", target=f"v:{tuned.pk}" if tuned else "", suite=suite.pk if suite else ""),
             both_scored,
             ngettext("%(n)d version evaluated", "%(n)d versions evaluated", len(evaluated)) % {"n": len(evaluated)}
             if evaluated else "",
             more=[Action("base", _("Evaluate the base model"),
                          _url("evaluate", target=f"v:{starter.pk}", suite=suite.pk if suite else ""),
                          starter.pk in evaluated)] if starter else []),
        Step("deploy", _("Deploy the fine-tuned version"),
             _("One replica with continuous batching, an OpenAI-compatible API and usage accounting."),
             _("LMDeploy"), _("Deploy it"), _url("deployment-new", serves=f"v{tuned.pk}" if tuned else ""),
             deployment is not None, str(deployment.served_name) if deployment else "",
             _url("deployment-detail", deployment.pk) if deployment else ""),
        Step("chat", _("Chat with it, with the calculator"),
             _("An agent turn: the model calls the calculator, reads the result, answers; every step in the trace."),
             _("Lagent / AgentLego"), _("Open the playground"),
             _url("playground", deployment=deployment.pk if deployment else "", tools="calculator"),
             chat is not None, chat.title if chat else "", _url("playground-chat", chat.pk) if chat else ""),
        Step("leaderboard", _("See both on the leaderboard"),
             # xgettext:no-python-format
             _("Scores with 95% intervals, base and fine-tuned side by side."), _("CompassRank"), _("Open the leaderboard"),
             _url("leaderboard", suite.pk) if suite else _url("leaderboards"), both_scored, ""),
        Step("feedback", _("Give feedback and export it as a preference dataset"),
             _("Rate answers or pick the better of two, then export the ratings as a dataset to train on."),
             _("XTuner (DPO data)"), _("Open feedback"), _url("playground-feedback"),
             export is not None, _("%(n)d %(kind)s records exported") % {"n": export.records, "kind": export.kind} if export else
             (_("feedback given, not exported yet") if feedback else ""),
             _url("job-detail", export.job_id) if export else ""),
    ]
