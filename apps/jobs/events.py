"""Push job events to the job's Channels group without blocking the caller.

`async_to_sync(group_send)` per message costs ~10 ms and opens a loop each time; instead every
process keeps one event loop in a daemon thread and hands sends to it (ENVIRONMENT.md pitfall 3).
Pushes are best effort: the database row is the truth, and a websocket that (re)connects is
first sent the state from the database.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import Future

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        # A forked child inherits the variable but not the thread: start a new loop there.
        if _loop is None or _loop_pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            threading.Thread(target=_loop.run_forever, name="job-events", daemon=True).start()
        return _loop


def group_name(job_id: int) -> str:
    return f"job-{job_id}"


def publish(job_id: int, event: str, data: dict) -> Future | None:
    layer = get_channel_layer()
    if layer is None:
        return None
    message = {"type": "job.event", "event": event, "data": data}
    try:
        future = asyncio.run_coroutine_threadsafe(layer.group_send(group_name(job_id), message), _event_loop())
    except RuntimeError:  # interpreter shutting down
        return None
    future.add_done_callback(_log_failure)
    return future


def _log_failure(future: Future) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("job event push failed (clients recover from the database): %s", exc)


def flush(timeout: float = 2.0) -> None:
    """Wait until sends queued so far have been handed to the channel layer."""
    if _loop is None or _loop_pid != os.getpid():
        return
    done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), _loop)
    try:
        done.result(timeout)
    except Exception:
        pass
