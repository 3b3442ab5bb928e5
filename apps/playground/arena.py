"""Blind battles: two ready deployments the user may use, serving different model versions,
picked at random, answer one prompt side by side as "A" and "B"; the user votes A, B, tie or
both bad; the vote becomes an ArenaVote (apps.leaderboards.arena.record_vote, which the
Leaderboards' ratings job rates) and only then are the names revealed."""
from __future__ import annotations

import random

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext

from apps.accounts.visibility import get_visible_or_404, require_manager, visible_to
from apps.leaderboards import arena as leaderboard_arena
from apps.leaderboards.models import ArenaOutcome, ArenaVote
from apps.playground import services
from apps.playground.checks import RefusedInput, text
from apps.playground.models import Battle, Conversation, ConversationKind, MessageRole, MessageStatus
from apps.registry.models import ModelVersion
from apps.serving import access
from apps.serving.models import DeploymentState

LABELS = ("A", "B")
MAX_CANDIDATES = 200  # deployments considered for one battle
_random = random.SystemRandom()


def visible_battles(user) -> QuerySet[Battle]:
    return visible_to(Battle.objects.select_related("conversation", "deployment_a__owner", "deployment_b__owner",
                                                    "version_a__model", "version_b__model"), user, "user")


def get_battle(user, battle_id) -> Battle:
    return get_visible_or_404(visible_battles(user), user, "user", pk=battle_id)


def candidates(user) -> list[tuple]:
    """(deployment, version) pairs a battle may use: ready deployments the user may use, whose
    served version the user may see (the vote records it)."""
    deployments = list(access.visible_deployments(user).filter(state=DeploymentState.READY)
                       .select_related("model", "version").order_by("pk")[:MAX_CANDIDATES])
    visible_versions = visible_to(ModelVersion.objects.all(), user, "model__owner")
    pairs = []
    for deployment in deployments:
        version = services.serving.resolve_version(deployment)
        if version is not None and visible_versions.filter(pk=version.pk).exists():
            pairs.append((deployment, version))
    return pairs


def pick_pair(pairs: list[tuple], choose=_random) -> tuple[tuple, tuple]:
    """Two pairs serving different versions, at random (and in random order)."""
    if len({version.pk for _, version in pairs}) < 2:
        raise RefusedInput("deployments", gettext("the arena needs two ready deployments serving different model "
                                                  "versions that you may use; deploy another model (or version) on "
                                                  "the Serving page"))
    first = choose.choice(pairs)
    second = choose.choice([pair for pair in pairs if pair[1].pk != first[1].pk])
    return first, second


def start_battle(user, *, content: str) -> Battle:
    """A new battle on `content`; both answers stream once it is stored."""
    content = text("content", content, services.MAX_MESSAGE_CHARS, required=True)
    (deployment_a, version_a), (deployment_b, version_b) = pick_pair(candidates(user))
    with transaction.atomic():
        conversation = Conversation.objects.create(owner=user, kind=ConversationKind.BATTLE, deployment=deployment_a,
                                                   title=f"Battle: {services._title_from(content)}",
                                                   settings=services.clean_settings({}))
        battle = Battle.objects.create(user=user, conversation=conversation, prompt=content, deployment_a=deployment_a,
                                       deployment_b=deployment_b, version_a=version_a, version_b=version_b)
        services.open_columns(user, conversation, content, [deployment_a, deployment_b])
    return battle


def answers(battle: Battle) -> list:
    """The latest answer of each column (A, B)."""
    leaves = services.column_leaves(battle.conversation)
    return [leaves.get(column) for column in range(len(LABELS))]


def vote(user, battle: Battle, outcome: str) -> ArenaVote:
    """Record the vote (once, after both answers ended) and reveal the names."""
    require_manager(user, battle, "battle", owner_field="user")
    if outcome not in ArenaOutcome.values:
        raise RefusedInput("outcome", gettext("must be one of %(values)s, got %(outcome)s")
                                              % {"values": ', '.join(ArenaOutcome.values),
                                                 "outcome": repr(str(outcome)[:40])})
    if battle.outcome:
        raise RefusedInput("outcome", gettext("this battle was already decided (%(outcome)s)")
                                              % {"outcome": battle.outcome})
    replies = answers(battle)
    if any(reply is None or reply.role != MessageRole.ASSISTANT or reply.status == MessageStatus.STREAMING
           for reply in replies):
        raise RefusedInput("outcome", gettext("wait until both answers are finished"))
    if battle.version_a is None or battle.version_b is None:
        raise RefusedInput("outcome", gettext("a model version of this battle was deleted; start a new battle"))
    with transaction.atomic():
        locked = Battle.objects.select_for_update().get(pk=battle.pk)
        if locked.outcome:
            raise RefusedInput("outcome", gettext("this battle was already decided (%(outcome)s)")
                                                  % {"outcome": locked.outcome})
        recorded = leaderboard_arena.record_vote(user, model_a=battle.version_a, model_b=battle.version_b,
                                                 outcome=outcome, prompt=battle.prompt[:leaderboard_arena.MAX_PROMPT],
                                                 battle=str(battle.pk))
        Battle.objects.filter(pk=battle.pk).update(outcome=outcome, revealed=True, vote=recorded,
                                                   voted_at=timezone.now())
    battle.refresh_from_db()
    return recorded


def battle_payload(battle: Battle) -> dict:
    """The battle as pages and the API show it: the models' names only once revealed."""
    payload = {"id": battle.pk, "conversation_id": battle.conversation_id, "prompt": battle.prompt,
               "outcome": battle.outcome or None, "revealed": battle.revealed, "created_at": battle.created_at,
               "voted_at": battle.voted_at, "answers": []}
    for label, reply in zip(LABELS, answers(battle)):
        payload["answers"].append(None if reply is None else {
            "label": label, **services.message_payload(reply, hide_models=not battle.revealed)})
    if battle.revealed:
        payload["models"] = {
            "A": {"deployment": battle.deployment_a.served_name if battle.deployment_a else None,
                  "model_version": str(battle.version_a) if battle.version_a else None},
            "B": {"deployment": battle.deployment_b.served_name if battle.deployment_b else None,
                  "model_version": str(battle.version_b) if battle.version_b else None}}
    return payload
