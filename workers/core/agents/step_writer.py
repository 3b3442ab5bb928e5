"""The reporter's writes for an agent turn's steps, on one helper thread, so the loop does not
wait on them (under the studio's worker each write is a database transaction and a push).

What queued up while a write ran goes out as one batch (reporting.log_batch: one transaction
under the studio's reporter): a turn's steps often come faster than a write, and a turn's
answer waits for the last of them. Lines keep their order; of the progress updates in a batch
only the newest is written. A failed write stops the writer; the failure is raised from the
next call or from close(), which waits until everything queued is written."""
from __future__ import annotations

import queue
import threading

from workers.core.reporting import log_batch

_CLOSE = object()


class StepWriter:
    def __init__(self, reporter, name: str = "agent-steps") -> None:
        self._reporter = reporter
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def log(self, message: str) -> None:
        self._raise_failure()
        self._queue.put(("log", message))

    def progress(self, fraction: float, message: str = "") -> None:
        self._raise_failure()
        self._queue.put(("progress", (fraction, message)))

    def close(self, raise_failure: bool = True) -> None:
        self._queue.put(_CLOSE)
        self._thread.join()
        if raise_failure:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            items = [item for item in batch if item is not _CLOSE]
            lines = [value for kind, value in items if kind == "log"]
            updates = [value for kind, value in items if kind == "progress"]
            if self._failure is None and (lines or updates):
                try:
                    log_batch(self._reporter, lines, updates[-1] if updates else None)
                except BaseException as exc:  # noqa: BLE001 - raised in the loop's thread
                    self._failure = exc
            if len(items) < len(batch):  # close() was called: everything before it is written
                return
