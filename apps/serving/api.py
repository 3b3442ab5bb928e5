"""The deployments API (/api/deployments…, the studio's token or session auth): what the
deployment pages do. Inference itself is the OpenAI-compatible API under /v1 (API keys)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from apps.accounts.visibility import get_visible_or_404, visible_to
from apps.registry.models import ModelAlias, ModelVersion
from apps.serving import metrics, services, slots
from apps.serving.models import Deployment

router = Router(tags=["serving"])


class DeploymentOut(Schema):
    id: int
    served_name: str
    owner: str
    model_id: int
    version_id: int | None
    alias: str
    replicas: int
    queue: str
    engine_options: dict[str, Any]
    max_queue: int
    request_timeout_s: float
    state: str
    state_reason: str
    waiting_reason: str  # why its replicas wait for a worker ("" when none waits)
    restarts: int
    max_restarts: int
    created_at: datetime

    @staticmethod
    def resolve_owner(obj: Deployment) -> str:
        return obj.owner.username

    @staticmethod
    def resolve_waiting_reason(obj: Deployment, context) -> str:
        request = context["request"]
        # one slot count per queue for a whole list
        cache = request.__dict__.setdefault("_serve_slots", {})
        return slots.deployment_reason(obj, request.auth, cache)


class SlotsOut(Schema):
    queue: str
    workers: int
    capacity: int
    used: int
    free: int  # what a replica queued now would find
    queued: int
    used_by: list[str]
    summary: str


class DeploymentIn(Schema):
    name: str
    version_id: int | None = None
    model_id: int | None = None  # with alias
    alias: str = ""
    replicas: int = 1
    queue: str = "serve"
    engine_options: dict[str, Any] = {}
    max_queue: int = 64
    request_timeout_s: float = 120.0
    max_restarts: int = 3


class ScaleIn(Schema):
    replicas: int


def _deployment(request, deployment_id: int) -> Deployment:
    return get_visible_or_404(Deployment.objects.select_related("owner", "model", "version"), request.auth, pk=deployment_id)


def _act(call):
    try:
        return call()
    except services.PermissionDenied as exc:
        raise HttpError(403, str(exc)) from None
    except services.ServingError as exc:
        raise HttpError(422, str(exc)) from None


@router.get("/deployments", response=list[DeploymentOut])
def list_deployments(request):
    return list(visible_to(Deployment.objects.select_related("owner"), request.auth))


@router.post("/deployments", response={201: DeploymentOut})
def create_deployment(request, payload: DeploymentIn):
    user = request.auth
    if payload.version_id is not None:
        version = get_visible_or_404(ModelVersion.objects.select_related("model"), user, "model__owner", pk=payload.version_id)
        model, alias = version.model, ""
    else:
        found = get_visible_or_404(ModelAlias.objects.select_related("model"), user, "model__owner",
                                   model_id=payload.model_id, name=payload.alias)
        model, version, alias = found.model, None, found.name
    deployment = _act(lambda: services.create_deployment(
        user, name=payload.name, model=model, version=version, alias=alias, replicas=payload.replicas, queue=payload.queue,
        engine_options=payload.engine_options, max_queue=payload.max_queue, request_timeout_s=payload.request_timeout_s,
        max_restarts=payload.max_restarts))
    return Status(201, deployment)


@router.get("/deployments/slots", response=list[SlotsOut])
def serve_slots(request):
    """The slots of each queue a deployment may use: how many the online workers have, which are
    used (by what, named only where the caller may see it) and how many are free."""
    return [slots.queue_slots(queue).as_dict(request.auth) for queue in settings.JOB_QUEUES]


@router.get("/deployments/{deployment_id}", response=DeploymentOut)
def get_deployment(request, deployment_id: int):
    return _deployment(request, deployment_id)


@router.get("/deployments/{deployment_id}/metrics", response=dict[str, Any])
def deployment_metrics(request, deployment_id: int):
    return metrics.live(_deployment(request, deployment_id), request.auth)


@router.post("/deployments/{deployment_id}/scale", response=DeploymentOut)
def scale_deployment(request, deployment_id: int, payload: ScaleIn):
    return _act(lambda: services.scale(request.auth, _deployment(request, deployment_id), payload.replicas))


@router.post("/deployments/{deployment_id}/stop", response=DeploymentOut)
def stop_deployment(request, deployment_id: int):
    return _act(lambda: services.stop(request.auth, _deployment(request, deployment_id)))


@router.post("/deployments/{deployment_id}/start", response=DeploymentOut)
def start_deployment(request, deployment_id: int):
    return _act(lambda: services.start(request.auth, _deployment(request, deployment_id)))


@router.delete("/deployments/{deployment_id}", response={204: None})
def delete_deployment(request, deployment_id: int):
    _act(lambda: services.delete(request.auth, _deployment(request, deployment_id)))
    return Status(204, None)
