"""The playground API (/api/playground/…): conversations, messages, exports, feedback, documents,
HTTP tools, side-by-side comparisons and arena battles.

Posting a message answers 201 with the user message(s) and the answer placeholder(s) at once: a
plain answer streams in the server (follow it on ws/playground/conversations/<id>/, or poll
GET /api/playground/messages/{id}); `"wait": true` answers when it has ended instead. With tools
the answer is an agent turn (its job id is in the placeholder). Refusals are 422 "field: reason";
what the caller may not see is 404; a teammate changing the owner's conversation is 403; a used-up
playground quota or too many active jobs is 429."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.utils.translation import gettext
from ninja import File, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from apps.accounts.visibility import get_visible_or_404
from apps.jobs.api import JobOut
from apps.jobs.services import TooManyJobs
from apps.playground import arena, exports, replies, services
from apps.playground.models import Comparison, Conversation, ConversationKind, HttpTool
from workers.tasks.catalog import InvalidParams

router = Router(tags=["playground"])
MAX_PAGE = 200
WAIT_MARGIN_S = 5.0


def _act(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except (services.QuotaExceeded, TooManyJobs) as exc:
        raise HttpError(429, str(exc)) from None
    except InvalidParams as exc:
        raise HttpError(422, str(exc)) from None


def _page(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(limit, MAX_PAGE)), max(offset, 0)


# ---- schemas ---------------------------------------------------------------------------------

class ConversationOut(Schema):
    id: int
    title: str
    kind: str
    owner: str
    deployment_id: int | None
    deployment: str | None
    system_prompt: str
    settings: dict[str, Any]
    tools: list[str]
    protocol: str
    http_tool_ids: list[int]
    current_leaf_id: int | None
    created_at: datetime
    updated_at: datetime

    @staticmethod
    def resolve_owner(obj: Conversation) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_deployment_id(obj: Conversation) -> int | None:
        return None if services.hides_models(obj) else obj.deployment_id

    @staticmethod
    def resolve_deployment(obj: Conversation) -> str | None:
        return None if services.hides_models(obj) or obj.deployment is None else obj.deployment.served_name

    @staticmethod
    def resolve_http_tool_ids(obj: Conversation) -> list[int]:
        return sorted(obj.http_tools.values_list("pk", flat=True))


class ConversationIn(Schema):
    deployment_id: int
    title: str = ""
    system_prompt: str = ""
    settings: dict[str, Any] = {}
    tools: list[str] = []
    protocol: str = "auto"
    http_tool_ids: list[int] = []


class ConversationPatch(Schema):
    """Only the fields given change."""

    deployment_id: int | None = None
    title: str | None = None
    system_prompt: str | None = None
    settings: dict[str, Any] | None = None
    tools: list[str] | None = None
    protocol: str | None = None
    http_tool_ids: list[int] | None = None


class MessageIn(Schema):
    content: str = ""
    parent_id: int | None = None  # after this answer (default: after the shown branch's end)
    edit_of: int | None = None  # a user message: the new one becomes its sibling (a new branch)
    wait: bool = False  # answer when a plain reply has ended


class PathOut(Schema):
    conversation_id: int
    leaf_id: int | None
    messages: list[dict[str, Any]]


class SentOut(Schema):
    messages: list[dict[str, Any]]
    replies: list[dict[str, Any]]


class RatingIn(Schema):
    rating: int = 0


class PreferenceIn(Schema):
    better_id: int
    worse_id: int


class FeedbackExportIn(Schema):
    kind: str = "preference"
    dataset_name: str = ""
    conversation_ids: list[int] | None = None


class HttpToolIn(Schema):
    name: str
    description: str = ""
    method: str = "GET"
    url_template: str
    parameters_schema: dict[str, Any] | None = None


class HttpToolOut(Schema):
    id: int
    owner: str
    name: str
    description: str
    method: str
    url_template: str
    parameters_schema: dict[str, Any]
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: HttpTool) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_parameters_schema(obj: HttpTool) -> dict:
        return obj.parameters


class DocumentOut(Schema):
    id: int
    conversation_id: int
    name: str
    size: int
    kind: str
    created_at: datetime


class ComparisonIn(Schema):
    deployment_ids: list[int]
    content: str
    system_prompt: str = ""
    settings: dict[str, Any] = {}


class BattleIn(Schema):
    content: str


class VoteIn(Schema):
    outcome: str = ""


# ---- conversations ---------------------------------------------------------------------------

def _conversation(request, conversation_id: int) -> Conversation:
    return services.get_conversation(request.auth, conversation_id)


@router.get("/playground/conversations", response=list[ConversationOut])
def list_conversations(request, kind: str = "chat", limit: int = 50, offset: int = 0):
    """Yours and your teams', newest first; kind: chat, comparison, battle or all."""
    limit, offset = _page(limit, offset)
    conversations = services.visible_conversations(request.auth).prefetch_related("http_tools")
    if kind != "all":
        if kind not in ConversationKind.values:
            raise HttpError(422, "kind: " + gettext("must be one of %(values)s or all")
                                                    % {"values": ', '.join(ConversationKind.values)})
        conversations = conversations.filter(kind=kind)
    return list(conversations.select_related("battle")[offset:offset + limit])


