from django.http import StreamingHttpResponse

from apps.registry.models import ModelVersion
from workers.tasks.catalog import archive_stream


def version_archive_response(version: ModelVersion) -> StreamingHttpResponse:
    """The version's folder as a tar in the Hugging Face layout, streamed from disk (never built
    in memory), named after the model and version number."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{version.model.name}-v{version.number}")
    response = StreamingHttpResponse(archive_stream(version.path, name), content_type="application/x-tar")
    response["Content-Disposition"] = f'attachment; filename="{name}.tar"'
    return response
