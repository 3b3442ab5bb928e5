"""Playground pages: the home page (conversations and the new-chat form), the chat page (one
branch of the conversation tree, streamed over ws/playground/conversations/<id>/ by
static/js/playground_chat.js), side-by-side, the blind arena, feedback and its export into
Datasets, and the user's HTTP tools.

Everything is read through the services' visibility (apps/playground/services.py): what a user
may not see is a 404, what a teammate may read but not change is shown read-only and refused
with 403. Model output and user messages are untrusted text: the templates autoescape them, and
the only HTML marked safe is rendering.render_markdown's sanitized output."""
from __future__ import annotations

import json

from django.conf import settings
from django.utils.translation import gettext
from django.contrib import messages
from django.db import transaction
from django.db.models import Count, Q
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from apps.accounts.visibility import PermissionDenied, can_manage, visible_to
from apps.jobs.models import JobStatus
from apps.leaderboards.forms import attach
from apps.playground import arena as arenas
from apps.playground import exports, rendering, services
from apps.playground.forms import (
    BattleForm, ConversationForm, DocumentForm, FeedbackExportForm, HttpToolForm, SideBySideForm, VoteForm,
    conversation_initial, ready_deployments, serve_slots_line)
from apps.playground.models import (
    Battle, Comparison, Conversation, ConversationKind, Feedback, FeedbackExport, Message, MessageRole,
    MessageStatus, Preference)
from apps.serving.models import Deployment, DeploymentState

SIDEBAR = 30  # conversations in the chat page's sidebar
LIST = 200  # conversations on the home page
# A service's argument names → the form field that shows the refusal.
CONVERSATION_FIELDS = {"http_tool_ids": "http_tools"}
OUTCOME_TEXT = {"a": "A is better", "b": "B is better", "tie": "a tie", "both_bad": "both are bad"}


# ---- lookups ------------------------------------------------------------------------------------

def _one(queryset, **lookup):
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404("No such object, or you may not see it.")
    return obj


def _conversation(user, conversation_id: int) -> Conversation:
    return _one(services.visible_conversations(user).select_related("owner", "deployment__owner", "current_leaf"),
                pk=conversation_id)


def _message(user, message_id: int) -> Message:
    """A message of a conversation the user may see (Http404 otherwise)."""
    return services.get_message(user, message_id)


def _forbidden(exc) -> HttpResponse:
    return HttpResponse(str(exc) or gettext("only the conversation's owner can change it"), status=403,
                        content_type="text/plain; charset=utf-8")


def _int(value) -> int | None:
    value = str(value or "")
    return int(value) if value.isdigit() and len(value) < 12 else None


def conversation_url(conversation: Conversation) -> str:
    """The page of a conversation of any kind."""
    if conversation.kind == ConversationKind.COMPARISON:
        comparison = Comparison.objects.filter(conversation=conversation).only("pk").first()
        if comparison is not None:
            return reverse("playground-comparison", args=[comparison.pk])
    if conversation.kind == ConversationKind.BATTLE:
        battle = Battle.objects.filter(conversation=conversation).only("pk").first()
        if battle is not None:
            return reverse("playground-battle", args=[battle.pk])
    return reverse("playground-chat", args=[conversation.pk])


# ---- home and new chat ----------------------------------------------------------------------------

def _home_context(request, form: ConversationForm) -> dict:
    user = request.user
    conversations = (services.visible_conversations(user).select_related("owner", "deployment__owner")
                     .filter(kind=ConversationKind.CHAT)
                     .annotate(message_count=Count("messages"))[:LIST])
    ready = ready_deployments(user)
    starting = visible_to(Deployment.objects.select_related("owner"), user).filter(state=DeploymentState.STARTING)[:10]
    return {"conversations": conversations, "form": form, "ready_count": ready.count(), "starting": starting,
            "serve_slots": serve_slots_line(user), "user_id": user.pk}


