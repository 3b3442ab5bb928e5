"""Idempotent creation: a replayed or double-submitted POST makes one object, not two.

Two entry points share one store (IdempotencyRecord, kept KEEP per user):
- the JSON API: an `Idempotency-Key` header on any POST under /api/ (two django-ninja
  decorators, registered for every operation in puyu_site/api.py);
- the HTML forms: a one-time `_once` token that static/js/once.js adds to every POST form
  (OnceFormMiddleware).

The first request with a key inserts a record (a unique constraint per user and key), runs,
and stores its response. A later request with the same key gets that response again; one that
arrives while the first still runs waits for it (up to WAIT_SECONDS, then 409); the same API key
with another method, path or body is refused with 422. A response of 500 or more is not kept,
so a retry after a server error runs again.
"""
from __future__ import annotations

import hashlib
import inspect
import re
import time
from datetime import timedelta
from functools import wraps

from django.db import IntegrityError, transaction
from django.http import HttpResponse, HttpResponseRedirect, JsonResponse
from django.utils import timezone
from django.utils.translation import gettext

from apps.studio.models import IdempotencyRecord

HEADER = "Idempotency-Key"
FORM_FIELD = "_once"
KEEP = timedelta(hours=24)
WAIT_SECONDS = 10.0  # a duplicate waits this long for the first request's response
POLL_SECONDS = 0.05
# A record still "running" after this long belongs to a request whose process died: take it over.
ABANDONED = timedelta(minutes=5)
MAX_REPLAY_BYTES = 1 << 20
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")  # visible ASCII, as Stripe and the IETF draft allow
FORM_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9-]{8,64}")  # crypto.randomUUID() and similar
# Operations whose response holds a secret shown once (a new API token): a replay answers 409
# instead of storing the secret in the clear for a day.
NO_REPLAY = {"apps.accounts.api.create_token"}