@router.post("/playground/conversations", response={201: ConversationOut})
def create_conversation(request, payload: ConversationIn):
    deployment = services._deployment(request.auth, payload.deployment_id)
    fields = payload.dict(exclude={"deployment_id"})
    return Status(201, _act(services.create_conversation, request.auth, deployment=deployment, **fields))


@router.get("/playground/conversations/{conversation_id}", response=ConversationOut)
def get_conversation(request, conversation_id: int):
    return _conversation(request, conversation_id)


@router.patch("/playground/conversations/{conversation_id}", response=ConversationOut)
def update_conversation(request, conversation_id: int, payload: ConversationPatch = None):
    conversation = _conversation(request, conversation_id)
    payload = payload or ConversationPatch()
    given = {key: getattr(payload, key) for key in payload.model_fields_set if getattr(payload, key) is not None}
    if "deployment_id" in given:
        given["deployment"] = services._deployment(request.auth, given.pop("deployment_id"))
    return _act(services.update_conversation, request.auth, conversation, **given)


@router.delete("/playground/conversations/{conversation_id}", response={204: None})
def delete_conversation(request, conversation_id: int):
    _act(services.delete_conversation, request.auth, _conversation(request, conversation_id))
    return Status(204, None)


# ---- messages ----------------------------------------------------------------------------------

def _message(request, message_id: int):
    return services.get_message(request.auth, message_id)


def _payloads(messages, conversation) -> list[dict]:
    hide = services.hides_models(conversation)
    return [services.message_payload(m, hide_models=hide) for m in messages]


@router.get("/playground/conversations/{conversation_id}/messages", response=PathOut)
def list_messages(request, conversation_id: int, leaf: int | None = None):
    """The shown path (every column's, side by side), or the path to `leaf`."""
    conversation = _conversation(request, conversation_id)
    services.reconcile_conversation(conversation)
    end = None
    if leaf is not None:
        end = conversation.messages.filter(pk=leaf).first()
        if end is None:
            raise HttpError(422, "leaf: " + gettext("is not a message of this conversation"))
    shown = services.shown_messages(conversation, end) if end is None else services.path(conversation, end)
    current = end or services.current_leaf(conversation)
    return {"conversation_id": conversation.pk, "leaf_id": current.pk if current else None,
            "messages": _payloads(shown, conversation)}


@router.post("/playground/conversations/{conversation_id}/messages", response={201: SentOut})
def post_message(request, conversation_id: int, payload: MessageIn = None):
    conversation = _conversation(request, conversation_id)
    payload = payload or MessageIn()
    parent = services.get_message(request.auth, payload.parent_id) if payload.parent_id is not None else None
    edit_of = services.get_message(request.auth, payload.edit_of) if payload.edit_of is not None else None
    asked, answers = _act(services.send, request.auth, conversation, content=payload.content, parent=parent,
                          edit_of=edit_of)
    if payload.wait:
        _wait([m for m in answers if not m.job_id])
    for message in answers:
        message.refresh_from_db()
    return Status(201, {"messages": _payloads(asked, conversation), "replies": _payloads(answers, conversation)})


