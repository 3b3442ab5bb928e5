"""Attention for packed rows that computes only what the block-diagonal causal mask keeps.

A packed row (data.collate_packed: several samples in one max_length row, position_ids restarting
at each sample, no attention_mask) is run by transformers' sdpa with a block-diagonal mask: every
head still computes the row's full max_length x max_length scores and throws most of them away
(1024 x 1024 per row for samples of ~250 tokens: ~4x the scores the samples need). flash-attn's
varlen kernel avoids that on some GPUs; nothing in torch or transformers does on CPU. This function
runs causal sdpa on each sample's slice of the row instead (the same scores the mask keeps, so the
same loss and gradients), and hands every other call (a padded batch, generation with a cache, a
row that holds one sequence) to transformers' own sdpa unchanged.

It is registered with transformers' AttentionInterface under ATTENTION (and the sdpa mask builder
under the same name) and chosen for a packed training run on CPU only (`use(model)`); the name is
not saved with the model (transformers does not serialize the attention implementation).
Measured (bench/packed_attention.py, bench/train_packing.py): on the 2-core CPU a ~30M Llama's
packed step at 1,024 tokens is 1.12-1.18x faster than with the mask, the same loss; on an H200
(0.5B shape, bf16, 8 x 2,048 tokens, 54 samples) it is 3.4x SLOWER (0.30x: a few hundred small
kernel launches per layer against one fused masked kernel), so CUDA keeps the mask.
"""
from __future__ import annotations

ATTENTION = "puyu_packed_sdpa"


def segments(position_ids) -> list[tuple[int, int]]:
    """(start, end) of each sequence in one row: a new one starts where the position does not go on by 1."""
    import torch

    starts = [0] + (torch.nonzero(torch.diff(position_ids) != 1).flatten() + 1).tolist()
    return list(zip(starts, starts[1:] + [int(position_ids.numel())]))


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                **kwargs):
    """query (batch, heads, length, dim), key/value (batch, kv_heads, length, dim) -> (batch, length, heads, dim)."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    rows = [] if position_ids is None or position_ids.dim() != 2 or query.shape[2] != position_ids.shape[1] \
        or key.shape[2] != query.shape[2] else [segments(row) for row in position_ids]
    if not any(len(row) > 1 for row in rows):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    out = torch.cat([
        torch.cat([F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e],
                                                  dropout_p=dropout, is_causal=True,
                                                  scale=scaling, enable_gqa=gqa)
                   for s, e in row_segments], dim=2)
        for b, row_segments in enumerate(rows)])
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # padded batches still get their mask


def use(model) -> bool:
    """Run `model`'s attention through packed_sdpa when it runs on sdpa on the CPU now (eager,
    flash, kernels and every GPU are left alone: see the measurements above). True when switched."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    register()
    config._attn_implementation = ATTENTION
    return True
