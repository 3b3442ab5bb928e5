"""One thread per process runs the decode steps of every plain runner (every CPU engine) in it.

Why one: each thread that runs parallel torch work keeps its own OpenMP pool while it lives, and
libgomp throttles the workers of every pool (they sleep between parallel regions instead of
spinning, and wake late) once the process's OpenMP threads outnumber the cores. A serve worker
hosts several replicas (PUYU_SERVE_SLOTS); with a thread per engine, a second engine in the
process, even idle, made the first one's batch-1 decoding 20% slower (~30M Llama, 2 cores:
92.6 -> 73.0 tok/s; bench in the commit). Here the engines take turns on one thread, one
iteration (a prefill chunk, a decode step) each, so the process keeps one pool, and two busy
engines share the cores step by step instead of fighting over them.

The thread starts with its first runner and ends when the last one leaves, so a process whose
engines are all closed holds no pool either (bench/serving.py measures `generate` beside it).
"""
from __future__ import annotations

import threading
from typing import Protocol


class Runner(Protocol):
    fatal_error: BaseException | None

    def wants_turn(self) -> bool: ...

    def take_turn(self) -> bool:
        """One iteration; False once the runner has stopped (it then leaves the thread)."""


class ComputeThread:
    _lock = threading.Lock()
    _current: ComputeThread | None = None

    def __init__(self) -> None:
        self.runners: list[Runner] = []
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="engine-compute", daemon=True)

    @classmethod
    def attach(cls, runner: Runner) -> ComputeThread:
        """Add `runner` to the process's compute thread, starting one when none runs."""
        with cls._lock:
            current = cls._current
            if current is None:
                current = cls._current = ComputeThread()
                current.runners.append(runner)
                current.thread.start()
            else:
                with current.wake:
                    current.runners.append(runner)
                    current.wake.notify()
            return current

    def notify(self) -> None:
        """A runner has work (a request, a cancel, a stop)."""
        with self.wake:
            self.wake.notify()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        import torch

        try:
            with torch.inference_mode():
                while True:
                    with self.wake:
                        while self.runners and not any(runner.wants_turn() for runner in self.runners):
                            self.wake.wait()
                        runners = list(self.runners)
                    for runner in runners:
                        try:
                            alive = not runner.wants_turn() or runner.take_turn()
                        except Exception as error:  # this runner broke (a failed forward is handled inside
                            runner.fatal_error = error  # take_turn): its engine's watchdog rebuilds it; the rest go on
                            alive = False
                        if not alive:
                            with self.wake:
                                self.runners.remove(runner)
                    if self._leave_when_alone():
                        return
        except BaseException as error:  # the thread itself broke: each engine's watchdog sees it
            with ComputeThread._lock:
                if ComputeThread._current is self:
                    ComputeThread._current = None
                for runner in self.runners:
                    runner.fatal_error = error
            raise

    def _leave_when_alone(self) -> bool:
        """End the thread once no runner is left (checked under the attach lock, so a runner
        attaching now gets a new thread rather than this ending one)."""
        with ComputeThread._lock, self.wake:
            if self.runners:
                return False
            if ComputeThread._current is self:
                ComputeThread._current = None
            return True
