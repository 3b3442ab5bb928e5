"""Packed attention (workers/core/training/packed_attention.py) on a CUDA device: the loss and
gradients of a packed batch equal those of transformers' sdpa with the block-diagonal mask, in
fp32 and under bf16 autocast (the training path's precision on a GPU); and a GPU model keeps the
masked sdpa, which was 3.4x faster there (bench/packed_attention.py on an H200). Needs a GPU, so it runs on a
GPU host (README, "Development"); without CUDA it is skipped with that reason. Self-contained (no
conftest fixtures):
    python3 -m pytest -c /dev/null --noconftest -o addopts= tests/core/training/test_packed_attention_cuda.py"""
from __future__ import annotations

import copy

import pytest
import torch

from bench.packed_attention import packed_batch
from workers.core.training import packed_attention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def small_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=256, vocab_size=1000, max_position_embeddings=1024, use_cache=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to("cuda").train()


@pytest.mark.parametrize("autocast, tolerance", [(False, 1e-5), (True, 2e-2)])
def test_packed_attention_gives_the_masked_loss_and_gradients_on_cuda(autocast, tolerance):
    masked = small_llama()
    sliced = copy.deepcopy(masked)
    assert not packed_attention.use(sliced) and sliced.config._attn_implementation == "sdpa"  # a GPU keeps the mask
    packed_attention.register()
    sliced.config._attn_implementation = packed_attention.ATTENTION
    data = packed_batch(4, 512, 1000, "cuda")
    losses, grads = [], []
    for model in (masked, sliced):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**data, use_cache=False).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], abs=tolerance)
    assert torch.allclose(grads[1], grads[0], atol=tolerance, rtol=tolerance)
