"""The only place that changes the playground: conversations (trees of messages), replies (a
plain stream through the serving gateway, or an agent turn as a job), feedback and side-by-side
comparisons. Documents and HTTP tools (attachments.py) and the token accounting (usage.py) are
part of this module's interface too; battles are in arena.py, exports in exports.py.

Refusals: RefusedInput(field, reason) (nothing stored); PermissionDenied when a teammate tries to
change the owner's conversation; Http404 for anything the user may not see (ids in bodies too).

A plain reply's engine request is sent from inside the transaction that stores its placeholder
(before the rows are written; cancelled if it does not commit, see "sending" below), and the
reply is streamed by replies.py in a background event loop once that transaction commits, so the
page's socket, the API and a teammate watching all see the same events (the conversation's
channel group); closing a page does not stop an answer, "stop" does (the engine request is
cancelled). An agent turn's end is pushed to the same group by whoever settles it (finish_turn)."""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.translation import gettext

from apps.accounts.visibility import PermissionDenied, can_manage, get_visible_or_404, visible_to
from apps.jobs import services as jobs
from apps.jobs.models import FINISHED_STATUSES, Job, JobStatus
from apps.playground.attachments import (  # noqa: F401  (part of this module's interface)
    DOCUMENT_SUFFIXES,
    attach_document,
    create_http_tool,
    delete_document,
    delete_http_tool,
    visible_documents,
    visible_http_tools,
)
from apps.playground.checks import BUILTIN_TOOLS, QuotaExceeded, RefusedInput, require_owner, text
from apps.playground.models import (
    Comparison,
    Conversation,
    ConversationKind,
    Feedback,
    HttpTool,
    Message,
    MessageRole,
    MessageStatus,
    Preference,
    Protocol,
)
from apps.playground.rendering import render_markdown
from apps.playground.usage import (  # noqa: F401  (part of this module's interface)
    PLAYGROUND_KEY_NAME,
    Quota,
    admit,
    playground_key,
    quota_refusal,
    record_usage,
    trace_usage,
)
from apps.serving import access
from apps.serving import services as serving
from apps.serving.models import Deployment, DeploymentState
from apps.serving.openai_format import ApiError, parse_request
from apps.studio.labels import choice_word
from workers.tasks.catalog import InvalidParams, public_text, public_value

log = logging.getLogger(__name__)

__all__ = ["RefusedInput", "QuotaExceeded", "PermissionDenied", "render_markdown", "attach_document",
           "create_http_tool", "delete_document", "delete_http_tool", "visible_documents", "visible_http_tools",
           "admit", "playground_key", "quota_refusal", "record_usage", "trace_usage"]

MAX_MESSAGE_CHARS = 32_000  # as the agent core's MAX_MESSAGE_CHARS
MAX_SYSTEM_PROMPT = 8_000
MAX_TITLE = 200
MAX_TOKENS = 4096
MAX_MESSAGES_PER_CONVERSATION = 2_000
# What one model call is sent at most (the agent core's limits): older turns are left out first.
MAX_HISTORY_MESSAGES = 200
MAX_HISTORY_CHARS = 250_000
DEFAULT_SETTINGS = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 512}
SETTING_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.01, 1.0), "max_tokens": (1, MAX_TOKENS)}
MAX_HTTP_TOOL_IDS = 8  # the agent core's MAX_HTTP_TOOLS
# A placeholder nobody started (the web process stopped between commit and stream) fails after
# this long; one that started fails once its deployment's timeout has clearly passed.
UNSTARTED_GRACE = timedelta(seconds=60)


# ---- who sees what -------------------------------------------------------------------------

def visible_conversations(user) -> QuerySet[Conversation]:
    return visible_to(Conversation.objects.select_related("owner", "deployment"), user)


def get_conversation(user, conversation_id) -> Conversation:
    conversation = access.visible_by_pk(Conversation.objects.select_related("owner", "deployment"), user, conversation_id)
    if conversation is None:
        raise Http404("No such object, or you may not see it.")
    return conversation


def visible_messages(user) -> QuerySet[Message]:
    return visible_to(Message.objects.select_related("conversation"), user, "conversation__owner")


def get_message(user, message_id) -> Message:
    return get_visible_or_404(Message.objects.select_related("conversation", "deployment__owner", "model_version__model"),
                              user, "conversation__owner", pk=message_id)


def _deployment(user, deployment) -> Deployment:
    """A deployment the user may see (Http404 otherwise), from an object or an id."""
    pk = getattr(deployment, "pk", deployment)
    return get_visible_or_404(Deployment.objects.select_related("owner", "model", "version"), user, pk=pk)


def _answering(deployment: Deployment | None, field: str = "deployment") -> Deployment:
    if deployment is None:
        raise RefusedInput(field, gettext("the deployment of this conversation was deleted; start a new conversation"))
    if deployment.state not in (DeploymentState.READY, DeploymentState.STARTING):
        raise RefusedInput(field, gettext("%(deployment)s is %(state)s; start it on its page, or choose another "
                                          "deployment")
                                  % {"deployment": deployment.served_name, "state": choice_word(deployment, "state")})
    return deployment


# ---- bounded inputs ------------------------------------------------------------------------