def home(request):
    # ?deployment=<id>&tools=calculator (the Quick start's link) preselects them; the form still only
    # offers deployments the user may use, so another value selects nothing.
    initial = {"deployment": request.GET.get("deployment", ""), "tools": request.GET.getlist("tools")}
    return render(request, "playground/home.html", _home_context(request, ConversationForm(request.user, initial=initial)))


@require_POST
def new_chat(request):
    form = ConversationForm(request.user, request.POST)
    if form.is_valid():
        try:
            conversation = services.create_conversation(request.user, **form.service_kwargs())
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason, CONVERSATION_FIELDS)
        else:
            return redirect("playground-chat", conversation_id=conversation.pk)
    return render(request, "playground/home.html", _home_context(request, form), status=422)


# ---- the chat page --------------------------------------------------------------------------------

def _shown_leaf(request, conversation: Conversation) -> Message | None:
    """?leaf=<message id> (any message of the conversation: the branch runs on to its newest end,
    which the sibling switcher relies on), else the conversation's current leaf. The owner's
    choice is kept (a reload shows the same branch); a teammate only browses."""
    pk = _int(request.GET.get("leaf"))
    chosen = conversation.messages.filter(pk=pk).first() if pk is not None else None
    if chosen is None:
        return None
    if can_manage(request.user, conversation) and conversation.kind == ConversationKind.CHAT:
        return services.select_branch(request.user, conversation, chosen)
    return services.leaf_of(chosen)


def _pretty(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, indent=2)
    return "" if value is None else str(value)


def trace_steps(trace) -> list[dict]:
    """A stored agent trace (workers/core/agents/loop.py steps) as the trace panel shows it."""
    from workers.tasks import catalog

    steps = []
    for step in (trace or [])[:200]:
        if not isinstance(step, dict):
            continue
        step = catalog.public_value(step)
        tokens = step.get("tokens") or {}
        steps.append({
            "index": step.get("index"), "type": step.get("type", ""), "turn": step.get("turn"),
            "tool": step.get("tool") or "", "status": step.get("status") or "",
            "output": step.get("output") or step.get("answer") or "", "thought": step.get("thought") or "",
            "calls": [{"name": c.get("name", ""), "arguments": _pretty(c.get("arguments"))}
                      for c in step.get("tool_calls") or [] if isinstance(c, dict)],
            "arguments": _pretty(step.get("arguments")) if step.get("type") == "tool" else "",
            "observation": _pretty(step.get("observation")) if step.get("type") == "tool" else "",
            "stopped": step.get("stopped") or "", "duration_ms": step.get("duration_ms"),
            "tokens": (tokens.get("prompt_tokens", 0) or 0) + (tokens.get("completion_tokens", 0) or 0)
            if isinstance(tokens, dict) else None,
        })
    return steps


def sibling_groups(shown: list[Message]) -> dict[tuple, list[int]]:
    """(parent id, column, role) → the ids of the messages there, oldest first: the siblings of
    services.siblings, read in one query for the whole branch (a long chat shows hundreds)."""
    if not shown:
        return {}
    parents = {m.parent_id for m in shown}
    at = Q(parent_id__in=[p for p in parents if p is not None])
    if None in parents:
        at |= Q(parent__isnull=True)
    groups: dict[tuple, list[int]] = {}
    rows = (Message.objects.filter(at, conversation_id=shown[0].conversation_id).order_by("created_at", "id")
            .values_list("pk", "parent_id", "column", "role"))
    for pk, parent, column, role in rows:
        groups.setdefault((parent, column, role), []).append(pk)
    return groups


