"""Exports: a conversation as JSON (the whole tree) or Markdown (the shown path), and feedback as a
new dataset version.

Feedback → dataset: the records are written as JSON Lines under UPLOAD_DIR (a uuid name) and
imported by a dataset import job, as an upload is (apps/datasets/services.start_import), with the
version's source "feedback"; its source_detail names the conversations, and FeedbackExport keeps
the full list. Shapes (workers/core/data/schema.py):
    preference  {"prompt": [messages up to the user's message], "chosen": [answer], "rejected": [answer]}
                from every "this one is better", and from a thumbs-up answer against a thumbs-down
                sibling (same message) not already paired that way
    sft         {"messages": [... the path ..., the answer]} for every thumbs-up answer; an agent
                answer (native tool calling) keeps its tool calls and results"""
from __future__ import annotations

import json
import uuid

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext

from apps.accounts.visibility import get_visible_or_404
from apps.datasets import services as datasets
from apps.datasets.models import Dataset, DatasetRequest, DatasetUpload
from apps.jobs.models import Job
from apps.playground import services
from apps.playground.checks import RefusedInput, text
from apps.playground.models import (
    Conversation,
    ConversationKind,
    Feedback,
    FeedbackExport,
    Message,
    MessageRole,
    MessageStatus,
    Preference,
)

EXPORT_KINDS = ("preference", "sft")
MAX_EXPORT_CONVERSATIONS = 1000
MAX_DATASET_NAME = 100
SOURCE_DETAIL_CHARS = 240  # of DatasetVersion.source_detail (300), with room for the suffix


# ---- one conversation ----------------------------------------------------------------------

def _model_names(message: Message, hide: bool) -> tuple[str | None, str | None]:
    payload = services.message_payload(message, hide_models=hide, html=False)
    return payload["deployment"], payload["model_version"]


def export_json(conversation: Conversation) -> dict:
    """Everything of the conversation: its settings and every message of the tree (parent ids),
    model names hidden in an undecided battle."""
    hide = services.hides_models(conversation)
    messages = []
    for message in conversation.messages.select_related("deployment__owner", "model_version__model").order_by("created_at", "id"):
        deployment, version = _model_names(message, hide)
        messages.append({"id": message.pk, "parent_id": message.parent_id, "role": message.role,
                         "content": message.content, "status": message.status, "error": message.error,
                         "column": message.column, "deployment": deployment, "model_version": version,
                         "usage": message.usage, "trace": message.trace, "created_at": message.created_at.isoformat()})
    leaf = services.current_leaf(conversation)
    return {
        "format": "puyu-playground-conversation/1",
        "conversation": {
            "id": conversation.pk, "title": conversation.title, "kind": conversation.kind,
            "owner": conversation.owner.username,
            "deployment": None if hide or conversation.deployment is None else conversation.deployment.served_name,
            "system_prompt": conversation.system_prompt, "settings": conversation.settings, "tools": conversation.tools,
            "protocol": conversation.protocol, "http_tools": list(conversation.http_tools.values_list("name", flat=True)),
            "documents": list(conversation.documents.values_list("name", flat=True)),
            "created_at": conversation.created_at.isoformat(), "updated_at": conversation.updated_at.isoformat(),
            "current_leaf_id": leaf.pk if leaf else None,
        },
        "messages": messages,
    }


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines()) or ">"


def _step_lines(trace: list) -> list[str]:
    lines = []
    for step in trace or ():
        if step.get("type") == "tool":
            arguments = json.dumps(step.get("arguments"), ensure_ascii=False)
            observation = str(step.get("observation") or "")
            if len(observation) > 2000:
                observation = observation[:2000] + " … (cut)"
            lines.append(f"- `{step.get('tool')}` {arguments} → {observation} ({step.get('duration_ms', 0)} ms)")
    return lines


