"""The wire protocol between the web side (apps/serving) and replicas (workers/core/inference),
carried by Redis. Pure Python: the web reaches it through workers.tasks.serving_protocol.

Requests: one Redis stream per deployment, read by the consumer group REPLICA_GROUP, so the
replicas of a deployment share the load. An entry has one field, "request", holding JSON:
    {"id": str, "kind": "chat" | "completion",
     "messages": [...] (chat, OpenAI shape) | "prompt": str (completion),
     "tools": [...] | null, "tool_choice": "auto" | "none" | "required" | {...} | null,
     "max_tokens": int, "temperature": float, "top_p": float, "top_k": int,
     "repetition_penalty": float, "stop": [str], "seed": int | null, "stream": bool,
     "created": unix seconds, "deadline": unix seconds (past it the replica fails the request)}
A replica XACKs and XDELs an entry when the request ends, so XLEN = waiting + running: the web
answers 429 when it reaches the deployment's max queue.

Consumers: a replica reads as consumer "<replica id>#<incarnation>" (consumer_name), a new
incarnation every time its process starts, so entries a dead process held are reclaimed by the
next one (or a sibling), and dead consumers with nothing pending are deleted (XGROUP DELCONSUMER).

Events: one Redis stream per request (EVENT_TTL_SECONDS after its last event), field "event":
    {"type": "start", "replica": str, "consumer": str, "prompt_tokens": int}
    {"type": "delta", "text": str, "tokens": int}          coalesced (~20-50 ms of tokens)
    {"type": "end", "finish_reason": "stop" | "length" | "tool_calls" | "cancelled",
     "text": str, "tool_calls": [{"id", "type": "function", "function": {"name", "arguments"}}] | null,
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"},
     "timing": {"queue_s", "ttft_s", "engine_ttft_s", "decode_s"}}
    {"type": "error", "status": int (HTTP), "code": str, "message": str,
     "usage": {"prompt_tokens", "completion_tokens", "total_tokens"} (what was made until then)}
Exactly one "end" or "error" closes a request; both carry the tokens made, which the web counts
against the key's quota whether the client is still there or not.

Cancel: the web SETs cancel_key(request_id) (TTL) and PUBLISHes the id on cancel_channel; the
replica stops the request and sends "end" with finish_reason "cancelled".

Replicas: each keeps the hash replica_key(...) alive (EXPIRE REPLICA_TTL_SECONDS, renewed every
heartbeat, with its id in the set replica_index(...)) with fields state ("loading" | "ready" | "draining"), model, version, pid, started,
heartbeat, consumer (this incarnation), heartbeat_seconds, and "metrics" (JSON: running, waiting, ttft_p50_s, tpot_p50_s, tokens_per_s,
kv_cache_used, requests_total, tokens_total). A replica whose hash expired is dead: another
replica XCLAIMs its pending requests; one that had not streamed yet is run again, one that had
streamed part of its answer ends with an "error" (status 502, code "replica_lost"). The web does
not wait for that: a client whose replica missed its heartbeats (the hash's remaining TTL shows
how long ago it last beat, on the Redis clock) or whose hash names another incarnation gets the
same 502 at once (apps/serving/gateway.py).
"""
from __future__ import annotations

import json

REPLICA_GROUP = "replicas"
EVENT_TTL_SECONDS = 300
REPLICA_TTL_SECONDS = 10
REPLICA_INDEX_TTL_SECONDS = 86_400  # a deployment's set outlives its replicas by a day at most
CANCEL_TTL_SECONDS = 300


DEAD_AFTER_SECONDS = 5.0  # a replica silent this long (and 2.5 of its beats) is dead


def missed_beats(ttl_ms: int, heartbeat_seconds, dead_after: float = DEAD_AFTER_SECONDS) -> bool:
    """Whether a replica hash whose PTTL is `ttl_ms` missed its beats: every beat renews the TTL
    to REPLICA_TTL_SECONDS, so what has run down is the time since the last one (on the Redis
    clock: no skew between machines). -1 (a hash without TTL) has no age."""
    if ttl_ms < 0:
        return ttl_ms == -2
    since_beat = REPLICA_TTL_SECONDS - ttl_ms / 1000
    try:
        beat = float(heartbeat_seconds or 0)
    except ValueError:
        beat = 0.0
    return since_beat > max(dead_after, 2.5 * beat)


def consumer_name(replica_id: str, incarnation: str) -> str:
    return f"{replica_id}#{incarnation}"


def replica_of_consumer(consumer: str) -> str:
    """The replica id of a consumer name (a name from before incarnations is the id itself)."""
    return consumer.rpartition("#")[0] or consumer


def requests_stream(deployment_id: int) -> str:
    return f"puyu:serve:{int(deployment_id)}:requests"


def cancel_channel(deployment_id: int) -> str:
    return f"puyu:serve:{int(deployment_id)}:cancel"


def replica_key(deployment_id: int, replica_id: str) -> str:
    return f"puyu:serve:{int(deployment_id)}:replica:{replica_id}"


def replica_index(deployment_id: int) -> str:
    """The set of the deployment's replica ids (each replica adds itself at every heartbeat and
    leaves on stop; one killed stays a member until its hash expired and a reader drops it), so
    a client finds them without SCANning the broker's whole keyspace."""
    return f"puyu:serve:{int(deployment_id)}:replicas"


def events_stream(request_id: str) -> str:
    return f"puyu:serve:req:{request_id}:events"


def cancel_key(request_id: str) -> str:
    return f"puyu:serve:req:{request_id}:cancel"


def encode(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def decode(raw: bytes | str) -> dict:
    return json.loads(raw)
