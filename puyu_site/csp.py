"""A Content-Security-Policy header on every response (Django 5.2 has none built in).

Scripts come only from our own static files: no template has an inline script (data a page's
script needs travels in `json_script` blocks, which are not executed, and plotly figures are
rendered by static/js/plotly_figures.js from such blocks, see puyu_site/charts.py). So a stored
XSS payload that slips past escaping still cannot run. Styles allow 'unsafe-inline': plotly.js
and htmx insert <style> elements at run time, and `style=` attributes cannot carry a nonce; a
style cannot run code. `connect-src 'self'` covers the page's websockets (same host).

A view may set its own header (e.g. a download) and keeps it."""
from __future__ import annotations

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


class ContentSecurityPolicyMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        return self._set(self.get_response(request))

    async def _acall(self, request):
        return self._set(await self.get_response(request))

    @staticmethod
    def _set(response):
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = POLICY
        return response