def clean_settings(value, base: dict | None = None) -> dict:
    """Sampling settings: temperature 0–2, top_p 0.01–1, max_tokens 1–4096 (defaults filled in)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RefusedInput("settings", gettext("must be an object with temperature, top_p and max_tokens"))
    unknown = sorted(str(key) for key in value if key not in SETTING_RANGES)
    if unknown:
        raise RefusedInput(f"settings.{unknown[0][:40]}", gettext("unknown setting (known: %(known)s)")
                                                                  % {"known": ', '.join(SETTING_RANGES)})
    clean = {**DEFAULT_SETTINGS, **(base or {})}
    for key, raw in value.items():
        low, high = SETTING_RANGES[key]
        integer = key == "max_tokens"
        if isinstance(raw, bool) or not isinstance(raw, int if integer else (int, float)):
            raise RefusedInput(f"settings.{key}",
                               gettext("must be an integer") if integer else gettext("must be a number"))
        if not low <= raw <= high:
            raise RefusedInput(f"settings.{key}", gettext("must be between %(low)s and %(high)s, got %(raw)s")
                                                          % {"low": low, "high": high, "raw": raw})
        clean[key] = int(raw) if integer else float(raw)
    return clean


def _tools(value) -> list[str]:
    if not isinstance(value, (list, tuple)) or len(value) > len(BUILTIN_TOOLS):
        raise RefusedInput("tools", gettext("must be a list of built-in tool names (%(tools)s)")
                                            % {"tools": ', '.join(BUILTIN_TOOLS)})
    for i, name in enumerate(value):
        if name not in BUILTIN_TOOLS:
            raise RefusedInput(f"tools[{i}]", gettext("unknown tool %(name)s (built in: %(tools)s)")
                                                      % {"name": repr(str(name)[:40]),
                                                         "tools": ', '.join(BUILTIN_TOOLS)})
        if name in value[:i]:
            raise RefusedInput(f"tools[{i}]", gettext("repeats %(name)s") % {"name": repr(name)})
    return list(value)


def _protocol(value) -> str:
    if value not in Protocol.values:
        raise RefusedInput("protocol", gettext("must be one of %(values)s, got %(got)s")
                                               % {"values": ', '.join(Protocol.values),
                                                  "got": repr(str(value)[:40])})
    return value


def _http_tools(user, ids) -> list[HttpTool]:
    if not isinstance(ids, (list, tuple)) or len(ids) > MAX_HTTP_TOOL_IDS:
        raise RefusedInput("http_tool_ids", gettext("must be a list of at most %(max)s HTTP tool ids")
                                                    % {"max": MAX_HTTP_TOOL_IDS})
    tools = []
    for pk in ids:
        if isinstance(pk, bool) or not isinstance(pk, int):
            raise RefusedInput("http_tool_ids", gettext("must hold HTTP tool ids (integers)"))
        tool = get_visible_or_404(HttpTool.objects.all(), user, pk=pk)
        if tool.owner_id != user.pk:
            raise RefusedInput("http_tool_ids", gettext("%(tool)s is a teammate's HTTP tool; describe your own")
                                                        % {"tool": tool.name})
        tools.append(tool)
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise RefusedInput("http_tool_ids", gettext("lists the same tool twice"))
    return tools


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= 60 else line[:59] + "…"


# ---- conversations -------------------------------------------------------------------------

def create_conversation(user, *, deployment, title: str = "", system_prompt: str = "", settings: dict | None = None,
                        tools=(), protocol: str = "auto", http_tool_ids=()) -> Conversation:
    target = _answering(_deployment(user, deployment))
    fields = {"title": text("title", title, MAX_TITLE).strip(),
              "system_prompt": text("system_prompt", system_prompt, MAX_SYSTEM_PROMPT),
              "settings": clean_settings(settings), "tools": _tools(list(tools)), "protocol": _protocol(protocol)}
    http = _http_tools(user, list(http_tool_ids))
    with transaction.atomic():
        conversation = Conversation.objects.create(owner=user, deployment=target, **fields)
        conversation.http_tools.set(http)
    return conversation


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP = _Keep()


def update_conversation(user, conversation: Conversation, *, deployment=KEEP, title=KEEP, system_prompt=KEEP,
                        settings=KEEP, tools=KEEP, protocol=KEEP, http_tool_ids=KEEP) -> Conversation:
    """Change what is given; each later answer uses the new values (earlier ones keep theirs)."""
    require_owner(user, conversation)
    changes: dict = {}
    if deployment is not KEEP:
        if conversation.kind != ConversationKind.CHAT:
            raise RefusedInput("deployment", gettext("a side-by-side or arena conversation keeps its deployments"))
        changes["deployment"] = _answering(_deployment(user, deployment))
    if title is not KEEP:
        changes["title"] = text("title", title, MAX_TITLE).strip()
    if system_prompt is not KEEP:
        changes["system_prompt"] = text("system_prompt", system_prompt, MAX_SYSTEM_PROMPT)
    if settings is not KEEP:
        changes["settings"] = clean_settings(settings)
    if tools is not KEEP:
        changes["tools"] = _tools(list(tools))
    if protocol is not KEEP:
        changes["protocol"] = _protocol(protocol)
    http = _http_tools(user, list(http_tool_ids)) if http_tool_ids is not KEEP else None
    if (changes.get("tools") or http) and conversation.kind != ConversationKind.CHAT:
        raise RefusedInput("tools", gettext("tools are for chats; side-by-side and arena answers stream without them"))
    with transaction.atomic():
        for key, value in changes.items():
            setattr(conversation, key, value)
        conversation.save()
        if http is not None:
            conversation.http_tools.set(http)
    return conversation


def delete_conversation(user, conversation: Conversation) -> None:
    """Stops what still runs, then deletes the conversation, its messages and documents."""
    require_owner(user, conversation)
    for message in conversation.messages.filter(status=MessageStatus.STREAMING):
        stop_reply(user, message)
    files = [document.path for document in conversation.documents.all()]
    index = index_dir(conversation)
    with transaction.atomic():
        conversation.delete()
        transaction.on_commit(lambda: _remove_files(files, index))


def _remove_files(files: list[Path], folder: Path) -> None:
    import shutil

    for path in files:
        path.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


# ---- the tree ------------------------------------------------------------------------------

def _messages_by_id(conversation: Conversation) -> dict[int, Message]:
    return {m.pk: m for m in conversation.messages.select_related("deployment__owner", "model_version__model")}


def _walk_up(messages: dict[int, Message], leaf: Message | None) -> list[Message]:
    """The chain root → `leaf` (a message not stored yet ends the chain of its parent)."""
    chain = []
    node = (leaf if leaf.pk is None else messages.get(leaf.pk)) if leaf is not None else None
    while node is not None and len(chain) <= MAX_MESSAGES_PER_CONVERSATION:
        chain.append(node)
        node = messages.get(node.parent_id) if node.parent_id else None
    return chain[::-1]


def current_leaf(conversation: Conversation) -> Message | None:
    """The end of the shown branch (read fresh: another request may have moved it)."""
    leaf = conversation.messages.filter(pk__in=Conversation.objects.filter(pk=conversation.pk).values("current_leaf")).first()
    return leaf or conversation.messages.order_by("-created_at", "-id").first()


def path(conversation: Conversation, leaf: Message | None = None) -> list[Message]:
    """The messages root → leaf of the shown branch (the current leaf by default)."""
    leaf = leaf or current_leaf(conversation)
    if leaf is not None and leaf.conversation_id != conversation.pk:
        raise RefusedInput("leaf", gettext("is not a message of this conversation"))
    return _walk_up(_messages_by_id(conversation), leaf)


def siblings(message: Message) -> list[Message]:
    """The alternatives at this point of the tree (same parent, same column), oldest first:
    edits of a user message, regenerations of an answer."""
    return list(Message.objects.filter(conversation_id=message.conversation_id, parent_id=message.parent_id,
                                       column=message.column, role=message.role).order_by("created_at", "id"))


def leaf_of(message: Message) -> Message:
    """The end of the newest branch under `message` (what the switcher shows when it picks it)."""
    node = message
    for _ in range(MAX_MESSAGES_PER_CONVERSATION):
        child = node.children.filter(column=message.column).order_by("-created_at", "-id").first() \
            if message.column is not None else node.children.order_by("-created_at", "-id").first()
        if child is None:
            return node
        node = child
    return node


def select_branch(user, conversation: Conversation, message: Message) -> Message:
    """Show the branch through `message` (the owner's choice is kept; a teammate browses with
    ?leaf= instead). Returns the new leaf."""
    require_owner(user, conversation)
    if message.conversation_id != conversation.pk:
        raise RefusedInput("message_id", gettext("is not a message of this conversation"))
    leaf = leaf_of(message)
    Conversation.objects.filter(pk=conversation.pk).update(current_leaf=leaf)
    conversation.current_leaf = leaf
    return leaf


def column_leaves(conversation: Conversation) -> dict[int, Message]:
    """For a side-by-side or battle conversation: each column's newest message."""
    return _column_leaves(_messages_by_id(conversation))


