"""The interface language: a switcher in the header saves the choice for the user and in Django's
language cookie; a browser without the cookie (a new one, after signing in) gets the user's saved
choice; without either, LocaleMiddleware follows the browser's Accept-Language."""
from __future__ import annotations

from types import SimpleNamespace

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponseRedirect
from django.utils import translation
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from apps.accounts.models import Preference

CODES = {code for code, _ in settings.LANGUAGES}


def _set_cookie(response, code: str) -> None:
    response.set_cookie(settings.LANGUAGE_COOKIE_NAME, code, max_age=365 * 24 * 3600, samesite="Lax",
                        secure=settings.SESSION_COOKIE_SECURE)


@login_not_required  # the login page has the switcher too
@require_POST
def switch_language(request):
    code = request.POST.get("language", "")
    target = request.POST.get("next") or "/"
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        target = "/"
    response = HttpResponseRedirect(target)
    if code in CODES:
        if request.user.is_authenticated:
            Preference.objects.update_or_create(user=request.user, defaults={"language": code})
        _set_cookie(response, code)
    return response


class UserLanguageMiddleware:
    """After authentication: no language cookie yet, but a saved choice → use it and set the cookie."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        saved = None
        if settings.LANGUAGE_COOKIE_NAME not in request.COOKIES and request.user.is_authenticated:
            saved = Preference.objects.filter(user=request.user).values_list("language", flat=True).first()
            if saved in CODES:
                translation.activate(saved)
                request.LANGUAGE_CODE = saved
        response = self.get_response(request)
        if saved in CODES:
            _set_cookie(response, saved)
        return response


def socket_language(scope) -> str:
    """A websocket's language (a channels scope), picked as LocaleMiddleware picks a page's: the
    language cookie (the switcher's, or the saved choice the page set), else Accept-Language."""
    headers = dict(scope.get("headers") or [])
    request = SimpleNamespace(COOKIES=scope.get("cookies") or {},
                              META={"HTTP_ACCEPT_LANGUAGE": headers.get(b"accept-language", b"").decode("latin-1")})
    return translation.get_language_from_request(request)
