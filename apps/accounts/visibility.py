"""Who may see and act on owned objects.

Every owned object is visible to its owner and to members of the owner's teams (Django groups);
everyone else gets 404, so outsiders cannot even learn an object exists. Acting on an object
(cancel, retry, delete) is for its owner and staff; teammates may look but not touch. The
built-ins (owned by the system user, apps/accounts/system.py) are visible to every signed-in user
and, like anything else, changeable only by their owner (who cannot sign in) and staff.
"""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils.translation import gettext, gettext_noop

from apps.accounts.system import builtin_owner


def teammate_ids(user):
    """A subquery of the ids of users who share at least one team with `user` (itself included)."""
    User = get_user_model()
    return User.objects.filter(Q(pk=user.pk) | Q(groups__in=user.groups.all())).values("pk")


def visible_to(queryset: QuerySet, user, owner_field: str = "owner") -> QuerySet:
    if not user.is_authenticated:
        return queryset.none()
    if user.is_superuser:
        return queryset
    return queryset.filter(Q(**{f"{owner_field}__in": teammate_ids(user)}) | builtin_owner(owner_field))


def get_visible_or_404(queryset: QuerySet, user, owner_field: str = "owner", **lookup):
    obj = visible_to(queryset, user, owner_field).filter(**lookup).first()
    if obj is None:
        raise Http404("No such object, or you may not see it.")
    return obj


def can_manage(user, obj, owner_field: str = "owner") -> bool:
    return user.is_authenticated and (user.is_staff or getattr(obj, f"{owner_field}_id") == user.pk)


class PermissionDenied(Exception):
    """The user may see the object but not act on it (a teammate, not the owner)."""


# The refusal for each kind of object, one sentence each so that each reads naturally translated.
REFUSALS = {
    "battle": gettext_noop("only the battle's owner or staff can change it"),
    "benchmark": gettext_noop("only the benchmark's owner or staff can change it"),
    "conversation": gettext_noop("only the conversation's owner or staff can change it"),
    "dataset": gettext_noop("only the dataset's owner or staff can change it"),
    "deployment": gettext_noop("only the deployment's owner or staff can change it"),
    "model": gettext_noop("only the model's owner or staff can change it"),
    "preset": gettext_noop("only the preset's owner or staff can change it"),
    "suite": gettext_noop("only the suite's owner or staff can change it"),
    "HTTP tool": gettext_noop("only the HTTP tool's owner or staff can change it"),
}


def require_manager(user, obj, noun: str, owner_field: str = "owner") -> None:
    if not can_manage(user, obj, owner_field):
        refusal = REFUSALS.get(noun)
        raise PermissionDenied(gettext(refusal) if refusal else
                               gettext("only the %(noun)s's owner or staff can change it") % {"noun": noun})
