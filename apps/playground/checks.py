"""What every playground module checks the same way: refusals, bounded text, who may act."""
from __future__ import annotations

from django.utils.translation import gettext

from apps.accounts.visibility import require_manager
from workers.tasks.catalog import InvalidParams

# The agent core's built-in tools (workers/core/agents/tools BUILTIN_TOOLS; a test keeps them equal).
BUILTIN_TOOLS = ("calculator", "python", "datetime", "unit_converter", "document_search")


class RefusedInput(InvalidParams):
    """A refused input; `.field` names it and `.reason` says why. Nothing was stored."""


class QuotaExceeded(RefusedInput):
    """The user's playground token quota for today is used up (the API answers 429)."""


def text(field: str, value, limit: int, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise RefusedInput(field, gettext("must be text"))
    if "\x00" in value:
        raise RefusedInput(field, gettext("must not contain NUL characters"))
    if len(value) > limit:
        raise RefusedInput(field, gettext("is longer than %(limit)s characters") % {"limit": format(limit, ",")})
    if required and not value.strip():
        raise RefusedInput(field, gettext("must not be empty"))
    return value


def require_owner(user, conversation) -> None:
    require_manager(user, conversation, "conversation")
