from apps.registry.models import ModelVersion
from apps.studio.streaming import StreamingIteratorResponse
from workers.tasks.catalog import archive_stream


def version_archive_response(version: ModelVersion) -> StreamingIteratorResponse:
    """The version's folder as a tar in the Hugging Face layout, built chunk by chunk from disk
    (never in memory, under daphne too: see apps/studio/streaming.py), named after the model and
    version number."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{version.model.name}-v{version.number}")
    response = StreamingIteratorResponse(archive_stream(version.path, name), content_type="application/x-tar")
    response["Content-Disposition"] = f'attachment; filename="{name}.tar"'
    return response
