"""Uploaded files, shared by the datasets and the model registry: a size limit checked before
anything is stored, and a move under the upload dir with a name built from a uuid."""
from __future__ import annotations

import shutil
import uuid

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler

from workers.tasks.catalog import InvalidParams


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


def store_upload(uploaded, suffixes: tuple[str, ...], field: str) -> str:
    """Move an upload (already streamed to disk by Django) under UPLOAD_DIR as `<uuid><suffix>`;
    returns that name. Refuses other suffixes, empty files and files over the limit, naming `field`."""
    name = uploaded.name.lower()
    suffix = next((s for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None:
        raise InvalidParams(field, f"{uploaded.name!r}: upload one of {', '.join(suffixes)}")
    if uploaded.size == 0:
        raise InvalidParams(field, f"{uploaded.name!r} is empty (0 bytes)")
    if uploaded.size > settings.MAX_UPLOAD_BYTES:
        raise InvalidParams(field, f"{uploaded.name!r} is {uploaded.size:,} bytes; the limit is {settings.MAX_UPLOAD_BYTES:,}")
    stored = f"{uuid.uuid4().hex}{suffix}"
    target = settings.UPLOAD_DIR / stored
    if hasattr(uploaded, "temporary_file_path"):
        shutil.move(uploaded.temporary_file_path(), target)
    else:
        with open(target, "wb") as fh:
            for chunk in uploaded.chunks():
                fh.write(chunk)
    return stored
