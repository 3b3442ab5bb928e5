"""Per-prompt causal attention inside the plain runner's packed prefill.

The plain runner prefills the prompts that arrive together as one packed sequence: one forward
with large matmuls. Its attention used to be one sdpa over the whole pack under a block-diagonal
causal mask; sdpa's CPU kernel skips no masked block, so a pack of 7 prompts of ~70 tokens did
the score work of one 490-token prompt, ~7x what the prompts need (150 ms of a 2.6 s run of 32
requests on the ~30M Llama, measured with torch.profiler). Here each prompt of the pack attends
over its own slice with `is_causal`, the same call `generate` makes for that prompt alone.

How it reaches the model: transformers passes a forward's extra keyword arguments down to each
layer's attention function, looked up by name in `AttentionInterface`. `install()` registers, under
"sdpa", a function that runs upstream's sdpa unchanged unless the call carries `packed_segments`
(only the plain runner passes it), so every other caller in the process (generate, training)
computes exactly what it did. The runner keeps passing the block-diagonal mask too: a model whose
layers do not forward extra arguments ignores the segments and still attends correctly, only
slower.
"""
from __future__ import annotations

import functools

SEGMENTS_KWARG = "packed_segments"  # [(start, end), ...]: each prompt's slice of the packed sequence


@functools.cache
def install() -> None:
    """Register the segment-aware sdpa (idempotent)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def sdpa_with_segments(module, query, key, value, attention_mask, *args, **kwargs):
        segments = kwargs.pop(SEGMENTS_KWARG, None)
        if segments is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
            return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
        return segment_attention(sdpa_attention_forward, module, query, key, value, segments, *args, **kwargs)

    AttentionInterface.register("sdpa", sdpa_with_segments)


def segment_attention(attend, module, query, key, value, segments, *args, **kwargs):
    """Attention of a packed prefill as one causal attention per segment: query, key and value
    [1, heads, packed tokens, head dim] with keys aligned to queries (a prefill from an empty
    cache); returns [1, packed tokens, heads, head dim] as the attention functions do."""
    import torch

    parts = []
    for start, end in segments:
        # no mask: upstream's sdpa then attends causally (is_causal), as generate's prefill does
        output, _ = attend(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None,
                           *args, **kwargs)
        parts.append(output)
    return torch.cat(parts, dim=1), None
