"""The built-in engine on a tiny Llama: greedy parity with generate, stop strings, cancellation,
seeds, KV budget refusals and recovery from a dead manager."""
from __future__ import annotations

import pytest

from tests.core.inference.conftest import make_engine
from workers.core.inference.engine import EngineRequest
from workers.core.inference.errors import InvalidRequest
from workers.core.inference.sampling import SamplingParams

PROMPTS = [
    "ROMEO:",
    "To be, or not to be",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "O",
    "What light through yonder window breaks? It is the east,",
    "My lord, I have",
    "KING HENRY:\nOnce more unto the breach, dear friends, once more; or close the wall up",
    "Good night, good night! Parting is such sweet sorrow",
]


def greedy(max_tokens=24, **extra):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)


def reference_tokens(reference_model, prompt_ids, max_new_tokens):
    import torch

    model, tokenizer = reference_model
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, len(prompt_ids):].tolist()


def test_greedy_tokens_equal_generate_for_eight_concurrent_prompts(engine, reference_model):
    tokenizer = reference_model[1]
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) >= 6
    handles = [engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(24))) for i in ids]
    finals = [h.result(timeout=60) for h in handles]
    for prompt_ids, handle, final in zip(ids, handles, finals):
        assert final["type"] == "end"
        expected = reference_tokens(reference_model, prompt_ids, 24)
        assert handle.token_ids == expected
        assert final["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(expected),
                                  "total_tokens": len(prompt_ids) + len(expected)}


def test_streamed_deltas_add_up_to_the_final_text(engine):
    handle = engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(20)))
    events = list(handle.events(timeout=60))
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) > 1
    assert "".join(e["text"] for e in deltas) == events[-1]["text"]
    assert sum(e["tokens"] for e in deltas) == events[-1]["usage"]["completion_tokens"]
    assert events[-1]["finish_reason"] == "length"


def test_a_stop_string_ends_the_output_before_it_with_finish_reason_stop(engine):
    full = engine.submit(EngineRequest(prompt="To be, or not to be", sampling=greedy(40))).result(60)["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    final = engine.submit(EngineRequest(prompt="To be, or not to be", sampling=greedy(40, stop=[stop]))).result(60)
    assert final["finish_reason"] == "stop"
    assert final["text"] == full[: full.index(stop)]
    assert stop not in final["text"]


def test_cancelling_a_request_ends_it_as_cancelled_and_frees_its_slot(serve_model_dir):
    engine = make_engine(serve_model_dir, max_concurrent=1)
    try:
        long = engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(200)))
        waiting = engine.submit(EngineRequest(prompt="JULIET:", sampling=greedy(5)))
        first = next(long.events(timeout=30))
        assert first["type"] == "delta"
        long.cancel()
        final = long.result(timeout=30)
        assert final["type"] == "end" and final["finish_reason"] == "cancelled"
        assert final["usage"]["completion_tokens"] < 200
        assert waiting.result(timeout=60)["finish_reason"] == "length"
        assert engine.stats()["in_flight"] == 0
    finally:
        engine.close()


def test_the_same_seed_reproduces_a_sample_and_another_seed_differs(engine):
    def sample(seed):
        sampling = SamplingParams(max_tokens=16, temperature=1.0, seed=seed)
        return engine.submit(EngineRequest(prompt="ROMEO:", sampling=sampling)).result(60)["text"]

    first, again, other = sample(7), sample(7), sample(8)
    assert first == again
    assert first != other


def test_sampled_requests_without_a_seed_run_in_the_batch_with_their_own_settings(engine, reference_model):
    ids = reference_model[1]("O")["input_ids"]
    expected = reference_tokens(reference_model, ids, 10)
    hot = SamplingParams(max_tokens=10, temperature=1.5)
    # submitted together, so they share batches: each must keep its own settings
    sampled = [engine.submit(EngineRequest(prompt_ids=ids, sampling=hot)) for _ in range(4)]
    greedy_one = engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=10, temperature=0.0)))
    top_1 = engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=10, temperature=1.5, top_k=1)))
    for handle in (*sampled, greedy_one, top_1):
        assert handle.result(60)["type"] == "end"
    assert greedy_one.token_ids == expected  # hot neighbours in the batch did not make it sample
    assert top_1.token_ids == expected  # its own top_k=1 was applied: sampling from one token is greedy
    assert len({tuple(h.token_ids) for h in sampled}) > 1  # unseeded samples differ from each other
    assert any(h.token_ids != expected for h in sampled)  # and temperature 1.5 really sampled


def test_temperature_zero_is_greedy(engine, reference_model):
    ids = reference_model[1]("O")["input_ids"]
    handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=10, temperature=0.0)))
    handle.result(60)
    assert handle.token_ids == reference_tokens(reference_model, ids, 10)


def test_a_request_larger_than_the_kv_cache_is_refused_and_the_engine_keeps_serving(serve_model_dir):
    engine = make_engine(serve_model_dir, num_blocks=4)  # 64 tokens of KV, less than the context
    try:
        assert engine.capacity_tokens == 64 < engine.context_length
        running = engine.submit(EngineRequest(prompt_ids=[5] * 10, sampling=greedy(40)))
        with pytest.raises(InvalidRequest, match="KV cache budget of 64 tokens"):
            engine.submit(EngineRequest(prompt_ids=[5] * 70))
        with pytest.raises(InvalidRequest, match="lower max_tokens to at most 24"):
            engine.submit(EngineRequest(prompt_ids=[5] * 40, sampling=greedy(100)))
        assert running.result(60)["usage"]["completion_tokens"] == 40
        implicit = EngineRequest(prompt_ids=[5] * 40, sampling=greedy(100), max_tokens_explicit=False)
        assert engine.submit(implicit).result(60)["usage"]["completion_tokens"] == 24
    finally:
        engine.close()


def test_a_prompt_past_the_context_is_refused_with_the_context_length(engine):
    with pytest.raises(InvalidRequest, match="context"):
        engine.submit(EngineRequest(prompt_ids=[5] * (engine.context_length + 1)))


def test_a_fatal_manager_error_fails_in_flight_requests_and_the_engine_recovers(serve_model_dir):
    engine = make_engine(serve_model_dir)
    try:
        forward = engine.model.forward
        calls = {"n": 0}

        def failing_forward(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 5:
                raise RuntimeError("injected device failure")
            return forward(*args, **kwargs)

        engine.model.forward = failing_forward
        handles = [engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(30))) for _ in range(3)]
        finals = [h.result(timeout=60) for h in handles]
        assert all(f["type"] == "error" and f["status"] == 500 for f in finals)
        assert all("injected device failure" in f["message"] for f in finals)
        after = engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(5))).result(timeout=60)
        assert after["type"] == "end" and after["usage"]["completion_tokens"] == 5
        assert engine.stats()["rebuilds"] >= 1
    finally:
        engine.close()


def test_stats_report_capacity_and_throughput(engine):
    engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(8))).result(60)
    stats = engine.stats()
    assert stats["kv_capacity_tokens"] == 64 * 16
    assert stats["tokens_per_s"] > 0
    assert 0.0 <= stats["kv_cache_used"] <= 1.0