def message_rows(user, shown: list[Message]) -> list[dict]:
    """Each shown message with what its bubble needs: the sanitized HTML of an answer, its place
    among its siblings (the ‹ 2/3 › switcher), the user's rating and preference, and its trace."""
    ids = [m.pk for m in shown]
    ratings = dict(Feedback.objects.filter(user=user, message_id__in=ids).values_list("message_id", "rating"))
    preferred = set(Preference.objects.filter(user=user, better_id__in=ids).values_list("better_id", flat=True))
    groups = sibling_groups(shown)
    rows = []
    for message in shown:
        siblings = groups.get((message.parent_id, message.column, message.role), [message.pk])
        index = siblings.index(message.pk) if message.pk in siblings else 0
        row = {"m": message, "rating": ratings.get(message.pk, 0), "preferred": message.pk in preferred,
               "sibling_count": len(siblings), "sibling_index": index + 1, "rivals": len(siblings) - 1,
               "previous_sibling": siblings[index - 1] if index > 0 else None,
               "next_sibling": siblings[index + 1] if index + 1 < len(siblings) else None,
               "steps": trace_steps(message.trace) if message.role == MessageRole.ASSISTANT else [],
               "chars": len(message.content)}
        if message.role == MessageRole.ASSISTANT:
            # The only markup a page shows from model output: markdown-it (html off) + nh3.
            row["html"] = mark_safe(rendering.render_markdown(message.content))
        rows.append(row)
    return rows


def _chat_context(request, conversation: Conversation) -> dict:
    services.reconcile_conversation(conversation)  # settles an answer whose stream or job is gone
    leaf = _shown_leaf(request, conversation)
    shown = list(services.path(conversation, leaf))
    can_write = can_manage(request.user, conversation)
    return {"conversation": conversation, "rows": message_rows(request.user, shown), "can_write": can_write,
            "leaf_id": shown[-1].pk if shown else None, "streaming": any(m.status == MessageStatus.STREAMING for m in shown)}


def chat(request, conversation_id: int):
    conversation = _conversation(request.user, conversation_id)
    if conversation.kind != ConversationKind.CHAT:
        return redirect(conversation_url(conversation))
    context = _chat_context(request, conversation)
    sidebar = services.visible_conversations(request.user).filter(kind=ConversationKind.CHAT).select_related("owner")[:SIDEBAR]
    context.update({
        "sidebar": sidebar, "documents": conversation.documents.all(),
        "http_tools": conversation.http_tools.all(),
        "settings_form": ConversationForm(request.user, initial=conversation_initial(conversation), editing=conversation)
        if context["can_write"] else None,
        "document_form": DocumentForm() if context["can_write"] else None,
        # A starting deployment takes messages too: the answer waits for its replica.
        "deployment_ready": bool(conversation.deployment and conversation.deployment.state in (
            DeploymentState.READY, DeploymentState.STARTING)),
        "ws_path": f"/ws/playground/conversations/{conversation.pk}/",
    })
    return render(request, "playground/chat.html", context)


def thread(request, conversation_id: int):
    """The shown branch alone: the chat page swaps it in after each answer (new switchers, ids)."""
    conversation = _conversation(request.user, conversation_id)
    return render(request, "playground/_thread.html", {**_chat_context(request, conversation), "fragment": True})


@require_POST
def chat_settings(request, conversation_id: int):
    conversation = _conversation(request.user, conversation_id)
    if not can_manage(request.user, conversation):
        return _forbidden("only the conversation's owner can change its settings")
    form = ConversationForm(request.user, request.POST, editing=conversation)
    if form.is_valid():
        try:
            services.update_conversation(request.user, conversation, **form.service_kwargs())
        except PermissionDenied as exc:
            return _forbidden(exc)
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason, CONVERSATION_FIELDS)
        else:
            messages.success(request, gettext("Settings saved: they apply from the next answer."))
            return redirect("playground-chat", conversation_id=conversation.pk)
    for field, errors in form.errors.items():
        messages.error(request, f"{field}: {' '.join(errors)}")
    return redirect("playground-chat", conversation_id=conversation.pk)


@require_POST
def chat_delete(request, conversation_id: int):
    conversation = _conversation(request.user, conversation_id)
    try:
        services.delete_conversation(request.user, conversation)
    except PermissionDenied as exc:
        return _forbidden(exc)
    messages.success(request, gettext('Deleted “%(conversation)s”.') % {"conversation": conversation})
    return redirect("playground")


