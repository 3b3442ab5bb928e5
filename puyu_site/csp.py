"""A Content-Security-Policy header on every response (Django 5.2 has none built in).

Scripts come only from our own static files: no template has an inline script (data a page's
script needs travels in `json_script` blocks, which are not executed, and plotly figures are
rendered by static/js/plotly_figures.js from such blocks, see puyu_site/charts.py). So a stored
XSS payload that slips past escaping still cannot run. Styles allow 'unsafe-inline': plotly.js
and htmx insert <style> elements at run time, and `style=` attributes cannot carry a nonce; a
style cannot run code. `connect-src 'self'` covers the page's websockets (same host).

A view may set its own header (e.g. a download) and keeps it."""
from __future__ import annotations

from django.utils.deprecation import MiddlewareMixin

POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """MiddlewareMixin gives the sync and async paths; only the response hook is ours."""

    def process_response(self, request, response):
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = POLICY
        return response
