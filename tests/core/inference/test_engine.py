"""The built-in engine on a tiny Llama, on both runners (the plain runner, the CPU default, and
transformers' continuous batching manager, the CUDA default) and, on the plain runner, on both of
its paths: a request alone decodes on the solo path (its own cache of batch 1, as `generate`), a request
that arrives while another runs joins the padded batch. Greedy parity with generate, stop
strings, cancellation, max_tokens, usage, stats, seeds, KV budget refusals and recovery from a
failed forward."""
from __future__ import annotations

import time
from types import SimpleNamespace

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
RUNNERS = ["plain", "manager"]


def greedy(max_tokens=24, **extra):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)


def reference_tokens(reference_model, prompt_ids, max_new_tokens, **generate_kwargs):
    import torch

    model, tokenizer = reference_model
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, **generate_kwargs,
        )
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module", params=RUNNERS)
def engine(request, serve_model_dir):
    engine = make_engine(serve_model_dir, runner=request.param)
    yield engine
    engine.close()


@pytest.fixture(params=["solo", "batch"])
def path(request, engine):
    """Where the request under test decodes: alone (the plain runner's solo path), or beside a
    long companion that is already running, so that it joins the batch. The manager has one
    path; it runs both cases as they are."""
    companion = None
    if request.param == "batch":
        companion = engine.submit(EngineRequest(prompt="JULIET:", sampling=greedy(600)))
        assert next(companion.events(timeout=30))["type"] == "delta"
    yield request.param
    if companion is not None:
        assert not companion.done.is_set(), "the companion ended before the test did: the test ran alone"
        companion.cancel()
        assert companion.result(30)["finish_reason"] == "cancelled"


def assert_path(engine, handle, path):
    assert handle.path == (path if engine.runner is not None else "paged")


def record_forwards(engine):
    """Wrap the engine model's forward, and the solo path's lean decode step (decode_step.py: one
    token of one row), to record (cache class, batch size, tokens per row) of every call."""
    calls = []
    forward = engine.model.forward

    def recording_forward(*args, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        calls.append((type(cache).__name__, *kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    engine.model.forward = recording_forward
    runner = getattr(engine, "runner", None)
    step = getattr(runner, "decode_step", None)
    if step is not None:
        def recording_step(token, cache, position):
            calls.append((type(cache).__name__, 1, 1))
            return step(token, cache, position)

        runner.decode_step = recording_step
    return calls


@pytest.fixture
def recorded_engine(serve_model_dir):
    """Builds a fresh engine (make_engine's overrides) whose forwards are recorded: returns
    (engine, calls), closed at the end of the test."""
    engines = []

    def build(**overrides):
        engines.append(make_engine(serve_model_dir, **overrides))
        return engines[-1], record_forwards(engines[-1])

    yield build
    for engine in engines:
        engine.close()


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the engine"
        time.sleep(0.01)


# ------------------------------------------------------------------------------ parity and paths


def test_greedy_tokens_equal_generate_for_eight_concurrent_prompts(engine, reference_model):
    tokenizer = reference_model[1]
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    assert len({len(i) for i in ids}) >= 6
    # different lengths: rows leave the batch at different steps and the others move into the holes
    budgets = [12 + 4 * n for n in range(len(ids))]
    handles = [engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(n))) for i, n in zip(ids, budgets)]
    finals = [h.result(timeout=60) for h in handles]
    for prompt_ids, budget, handle, final in zip(ids, budgets, handles, finals):
        assert final["type"] == "end"
        expected = reference_tokens(reference_model, prompt_ids, budget)
        assert handle.token_ids == expected
        assert final["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(expected),
                                  "total_tokens": len(prompt_ids) + len(expected)}
    if engine.runner is not None:
        assert {h.path for h in handles} == {"batch"}  # sent together: none of them ran alone


def test_requests_that_arrive_together_are_prefilled_in_one_packed_forward(recorded_engine, reference_model):
    engine, calls = recorded_engine()
    ids = [reference_model[1](p)["input_ids"] for p in PROMPTS[:4]]
    handles = [engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(12))) for i in ids]
    for prompt_ids, handle in zip(ids, handles):
        assert handle.result(60)["type"] == "end"
        assert handle.token_ids == reference_tokens(reference_model, prompt_ids, 12)
    assert calls[0] == ("SequenceCache", 1, sum(map(len, ids)))  # four prompts, one forward
    assert calls[1] == ("SlotCache", 4, 1)  # then one decode step for all four