RUN, REPLAY, MISMATCH, BUSY = "run", "replay", "mismatch", "busy"


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def claim(user, key: str, print_: str) -> tuple[str, IdempotencyRecord]:
    """RUN with a fresh record this request now owns, or the existing record with REPLAY
    (finished), MISMATCH (another request used the key) or BUSY (still running after waiting)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        now = timezone.now()
        try:
            with transaction.atomic():
                # Lazy clean-up on insert: the index on created_at keeps this cheap.
                IdempotencyRecord.objects.filter(created_at__lt=now - KEEP).delete()
                return RUN, IdempotencyRecord.objects.create(user=user, key=key, fingerprint=print_, created_at=now)
        except IntegrityError:
            pass
        record = IdempotencyRecord.objects.filter(user=user, key=key).first()
        if record is None:  # the first request failed (5xx) and let go of the key: run
            continue
        if record.status_code is None and record.created_at < now - ABANDONED:
            IdempotencyRecord.objects.filter(pk=record.pk, status_code__isnull=True).delete()
            continue
        if record.fingerprint != print_:
            return MISMATCH, record
        if record.status_code is not None:
            return REPLAY, record
        if time.monotonic() >= deadline:
            return BUSY, record
        time.sleep(POLL_SECONDS)


def finish(record: IdempotencyRecord, response, replay: bool = True) -> None:
    """Keep the first response (or let go of the key after a server error)."""
    if response.status_code >= 500:
        record.delete()
        return
    body = None
    if replay and not response.streaming and len(response.content) <= MAX_REPLAY_BYTES:
        body = response.content
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        status_code=response.status_code, content_type=response.get("Content-Type", "")[:200],
        location=response.get("Location", "")[:2000], body=body)


def replayed(record: IdempotencyRecord, not_replayable) -> HttpResponse:
    if record.location and 300 <= record.status_code < 400:
        response = HttpResponseRedirect(record.location, status=record.status_code)
    elif record.body is None:
        return not_replayable()
    else:
        response = HttpResponse(bytes(record.body), status=record.status_code, content_type=record.content_type or None)
    response["Idempotent-Replayed"] = "true"
    return response


# ---- the JSON API (django-ninja decorators; see puyu_site/api.py) ----------------------------

def _api_error(status: int, detail: str) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status)


def _api_fingerprint(request) -> str:
    content_type = request.content_type or ""
    if content_type.startswith("multipart/"):
        # The body was streamed into files (reading it again is impossible): the form fields
        # and each file's name and size stand for it.
        files = sorted((name, f.name, f.size) for name, f in request.FILES.items())
        body = repr((sorted(request.POST.lists()), files))
    else:
        body = request.body
    return fingerprint(request.method, request.get_full_path(), content_type, body)


def api_claim(view_func):
    """mode="operation": runs after authentication and validation, so the user is known and a
    request refused with 401/422 never takes the key."""
    if inspect.iscoroutinefunction(view_func):
        return view_func  # the claim waits on the database synchronously; no async operation exists
    replay = f"{view_func.__module__}.{view_func.__name__}" not in NO_REPLAY

    @wraps(view_func)
    def wrapper(request, *args, **kwargs):
        key = request.headers.get(HEADER)
        if request.method != "POST" or key is None:
            return view_func(request, *args, **kwargs)
        if not KEY_PATTERN.fullmatch(key):
            return _api_error(422, gettext("the %(header)s header must be 1 to 255 visible ASCII characters")
                              % {"header": HEADER})
        outcome, record = claim(request.auth, "api:" + key, _api_fingerprint(request))
        if outcome == MISMATCH:
            return _api_error(422, gettext("this %(header)s was already used for a different request (method, path or "
                                           "body); send a new key for a new request") % {"header": HEADER})
        if outcome == BUSY:
            return _api_error(409, gettext("a request with this %(header)s is still being processed; retry in a few "
                                           "seconds") % {"header": HEADER})
        if outcome == REPLAY:
            return replayed(record, lambda: _api_error(
                409, gettext("this %(header)s already completed (status %(status)s); its response held a secret shown "
                             "only once and is not replayed") % {"header": HEADER, "status": record.status_code}))
        request._idempotency = (record, replay)
        return view_func(request, *args, **kwargs)

    return wrapper


def api_record(run):
    """mode="view": wraps the whole operation, so it sees the response as sent (rendered by
    django-ninja, errors included) and keeps it for the key that api_claim took."""
    if inspect.iscoroutinefunction(run):
        return run  # no async operation exists; api_claim leaves those alone too

    @wraps(run)
    def wrapper(request, *args, **kwargs):
        try:
            response = run(request, *args, **kwargs)
        except BaseException:  # an unhandled error becomes a 500 further up: let go of the key
            if getattr(request, "_idempotency", None):
                request._idempotency[0].delete()
            raise
        if getattr(request, "_idempotency", None):
            record, replay = request._idempotency
            finish(record, response, replay)
        return response

    return wrapper


def document_header(schema: dict) -> dict:
    """Adds the optional Idempotency-Key header to every POST operation of an OpenAPI schema."""
    for operations in schema.get("paths", {}).values():
        post = operations.get("post")
        if post is not None:
            post.setdefault("parameters", []).append({
                "in": "header", "name": HEADER, "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[\x21-\x7e]+$"},
                "description": "Makes the call safe to retry for 24 h: the same key with the same request "
                               "returns the first response; with another request, 422.",
            })
    return schema


# ---- HTML forms ------------------------------------------------------------------------------

def _form_token(request) -> str | None:
    # The query string first: a multipart body must not be parsed before the view chooses its
    # upload handlers (once.js puts the token there for multipart forms).
    token = request.GET.get(FORM_FIELD)
    if token is None and request.content_type == "application/x-www-form-urlencoded":
        token = request.POST.get(FORM_FIELD)
    return token


class OnceFormMiddleware:
    """A second POST of one form (same `_once` token) gets the first one's response: a redirect
    to where the first went, or the same page. Place after CSRF and authentication."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        record = getattr(request, "_once_record", None)
        if record is not None:
            finish(record, response)
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.method != "POST" or not request.user.is_authenticated:
            return None
        if request.path_info.startswith(("/api/", "/v1/")) or request.headers.get("HX-Request"):
            return None
        token = _form_token(request)
        if token is None:
            return None
        if not FORM_TOKEN_PATTERN.fullmatch(token):
            return HttpResponse(gettext("The form's %(field)s token is malformed; reload the page and submit again.")
                                % {"field": FORM_FIELD},
                                status=400, content_type="text/plain; charset=utf-8")
        outcome, record = claim(request.user, "form:" + token, fingerprint("POST", request.path_info))
        if outcome == RUN:
            request._once_record = record
            return None
        if outcome == REPLAY:
            return replayed(record, lambda: HttpResponse(
                gettext("This form was already submitted."), status=409, content_type="text/plain; charset=utf-8"))
        message = (gettext("This form is still being processed; reload the page in a moment to see the result.")
                   if outcome == BUSY else
                   gettext("This form token belongs to another form; reload the page and submit again."))
        return HttpResponse(message, status=409, content_type="text/plain; charset=utf-8")
