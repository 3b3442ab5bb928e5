"""Deployment pages (list, new, detail with live charts and a try-it box), API keys, usage, and
the metrics endpoints (JSON for the page, Prometheus text for scrapers)."""
from __future__ import annotations

import hmac
import json

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.db.models import Sum
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext
from django.views.decorators.http import require_POST

from apps.accounts.visibility import can_manage, get_visible_or_404, visible_to
from apps.serving import access, metrics, services
from apps.serving.forms import DeploymentForm, KeyForm
from apps.serving.models import ApiKey, Deployment, UsageDay
from apps.serving.openai_format import ApiError, parse_body, parse_request
from apps.serving.openai_views import serve


def _visible_deployment(user, deployment_id) -> Deployment:
    queryset = Deployment.objects.select_related("owner", "model", "version")
    return get_visible_or_404(queryset, user, pk=deployment_id)


def deployment_list(request):
    deployments = visible_to(Deployment.objects.select_related("owner", "model", "version"), request.user)
    return render(request, "serving/deployment_list.html", {"deployments": deployments})


def deployment_new(request):
    # ?serves=v<version id> (the Deploy button of a version page) preselects it; the form only
    # accepts choices the user can see, so a forged value selects nothing.
    form = DeploymentForm(request.POST or None, user=request.user, initial={"serves": request.GET.get("serves", "")})
    if request.method == "POST" and form.is_valid():
        model, version, alias = form.target()
        data = form.cleaned_data
        try:
            deployment = services.create_deployment(
                request.user, name=data["name"], model=model, version=version, alias=alias, replicas=data["replicas"],
                queue=data["queue"], engine_options=data["engine_options"], max_queue=data["max_queue"],
                request_timeout_s=data["request_timeout_s"], max_restarts=data["max_restarts"])
        except services.ServingError as exc:
            field = exc.field.split(".")[0]
            form.add_error(field if field in form.fields else None, f"{exc.field}: {exc.reason}")
        else:
            messages.success(request, gettext("Deployment %(name)s is starting.") % {"name": deployment.served_name})
            return redirect("deployment-detail", deployment_id=deployment.pk)
    serve_slots = form.queue_slots["serve"].summary(request.user)
    return render(request, "serving/deployment_new.html", {"form": form, "serve_slots": serve_slots})


def deployment_detail(request, deployment_id: int):
    deployment = _visible_deployment(request.user, deployment_id)
    base_url = request.build_absolute_uri("/v1")
    live = metrics.live(deployment, request.user)
    context = {
        # The table is rendered from the same rows the page's poll brings (deployment.js), so
        # both show the state derived now from each replica's job and hash.
        "deployment": deployment, "can_manage": can_manage(request.user, deployment), "replicas": live["replicas"],
        "live": live, "history": metrics.history(deployment), "base_url": base_url,
        "engine_options": json.dumps(deployment.engine_options or {}),
    }
    return render(request, "serving/deployment_detail.html", context)


def deployment_metrics(request, deployment_id: int):
    deployment = _visible_deployment(request.user, deployment_id)
    payload = metrics.live(deployment, request.user)
    if request.GET.get("history"):
        payload["history"] = metrics.history(deployment)
    return JsonResponse(payload)


@require_POST
def deployment_action(request, deployment_id: int, action: str):
    deployment = _visible_deployment(request.user, deployment_id)
    try:
        if action == "stop":
            services.stop(request.user, deployment)
            messages.info(request, gettext("%(name)s is draining: replicas finish what they run, then stop.")
                          % {"name": deployment.served_name})
        elif action == "start":
            services.start(request.user, deployment)
            messages.success(request, gettext("%(name)s is starting.") % {"name": deployment.served_name})
        elif action == "scale":
            try:
                replicas = int(request.POST.get("replicas", ""))
            except ValueError:
                raise services.ServingError("replicas", gettext("must be a whole number")) from None
            services.scale(request.user, deployment, replicas)
            messages.success(request, gettext("%(name)s scaled to %(n)s replica(s).") % {"name": deployment.served_name, "n": replicas})
        elif action == "delete":
            services.delete(request.user, deployment)
            messages.info(request, gettext("Deployment %(name)s deleted.") % {"name": deployment.served_name})
            return redirect("deployment-list")
        else:
            return HttpResponse(status=404)
    except services.PermissionDenied as exc:
        messages.error(request, str(exc))
        return HttpResponse(str(exc), status=403)
    except services.ServingError as exc:
        messages.error(request, f"{exc.field}: {exc.reason}")
    return redirect("deployment-detail", deployment_id=deployment.pk)


