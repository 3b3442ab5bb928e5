"""The JSON API (django-ninja): typed request/response schemas and the OpenAPI document at
/api/openapi.json come from the same type hints, with far less code than DRF serializers."""
from ninja import NinjaAPI

from apps.accounts.api import API_AUTH
from apps.accounts.api import router as accounts_router
from apps.datasets.api import router as datasets_router
from apps.jobs.api import router as jobs_router
from apps.leaderboards.api import router as leaderboards_router
from apps.playground.api import router as playground_router
from apps.registry.api import router as registry_router
from apps.serving.api import router as serving_router
from apps.serving.openapi_doc import document_openai_paths
from apps.studio import idempotency
from apps.training.api import router as training_router


class StudioAPI(NinjaAPI):
    def get_openapi_schema(self, **kwargs):
        return document_openai_paths(idempotency.document_header(super().get_openapi_schema(**kwargs)))


api = StudioAPI(title="Puyu Studio API", version="1.0", auth=API_AUTH, urls_namespace="api")
# Every POST takes an optional Idempotency-Key (apps/studio/idempotency.py): the claim runs
# after authentication and validation, the record keeps the response as rendered.
api.add_decorator(idempotency.api_claim, mode="operation")
api.add_decorator(idempotency.api_record, mode="view")
api.add_router("/", accounts_router)
api.add_router("/", jobs_router)
api.add_router("/", registry_router)
api.add_router("/", datasets_router)
api.add_router("/", training_router)
api.add_router("/", serving_router)
api.add_router("/", leaderboards_router)
api.add_router("/", playground_router)
api.add_router("/", "apps.studio.storage_api.router")
