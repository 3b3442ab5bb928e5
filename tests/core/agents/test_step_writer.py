"""The agent turn's step writer: writes leave the loop's thread, in order, batched while a write runs."""
import threading

import pytest

from workers.core.agents.step_writer import StepWriter


class BatchingReporter:
    """Records each batch; its first write waits until the test lets it go."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], tuple | None]] = []
        self.writing = threading.Event()
        self.go_on = threading.Event()

    def log_batch(self, messages, progress=None):
        if not self.batches:
            self.writing.set()
            assert self.go_on.wait(10)
        self.batches.append((list(messages), progress))


def test_what_queues_while_a_write_runs_goes_out_as_one_batch_in_order_with_the_newest_progress():
    reporter = BatchingReporter()
    writer = StepWriter(reporter)
    writer.log("model 1")
    assert reporter.writing.wait(10)
    writer.log("tool 1")
    writer.progress(0.25, "turn 1")
    writer.log("model 2")
    writer.progress(0.5, "turn 2")
    reporter.go_on.set()
    writer.close()
    assert reporter.batches == [(["model 1"], None), (["tool 1", "model 2"], (0.5, "turn 2"))]


def test_a_reporter_without_batches_gets_each_line_then_the_progress():
    calls = []

    class Plain:
        def log(self, message, level="info"):
            calls.append(("log", message))

        def progress(self, fraction, message=""):
            calls.append(("progress", fraction))

    writer = StepWriter(Plain())
    writer.log("a")
    writer.progress(1.0, "done")
    writer.close()
    assert calls[-1] == ("progress", 1.0) and [c for c in calls if c[0] == "log"] == [("log", "a")]


def test_a_failed_write_is_raised_in_the_loops_thread_and_nothing_after_it_is_written():
    written = []

    class Broken:
        def log_batch(self, messages, progress=None):
            written.extend(messages)
            raise RuntimeError("the log table is gone")

    writer = StepWriter(Broken())
    writer.log("first")
    with pytest.raises(RuntimeError, match="the log table is gone"):
        writer.close()
    assert written == ["first"]