def test_a_burst_of_requests_allocates_the_padded_cache_once_though_it_joins_the_batch_in_waves(recorded_engine, reference_model):
    engine, calls = recorded_engine(max_batch_tokens=24)  # a small prefill budget: the prompts join over several steps
    slots, sizes = engine.runner.slots, []
    ensure = slots.ensure

    def recording_ensure(*args, **kwargs):
        ensure(*args, **kwargs)
        sizes.append((slots.rows_allocated, slots.length_allocated))

    slots.ensure = recording_ensure
    ids = [reference_model[1](p)["input_ids"] for p in PROMPTS]
    handles = [engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(8))) for i in ids]
    for prompt_ids, handle in zip(ids, handles):
        assert handle.result(60)["type"] == "end"
        assert handle.token_ids == reference_tokens(reference_model, prompt_ids, 8)
    assert sum(1 for kind, _, tokens in calls if kind == "SequenceCache" and tokens > 1) >= 3  # prefilled in waves
    # one allocation, made at the first join for the whole admitted batch and its longest prompt
    assert len(set(sizes)) == 1
    rows, length = sizes[0]
    assert rows == len(PROMPTS) and length >= max(map(len, ids)) + 8


def test_the_padded_cache_grows_ahead_within_the_batchs_reservation():
    import torch

    from workers.core.inference.plain import LENGTH_CHUNK, cache_classes

    sequence_cache, slot_cache = cache_classes()
    prefilled = sequence_cache(2, 8)
    for layer in prefilled.layers:
        layer.update(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    slots = slot_cache(2)
    slots.ensure(1, 100, max_rows=32, max_tokens=100_000, like=prefilled, expect_rows=3, expect_length=1000)
    assert (slots.rows_allocated, slots.length_allocated) == (4, 200 + (-200) % LENGTH_CHUNK)  # 2x ahead
    slots.put(0, prefilled)
    slots.ensure(2, 150, max_rows=32, max_tokens=100_000, expect_length=1000)
    assert (slots.rows_allocated, slots.length_allocated) == (4, 256)  # it had room: no growth
    slots.ensure(2, 257, max_rows=32, max_tokens=100_000, expect_length=300)
    assert slots.length_allocated == 320  # 2x would pass the longest reservation: up to it only
    assert torch.equal(slots.layers[1].keys[0, :, :5], prefilled.layers[1].keys[0])  # kept across growths
    assert slots.layers[1].values[1:].abs().sum() == 0  # new room is zeros (masked slots must not hold NaN)


def test_a_single_request_decodes_on_the_plain_cache_path_exactly_as_generate(recorded_engine, reference_model):
    engine, calls = recorded_engine()
    ids = reference_model[1]("What light through yonder window breaks?")["input_ids"]
    handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=greedy(40)))
    final = handle.result(60)
    assert engine.manager is None and handle.path == "solo"
    assert handle.token_ids == reference_tokens(reference_model, ids, 40)
    # one prefill and 39 decode steps, on its own cache of batch 1: no paged cache, no padded batch
    assert calls == [("SequenceCache", 1, len(ids))] + [("SequenceCache", 1, 1)] * 39
    assert final["usage"]["completion_tokens"] == 40


def test_a_running_request_keeps_its_path_while_later_requests_join_the_batch(recorded_engine, reference_model):
    engine, calls = recorded_engine()
    tokenizer = reference_model[1]
    first_ids = tokenizer(PROMPTS[0])["input_ids"]
    first = engine.submit(EngineRequest(prompt_ids=first_ids, sampling=greedy(120)))
    assert next(first.events(timeout=30))["type"] == "delta"
    later_ids = [tokenizer(p)["input_ids"] for p in PROMPTS[1:]]
    later = [engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(30))) for i in later_ids]
    for handle in (first, *later):
        assert handle.result(60)["type"] == "end"
    assert first.path == "solo" and {h.path for h in later} == {"batch"}
    assert first.token_ids == reference_tokens(reference_model, first_ids, 120)
    for prompt_ids, handle in zip(later_ids, later):
        assert handle.token_ids == reference_tokens(reference_model, prompt_ids, 30)
    # the first request: its prefill, then one step per token, all on its own cache of batch 1
    assert calls.count(("SequenceCache", 1, 1)) == len(first.token_ids) - 1
    # the others: prefilled packed into shared forwards, then decoded together in the padded cache
    prefilled = sum(tokens for kind, size, tokens in calls if kind == "SequenceCache" and tokens > 1)
    assert prefilled == len(first_ids) + sum(map(len, later_ids))
    assert max(size for kind, size, _ in calls if kind == "SlotCache") == len(later)