@require_POST
def attach_document(request, conversation_id: int):
    conversation = _conversation(request.user, conversation_id)
    if not can_manage(request.user, conversation):
        return _forbidden("only the conversation's owner can attach documents")
    form = DocumentForm(request.POST, request.FILES)
    if not form.is_valid():
        for errors in form.errors.values():
            messages.error(request, f"document: {' '.join(errors)}")
        return redirect("playground-chat", conversation_id=conversation.pk)
    try:
        document = services.attach_document(request.user, conversation, form.cleaned_data["document"])
    except PermissionDenied as exc:
        return _forbidden(exc)
    except services.RefusedInput as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
    else:
        messages.success(request, gettext('Attached %(name)s: ask about it, the model searches it with document search.') % {"name": document.name})
    return redirect("playground-chat", conversation_id=conversation.pk)


def export(request, conversation_id: int, fmt: str):
    conversation = _conversation(request.user, conversation_id)
    filename = f"conversation-{conversation.pk}"
    if fmt == "json":
        response = JsonResponse(exports.export_json(conversation), json_dumps_params={"ensure_ascii": False, "indent": 2})
        response["Content-Disposition"] = f'attachment; filename="{filename}.json"'
        return response
    if fmt == "md":
        response = HttpResponse(exports.export_markdown(conversation), content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{filename}.md"'
        return response
    raise Http404("Export as .json or .md.")


# ---- feedback on one message (htmx: the buttons swap themselves) ------------------------------------

def _feedback_fragment(request, message: Message) -> HttpResponse:
    row = message_rows(request.user, [message])[0]
    row["rivals"] = len(rivals(message))
    return render(request, "playground/_feedback.html", {"row": row, "can_write": True})


@require_POST
def rate(request, message_id: int):
    message = _message(request.user, message_id)
    rating = {"1": 1, "-1": -1, "0": 0}.get(request.POST.get("rating", ""))
    if rating is None:
        return HttpResponse("rating: " + gettext("must be 1, -1 or 0"), status=422, content_type="text/plain; charset=utf-8")
    try:
        services.give_feedback(request.user, message, rating=rating)
    except PermissionDenied as exc:
        return _forbidden(exc)
    except services.RefusedInput as exc:
        return HttpResponse(f"{exc.field}: {exc.reason}", status=422, content_type="text/plain; charset=utf-8")
    if request.htmx:
        return _feedback_fragment(request, message)
    return redirect(conversation_url(message.conversation) + f"?leaf={message.pk}")


def rivals(message: Message) -> list[Message]:
    """The answers "this one is better" weighs `message` against: its regenerations in a chat;
    in a side-by-side, each other column's newest answer to the same message."""
    if message.column is None:
        return [s for s in services.siblings(message) if s.pk != message.pk]
    newest: dict[int, Message] = {}
    others = (message.conversation.messages.filter(role=MessageRole.ASSISTANT, parent__content=message.parent.content)
              .exclude(column=message.column).exclude(column=None).order_by("created_at", "id"))
    for other in others:
        newest[other.column] = other
    return list(newest.values())


@require_POST
def prefer(request, message_id: int):
    """"This one is better": the message beats each of its rivals (or the one named by `worse`)."""
    better = _message(request.user, message_id)
    if better.role != MessageRole.ASSISTANT or better.parent_id is None:
        return HttpResponse("message_id: " + gettext("only an answer can be preferred"), status=422,
                            content_type="text/plain; charset=utf-8")
    others = rivals(better)
    worse_id = _int(request.POST.get("worse"))
    if worse_id is not None:
        others = [s for s in others if s.pk == worse_id]
    if not others:
        return HttpResponse("worse: " + gettext("there is no other answer to this message to compare with"), status=422,
                            content_type="text/plain; charset=utf-8")
    try:
        with transaction.atomic():
            for worse in others:
                services.prefer(request.user, better, worse)
    except PermissionDenied as exc:
        return _forbidden(exc)
    except services.RefusedInput as exc:
        return HttpResponse(f"{exc.field}: {exc.reason}", status=422, content_type="text/plain; charset=utf-8")
    if request.htmx:
        return _feedback_fragment(request, better)
    return redirect(conversation_url(better.conversation) + ("" if better.column is not None else f"?leaf={better.pk}"))


# ---- side by side and the arena: one column per deployment ----------------------------------------

def column_context(request, conversation: Conversation, *, letters: bool = False) -> dict:
    """The shared first message and each column's branch (its follow-ups and answers), with the
    user's feedback on the answers. `letters`: columns are "A", "B" (a battle hides the names)."""
    services.reconcile_conversation(conversation)
    shown = services.shown_messages(conversation)
    rows = {row["m"].pk: row for row in message_rows(request.user, [m for m in shown if m.column is not None])}
    prompt = next((m for m in shown if m.column is None), None)
    columns: dict[int, dict] = {}
    for message in shown:
        if message.column is None:
            continue
        column = columns.setdefault(message.column, {"index": message.column, "rows": [], "deployment": None,
                                                     "label": "AB"[message.column] if letters and message.column < 2
                                                     else str(message.column + 1)})
        column["rows"].append(rows[message.pk])
        if message.deployment is not None:
            column["deployment"] = message.deployment
    ordered = [columns[key] for key in sorted(columns)]
    for column in ordered:
        for row in column["rows"]:
            # The columns answer the same message: "this one is better" weighs an answer against
            # the other columns' (not regenerations within its column).
            row["rivals"] = len(ordered) - 1 if row["m"].role == MessageRole.ASSISTANT else 0
    return {"conversation": conversation, "prompt": prompt, "columns": ordered,
            "can_write": can_manage(request.user, conversation),
            "streaming": any(m.status == MessageStatus.STREAMING for m in shown),
            "ws_path": f"/ws/playground/conversations/{conversation.pk}/"}


def compare(request):
    form = SideBySideForm(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            comparison = services.side_by_side(request.user, **form.service_kwargs())
        except PermissionDenied as exc:
            form.add_error(None, str(exc))
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            return redirect("playground-comparison", comparison_id=comparison.pk)
    recent = (Comparison.objects.filter(conversation__in=services.visible_conversations(request.user))
              .select_related("conversation", "owner")[:20])
    return render(request, "playground/compare.html", {"form": form, "recent": recent,
                                                       "serve_slots": serve_slots_line(request.user)},
                  status=422 if form.errors else 200)


def comparison_detail(request, comparison_id: int):
    comparison = _one(Comparison.objects.filter(conversation__in=services.visible_conversations(request.user))
                      .select_related("conversation__owner", "owner"), pk=comparison_id)
    context = {**column_context(request, comparison.conversation), "comparison": comparison,
               "fragment_url": reverse("playground-comparison", args=[comparison.pk]) + "?fragment=columns"}
    if request.GET.get("fragment") == "columns":
        return render(request, "playground/_columns.html", context)
    return render(request, "playground/comparison.html", context)


def arena(request):
    form = BattleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            battle = arenas.start_battle(request.user, content=form.cleaned_data["content"])
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            return redirect("playground-battle", battle_id=battle.pk)
    battles = list(Battle.objects.filter(user=request.user).select_related("version_a__model", "version_b__model")[:20])
    for one in battles:
        one.outcome_text = OUTCOME_TEXT.get(one.outcome, "")
    return render(request, "playground/arena.html", {"form": form, "battles": battles,
                                                     "candidates": len(arenas.candidates(request.user))},
                  status=422 if form.errors else 200)


def battle(request, battle_id: int):
    battle = arenas.get_battle(request.user, battle_id)
    battle.outcome_text = OUTCOME_TEXT.get(battle.outcome, "")
    context = {**column_context(request, battle.conversation, letters=True), "battle": battle,
               "can_vote": battle.user_id == request.user.pk and not battle.outcome, "vote_form": VoteForm(),
               "fragment_url": reverse("playground-battle", args=[battle.pk]) + "?fragment=columns"}
    if battle.revealed:
        names = {0: (battle.deployment_a, battle.version_a), 1: (battle.deployment_b, battle.version_b)}
        for column in context["columns"]:
            column["revealed"] = names.get(column["index"])
    if request.GET.get("fragment") == "columns":
        return render(request, "playground/_columns.html", context)
    return render(request, "playground/battle.html", context)


@require_POST
def battle_vote(request, battle_id: int):
    battle = arenas.get_battle(request.user, battle_id)
    form = VoteForm(request.POST)
    if not form.is_valid():
        messages.error(request, gettext("outcome: choose A, B, tie or both bad"))
        return redirect("playground-battle", battle_id=battle.pk)
    try:
        arenas.vote(request.user, battle, form.cleaned_data["outcome"])
    except PermissionDenied:
        return _forbidden("only the user who started the battle can vote in it")
    except services.RefusedInput as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
    else:
        messages.success(request, gettext("Vote recorded: the names are revealed below. It counts in the arena ratings at their "
                                  "next recompute."))
    return redirect("playground-battle", battle_id=battle.pk)


# ---- feedback and its export ----------------------------------------------------------------------

def _exports(user):
    made = list(FeedbackExport.objects.filter(owner=user).select_related("job")[:20])
    from apps.datasets.models import DatasetVersion

    versions = {v.source_job_id: v for v in DatasetVersion.objects.filter(source_job__in=[e.job_id for e in made])
                .select_related("dataset")}
    for one in made:
        one.version = versions.get(one.job_id)
    return made


def _active(made) -> bool:
    return any(e.job.status in (JobStatus.QUEUED, JobStatus.RUNNING) for e in made)


def feedback(request):
    user = request.user
    rated = (Feedback.objects.filter(user=user).exclude(rating=0)
             .select_related("message__conversation").order_by("-created_at")[:500])
    preferences = (Preference.objects.filter(user=user).select_related("better__conversation", "worse")
                   .order_by("-created_at")[:500])
    with_feedback = (Conversation.objects.filter(owner=user)
                     .filter(Q(messages__feedback__user=user) | Q(messages__preferred_over__user=user)).distinct())
    choices = [(str(c.pk), str(c)) for c in with_feedback[:1000]]
    form = FeedbackExportForm(choices, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = exports.export_feedback(user, kind=form.cleaned_data["kind"],
                                           conversation_ids=form.cleaned_data["conversations"],
                                           dataset_name=form.cleaned_data["dataset_name"])
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason, {"conversation_ids": "conversations"})
        else:
            messages.success(request, gettext('Export job #%(pk)s queued: the new dataset version is linked below when it is done.') % {"pk": job.pk})
            return redirect("playground-feedback")
    made = _exports(user)
    return render(request, "playground/feedback.html", {
        "form": form, "rated": rated, "preferences": preferences, "exports": made, "active": _active(made),
    }, status=422 if form.errors else 200)


def feedback_exports(request):
    """The exports table alone (polled while a job runs)."""
    made = _exports(request.user)
    return render(request, "playground/_exports.html", {"exports": made, "active": _active(made)})


# ---- HTTP tools -----------------------------------------------------------------------------------

def http_tools(request):
    form = HttpToolForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            tool = services.create_http_tool(request.user, **form.service_kwargs())
        except services.RefusedInput as exc:
            attach(form, exc.field, exc.reason)
        else:
            messages.success(request, gettext("HTTP tool %(name)s saved: tick it in a chat's tools.") % {"name": tool.name})
            return redirect("playground-tools")
    tools = services.visible_http_tools(request.user).select_related("owner")
    allowlist = [host.strip() for host in settings.PLAYGROUND_HTTP_ALLOWLIST if host.strip()]
    return render(request, "playground/http_tools.html", {"form": form, "tools": tools, "allowlist": allowlist},
                  status=422 if form.errors else 200)


@require_POST
def http_tool_delete(request, tool_id: int):
    tool = _one(services.visible_http_tools(request.user), pk=tool_id)
    try:
        services.delete_http_tool(request.user, tool)
    except PermissionDenied as exc:
        return _forbidden(exc)
    messages.success(request, gettext('Deleted the HTTP tool %(name)s.') % {"name": tool.name})
    return redirect("playground-tools")