async def deployment_try(request, deployment_id: int):
    """The try-it box: one chat request streamed back as SSE, for the signed-in user."""
    if request.method != "POST":
        return ApiError(405, "use POST", code="method_not_allowed").response()
    user = await request.auser()
    try:
        # Access first: an outsider gets 404 whatever the body says.
        caller, target = await sync_to_async(access.admit_session)(user, deployment_id)
        body = parse_body(request.body)
        body = {**body, "model": target.served_name, "stream": True, "stream_options": {"include_usage": True}}
        spec = parse_request(body, "chat", settings.SERVING_DEFAULT_MAX_TOKENS)
    except ApiError as exc:
        return exc.response()
    return await serve("chat", body, spec, caller, target)


# ---- keys and usage ----------------------------------------------------------------------------

def keys(request):
    staff = request.user.is_staff
    form = KeyForm(request.POST or None, staff=staff)
    new_key = None
    if request.method == "POST" and form.is_valid():
        key, new_key = ApiKey.issue(request.user, **form.cleaned_data)
        messages.success(request, gettext("Key “%(name)s” created. Copy it now: it is not shown again.") % {"name": key.name})
        form = KeyForm(staff=staff)
    context = {"form": form, "keys": ApiKey.objects.filter(user=request.user), "new_key": new_key,
               "base_url": request.build_absolute_uri("/v1"), "limits_by_staff": not staff}
    return render(request, "serving/keys.html", context)


@require_POST
def key_revoke(request, key_id: int):
    key = get_object_or_404(ApiKey, pk=key_id, user=request.user)
    key.revoke()
    messages.info(request, gettext("Key “%(name)s” revoked: requests with it are refused from now on.") % {"name": key.name})
    return redirect("serving-keys")


def usage(request):
    rows = (UsageDay.objects.filter(key__user=request.user).select_related("key", "deployment__owner")
            .order_by("-date", "key__name", "deployment__name"))[:1000]
    series: dict[str, dict[str, int]] = {}
    for row in rows:
        label = f"{row.key.name} → {row.deployment.served_name}"
        series.setdefault(label, {})[row.date.isoformat()] = row.total_tokens
    chart = [{"type": "bar", "name": label, "x": sorted(points), "y": [points[d] for d in sorted(points)]}
             for label, points in series.items()]
    totals = UsageDay.objects.filter(key__user=request.user).aggregate(
        requests=Sum("requests"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    return render(request, "serving/usage.html", {"rows": rows, "chart": chart, "totals": totals})


# ---- Prometheus ----------------------------------------------------------------------------

def prometheus(request):
    """Staff sessions, or `Authorization: Bearer $PUYU_METRICS_TOKEN` when that is set."""
    token = access.bearer(request)
    allowed = (request.user.is_authenticated and request.user.is_staff) or (
        settings.METRICS_TOKEN and token and hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode()))  # bytes: a non-ASCII str token raises TypeError
    if not allowed:
        if request.user.is_authenticated:
            return HttpResponse("metrics are for staff or the PUYU_METRICS_TOKEN bearer\n", status=403, content_type="text/plain")
        response = HttpResponse("send Authorization: Bearer <PUYU_METRICS_TOKEN> or sign in as staff\n", status=401,
                                content_type="text/plain")
        response["WWW-Authenticate"] = "Bearer"
        return response
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)