def test_a_repetition_penalty_matches_generate_with_the_same_penalty(engine, path, reference_model):
    ids = reference_model[1]("To be, or not to be")["input_ids"]  # unpenalised, its output loops after 5 tokens
    handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=greedy(30, repetition_penalty=1.3)))
    assert handle.result(60)["type"] == "end"
    assert handle.token_ids == reference_tokens(reference_model, ids, 30, repetition_penalty=1.3)
    assert handle.token_ids != reference_tokens(reference_model, ids, 30)  # the penalty changed the text
    assert handle.path == (path if engine.runner is not None else "exclusive")


def test_requests_beyond_max_concurrent_wait_and_still_equal_generate(serve_model_dir, reference_model):
    engine = make_engine(serve_model_dir, max_concurrent=3)
    try:
        tokenizer = reference_model[1]
        ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
        handles = [engine.submit(EngineRequest(prompt_ids=i, sampling=greedy(16))) for i in ids]
        assert engine.stats()["in_flight"] == len(PROMPTS)
        for prompt_ids, handle in zip(ids, handles):
            assert handle.result(60)["type"] == "end"
            assert handle.token_ids == reference_tokens(reference_model, prompt_ids, 16)
    finally:
        engine.close()


def test_a_prompt_longer_than_max_batch_tokens_is_prefilled_in_chunks_and_equals_generate(recorded_engine, reference_model):
    engine, calls = recorded_engine(max_batch_tokens=16)
    ids = reference_model[1](" ".join(PROMPTS))["input_ids"]
    assert len(ids) > 3 * 16
    handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=greedy(10)))
    assert handle.result(60)["type"] == "end"
    assert handle.token_ids == reference_tokens(reference_model, ids, 10)
    chunks = [16] * (len(ids) // 16) + ([len(ids) % 16] if len(ids) % 16 else [])
    assert [tokens for _, _, tokens in calls] == chunks + [1] * 9  # the prefill chunks, then 9 decode steps


# --------------------------------------------------------------- behaviour on every path


def test_streamed_deltas_add_up_to_the_final_text(engine, path):
    handle = engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(20)))
    events = list(handle.events(timeout=60))
    deltas = [e for e in events if e["type"] == "delta"]
    assert len(deltas) > 1
    assert "".join(e["text"] for e in deltas) == events[-1]["text"]
    assert sum(e["tokens"] for e in deltas) == events[-1]["usage"]["completion_tokens"] == 20
    assert events[-1]["finish_reason"] == "length"
    assert_path(engine, handle, path)


def test_a_stop_string_ends_the_output_before_it_with_finish_reason_stop(engine, path):
    full = engine.submit(EngineRequest(prompt="To be, or not to be", sampling=greedy(40))).result(60)["text"]
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    handle = engine.submit(EngineRequest(prompt="To be, or not to be", sampling=greedy(40, stop=[stop])))
    final = handle.result(60)
    assert final["finish_reason"] == "stop"
    assert final["text"] == full[: full.index(stop)]
    assert stop not in final["text"]
    assert final["usage"]["completion_tokens"] < 40
    assert_path(engine, handle, path)


def test_cancelling_a_request_ends_it_as_cancelled_and_stops_its_decoding(engine, path):
    running_before = 1 if path == "batch" else 0
    # 300 tokens: beside the companion's 600, within the test engine's KV budget of 1,024 tokens
    handle = engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(300)))
    assert next(handle.events(timeout=30))["type"] == "delta"
    handle.cancel()
    final = handle.result(timeout=30)
    assert final["type"] == "end" and final["finish_reason"] == "cancelled"
    assert final["usage"]["completion_tokens"] < 300
    wait_for(lambda: engine.stats()["running"] == running_before)
    assert engine.stats()["in_flight"] == running_before
    assert_path(engine, handle, path)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_cancelled_request_frees_its_slot_for_a_waiting_one(serve_model_dir, runner):
    engine = make_engine(serve_model_dir, max_concurrent=1, runner=runner)
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


def test_stats_count_a_running_request_and_its_kv_cache(engine, path):
    running_before = 1 if path == "batch" else 0
    handle = engine.submit(EngineRequest(prompt="ROMEO:", sampling=greedy(300)))
    assert next(handle.events(timeout=30))["type"] == "delta"
    stats = engine.stats()
    assert stats["running"] == running_before + 1
    assert stats["in_flight"] == running_before + 1
    assert 0.0 < stats["kv_cache_used"] <= 1.0
    handle.cancel()
    handle.result(30)
    wait_for(lambda: engine.stats()["running"] == running_before)
    if path == "solo":
        assert engine.stats()["kv_cache_used"] == 0.0


