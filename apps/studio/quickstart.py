"""The Quick start: the whole chain, data → agent, as eight steps a newcomer can take from one page.
Each step is a link that opens its stage's full page with sensible defaults filled in, and gets its
check mark from the database (what this user has made), so it survives reloads and shows fresh
state. Objects are looked up among what the user may see; the starter model and the built-in
benchmarks belong to the system user and are visible to everyone."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from apps.accounts.system import builtin_owner
from apps.datasets.models import DatasetVersion
from apps.jobs.models import JobStatus
from apps.leaderboards.models import EvaluationRun, Suite
from apps.leaderboards.services import AGENT_SUITE
from apps.playground.models import Conversation, Feedback, FeedbackExport
from apps.registry.models import ModelAlias, ModelVersion
from apps.serving.models import Deployment
from apps.training.models import TrainingRun

TOOL_DATA_NAME = "calculator-tool-use"
TUNED_MODEL_NAME = "smollm2-calculator"


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


def _url(name: str, *args, **query) -> str:
    url = reverse(name, args=args)
    query = {k: v for k, v in query.items() if v not in (None, "")}
    return f"{url}?{urlencode(query, doseq=True)}" if query else url


def starter_version():
    alias = ModelAlias.objects.filter(builtin_owner("model__owner"), name="starter").select_related("version").first()
    return alias.version if alias else None


def steps_for(user) -> list[Step]:
    starter = starter_version()
    own_versions = DatasetVersion.objects.filter(dataset__owner=user).select_related("dataset").order_by("-id")
    data = own_versions.exclude(source="cleaning").first()
    cleaned = own_versions.filter(source="cleaning").first()
    runs = TrainingRun.objects.filter(job__owner=user, finetune="lora").select_related("job").order_by("-job_id")
    trained = runs.filter(job__status=JobStatus.SUCCEEDED).first()
    tuned = ModelVersion.objects.filter(source_job=trained.job).first() if trained else None
    suite = Suite.objects.filter(builtin_owner(), name=AGENT_SUITE).first()
    evaluations = EvaluationRun.objects.filter(job__owner=user, job__status=JobStatus.SUCCEEDED)
    evaluated = set(evaluations.values_list("model_version_id", flat=True))
    deployment = (Deployment.objects.filter(owner=user).exclude(state="stopped").order_by("-id").first())
    # icontains on a JSON list matches its text on every backend (`contains` is PostgreSQL-only).
    chat = Conversation.objects.filter(owner=user, tools__icontains='"calculator"').order_by("-id").first()
    feedback = Feedback.objects.filter(user=user).exists()
    export = FeedbackExport.objects.filter(owner=user).order_by("-id").first()
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
             _url("training-new", method="sft", finetune="lora", base=f"v:{starter.pk}" if starter else "",
                  train_versions=training_source.pk if training_source else "", model_name=TUNED_MODEL_NAME),
             tuned is not None, str(tuned or ""), _url("version-detail", tuned.pk) if tuned else ""),
        Step("evaluate", _("Evaluate base and fine-tuned on the agent benchmark"),
             _("Score both on calculator tool use: tool-call, argument and final-answer accuracy."),
             _("OpenCompass"), _("Evaluate the fine-tuned version"),
             _url("evaluate", target=f"v:{(tuned or starter).pk}" if (tuned or starter) else "",
                  suite=suite.pk if suite else ""),
             bool(tuned and starter and {tuned.pk, starter.pk} <= evaluated),
             ngettext("%(n)d version evaluated", "%(n)d versions evaluated", len(evaluated)) % {"n": len(evaluated)}
             if evaluated else ""),
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
             _url("leaderboard", suite.pk) if suite else _url("leaderboards"), bool(evaluated), ""),
        Step("feedback", _("Give feedback and export it as a preference dataset"),
             _("Rate answers or pick the better of two, then export the ratings as a dataset to train on."),
             _("XTuner (DPO data)"), _("Open feedback"), _url("playground-feedback"),
             export is not None, _("%(n)d %(kind)s records exported") % {"n": export.records, "kind": export.kind} if export else
             (_("feedback given, not exported yet") if feedback else ""),
             _url("job-detail", export.job_id) if export else ""),
    ]

