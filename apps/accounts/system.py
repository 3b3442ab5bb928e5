"""The system user: the owner of the built-ins (benchmarks, generated datasets, the starter model and
its deployment). It cannot sign in; what it owns is readable by every signed-in user and changeable
only by staff (apps/accounts/visibility.py)."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Q

SYSTEM_USERNAME = "puyu-system"


def system_user():
    """No password anyone can use and no login. A person who happens to be called that is never
    taken over."""
    User = get_user_model()
    user, created = User.objects.get_or_create(username=SYSTEM_USERNAME, defaults={"is_active": False})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    elif user.is_active or user.has_usable_password():
        raise RuntimeError(f"a user named {SYSTEM_USERNAME!r} exists and can sign in; rename it so the built-ins "
                           "can have a system owner")
    return user


def builtin_owner(owner_field: str = "owner") -> Q:
    """Objects owned by the system user (an active account of that name owns nothing built in)."""
    return Q(**{f"{owner_field}__username": SYSTEM_USERNAME, f"{owner_field}__is_active": False})