def export_markdown(conversation: Conversation) -> str:
    """The shown path (every column's, side by side) as Markdown: user turns quoted, answers as
    written, an agent's tool calls listed under its answer."""
    hide = services.hides_models(conversation)
    out = [f"# {conversation.title or f'Conversation {conversation.pk}'}", ""]
    if conversation.kind == ConversationKind.CHAT and conversation.deployment is not None:
        out += [f"*Deployment:* `{conversation.deployment.served_name}`", ""]
    if conversation.system_prompt:
        out += ["**System prompt**", "", _quote(conversation.system_prompt), ""]
    for message in services.shown_messages(conversation):
        column = f" — column {chr(65 + message.column)}" if message.column is not None else ""
        if message.role == MessageRole.USER:
            out += [f"## User{column}", "", _quote(message.content), ""]
            continue
        deployment, version = _model_names(message, hide)
        who = f" ({deployment}, {version})" if deployment or version else ""
        out += [f"## Assistant{column}{who}", ""]
        steps = _step_lines(message.trace)
        if steps:
            out += ["**Tool calls**", "", *steps, ""]
        out += [message.content or "*(no answer)*", ""]
        if message.status != MessageStatus.DONE:
            out += [f"*({message.status}{': ' + message.error if message.error else ''})*", ""]
    return "\n".join(out).rstrip() + "\n"


# ---- feedback → dataset -------------------------------------------------------------------------

def _native_turns(message: Message) -> list[dict]:
    """An agent answer's tool calls and results as chat messages (native tool calling only; a
    ReAct trace is text the model wrote, kept as the final answer alone)."""
    job = message.job
    if not message.trace or job is None or job.params.get("protocol") != "native":
        return []
    turns: list[dict] = []
    for step in message.trace:
        if step.get("type") == "model" and step.get("tool_calls"):
            turns.append({"role": "assistant", "content": step.get("output") or "", "tool_calls": [
                {"type": "function", "function": {"name": call["name"], "arguments": json.dumps(
                    call.get("arguments"), ensure_ascii=False) if not isinstance(call.get("arguments"), str)
                    else call["arguments"]}} for call in step["tool_calls"]]})
        elif step.get("type") == "tool" and turns:
            turns.append({"role": "tool", "name": step.get("tool") or "", "content": str(step.get("observation") or "")})
    return turns


def _answer(message: Message) -> list[dict]:
    return [{"role": "assistant", "content": message.content}]


def _usable(message: Message) -> bool:
    return message.role == MessageRole.ASSISTANT and message.status == MessageStatus.DONE and bool(message.content.strip())


def preference_records(user, conversations) -> list[dict]:
    records, seen = [], set()
    messages = Message.objects.select_related("conversation", "parent", "job")
    explicit = Preference.objects.filter(user=user, better__conversation__in=conversations).select_related(
        "better__conversation", "better__parent", "worse")
    for preference in explicit.order_by("id"):
        better, worse = preference.better, preference.worse
        if _usable(better) and _usable(worse):
            seen.add((better.pk, worse.pk))
            records.append({"prompt": services.history(better.conversation, better.parent), "chosen": _answer(better),
                             "rejected": _answer(worse), "meta": {"conversation": better.conversation_id,
                                                                  "chosen_id": better.pk, "rejected_id": worse.pk}})
    ratings = {f.message_id: f.rating for f in Feedback.objects.filter(user=user, message__conversation__in=conversations)}
    rated = list(messages.filter(pk__in=list(ratings)).order_by("id"))
    for up in (m for m in rated if ratings[m.pk] > 0 and _usable(m)):
        for down in (m for m in rated if ratings[m.pk] < 0 and _usable(m)):
            if down.parent_id == up.parent_id and (up.pk, down.pk) not in seen and (down.pk, up.pk) not in seen:
                seen.add((up.pk, down.pk))
                records.append({"prompt": services.history(up.conversation, up.parent), "chosen": _answer(up),
                                "rejected": _answer(down), "meta": {"conversation": up.conversation_id,
                                                                    "chosen_id": up.pk, "rejected_id": down.pk}})
    return records