def _column_leaves(messages: dict[int, Message]) -> dict[int, Message]:
    leaves: dict[int, Message] = {}
    for message in sorted(messages.values(), key=lambda m: (m.created_at, m.pk)):
        if message.column is not None:
            leaves[message.column] = message
    return leaves


def shown_messages(conversation: Conversation, leaf: Message | None = None) -> list[Message]:
    """What the page shows: the path to the leaf (a chat), or every column's path (side by side)."""
    if conversation.kind == ConversationKind.CHAT:
        return path(conversation, leaf)
    by_id = _messages_by_id(conversation)
    seen: dict[int, Message] = {}
    for column_leaf in _column_leaves(by_id).values():
        for message in _walk_up(by_id, column_leaf):
            seen[message.pk] = message
    return sorted(seen.values(), key=lambda m: (m.created_at, m.pk))


# ---- sending --------------------------------------------------------------------------------
# A send reads the conversation's messages once, inside its transaction: the checks (an answer
# still running, room left), the new message's parent, and every reply's history come from that
# one read. A plain reply's engine request is sent from inside the transaction, once everything
# it depends on was read and checked but before any row is written: the engine starts while the
# rows are written and committed (on a busy 2-core machine the old send path, 17 statements,
# then the stream's own reads, took ~80 ms before the request left: ten times the engine's time
# to first token). Should the transaction not commit, the request is cancelled and its
# reservation given back.


