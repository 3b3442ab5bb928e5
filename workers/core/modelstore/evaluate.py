"""Perplexity of a model folder on some texts: the number recorded next to a quantized version
to show what the quantization cost."""
from __future__ import annotations

import math
from pathlib import Path

from ..reporting import Reporter, check_cancelled
from .loading import load_causal_lm


def perplexity(
    folder: Path,
    texts: list[str],
    *,
    max_tokens: int = 4096,
    stride: int = 256,
    reporter: Reporter | None = None,
    window: int | None = None,
    base_folder: Path | None = None,
) -> float:
    """exp(mean negative log-likelihood per token) over the texts joined by blank lines,
    truncated to `max_tokens` tokens.

    Sliding window (as in the transformers perplexity guide): each forward pass sees up to
    `window` tokens (default: the model's context length) and scores only the tokens not
    scored by the previous pass, advancing `stride` tokens at a time, so every token after the
    first is predicted exactly once with as much left context as the window allows."""
    import torch

    model, tokenizer = load_causal_lm(folder, base_folder=base_folder)
    # verbose=False: the text is meant to be longer than the context (hence the windows)
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt", verbose=False).input_ids[0]
    if tokenizer.bos_token_id is not None:  # models are trained on BOS-prefixed sequences
        ids = torch.cat([torch.tensor([tokenizer.bos_token_id]), ids])
    ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("perplexity needs at least two tokens of text")
    context = getattr(model.config, "max_position_embeddings", None) or len(ids)
    window = max(2, min(window or context, context))
    stride = max(1, min(stride, window - 1))  # each window keeps >= 1 token of left context
    device = next(model.parameters()).device

    total_nll, scored, previous_end = 0.0, 0, 0
    starts = range(0, len(ids), stride)
    with torch.inference_mode():
        for step, begin in enumerate(starts):
            end = min(begin + window, len(ids))
            chunk = ids[begin:end].to(device)
            logits = model(chunk.unsqueeze(0)).logits[0].float()
            # position i predicts token i+1; score only targets past the previous window's end
            first_target = max(previous_end, begin + 1)
            targets = chunk[first_target - begin :]
            predictions = logits[first_target - begin - 1 : end - begin - 1]
            total_nll += torch.nn.functional.cross_entropy(predictions, targets, reduction="sum").item()
            scored += len(targets)
            previous_end = end
            if reporter is not None:
                reporter.progress(end / len(ids), f"Perplexity: {end}/{len(ids)} tokens")
                check_cancelled(reporter)
            if end == len(ids):
                break
    return math.exp(total_nll / scored)
