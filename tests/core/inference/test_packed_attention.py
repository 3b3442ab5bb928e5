"""The plain runner's packed prefill attends each prompt over its own slice
(workers/core/inference/packed_attention.py), and every other caller of transformers' sdpa gets
upstream's result unchanged."""
from __future__ import annotations

import pytest

PROMPTS = ["ROMEO:", "To be, or not to be, that is the question", "O", "My lord, I have a letter for you"]


def _packed(tokenizer, prompts):
    import torch

    ids = [tokenizer(p)["input_ids"] for p in prompts]
    lengths = torch.tensor([len(i) for i in ids])
    ends = torch.cumsum(lengths, 0)
    starts = ends - lengths
    segment = torch.repeat_interleave(torch.arange(len(ids)), lengths)
    index = torch.arange(int(ends[-1]))
    visible = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    positions = index - starts[segment]
    return ids, starts, ends, visible[None, None], positions[None]


def _prefill(model, ids, ends, mask, positions, **extra):
    import torch

    from workers.core.inference.plain import cache_classes

    cache = cache_classes()[0](model.config.num_hidden_layers, int(ends[-1]))
    flat = torch.tensor([[t for prompt in ids for t in prompt]])
    with torch.inference_mode():
        return model(input_ids=flat, cache=cache, use_cache=True, logits_to_keep=ends - 1, attention_mask=mask,
                     position_ids=positions, **extra).logits[0]


def test_a_packed_prefill_runs_one_causal_attention_per_prompt_and_gives_each_prompts_own_logits(reference_model, monkeypatch):
    import torch

    from workers.core.inference import packed_attention

    model, tokenizer = reference_model
    packed_attention.install()
    calls = []
    real = packed_attention.segment_attention
    monkeypatch.setattr(packed_attention, "segment_attention",
                        lambda attend, module, q, *rest, **kw: calls.append(q.shape[2]) or real(attend, module, q, *rest, **kw))
    ids, starts, ends, mask, positions = _packed(tokenizer, PROMPTS)
    segments = list(zip(starts.tolist(), ends.tolist()))
    packed = _prefill(model, ids, ends, mask, positions, packed_segments=segments)
    assert calls == [int(ends[-1])] * model.config.num_hidden_layers  # every layer took the per-prompt path
    with torch.inference_mode():
        for number, prompt in enumerate(ids):
            alone = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            assert torch.allclose(packed[number], alone, rtol=1e-5, atol=1e-5)
            assert packed[number].argmax() == alone.argmax()
    # the block-diagonal mask alone (a model that drops the extra argument) attends the same way
    masked = _prefill(model, ids, ends, mask, positions)
    assert torch.allclose(masked, packed, rtol=1e-5, atol=1e-5)


def test_callers_without_segments_get_upstream_sdpa_bit_for_bit():
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from workers.core.inference import packed_attention

    packed_attention.install()
    registered = AttentionInterface().get_interface("sdpa", None)
    assert registered is not sdpa_attention_forward  # ours is installed ...
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 1, True
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    mask = torch.rand(2, 1, 5, 9) > 0.3
    for args in ((q, k, v, mask), (q, k[:, :, :5], v[:, :, :5], None)):
        expected, _ = sdpa_attention_forward(module, *args, scaling=0.3)
        got, _ = registered(module, *args, scaling=0.3)
        assert torch.equal(got, expected)  # ... and is upstream's sdpa when no segments come with the call
    # segments with queries shorter than the keys (not a prefill from an empty cache) are ignored
    got, _ = registered(module, q, k, v, mask, scaling=0.3, packed_segments=[(0, 2), (2, 5)])
    assert torch.equal(got, sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)[0])


@pytest.mark.parametrize("rows", [1, 3])
def test_segment_attention_of_one_segment_per_prompt_equals_causal_attention_of_each(rows):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from workers.core.inference.packed_attention import segment_attention

    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 2, True  # grouped-query attention, as SmolLM2
    torch.manual_seed(rows)
    lengths = [4, 1, 7][:rows]
    total = sum(lengths)
    q, k, v = torch.randn(1, 4, total, 8), torch.randn(1, 2, total, 8), torch.randn(1, 2, total, 8)
    bounds = [(sum(lengths[:i]), sum(lengths[: i + 1])) for i in range(rows)]
    got, _ = segment_attention(sdpa_attention_forward, module, q, k, v, bounds, scaling=0.35)
    assert got.shape == (1, total, 4, 8)
    for start, end in bounds:
        alone, _ = sdpa_attention_forward(module, q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], None,
                                          scaling=0.35)
        assert torch.equal(got[:, start:end], alone)
