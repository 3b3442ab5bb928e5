"""Upload size limit checked before anything is stored."""
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.files.uploadhandler import FileUploadHandler


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
