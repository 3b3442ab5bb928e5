"""Every page needs a login except an explicit allowlist (login, health, static files).

Django's LoginRequiredMiddleware redirects anonymous browsers to the login page. The JSON API
is left to django-ninja, which answers 401 (an API client cannot follow a login redirect);
tests/test_security.py checks every URL in the project is covered by one or the other.
"""
from django.conf import settings
from django.contrib.auth.middleware import LoginRequiredMiddleware as DjangoLoginRequired


class LoginRequiredMiddleware(DjangoLoginRequired):
    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/") or request.path_info.startswith("/" + settings.STATIC_URL.lstrip("/")):
            return None
        # The OpenAI-compatible API and Prometheus authenticate with their own keys (apps/serving).
        if request.path_info.startswith("/v1/") or request.path_info == "/metrics":
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
