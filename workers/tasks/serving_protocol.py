"""The serving wire protocol, re-exported for the web side (apps never import workers.core)."""
from workers.core.inference.protocol import *  # noqa: F401,F403
from workers.core.inference.protocol import (  # noqa: F401
    CANCEL_TTL_SECONDS,
    EVENT_TTL_SECONDS,
    REPLICA_GROUP,
    REPLICA_TTL_SECONDS,
    cancel_channel,
    cancel_key,
    decode,
    encode,
    events_stream,
    replica_key,
    replica_index,
    requests_stream,
)
