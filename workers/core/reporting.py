"""How a core job talks to whoever runs it: progress, logs, metrics, and cooperative cancel.

The Celery adapter implements Reporter with database rows and websocket pushes; the command
line uses ConsoleReporter. A job calls `reporter.check_cancelled()` once per step, so a cancel
takes effect within one step of being requested.

Suspend is the gentler stop of a warm shutdown (the worker got SIGTERM): a job that can resume
(training) checkpoints at the end of its current step and raises JobSuspended; its runner hands
the job back to the queue without counting a failed attempt. `should_suspend` is optional in the
protocol: jobs that cannot resume never ask, and simply finish before the worker exits.
"""
from __future__ import annotations

import sys
import time
from typing import Protocol, runtime_checkable


class JobCancelled(Exception):
    """Raised inside a job when its runner asked it to stop."""


class JobSuspended(Exception):
    """Raised by a resumable job that checkpointed and stopped because its runner is shutting
    down; the next attempt resumes from that checkpoint."""


def suspend_requested(reporter) -> bool:
    """Whether the runner asks a resumable job to checkpoint and stop (warm shutdown)."""
    ask = getattr(reporter, "should_suspend", None)
    return bool(ask and ask())


def announce_ready(reporter) -> None:
    """Tell the runner a long-lived job (a model replica) is ready to serve, where it listens:
    the studio then records the deployment ready at once instead of at its next reconcile."""
    announce = getattr(reporter, "ready", None)
    if announce:
        announce()


def log_batch(reporter, messages: list[str], progress: tuple[float, str] | None = None) -> None:
    """Log `messages` (info) and, when given, set (fraction, message) as progress: in one write
    where the reporter offers `log_batch` (the studio's: one transaction), else call by call."""
    batch = getattr(reporter, "log_batch", None)
    if batch is not None:
        batch(messages, progress=progress)
        return
    for message in messages:
        reporter.log(message)
    if progress is not None:
        reporter.progress(*progress)


@runtime_checkable
class Reporter(Protocol):
    def progress(self, fraction: float, message: str = "") -> None: ...

    def log(self, message: str, level: str = "info") -> None: ...

    def metric(self, name: str, step: int, value: float) -> None: ...

    def should_stop(self) -> bool: ...


def check_cancelled(reporter: Reporter) -> None:
    if reporter.should_stop():
        raise JobCancelled("stopped on request")


class ConsoleReporter:
    """Prints to a stream; used by `python -m workers.core` and in core tests."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.fractions: list[float] = []
        self.metrics: list[tuple[str, int, float]] = []
        self.lines: list[str] = []
        self.stop_requested = False
        self.suspend_requested = False
        self._start = time.monotonic()

    def progress(self, fraction: float, message: str = "") -> None:
        self.fractions.append(fraction)
        print(f"[{time.monotonic() - self._start:7.2f}s] {fraction:6.1%} {message}", file=self.stream)

    def log(self, message: str, level: str = "info") -> None:
        self.lines.append(message)
        print(f"{level.upper():7} {message}", file=self.stream)

    def metric(self, name: str, step: int, value: float) -> None:
        self.metrics.append((name, step, value))

    def should_stop(self) -> bool:
        return self.stop_requested

    def should_suspend(self) -> bool:
        return self.suspend_requested