def _wait(answers) -> None:
    if not answers:
        return
    deployment = answers[0].deployment
    timeout = (deployment.request_timeout_s if deployment else 120.0) + settings.SERVING_QUEUE_TIMEOUT_SECONDS
    try:
        replies.wait([m.pk for m in answers], timeout + WAIT_MARGIN_S)
    except TimeoutError:
        pass  # the answer is still being written: its status says so


@router.get("/playground/messages/{message_id}", response=dict[str, Any])
def get_message(request, message_id: int):
    message = services.reconcile(_message(request, message_id))
    return services.message_payload(message, hide_models=services.hides_models(message.conversation))


@router.get("/playground/messages/{message_id}/siblings", response=list[dict[str, Any]])
def message_siblings(request, message_id: int):
    """The alternatives at this point (edits, regenerations), oldest first: the branch switcher."""
    message = _message(request, message_id)
    return _payloads(services.siblings(message), message.conversation)


@router.post("/playground/messages/{message_id}/regenerate", response={201: dict[str, Any]})
def regenerate(request, message_id: int):
    message = _message(request, message_id)
    reply = _act(services.regenerate, request.auth, message)
    return Status(201, services.message_payload(reply, hide_models=services.hides_models(message.conversation)))


@router.post("/playground/messages/{message_id}/stop", response=dict[str, Any])
def stop(request, message_id: int):
    message = _message(request, message_id)
    stopped = _act(services.stop_reply, request.auth, message)
    return services.message_payload(stopped, hide_models=services.hides_models(message.conversation))


@router.post("/playground/messages/{message_id}/select", response=PathOut)
def select_branch(request, message_id: int):
    """Show the branch through this message (its newest end)."""
    message = _message(request, message_id)
    conversation = message.conversation
    leaf = _act(services.select_branch, request.auth, conversation, message)
    return {"conversation_id": conversation.pk, "leaf_id": leaf.pk,
            "messages": _payloads(services.path(conversation, leaf), conversation)}


@router.post("/playground/messages/{message_id}/feedback", response=dict[str, Any])
def feedback(request, message_id: int, payload: RatingIn = None):
    message = _message(request, message_id)
    payload = payload or RatingIn()
    _act(services.give_feedback, request.auth, message, rating=payload.rating)
    return {"message_id": message.pk, "rating": payload.rating}


@router.post("/playground/preferences", response={201: dict[str, Any]})
def prefer(request, payload: PreferenceIn):
    better = _message(request, payload.better_id)
    worse = _message(request, payload.worse_id)
    preference = _act(services.prefer, request.auth, better, worse)
    return Status(201, {"id": preference.pk, "better_id": better.pk, "worse_id": worse.pk})


# ---- exports -------------------------------------------------------------------------------------

