"""Every CPU engine of a process decodes on one compute thread (compute_thread.py), so the process
keeps one OpenMP pool however many replicas a serve worker hosts."""
from __future__ import annotations

import threading
import time

from tests.core.inference.conftest import make_engine
from tests.core.inference.test_engine import PROMPTS, greedy, reference_tokens
from workers.core.inference.engine import EngineRequest


def compute_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "engine-compute" and t.is_alive()]


def wait_until(condition, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_two_engines_decode_on_one_thread_at_once_and_equal_generate(serve_model_dir, reference_model):
    wait_until(lambda: not compute_threads(), what="no engine to run (is an engine of another test left open?)")
    first, second = make_engine(serve_model_dir), make_engine(serve_model_dir)
    try:
        tokenizer = reference_model[1]
        ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
        # both engines busy at once: their steps take turns on the one thread
        handles = [(engine, i, engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(20))))
                   for i in ids for engine in (first, second)]
        assert len(compute_threads()) == 1
        for _engine, prompt_ids, handle in handles:
            assert handle.result(60)["type"] == "end"
            assert handle.token_ids == reference_tokens(reference_model, prompt_ids, 20)
        assert first.runner.compute is second.runner.compute
    finally:
        first.close()
        second.close()
    # the last engine gone, the thread (and its OpenMP pool) ends too
    wait_until(lambda: not compute_threads(), what="the compute thread to end (is an engine of another test left open?)")


def test_an_engine_whose_runner_breaks_is_rebuilt_while_the_other_keeps_serving(serve_model_dir, reference_model):
    broken, healthy = make_engine(serve_model_dir), make_engine(serve_model_dir)
    try:
        ids = reference_model[1](PROMPTS[1])["input_ids"]
        expected = reference_tokens(reference_model, ids, 12)
        old_runner = broken.runner

        def breaking_drain():
            raise RuntimeError("a defect outside the forward")

        old_runner._drain = breaking_drain
        failed = broken.submit(EngineRequest(prompt_ids=ids, sampling=greedy(12)))
        assert failed.result(30)["type"] == "error"  # failed clearly by the watchdog's rebuild
        wait_until(lambda: (runner := broken.runner) not in (None, old_runner) and runner.is_running(),
                   what="the rebuilt runner")
        assert isinstance(old_runner.fatal_error, RuntimeError)
        for engine in (healthy, broken):  # the other engine never stopped; the rebuilt one serves again
            handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=greedy(12)))
            assert handle.result(30)["type"] == "end" and handle.token_ids == expected
        assert len(compute_threads()) == 1
    finally:
        broken.close()
        healthy.close()


def test_stopping_a_runner_that_broke_or_lost_its_thread_returns_at_once():
    import queue
    from types import SimpleNamespace

    from workers.core.inference.plain import PlainRunner

    for broken, alive in ((RuntimeError("broke"), True), (None, False)):
        runner = PlainRunner.__new__(PlainRunner)  # only what stop() touches
        runner.inbox, runner.stopped, runner.fatal_error = queue.SimpleQueue(), threading.Event(), broken
        runner.compute = SimpleNamespace(notify=lambda: None, is_alive=lambda alive=alive: alive)
        started = time.monotonic()
        runner.stop(timeout=10)
        assert time.monotonic() - started < 1  # neither ever takes another turn: no 10 s wait