@dataclass
class PlainReply:
    """A plain reply's engine request: `exchange` (apps/serving/openai_views.Exchange) when it
    was sent in the transaction that stored the placeholder; else caller, target and spec, for
    the stream to send it once that transaction commits (a send nested in a caller's transaction,
    which might roll back after this one). `failure`: why it cannot run (stored as the answer's
    error)."""

    message: Message
    hide_models: bool
    exchange: object = None
    caller: object = None
    target: object = None
    spec: dict | None = None
    failure: str = ""


class _Requests:
    """The engine requests of one send: sent from inside its transaction when that transaction
    is the outermost one (nested in a caller's, which might still roll back, they wait for the
    commit)."""

    def __init__(self) -> None:
        self.early = not transaction.get_connection().in_atomic_block
        self.sent: list[PlainReply] = []

    def request(self, reply: Message, quota: Quota, messages: dict[int, Message], hide_models: bool) -> PlainReply:
        """Admit and build the reply's request (`reply` and its parent may not be stored yet),
        and send it now when it may leave early."""
        from apps.playground import replies as streams  # the async side imports this module

        prepared = PlainReply(reply, hide_models)
        try:
            prepared.caller, prepared.target = quota.admit(reply.deployment)
            prepared.spec = parse_request(chat_body(reply, messages), "chat", settings.SERVING_DEFAULT_MAX_TOKENS)
            if self.early:
                prepared.exchange = streams.send_request(prepared)
                self.sent.append(prepared)
                reply.request_id = prepared.exchange.request_id
        except ApiError as exc:  # rate limit, quota, no ready replica, a full queue: the answer says so
            prepared.failure = exc.message
        except Exception as exc:  # Redis unreachable, a bug: the answer fails with the reason, the send stands
            log.exception("the request of a playground reply could not be sent")
            prepared.failure = f"the answer failed: {exc.__class__.__name__}"
        return prepared

    def abandon(self) -> None:
        """Cancel what was sent (the transaction did not commit: no placeholder waits for it)."""
        from apps.playground import replies as streams

        for reply in self.sent:
            streams.abandon(reply.exchange)


@contextmanager
def _sending():
    """The transaction of a send and its engine requests (_Requests)."""
    requests = _Requests()
    try:
        with transaction.atomic():
            yield requests
    except BaseException:
        requests.abandon()
        raise


def _check_room(messages: dict[int, Message], adding: int) -> None:
    if len(messages) + adding > MAX_MESSAGES_PER_CONVERSATION:
        raise RefusedInput("content", gettext("this conversation holds %(max)s messages, the most one may; start a "
                                              "new one") % {"max": format(MAX_MESSAGES_PER_CONVERSATION, ",")})


def _check_idle(messages: dict[int, Message]) -> None:
    if any(m.status == MessageStatus.STREAMING for m in messages.values()):
        raise RefusedInput("content", gettext("an answer is still being written: wait for it, or stop it first"))


def _fresh_leaf(conversation: Conversation, messages: dict[int, Message]) -> Message | None:
    """current_leaf() over messages already read: the conversation's leaf read fresh (another
    request may have moved it), else its newest message."""
    leaf_id = Conversation.objects.filter(pk=conversation.pk).values_list("current_leaf", flat=True).first()
    if leaf_id in messages:
        return messages[leaf_id]
    return max(messages.values(), key=lambda m: (m.created_at, m.pk), default=None)


def _user_message(user, conversation: Conversation, messages: dict[int, Message], *, content: str,
                  parent: Message | None, edit_of: Message | None) -> Message:
    """A user message (not stored yet) after the current leaf (or after `parent`, an answer);
    with `edit_of` (a user message) the edited text becomes its sibling: a new branch from the
    same point."""
    require_owner(user, conversation)
    if conversation.kind != ConversationKind.CHAT:
        raise RefusedInput("content", gettext("a side-by-side or arena conversation takes messages for every column "
                                              "at once"))
    content = text("content", content, MAX_MESSAGE_CHARS, required=True)
    _check_idle(messages)
    _check_room(messages, 2)
    if edit_of is not None:
        if edit_of.conversation_id != conversation.pk or edit_of.role != MessageRole.USER:
            raise RefusedInput("edit_of", gettext("must be a user message of this conversation"))
        parent = (messages.get(edit_of.parent_id) or edit_of.parent) if edit_of.parent_id else None
    elif parent is not None:
        if parent.conversation_id != conversation.pk:
            raise RefusedInput("parent_id", gettext("is not a message of this conversation"))
        parent = messages.get(parent.pk, parent)  # as this transaction reads it
        if parent.role != MessageRole.ASSISTANT or not parent.is_finished:
            raise RefusedInput("parent_id", gettext("a message follows a finished answer (to change a message, edit "
                                                    "it)"))
    else:
        parent = _fresh_leaf(conversation, messages)
    return Message(conversation=conversation, parent=parent, role=MessageRole.USER, content=content)