@router.get("/playground/conversations/{conversation_id}/export")
def export(request, conversation_id: int, fmt: str = Query("json", description="json or md")):
    conversation = _conversation(request, conversation_id)
    if fmt == "json":
        return exports.export_json(conversation)
    if fmt != "md":
        raise HttpError(422, "fmt: " + gettext("must be json or md"))
    response = HttpResponse(exports.export_markdown(conversation), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="conversation-{conversation.pk}.md"'
    return response


@router.post("/playground/feedback/export", response={201: JobOut})
def export_feedback(request, payload: FeedbackExportIn):
    """A new dataset version from your feedback (a dataset import job; its result names the version)."""
    return Status(201, _act(exports.export_feedback, request.auth, kind=payload.kind,
                            conversation_ids=payload.conversation_ids, dataset_name=payload.dataset_name))


# ---- documents -----------------------------------------------------------------------------------

@router.get("/playground/conversations/{conversation_id}/documents", response=list[DocumentOut])
def list_documents(request, conversation_id: int):
    return list(_conversation(request, conversation_id).documents.all())


@router.post("/playground/conversations/{conversation_id}/documents", response={201: DocumentOut})
def attach_document(request, conversation_id: int, document: File[UploadedFile] = None):
    conversation = _conversation(request, conversation_id)
    if document is None:
        raise HttpError(422, "document: " + gettext("attach a .txt, .md or .pdf file (multipart field \"document\")"))
    return Status(201, _act(services.attach_document, request.auth, conversation, document))


@router.delete("/playground/documents/{document_id}", response={204: None})
def delete_document(request, document_id: int):
    document = get_visible_or_404(services.visible_documents(request.auth), request.auth, "conversation__owner",
                                  pk=document_id)
    _act(services.delete_document, request.auth, document)
    return Status(204, None)


# ---- HTTP tools ----------------------------------------------------------------------------------

@router.get("/playground/http-tools", response=list[HttpToolOut])
def list_http_tools(request):
    return list(services.visible_http_tools(request.auth).select_related("owner")[:MAX_PAGE])


@router.post("/playground/http-tools", response={201: HttpToolOut})
def create_http_tool(request, payload: HttpToolIn):
    return Status(201, _act(services.create_http_tool, request.auth, **payload.dict()))


@router.get("/playground/http-tools/{tool_id}", response=HttpToolOut)
def get_http_tool(request, tool_id: int):
    return get_visible_or_404(services.visible_http_tools(request.auth), request.auth, pk=tool_id)


@router.delete("/playground/http-tools/{tool_id}", response={204: None})
def delete_http_tool(request, tool_id: int):
    tool = get_visible_or_404(services.visible_http_tools(request.auth), request.auth, pk=tool_id)
    _act(services.delete_http_tool, request.auth, tool)
    return Status(204, None)


# ---- side by side and the arena -------------------------------------------------------------------

def _comparison_payload(comparison: Comparison) -> dict:
    conversation = comparison.conversation
    return {"id": comparison.pk, "conversation_id": conversation.pk, "deployment_ids": comparison.deployments,
            "created_at": comparison.created_at,
            "messages": _payloads(services.shown_messages(conversation), conversation)}


@router.post("/playground/comparisons", response={201: dict[str, Any]})
def create_comparison(request, payload: ComparisonIn):
    """One message to 2–4 deployments; each column streams on the conversation's socket."""
    deployments = [services._deployment(request.auth, pk) for pk in payload.deployment_ids[:4]]
    if len(payload.deployment_ids) > 4:
        raise HttpError(422, "deployment_ids: " + gettext("choose two to four deployments"))
    comparison = _act(services.side_by_side, request.auth, deployments=deployments, content=payload.content,
                      system_prompt=payload.system_prompt, settings=payload.settings)
    return Status(201, _comparison_payload(comparison))


@router.get("/playground/comparisons/{comparison_id}", response=dict[str, Any])
def get_comparison(request, comparison_id: int):
    comparison = get_visible_or_404(Comparison.objects.select_related("conversation"), request.auth,
                                             pk=comparison_id)
    services.reconcile_conversation(comparison.conversation)
    return _comparison_payload(comparison)


@router.get("/playground/battles", response=list[dict[str, Any]])
def list_battles(request, limit: int = 50, offset: int = 0):
    limit, offset = _page(limit, offset)
    return [arena.battle_payload(b) for b in arena.visible_battles(request.auth)[offset:offset + limit]]


@router.post("/playground/battles", response={201: dict[str, Any]})
def start_battle(request, payload: BattleIn):
    """Two anonymous deployments answer (columns A and B on the conversation's socket)."""
    return Status(201, arena.battle_payload(_act(arena.start_battle, request.auth, content=payload.content)))


@router.get("/playground/battles/{battle_id}", response=dict[str, Any])
def get_battle(request, battle_id: int):
    battle = arena.get_battle(request.auth, battle_id)
    services.reconcile_conversation(battle.conversation)
    return arena.battle_payload(battle)


@router.post("/playground/battles/{battle_id}/vote", response=dict[str, Any])
def vote(request, battle_id: int, payload: VoteIn = None):
    """a, b, tie or both_bad: recorded as an arena vote; the names are revealed."""
    battle = arena.get_battle(request.auth, battle_id)
    _act(arena.vote, request.auth, battle, (payload or VoteIn()).outcome)
    return arena.battle_payload(battle)