def test_the_same_seed_reproduces_a_sample_and_another_seed_differs(engine, path):
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


def test_temperature_zero_is_greedy(engine, path, reference_model):
    ids = reference_model[1]("O")["input_ids"]
    handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=10, temperature=0.0)))
    handle.result(60)
    assert handle.token_ids == reference_tokens(reference_model, ids, 10)
    assert_path(engine, handle, path)


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_request_larger_than_the_kv_cache_is_refused_and_the_engine_keeps_serving(serve_model_dir, runner):
    engine = make_engine(serve_model_dir, num_blocks=4, runner=runner)  # 64 tokens of KV, less than the context
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


def test_a_request_waits_while_the_running_ones_hold_the_kv_budget(serve_model_dir):
    engine = make_engine(serve_model_dir, num_blocks=4)  # 64 tokens: one request of 10 + 40 at a time
    try:
        first = engine.submit(EngineRequest(prompt_ids=[5] * 10, sampling=greedy(40)))
        assert next(first.events(timeout=30))["type"] == "delta"
        second = engine.submit(EngineRequest(prompt_ids=[6] * 10, sampling=greedy(40)))
        assert second.result(60)["usage"]["completion_tokens"] == 40
        assert first.done.is_set() and first.finished_at <= second.first_token_at  # it waited for the room
    finally:
        engine.close()


def test_a_prompt_past_the_context_is_refused_with_the_context_length(engine):
    with pytest.raises(InvalidRequest, match="context"):
        engine.submit(EngineRequest(prompt_ids=[5] * (engine.context_length + 1)))


def test_prompt_ids_outside_the_vocabulary_are_refused(engine):
    vocab = engine.model.get_input_embeddings().num_embeddings
    for bad in ([5, vocab], [-1], [5, 2.0]):
        with pytest.raises(InvalidRequest, match=rf"prompt_ids: must be integers in \[0, {vocab}\)"):
            engine.submit(EngineRequest(prompt_ids=bad))


@pytest.mark.parametrize("runner", RUNNERS)
def test_a_failed_forward_fails_in_flight_requests_and_the_engine_recovers(serve_model_dir, runner):
    engine = make_engine(serve_model_dir, runner=runner)
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


def test_the_solo_cache_gives_the_logits_of_generates_dynamic_cache_bit_for_bit(reference_model):
    import torch
    from transformers import DynamicCache

    from workers.core.inference.plain import cache_classes

    model, tokenizer = reference_model
    sequence_cache = cache_classes()[0]
    ids = tokenizer(PROMPTS[6])["input_ids"]
    dynamic, preallocated = DynamicCache(config=model.config), sequence_cache(model.config.num_hidden_layers, 8)
    token = torch.tensor([ids])
    with torch.inference_mode():
        for _ in range(20):  # 8 tokens of room at first: the buffer grows (by copying) on the way
            expected = model(input_ids=token, cache=dynamic, use_cache=True, logits_to_keep=1).logits
            got = model(input_ids=token, cache=preallocated, use_cache=True, logits_to_keep=1).logits
            assert torch.equal(got, expected)
            token = expected[:, -1:].argmax(-1)
    assert preallocated.get_seq_length() == dynamic.get_seq_length() == len(ids) + 19


# ------------------------------------------------------------------------ choosing the runner


def _fake_model(**text_config):
    config = SimpleNamespace(_attn_implementation="sdpa", **text_config)
    config.get_text_config = lambda: config
    return SimpleNamespace(config=config)


def test_the_plain_runner_serves_full_attention_models_only():
    from workers.core.inference.plain import supports_model

    assert supports_model(_fake_model(layer_types=["full_attention"] * 2, sliding_window=None)) is None
    assert supports_model(_fake_model(sliding_window=4096, use_sliding_window=False)) is None
    assert "sliding" in supports_model(_fake_model(sliding_window=4096))
    assert "sliding_attention" in supports_model(_fake_model(layer_types=["full_attention", "sliding_attention"]))
    flash = _fake_model()
    flash.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in supports_model(flash)


def test_the_runner_setting_is_validated():
    from workers.core.inference.engine import EngineConfig
    from workers.core.specs import SpecError

    with pytest.raises(SpecError, match="runner"):
        EngineConfig(runner="vllm").validate()