def send(user, conversation: Conversation, *, content: str, parent: Message | None = None,
         edit_of: Message | None = None) -> tuple[list[Message], list[Message]]:
    """What the socket's and the API's "send" does: the user message(s) and the reply
    placeholder(s), in one transaction (a refused reply stores no message either). A chat's
    reply is a plain stream, or an agent turn (a job on the agent queue) when tools are on."""
    with _sending() as sending:
        if conversation.kind != ConversationKind.CHAT:
            if parent is not None or edit_of is not None:
                raise RefusedInput("parent_id", gettext("side-by-side and arena conversations go on in every column "
                                                        "at once"))
            return _send_to_columns(user, conversation, content, sending)
        messages = _messages_by_id(conversation)
        asked = _user_message(user, conversation, messages, content=content, parent=parent, edit_of=edit_of)
        quota = Quota(user)
        reply, streams = _new_reply(user, conversation, asked, conversation.deployment, None, quota, messages, sending)
        asked.save(force_insert=True)
        reply.parent = asked  # its id, now that it has one
        _store_reply(conversation, reply, messages)
        conversation.current_leaf = reply
        if not conversation.title:
            conversation.title = _title_from(content)
        conversation.save(update_fields=["current_leaf", "title", "updated_at"])
        _stream_on_commit(conversation, [asked, reply], streams)
    return [asked], [reply]


def send_to_columns(user, conversation: Conversation, *, content: str) -> tuple[list[Message], list[Message]]:
    """A follow-up in a side-by-side or battle conversation: the message goes to every column,
    each after its own last answer."""
    with _sending() as sending:
        return _send_to_columns(user, conversation, content, sending)


def _send_to_columns(user, conversation: Conversation, content: str, sending: _Requests) -> tuple[list[Message], list[Message]]:
    require_owner(user, conversation)
    content = text("content", content, MAX_MESSAGE_CHARS, required=True)
    battle = getattr(conversation, "battle", None) if conversation.kind == ConversationKind.BATTLE else None
    if battle is not None and battle.outcome:
        raise RefusedInput("content", gettext("this battle is decided; start a new one"))
    messages = _messages_by_id(conversation)
    _check_idle(messages)
    leaves = _column_leaves(messages)
    _check_room(messages, 2 * len(leaves))
    asked = []
    for column, leaf in sorted(leaves.items()):
        message = Message.objects.create(conversation=conversation, parent=leaf, role=MessageRole.USER, content=content,
                                         column=column, deployment=leaf.deployment)
        messages[message.pk] = message
        asked.append(message)
    columns = [(message, message.deployment, message.column) for message in asked]
    return asked, _column_replies(user, conversation, columns, asked, messages, sending)


def _column_replies(user, conversation: Conversation, columns: list[tuple[Message, Deployment, int]], new: list[Message],
                    messages: dict[int, Message], sending: _Requests) -> list[Message]:
    """One answer per (stored user message, deployment, column); `new` and the answers are
    announced and the answers streamed on commit."""
    quota = Quota(user)
    replies, streams = [], []
    for asked, deployment, column in columns:
        reply, plain = _new_reply(user, conversation, asked, deployment, column, quota, messages, sending)
        _store_reply(conversation, reply, messages)
        replies.append(reply)
        streams += plain
    conversation.save(update_fields=["updated_at"])
    _stream_on_commit(conversation, new + replies, streams)
    return replies


def regenerate(user, message: Message) -> Message:
    """Another answer to the same user message: a new sibling of `message` (same column and
    deployment; a plain chat's answer comes from the conversation's deployment now)."""
    conversation = message.conversation
    require_owner(user, conversation)
    if message.role != MessageRole.ASSISTANT or message.parent_id is None:
        raise RefusedInput("message_id", gettext("only an answer can be regenerated"))
    if not message.is_finished:
        raise RefusedInput("message_id", gettext("this answer is still being written: stop it first"))
    deployment = message.deployment if message.column is not None else conversation.deployment
    with _sending() as sending:
        messages = _messages_by_id(conversation)
        _check_idle(messages)
        _check_room(messages, 1)
        asked = messages.get(message.parent_id) or message.parent
        reply, streams = _new_reply(user, conversation, asked, deployment, message.column, Quota(user), messages, sending)
        _store_reply(conversation, reply, messages)
        if message.column is None:
            conversation.current_leaf = reply
        conversation.save(update_fields=["current_leaf", "updated_at"] if message.column is None else ["updated_at"])
        _stream_on_commit(conversation, [reply], streams)
    return reply


def _new_reply(user, conversation: Conversation, asked: Message, deployment: Deployment | None, column: int | None,
               quota: Quota, messages: dict[int, Message], sending: _Requests) -> tuple[Message, list[PlainReply]]:
    """The assistant's placeholder (status "streaming", not stored yet) answering `asked` (which
    may not be stored yet either), and its plain stream: an agent turn's job is queued with it;
    a plain reply's request is admitted and, in the outermost transaction, sent to the engine."""
    deployment = _answering(deployment)
    # Read with what the announcement and the admission show (owner, version and its model).
    visible = access.visible_by_pk(Deployment.objects.select_related("owner", "version__model"), user, deployment.pk)
    if visible is None:
        raise RefusedInput("deployment", gettext("you may no longer use %(deployment)s")
                                                 % {"deployment": deployment.served_name})
    refusal = quota.refusal()
    if refusal:
        raise QuotaExceeded("quota", refusal)
    agent = conversation.kind == ConversationKind.CHAT and conversation.uses_agent
    reply = Message(conversation=conversation, parent=asked, role=MessageRole.ASSISTANT, status=MessageStatus.STREAMING,
                    column=column, deployment=visible, model_version=serving.resolve_version(visible))
    if agent:
        reply.job = _queue_agent_turn(user, conversation, reply, messages)
        return reply, []
    reply.request_id = PENDING  # claimed for its stream; the request's id once it is sent
    return reply, [sending.request(reply, quota, messages, hides_models(conversation))]


