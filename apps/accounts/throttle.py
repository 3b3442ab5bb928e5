"""Login throttling for the login page and the admin's: after LOGIN_FAILURE_LIMIT failed
attempts for one username from one address within LOGIN_FAILURE_WINDOW_SECONDS, further attempts
for it from there are refused (429, a clear message) until the window passes, even with the
right password. Counting per username and address means a stranger cannot lock a user out from
everywhere. A successful login clears the count; it is never slowed.

Counts live in Django's cache (CACHES; the default is per process, which is what one daphne
process needs; point CACHES at Redis when several web processes share the load). Keys hold a
hash of the username and address, not the values."""
from __future__ import annotations

import hashlib
from functools import lru_cache

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.shortcuts import render
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

MAX_USERNAME = 150  # Django's username length; longer input is cut before it is hashed


def client_address(request) -> str:
    # REMOTE_ADDR, not X-Forwarded-For: a client sets that header to whatever it likes.
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def _key(username: str, address: str) -> str:
    digest = hashlib.sha256(f"{username.strip().lower()[:MAX_USERNAME]}\0{address}".encode()).hexdigest()[:40]
    return f"puyu:login-failures:{digest}"


def failures(username: str, address: str) -> int:
    return int(cache.get(_key(username, address), 0))


def record_failure(username: str, address: str) -> None:
    key, window = _key(username, address), settings.LOGIN_FAILURE_WINDOW_SECONDS
    # add() starts the window at the first failure; incr() keeps its expiry.
    if not cache.add(key, 1, window):
        try:
            cache.incr(key)
        except ValueError:  # expired between the two calls
            cache.add(key, 1, window)


@receiver(user_login_failed, dispatch_uid="puyu-login-throttle-failed")
def _count_failure(sender, credentials, request=None, **kwargs):
    if request is not None:
        record_failure(str(credentials.get("username", "")), client_address(request))


@receiver(user_logged_in, dispatch_uid="puyu-login-throttle-success")
def _clear(sender, request, user, **kwargs):
    if request is not None:
        cache.delete(_key(user.get_username(), client_address(request)))


@lru_cache(maxsize=1)
def login_paths() -> frozenset[str]:
    return frozenset((reverse("login"), reverse("admin:login")))


class LoginThrottleMiddleware(MiddlewareMixin):
    """Refuses a login POST for a username and address that used up their failures."""

    def process_request(self, request):
        if request.method != "POST" or request.path_info not in login_paths():
            return None
        username = request.POST.get("username", "")
        if failures(username, client_address(request)) < settings.LOGIN_FAILURE_LIMIT:
            return None
        minutes = max(1, round(settings.LOGIN_FAILURE_WINDOW_SECONDS / 60))
        message = (f"Too many failed log-ins for this username from your address: log-ins for it from here are "
                   f"refused for up to {minutes} minutes after the first failure. Try again later.")
        response = render(request, "registration/login.html",
                          {"form": AuthenticationForm(request), "throttled": message, "next": request.POST.get("next", "")},
                          status=429)
        response["Retry-After"] = str(settings.LOGIN_FAILURE_WINDOW_SECONDS)
        return response