def sft_records(user, conversations) -> list[dict]:
    records = []
    liked = Feedback.objects.filter(user=user, rating__gt=0, message__conversation__in=conversations).select_related(
        "message__conversation", "message__parent", "message__job").order_by("message_id")
    for feedback in liked:
        message = feedback.message
        if _usable(message):
            chat = services.history(message.conversation, message.parent) + _native_turns(message) + _answer(message)
            records.append({"messages": chat, "meta": {"conversation": message.conversation_id, "message_id": message.pk}})
    return records


def _conversations(user, conversation_ids) -> list[Conversation]:
    if conversation_ids is None:
        return list(Conversation.objects.filter(owner=user).order_by("pk"))
    if not isinstance(conversation_ids, (list, tuple)) or len(conversation_ids) > MAX_EXPORT_CONVERSATIONS:
        raise RefusedInput("conversation_ids", gettext("must be a list of at most %(max)s conversation ids")
                                                       % {"max": MAX_EXPORT_CONVERSATIONS})
    chosen = []
    for pk in dict.fromkeys(conversation_ids):
        if isinstance(pk, bool) or not isinstance(pk, int):
            raise RefusedInput("conversation_ids", gettext("must hold conversation ids (integers)"))
        conversation = get_visible_or_404(Conversation.objects.all(), user, pk=pk)
        if conversation.owner_id != user.pk:
            raise RefusedInput("conversation_ids", gettext("conversation %(conversation)s is a teammate's: export your "
                                                           "own feedback") % {"conversation": pk})
        chosen.append(conversation)
    return chosen


def _detail(kind: str, ids: list[int]) -> str:
    """The upload's name, which becomes the version's source_detail: the conversations' ids."""
    head = f"playground {kind} feedback from conversations "
    listed = ", ".join(map(str, ids))
    if len(head) + len(listed) > SOURCE_DETAIL_CHARS:
        shown, more = [], len(ids)
        for pk in ids:
            if len(head) + len(", ".join(map(str, [*shown, pk]))) + 20 > SOURCE_DETAIL_CHARS:
                break
            shown.append(pk)
            more -= 1
        listed = ", ".join(map(str, shown)) + f" and {more} more"
    return head + listed + ".jsonl"


def export_feedback(user, *, kind: str, conversation_ids=None, dataset_name: str) -> Job:
    """Start a dataset import of the user's feedback (on their conversations, or the ones named)
    into `dataset_name` (a new dataset, or a new version of theirs of that name)."""
    if kind not in EXPORT_KINDS:
        raise RefusedInput("kind", gettext("must be one of %(kinds)s")
                                           % {"kinds": ', '.join(EXPORT_KINDS)})
    name = text("dataset_name", dataset_name, MAX_DATASET_NAME, required=True).strip()
    if any(ord(c) < 32 for c in name):
        raise RefusedInput("dataset_name", gettext("must be printable"))
    conversations = _conversations(user, conversation_ids)
    records = preference_records(user, conversations) if kind == "preference" else sft_records(user, conversations)
    if not records:
        raise RefusedInput("conversation_ids", gettext("there is no feedback to export there: rate answers (thumbs "
                                                       "up or down) or mark one answer better than another first"))
    sources = sorted({r["meta"]["conversation"] for r in records})
    stored = f"{uuid.uuid4().hex}.jsonl"
    path = settings.UPLOAD_DIR / stored
    body = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    path.write_bytes(body)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.filter(owner=user, name=name).first()
            dataset = datasets.target_dataset(user, dataset, name, "feedback from the playground")
            upload = DatasetUpload.objects.create(dataset=dataset, filename=_detail(kind, sources)[:255],
                                                  stored_name=stored, size_bytes=len(body),
                                                  format="preference" if kind == "preference" else "messages",
                                                  created_by=user)
            job = datasets.start_import(user, upload, exclude_invalid=False)
            DatasetRequest.objects.filter(job=job).update(source="feedback")
            export = FeedbackExport.objects.create(owner=user, job=job, kind=kind, records=len(records))
            export.conversations.set([c for c in conversations if c.pk in set(sources)])
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return job
