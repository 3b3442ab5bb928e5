"""Documents attached to a conversation (for document search) and the HTTP tools users describe."""
from __future__ import annotations

import ipaddress
import json
import re
import urllib.parse
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext

from apps.accounts.visibility import require_manager, visible_to
from apps.playground.checks import BUILTIN_TOOLS, RefusedInput, require_owner, text
from apps.playground.models import Conversation, ConversationKind, Document, HttpTool
from apps.studio import uploads
from workers.tasks.catalog import InvalidParams, validate_params

DOCUMENT_SUFFIXES = {".txt": "txt", ".md": "md", ".markdown": "md", ".pdf": "pdf"}
MAX_SCHEMA_CHARS = 20_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def attach_document(user, conversation: Conversation, uploaded) -> Document:
    """A .txt, .md or .pdf file (at most PLAYGROUND_MAX_DOCUMENT_BYTES) for document search,
    stored under UPLOAD_DIR by a uuid name."""
    require_owner(user, conversation)
    if conversation.kind != ConversationKind.CHAT:
        raise RefusedInput("document", gettext("documents are for chats (with the document search tool)"))
    if conversation.documents.count() >= settings.PLAYGROUND_MAX_DOCUMENTS:
        raise RefusedInput("document", gettext("a conversation holds at most %(max)s documents")
                                               % {"max": settings.PLAYGROUND_MAX_DOCUMENTS})
    name = Path(str(uploaded.name or "")).name.strip()
    suffix = Path(name.lower()).suffix
    if suffix not in DOCUMENT_SUFFIXES:
        raise RefusedInput("document", gettext("%(name)s: attach a %(suffixes)s file")
                                               % {"name": repr(name[:80]),
                                                  "suffixes": ', '.join(DOCUMENT_SUFFIXES)})
    if not name or len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise RefusedInput("document", gettext("the file name must be 1 to 200 printable characters"))
    limit = settings.PLAYGROUND_MAX_DOCUMENT_BYTES
    if uploaded.size > limit:
        raise RefusedInput("document", gettext("%(name)s is %(size)s bytes; the limit is %(limit)s")
                                               % {"name": repr(name[:80]), "size": format(uploaded.size, ","),
                                                  "limit": format(limit, ",")})
    kind = DOCUMENT_SUFFIXES[suffix]
    head = next(iter(uploaded.chunks(65536)), b"")
    uploaded.seek(0)
    if kind == "pdf" and not head.startswith(b"%PDF-"):
        raise RefusedInput("document", gettext("%(name)s is not a PDF file") % {"name": repr(name[:80])})
    if kind != "pdf":
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
                raise RefusedInput("document", gettext("%(name)s is not UTF-8 text")
                                   % {"name": repr(name[:80])}) from None
    try:
        stored = uploads.store_upload(uploaded, tuple(DOCUMENT_SUFFIXES), "document")
    except InvalidParams as exc:
        raise RefusedInput(exc.field, exc.reason) from None
    try:
        document = Document.objects.create(conversation=conversation, name=name, stored_name=stored,
                                           size=uploaded.size, kind=kind)
    except BaseException:
        (settings.UPLOAD_DIR / stored).unlink(missing_ok=True)
        raise
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    return document


def visible_documents(user) -> QuerySet[Document]:
    return visible_to(Document.objects.select_related("conversation"), user, "conversation__owner")


def delete_document(user, document: Document) -> None:
    require_owner(user, document.conversation)
    path = document.path
    with transaction.atomic():
        document.delete()
        transaction.on_commit(lambda: path.unlink(missing_ok=True))


def _allowlist() -> set[tuple[str, int | None]]:
    entries = set()
    for item in settings.PLAYGROUND_HTTP_ALLOWLIST:
        try:
            parts = urllib.parse.urlsplit("//" + item.strip())
            entries.add((_host(parts.hostname or ""), parts.port))
        except ValueError:
            continue
    return entries


def _host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def create_http_tool(user, *, name: str, description: str = "", method: str = "GET", url_template: str,
                     parameters_schema: dict | None = None) -> HttpTool:
    """A user-described HTTP endpoint, checked by the agent core's own rules, whose host must be
    on the administrator's allowlist (PUYU_AGENT_HTTP_ALLOWLIST) now as when it is called."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RefusedInput("name", gettext("must be letters, digits and _ (at most 64, not starting with a digit)"))
    if name in BUILTIN_TOOLS:
        raise RefusedInput("name", gettext("%(name)s is a built-in tool's name") % {"name": repr(name)})
    description = text("description", description, 1000)
    if method not in ("GET", "POST"):
        raise RefusedInput("method", gettext("must be GET or POST"))
    url_template = text("url_template", url_template, 500, required=True).strip()
    parameters_schema = {"type": "object", "properties": {}} if parameters_schema is None else parameters_schema
    if not isinstance(parameters_schema, dict) or len(json.dumps(parameters_schema)) > MAX_SCHEMA_CHARS:
        raise RefusedInput("parameters_schema", gettext("must be a JSON schema object of at most %(max)s characters")
                                                        % {"max": format(MAX_SCHEMA_CHARS, ",")})
    definition = {"name": name, "description": description, "method": method, "url": url_template,
                  "parameters": parameters_schema}
    fields = {"url": "url_template", "parameters": "parameters_schema"}
    try:
        validate_params("agent_turn", {"deployment_id": 1, "messages": [{"role": "user", "content": "check"}],
                                       "http_tools": [definition]})
    except InvalidParams as exc:
        part = exc.field.split(".", 2)[1] if exc.field.startswith("http_tools[0].") else "url_template"
        raise RefusedInput(fields.get(part, part), exc.reason) from None
    parts = urllib.parse.urlsplit(url_template)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = _host(parts.hostname or "")
    allowed = _allowlist()
    if (host, None) not in allowed and (host, port) not in allowed:
        raise RefusedInput("url_template", gettext("%(host)s:%(port)s is not on the administrator's allowlist of hosts "
                                                   "agents may call (PUYU_AGENT_HTTP_ALLOWLIST)")
                           % {"host": host, "port": port} if allowed else
                           gettext("no host is allowlisted for HTTP tools; an administrator sets "
                                   "PUYU_AGENT_HTTP_ALLOWLIST"))
    if HttpTool.objects.filter(owner=user, name=name).exists():
        raise RefusedInput("name", gettext("you already have an HTTP tool named %(name)s") % {"name": repr(name)})
    return HttpTool.objects.create(owner=user, name=name, description=description, method=method,
                                   url_template=url_template, parameters=parameters_schema)


def visible_http_tools(user) -> QuerySet[HttpTool]:
    return visible_to(HttpTool.objects.all(), user)


def delete_http_tool(user, tool: HttpTool) -> None:
    require_manager(user, tool, "HTTP tool")
    tool.delete()