def _store_reply(conversation: Conversation, reply: Message, messages: dict[int, Message]) -> None:
    reply.save(force_insert=True)
    messages[reply.pk] = reply
    if reply.column is None:
        conversation.current_leaf = reply


def _stream_on_commit(conversation: Conversation, new: list[Message], streams: list[PlainReply]) -> None:
    """Once the messages are stored: they are announced on the conversation's group and the
    plain replies stream (their requests are on their way already, or leave first)."""
    from apps.playground import replies  # the async side imports this module

    hide = hides_models(conversation)
    transaction.on_commit(lambda: replies.announce_and_stream(conversation.pk, new, streams, hide_models=hide))


# ---- model input ---------------------------------------------------------------------------

def history(conversation: Conversation, asked: Message, messages: dict[int, Message] | None = None) -> list[dict]:
    """The conversation as the model sees it, ending with `asked` (a user message): the system
    prompt, then the path's user messages and finished answers, the oldest left out first when
    it exceeds MAX_HISTORY_MESSAGES or MAX_HISTORY_CHARS. `messages`: the conversation's messages
    by id, when the caller has read them already."""
    turns = []
    for message in (path(conversation, asked) if messages is None else _walk_up(messages, asked)):
        if message.role == MessageRole.USER:
            turns.append({"role": "user", "content": message.content})
        elif message.role == MessageRole.ASSISTANT and message.status in (MessageStatus.DONE, MessageStatus.STOPPED) \
                and message.content:
            turns.append({"role": "assistant", "content": message.content})
    system = [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt.strip() else []
    budget = MAX_HISTORY_CHARS - sum(len(m["content"]) for m in system)
    kept: list[dict] = []
    for turn in reversed(turns):
        if kept and (len(kept) + len(system) >= MAX_HISTORY_MESSAGES or budget - len(turn["content"]) < 0):
            break
        kept.append(turn)
        budget -= len(turn["content"])
    kept.reverse()
    while kept and kept[0]["role"] != "user":  # a model call starts with a user turn
        kept.pop(0)
    return system + kept


def chat_body(message: Message, messages: dict[int, Message] | None = None) -> dict:
    """The OpenAI chat request (as /v1 takes it) of a plain reply."""
    conversation = message.conversation
    sampling = clean_settings({}, conversation.settings)
    return {"model": message.deployment.served_name, "messages": history(conversation, message.parent, messages),
            "max_tokens": sampling["max_tokens"], "temperature": sampling["temperature"], "top_p": sampling["top_p"],
            "stream": True}


def resolve_protocol(conversation: Conversation, deployment: Deployment, version) -> str:
    """"auto": native tool calling when the deployment's chat template renders tools, else ReAct
    (the rule of workers/core/agents/protocols.default_protocol: the template mentions `tools`)."""
    if conversation.protocol != Protocol.AUTO:
        return conversation.protocol
    configured = str((deployment.engine_options or {}).get("chat_template") or "")
    template = configured if configured and configured != "chatml" else ""
    if not configured and version is not None:
        template = _model_template(Path(version.path))
    return "native" if re.search(r"\btools\b", template) else "react"


def _model_template(folder: Path) -> str:
    """The chat template text of a model folder (chat_template.jinja, or tokenizer_config.json)."""
    try:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8", errors="replace")[:200_000]
        config = folder / "tokenizer_config.json"
        if config.is_file() and config.stat().st_size < 20 * 2**20:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") or ""
            if isinstance(template, list):  # named templates: [{"name", "template"}]
                template = " ".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
            return str(template)
    except (OSError, ValueError, AttributeError):
        pass
    return ""


def index_dir(conversation: Conversation) -> Path:
    return settings.UPLOAD_DIR / "playground-index" / str(conversation.pk)


def agent_params(conversation: Conversation, reply: Message, messages: dict[int, Message] | None = None) -> dict:
    """The agent_turn job's parameters: built from ids (document paths from their uuid names)."""
    tools = list(conversation.tools)
    documents = list(conversation.documents.all()) if "document_search" in tools else []
    if "document_search" in tools and not documents:
        raise RefusedInput("tools", gettext("document search needs a document: attach one to the conversation, or "
                                            "turn the tool off"))
    sampling = clean_settings({}, conversation.settings)
    return {
        "deployment_id": reply.deployment_id, "messages": history(conversation, reply.parent, messages), "tools": tools,
        "http_tools": [tool.definition() for tool in conversation.http_tools.order_by("name")],
        "protocol": resolve_protocol(conversation, reply.deployment, reply.model_version),
        "max_turns": settings.PLAYGROUND_AGENT_MAX_TURNS, "deadline_s": settings.PLAYGROUND_AGENT_DEADLINE_SECONDS,
        "documents": [str(d.path) for d in documents], "document_names": [d.name for d in documents],
        "index_dir": str(index_dir(conversation)) if documents else "",
        "max_tokens": sampling["max_tokens"], "temperature": sampling["temperature"],
    }


def _queue_agent_turn(user, conversation: Conversation, reply: Message, messages: dict[int, Message]) -> Job:
    params = agent_params(conversation, reply, messages)
    try:
        return jobs.submit_job(user, "agent_turn", params, queue=settings.AGENT_QUEUE,
                               title=f"Agent turn in {str(conversation)[:80]}")
    except jobs.TooManyJobs:
        raise
    except InvalidParams as exc:  # the core's check of what the conversation holds
        raise RefusedInput(exc.field, exc.reason) from None


# ---- stopping and reconciling ----------------------------------------------------------------

def stop_reply(user, message: Message) -> Message:
    """Stop an answer being written: the engine request is cancelled (the stream then stores the
    partial text as "stopped"), or the agent turn's job is cancelled. Idempotent."""
    require_owner(user, message.conversation)
    if message.is_finished:
        return message
    if message.job_id:
        status = jobs.cancel_job(message.job, user)
        if status in FINISHED_STATUSES:
            reconcile(message)
    elif message.request_id and message.request_id != PENDING:
        from apps.playground import replies

        replies.cancel_engine_request(message.deployment_id, message.request_id)
    else:  # not started yet: nothing runs to cancel; the stream sees the status and does not start
        Message.objects.filter(pk=message.pk, status=MessageStatus.STREAMING).update(
            status=MessageStatus.STOPPED, error="stopped before it started")
    message.refresh_from_db()
    return message


PENDING = "pending"  # request_id of a placeholder a stream has claimed, before its request exists


TURN_RELATIONS = ("conversation__owner", "deployment__owner", "model_version__model")  # what an end event shows


def finish_turn(message_id: int, *, status: str, content: str = "", error: str = "", trace=None, usage=None,
                turn: Message | None = None) -> bool:
    """Store how an answer ended, once (only while it is still streaming). An agent turn's end is
    pushed to the conversation's group when this transaction commits, by whoever settled it (the
    agent worker, a reconcile): the page does not wait for the job's status to reach its socket
    and the socket to read the answer back (consumers.py drops the second end). `turn`: the
    agent turn's message as its worker read it (with TURN_RELATIONS), so it is not read again."""
    fields = {"status": status, "content": content, "error": public_error(error), "request_id": ""}
    if trace is not None:
        fields["trace"] = _public(trace)
    if usage is not None:
        fields["usage"] = usage
    if not Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(**fields):
        return False
    if turn is not None and turn.pk == message_id:
        for name, value in fields.items():
            setattr(turn, name, value)
    else:
        turn = Message.objects.select_related(*TURN_RELATIONS).filter(pk=message_id).first()
    if turn is not None and turn.job_id is not None:
        from apps.playground import replies  # the async side imports this module

        event = end_event(turn, hide_models=hides_models(turn.conversation))
        transaction.on_commit(lambda: replies.announce_end(turn.conversation_id, event))
    return True


def public_error(error: str) -> str:
    """An answer's error as it is stored and shown (no server folder; bounded)."""
    return public_text(error)[:4000]


def _public(value):
    """A trace as users may see it: server folders in its texts replaced (as in the job's log)."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_public(item) for item in value]
    return public_text(value) if isinstance(value, str) else value


def trace_from_log(job: Job) -> list[dict]:
    """The agent steps a job logged so far ({"agent_step": ...} lines), in order."""
    steps = {}
    for line in job.log_lines.order_by("seq").values_list("message", flat=True):
        step = parse_step(line)
        if step is not None:
            steps[step.get("index", len(steps))] = step
    return [steps[i] for i in sorted(steps)]


def parse_step(line: str) -> dict | None:
    """One agent step from a job log line, as users may see it (no server path, no secret-looking
    key: the same filter the saved trace gets on pages)."""
    if not line.startswith('{"agent_step"'):
        return None
    try:
        step = json.loads(line).get("agent_step")
    except ValueError:
        return None
    return public_value(step) if isinstance(step, dict) else None


def reconcile(message: Message) -> Message:
    """Settle an answer whose worker or stream is gone: an agent turn whose job ended without
    recording it (failed, cancelled, lost), or a stream that never started or outlived its
    deadline (the web process stopped). Cheap when nothing is wrong."""
    if message.is_finished:
        return message
    now = timezone.now()
    if message.job_id:
        job = Job.objects.filter(pk=message.job_id).first()
        if job is None or job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            cancelled = job is not None and job.status == JobStatus.CANCELLED
            trace = trace_from_log(job) if job is not None else []
            usage = trace_usage(trace)
            settled = finish_turn(message.pk, status=MessageStatus.STOPPED if cancelled else MessageStatus.FAILED,
                                  error="stopped" if cancelled else (job.error if job else "the agent job was deleted"),
                                  trace=trace, usage=usage)
            if settled and usage["total_tokens"] and message.deployment_id:  # the model calls it made count too
                record_usage(message.conversation.owner, message.deployment_id, usage)
        elif job.status == JobStatus.SUCCEEDED:  # recorded in the same transaction; a stale read
            pass
    else:
        deployment = message.deployment
        limit = UNSTARTED_GRACE if not message.request_id or message.request_id == PENDING else timedelta(
            seconds=(deployment.request_timeout_s if deployment else 120) + settings.SERVING_QUEUE_TIMEOUT_SECONDS + 60)
        if now - message.created_at > limit:
            finish_turn(message.pk, status=MessageStatus.FAILED, content=message.content,
                        error="the answer was interrupted (the web server restarted?); regenerate it")
    message.refresh_from_db()
    return message


def reconcile_conversation(conversation: Conversation) -> None:
    for message in conversation.messages.filter(status=MessageStatus.STREAMING):
        reconcile(message)


# ---- what pages and events show ------------------------------------------------------------

def hides_models(conversation: Conversation) -> bool:
    """A battle hides who answered until the vote."""
    if conversation.kind != ConversationKind.BATTLE:
        return False
    battle = getattr(conversation, "battle", None)
    return battle is None or not battle.revealed


def message_payload(message: Message, *, hide_models: bool = False, html: bool = True) -> dict:
    """A message as the socket and the API show it (model names hidden in an undecided battle)."""
    payload = {
        "id": message.pk, "conversation_id": message.conversation_id, "parent_id": message.parent_id,
        "role": message.role, "content": message.content, "status": message.status, "error": message.error,
        "column": message.column, "usage": message.usage, "trace": message.trace, "job_id": message.job_id,
        "created_at": message.created_at.isoformat() if message.created_at else None,
        "deployment": None, "deployment_id": None, "model_version": None, "model_version_id": None,
    }
    if html:
        payload["html"] = render_markdown(message.content)
    if not hide_models:
        if message.deployment_id and message.deployment is not None:
            payload["deployment"], payload["deployment_id"] = message.deployment.served_name, message.deployment_id
        if message.model_version_id and message.model_version is not None:
            payload["model_version"], payload["model_version_id"] = str(message.model_version), message.model_version_id
    return payload


def end_event(message: Message, *, hide_models: bool) -> dict:
    """An answer's "end" event, its final state (the stream, the agent worker and the socket send
    the same): content, sanitized html, status, usage, error, trace and model version."""
    payload = message_payload(message, hide_models=hide_models)
    return {"event": "end", "message_id": message.pk, "column": message.column, "status": message.status,
            "content": message.content, "html": payload["html"], "usage": message.usage, "error": message.error,
            "trace": message.trace, "model_version": payload["model_version"]}


# ---- feedback --------------------------------------------------------------------------------

def _rateable(user, message: Message, field: str) -> None:
    require_owner(user, message.conversation)
    if message.role != MessageRole.ASSISTANT:
        raise RefusedInput(field, gettext("only answers can be rated"))
    if not message.is_finished:
        raise RefusedInput(field, gettext("wait until the answer is finished"))


def give_feedback(user, message: Message, *, rating: int) -> Feedback | None:
    """Thumbs up (+1), down (-1), or take it back (0)."""
    if isinstance(rating, bool) or rating not in (1, -1, 0):
        raise RefusedInput("rating", gettext("must be 1 (thumbs up), -1 (thumbs down) or 0 (none)"))
    _rateable(user, message, "message_id")
    if rating == 0:
        Feedback.objects.filter(user=user, message=message).delete()
        return None
    feedback, _ = Feedback.objects.update_or_create(user=user, message=message, defaults={"rating": rating})
    return feedback


def prefer(user, better: Message, worse: Message) -> Preference:
    """"This one is better": two answers to the same message (regenerations, or side-by-side
    columns); the opposite preference, if given before, is replaced."""
    _rateable(user, better, "better_id")
    _rateable(user, worse, "worse_id")
    if better.pk == worse.pk:
        raise RefusedInput("worse_id", gettext("must be another answer than better_id"))
    columns = better.column is not None and worse.column is not None and better.column != worse.column
    same_prompt = better.parent_id == worse.parent_id or (columns and better.parent.content == worse.parent.content)
    if better.conversation_id != worse.conversation_id or better.parent_id is None or not same_prompt:
        raise RefusedInput("worse_id", gettext("must answer the same message as better_id (a regeneration or "
                                               "another column)"))
    with transaction.atomic():
        Preference.objects.filter(user=user, better=worse, worse=better).delete()
        preference, _ = Preference.objects.get_or_create(user=user, better=better, worse=worse)
    return preference


# ---- side by side ----------------------------------------------------------------------------

def side_by_side(user, *, deployments, content: str, system_prompt: str = "", settings: dict | None = None) -> Comparison:
    """One message to 2–4 deployments at once, one column each (streamed on commit)."""
    if not isinstance(deployments, (list, tuple)) or not 2 <= len(deployments) <= 4:
        raise RefusedInput("deployments", gettext("choose two to four deployments"))
    chosen = [_answering(_deployment(user, d), "deployments") for d in deployments]
    if len({d.pk for d in chosen}) != len(chosen):
        raise RefusedInput("deployments", gettext("lists the same deployment twice"))
    content = text("content", content, MAX_MESSAGE_CHARS, required=True)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=user, kind=ConversationKind.COMPARISON, deployment=chosen[0], title=_title_from(content),
            system_prompt=text("system_prompt", system_prompt, MAX_SYSTEM_PROMPT), settings=clean_settings(settings))
        comparison = Comparison.objects.create(owner=user, conversation=conversation, deployments=[d.pk for d in chosen])
        open_columns(user, conversation, content, chosen)
    return comparison


def open_columns(user, conversation: Conversation, content: str, deployments: list[Deployment]) -> list[Message]:
    """The first message of a side-by-side or battle conversation and one answer per column."""
    with _sending() as sending:
        asked = Message.objects.create(conversation=conversation, role=MessageRole.USER, content=content)
        columns = [(asked, deployment, column) for column, deployment in enumerate(deployments)]
        return _column_replies(user, conversation, columns, [asked], {asked.pk: asked}, sending)


def may_change(user, conversation: Conversation) -> bool:
    return can_manage(user, conversation)

