"""Deployment metrics: live ones from the replicas' Redis hashes, history from the replica jobs'
metric rows, and the Prometheus exposition (a custom collector read at scrape time)."""
from __future__ import annotations

import json
import statistics

import redis
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from apps.jobs.models import JobMetric
from apps.serving import services, slots
from apps.serving.models import ACTIVE_STATES, Deployment, Replica, UsageDay
from workers.tasks import serving_protocol as protocol

LIVE_FIELDS = ("running", "waiting", "ttft_p50_s", "tpot_p50_s", "tokens_per_s", "kv_cache_used", "requests_total", "tokens_total")
# Names the replica job records with reporter.metric (history charts).
HISTORY_NAMES = ("running", "waiting", "ttft_p50_ms", "tpot_ms", "tokens_per_s", "kv_cache_used")


def _parse(raw) -> dict:
    try:
        value = json.loads(raw or "{}")
    except (TypeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _mean(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(values) if values else None


PAGE_REPLICAS = 20  # the replicas the deployment page lists (the newest), stopped ones included
ENDED_STATES = ("stopped", "failed")


def _queue_counts(deployment_id: int) -> tuple[int | None, int | None]:
    """(entries in the request stream, entries no replica has claimed yet), None when Redis is
    down. Replicas ack and delete an entry only once its request ends, so the stream's length
    counts running and waiting requests too; the group's pending count is what replicas hold."""
    stream = protocol.requests_stream(deployment_id)
    try:
        with services.redis_client().pipeline(transaction=False) as pipe:
            pipe.xlen(stream)
            pipe.xpending(stream, protocol.REPLICA_GROUP)
            length, pending = pipe.execute(raise_on_error=False)
    except redis.RedisError:
        return None, None
    if isinstance(length, Exception):
        return None, None
    held = 0 if isinstance(pending, Exception) else int(pending.get("pending") or 0)  # no group yet: none held
    return length, max(0, length - held)


def live(deployment: Deployment, viewer=None) -> dict:
    """The deployment's live state; with a `viewer` (pages, API), also why queued replicas wait
    (`waiting_reason`, naming only what the viewer may see).

    `replicas` lists the active replicas and the newest stopped ones (the page's table), each with
    its state derived now from its job and its Redis hash, as `services.reconcile` derives it: a
    stop shows as draining, then stopped, at the next poll, not when the beat next reconciles."""
    active = list(deployment.replica_set.select_related("job", "version").exclude(state__in=ENDED_STATES))
    recent = list(deployment.replica_set.select_related("job", "version").order_by("-created_at", "-id")[:PAGE_REPLICAS])
    replicas = sorted({r.pk: r for r in (*active, *recent)}.values(), key=lambda r: (r.created_at, r.pk), reverse=True)
    hashes = services.replica_hashes(deployment, [r.replica_id for r in active])
    reasons = slots.replica_reasons(active, viewer) if viewer is not None else {}
    rows = []
    for replica in replicas:
        live_hash = hashes.get(replica.replica_id) or {}
        state = replica.state if replica.state in ENDED_STATES else services.live_state(replica, live_hash)
        metrics = _parse(live_hash.get("metrics")) if state not in ENDED_STATES else {}
        rows.append({"replica_id": replica.replica_id, "state": state, "state_display": str(Replica.STATES.get(state, state)),
                     "live_state": live_hash.get("state"),
                     "job_id": replica.job_id, "job_status": replica.job.status,
                     "job_status_display": str(replica.job.get_status_display()),
                     "job_url": reverse("job-detail", args=[replica.job_id]), "version": str(replica.version),
                     "waiting_reason": reasons.get(replica.replica_id, "") if state not in ENDED_STATES else "",
                     "metrics": {k: metrics.get(k) for k in LIVE_FIELDS}})
    queue_length, queued = _queue_counts(deployment.pk)
    ms = [r["metrics"] for r in rows if r["state"] not in ENDED_STATES]
    totals = {
        "running": sum(m.get("running") or 0 for m in ms), "waiting": sum(m.get("waiting") or 0 for m in ms),
        "tokens_per_s": sum(m.get("tokens_per_s") or 0 for m in ms),
        "ttft_p50_s": _mean(m.get("ttft_p50_s") for m in ms), "tpot_p50_s": _mean(m.get("tpot_p50_s") for m in ms),
        "kv_cache_used": _mean(m.get("kv_cache_used") for m in ms),
        # queue_length: the whole stream (Prometheus' puyu_serving_queue_length); queued: not yet
        # claimed by a replica (the page's chart, beside running and waiting in a replica).
        "queue_length": queue_length, "queued": queued,
    }
    return {"t": timezone.now().isoformat(), "state": deployment.state,
            "state_display": str(deployment.get_state_display()).lower(), "state_reason": deployment.state_reason,
            "waiting_reason": next(iter(reasons.values()), ""), "restarts": deployment.restarts, "replicas": rows,
            "totals": totals}


def history(deployment: Deployment, limit: int = 2000) -> dict[str, list]:
    """name → [[iso time, value, job id]] from the replica jobs' metric rows (newest `limit`)."""
    points = (JobMetric.objects.filter(job__replica__deployment=deployment, name__in=HISTORY_NAMES)
              .order_by("-created_at").values_list("name", "created_at", "value", "job_id")[:limit])
    series: dict[str, list] = {name: [] for name in HISTORY_NAMES}
    for name, created, value, job_id in reversed(points):
        series[name].append([created.isoformat(), value, job_id])
    return series


class DeploymentCollector:
    """Prometheus collector: gauges per replica from Redis, token counters from usage rows."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        gauges = {
            "running": GaugeMetricFamily("puyu_serving_requests_running", "Requests a replica is decoding", labels=["deployment", "replica"]),
            "waiting": GaugeMetricFamily("puyu_serving_requests_waiting", "Requests claimed by a replica and waiting for a slot", labels=["deployment", "replica"]),
            "ttft_p50_s": GaugeMetricFamily("puyu_serving_ttft_p50_seconds", "Median time to first token", labels=["deployment", "replica"]),
            "tpot_p50_s": GaugeMetricFamily("puyu_serving_tpot_p50_seconds", "Median time per output token", labels=["deployment", "replica"]),
            "tokens_per_s": GaugeMetricFamily("puyu_serving_tokens_per_second", "Generated tokens per second", labels=["deployment", "replica"]),
            "kv_cache_used": GaugeMetricFamily("puyu_serving_kv_cache_used_ratio", "Fraction of the KV cache in use", labels=["deployment", "replica"]),
        }
        ready = GaugeMetricFamily("puyu_serving_replica_ready", "1 when the replica serves requests", labels=["deployment", "replica"])
        queue = GaugeMetricFamily("puyu_serving_queue_length", "Requests in the deployment's stream (waiting + running)", labels=["deployment"])
        for deployment in Deployment.objects.select_related("owner").filter(state__in=ACTIVE_STATES):
            snapshot = live(deployment)
            name = deployment.served_name
            if snapshot["totals"]["queue_length"] is not None:
                queue.add_metric([name], snapshot["totals"]["queue_length"])
            for row in snapshot["replicas"]:
                if row["state"] in ENDED_STATES:
                    continue
                ready.add_metric([name, row["replica_id"]], 1.0 if row["live_state"] == "ready" else 0.0)
                for field, family in gauges.items():
                    value = row["metrics"].get(field)
                    if isinstance(value, (int, float)):
                        family.add_metric([name, row["replica_id"]], float(value))
        yield from gauges.values()
        yield ready
        yield queue
        tokens = CounterMetricFamily("puyu_serving_tokens", "Tokens served through the API", labels=["deployment", "kind"])
        requests = CounterMetricFamily("puyu_serving_api_requests", "Requests answered through the API", labels=["deployment"])
        totals = UsageDay.objects.values("deployment__owner__username", "deployment__name").annotate(
            p=Sum("prompt_tokens"), c=Sum("completion_tokens"), r=Sum("requests"))
        for row in totals:
            name = f"{row['deployment__owner__username']}/{row['deployment__name']}"
            tokens.add_metric([name, "prompt"], row["p"] or 0)
            tokens.add_metric([name, "completion"], row["c"] or 0)
            requests.add_metric([name], row["r"] or 0)
        yield tokens
        yield requests


def exposition() -> tuple[bytes, str]:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
    )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeploymentCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
