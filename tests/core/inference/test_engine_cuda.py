"""The engine on a CUDA device: greedy tokens equal `generate`'s on the same device, for the
manager with CUDA graphs (the CUDA default) and for the plain runner, one request alone and eight
at once. Needs a GPU, so it runs on a GPU host (README, "Development"); on a machine without CUDA it is
skipped with that reason. Self-contained (no conftest fixtures): on a GPU host with its own
Python stack it runs with
    python3 -m pytest -c /dev/null --noconftest -o addopts= tests/core/inference/test_engine_cuda.py"""
from __future__ import annotations

import pytest
import torch

from tests.core.inference.test_engine import PROMPTS
from tests.fixtures.tiny_models import build_tiny_tool_chat_llama
from workers.core.inference.engine import Engine, EngineConfig, EngineRequest
from workers.core.inference.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_tool_chat_llama(tmp_path_factory.mktemp("cuda") / "tiny-chat", max_position_embeddings=1024)


@pytest.fixture(scope="module")
def reference(model_dir):
    """generate's model: fp32 on the GPU, a separate copy of the weights."""
    from workers.core.modelstore.loading import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    return model.to("cuda"), tokenizer


def expected_tokens(reference, prompt_ids, budget):
    model, tokenizer = reference
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids], device="cuda"), max_new_tokens=budget, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


@pytest.fixture(scope="module", params=["manager", "plain"])
def engine(request, model_dir):
    engine = Engine(EngineConfig(device="cuda", dtype="fp32", runner=request.param, cuda_graphs="on",
                                 kv_cache_bytes=64 * 1024**2, block_size=32, max_concurrent=16), model_dir)
    engine.start()
    yield engine
    engine.close()


def test_one_request_alone_decodes_the_tokens_generate_makes_on_the_gpu(engine, reference):
    prompt_ids = reference[1](PROMPTS[2])["input_ids"]
    handle = engine.submit(EngineRequest(prompt_ids=prompt_ids, sampling=SamplingParams(max_tokens=48, temperature=0.0)))
    assert handle.result(timeout=120)["type"] == "end"
    assert handle.token_ids == expected_tokens(reference, prompt_ids, 48)


def test_eight_concurrent_requests_decode_the_tokens_generate_makes_on_the_gpu(engine, reference):
    ids = [reference[1](p)["input_ids"] for p in PROMPTS]
    budgets = [12 + 4 * n for n in range(len(ids))]  # rows end at different steps
    handles = [engine.submit(EngineRequest(prompt_ids=i, sampling=SamplingParams(max_tokens=n, temperature=0.0)))
               for i, n in zip(ids, budgets)]
    for prompt_ids, budget, handle in zip(ids, budgets, handles):
        assert handle.result(timeout=120)["type"] == "end"
        assert handle.token_ids == expected_tokens(reference, prompt_ids, budget)
