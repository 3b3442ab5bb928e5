"""Adapters are served either merged into their base at load or on top of it with peft; both
give the adapter's own greedy output."""
from __future__ import annotations

import pytest

from tests.core.inference.test_engine import reference_tokens
from tests.fixtures.tiny_models import build_tiny_lora_adapter
from workers.core.inference.engine import Engine, EngineConfig, EngineRequest
from workers.core.inference.sampling import SamplingParams


@pytest.fixture(scope="module")
def adapter_dir(serve_model_dir, tmp_path_factory):
    return build_tiny_lora_adapter(serve_model_dir, tmp_path_factory.mktemp("serve-adapter") / "lora")


@pytest.fixture(scope="module")
def adapter_reference(serve_model_dir, adapter_dir):
    from workers.core.modelstore.loading import load_causal_lm

    return load_causal_lm(adapter_dir, base_folder=serve_model_dir)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "peft-on-base"])
def test_an_adapter_serves_its_own_greedy_output(serve_model_dir, adapter_dir, adapter_reference, reference_model, merge):
    config = EngineConfig(device="cpu", num_blocks=32, block_size=16, exclusive_lane="off", threads=1)
    engine = Engine(config, serve_model_dir, adapter_dir=adapter_dir, merge_adapter=merge)
    engine.start()
    try:
        ids = adapter_reference[1]("To be, or not to be")["input_ids"]
        handle = engine.submit(EngineRequest(prompt_ids=ids, sampling=SamplingParams(max_tokens=16, temperature=0.0)))
        handle.result(60)
    finally:
        engine.close()
    expected = reference_tokens(adapter_reference, ids, 16)
    assert handle.token_ids == expected
    assert expected != reference_tokens(reference_model, ids, 16)  # the adapter does change the output
