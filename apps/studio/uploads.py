"""Uploaded files, shared by the datasets and the model registry: a size limit checked before
anything is stored, a move under the upload dir with a name built from a uuid, and a full disk
answered with a clear error (507) and no partial file left behind.

Over-size bodies are refused earlier still, while the server reads them (puyu_site/bodylimit.py);
the Content-Length check here covers servers and clients that bypass that layer."""
from __future__ import annotations

import errno
import json
import shutil
import uuid

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler
from django.http import HttpResponse
from django.utils.translation import gettext, gettext_lazy

from workers.tasks.catalog import InvalidParams

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGE = gettext_lazy("disk full while writing the upload: free space and retry")


class SizeLimitUploadHandler(FileUploadHandler):
    """Django streams file uploads to disk with no size limit of its own: refuse a request whose
    Content-Length exceeds PUYU_MAX_UPLOAD_BYTES before the first byte is written (400)."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length and content_length > settings.MAX_UPLOAD_BYTES:
            raise RequestDataTooBig(
                f"upload of {content_length:,} bytes exceeds PUYU_MAX_UPLOAD_BYTES={settings.MAX_UPLOAD_BYTES:,}")

    def receive_data_chunk(self, raw_data, start):
        return raw_data

    def file_complete(self, file_size):
        return None


class DiskFullAwareTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Django's handler that streams a large upload to a temporary file under UPLOAD_DIR. When the
    disk is full the temporary file is closed (which deletes it), the request is marked and the
    upload stopped; UploadDiskFullMiddleware then answers 507 before any view runs."""

    def receive_data_chunk(self, raw_data, start):
        try:
            return super().receive_data_chunk(raw_data, start)
        except OSError as exc:
            if exc.errno not in DISK_FULL_ERRNOS:
                raise
            self.file.close()
            self.request.upload_disk_full = True
            raise StopUpload(connection_reset=False) from None


class UploadDiskFullMiddleware:
    """507 Insufficient Storage with the reason for an upload the disk could not hold, instead of a
    500 or a misleading "file missing" (pages and the API alike). It parses multipart bodies in
    process_view, which the view would do anyway, so the check comes before the view."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view, args, kwargs):
        if request.method != "POST" or not request.content_type.startswith("multipart/"):
            return None
        request.FILES  # noqa: B018  (parses the body; the handler marks a full disk)
        if not getattr(request, "upload_disk_full", False):
            return None
        if request.path.startswith("/api/"):
            return HttpResponse(json.dumps({"detail": str(DISK_FULL_MESSAGE)}), status=507, content_type="application/json")
        title, heading = gettext("Disk full"), gettext("Upload not stored")
        return HttpResponse(f"<!doctype html><title>{title}</title><h1>{heading}</h1><p>{DISK_FULL_MESSAGE}.</p>",
                            status=507)


def store_upload(uploaded, suffixes: tuple[str, ...], field: str) -> str:
    """Move an upload (already streamed to disk by Django) under UPLOAD_DIR as `<uuid><suffix>`;
    returns that name. Refuses other suffixes, empty files and files over the limit, naming `field`;
    a full disk while copying removes the partial copy and says so."""
    name = uploaded.name.lower()
    suffix = next((s for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None:
        raise InvalidParams(field, gettext("%(file)s: upload one of %(suffixes)s")
                                           % {"file": repr(uploaded.name[:80]), "suffixes": ', '.join(suffixes)})
    if uploaded.size == 0:
        raise InvalidParams(field, gettext("%(file)s is empty (0 bytes)")
                                           % {"file": repr(uploaded.name[:80])})
    if uploaded.size > settings.MAX_UPLOAD_BYTES:
        raise InvalidParams(field, gettext("%(file)s is %(size)s bytes; the limit is %(max)s")
                                           % {"file": repr(uploaded.name[:80]),
                                              "size": format(uploaded.size, ","),
                                              "max": format(settings.MAX_UPLOAD_BYTES, ",")})
    stored = f"{uuid.uuid4().hex}{suffix}"
    target = settings.UPLOAD_DIR / stored
    try:
        if hasattr(uploaded, "temporary_file_path"):
            shutil.move(uploaded.temporary_file_path(), target)  # a rename: the temp file is beside it
        else:
            with open(target, "wb") as fh:
                for chunk in uploaded.chunks():
                    fh.write(chunk)
    except OSError as exc:
        target.unlink(missing_ok=True)
        if exc.errno in DISK_FULL_ERRNOS:
            raise InvalidParams(field, str(DISK_FULL_MESSAGE)) from None
        raise
    return stored
