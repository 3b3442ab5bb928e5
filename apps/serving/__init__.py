"""Serving: deployments of registry versions, served by replica jobs (queue "serve"), behind an
OpenAI-compatible API.

- A deployment pins a version or follows an alias (moving the alias rolls the replicas over one
  at a time). States: starting, ready, draining, stopped, failed. services.reconcile keeps the
  replica jobs in line (beat task `serving.reconcile`); failed replicas restart up to max_restarts.
- The OpenAI `model` id is "<owner username>/<deployment name>"; a key's own deployments also
  answer to the bare name. Keys (`sk-puyu-…`, SHA-256 at rest) are per user and reach every
  deployment the user may see (own and teams'), with a per-minute request limit and a daily token
  quota (429 + Retry-After). Endpoints: GET /v1/models, POST /v1/chat/completions,
  POST /v1/completions; errors in OpenAI's format. The header X-Puyu-Replica names the replica.
- Web ↔ replica traffic is Redis only, per workers/core/inference/protocol.py (imported through
  workers.tasks.serving_protocol).
- Metrics: live from the replica hashes (deployment page, /deployments/<id>/metrics/), history
  from replica job metrics, Prometheus text at /metrics for staff sessions or
  `Authorization: Bearer $PUYU_METRICS_TOKEN`.
- The playground's websocket: ws/deployments/<id>/chat/ (session users who may see it).
"""
