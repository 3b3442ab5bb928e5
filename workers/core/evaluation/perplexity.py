"""Perplexity and bits per byte of a model on a set of texts, with a sliding window: the recipe
of the Hugging Face "Perplexity of fixed-length models" guide.

    result = perplexity(model, tokenizer, texts, window=1024, stride=512)
    result.perplexity, result.bits_per_byte, result.tokens

Each text is scored on its own. Its token ids are preceded by the tokenizer's BOS token (EOS when
it has none, as lm-eval-harness does), which is context only: so EVERY token of the text is
scored, and bits per byte, which counts every byte, has a log-likelihood for every one of them.
The first window covers the first `window` tokens; each next one scores the `stride` tokens
after the previous window's end, with the `window - stride` tokens before them as context (the
last window keeps a full window of context): every token is scored exactly once. stride =
window - 1 gives nearly disjoint chunks (fastest, least context; stride = window is refused, it
would leave each chunk's first token without context); a smaller stride gives each token more
context at the cost of more forwards. Logits are computed only at the positions that predict
scored tokens (`logits_to_keep`), and windows of one length run in batches.

    perplexity    = exp(total NLL / scored tokens)
    bits per byte = total NLL (nats) / (ln 2 x UTF-8 bytes of the texts)

Bits per byte does not depend on the tokenizer, so it compares models with different vocabularies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from workers.core.specs import SpecError, short

DEFAULT_MAX_WINDOW = 2048  # when `window` is not given: the model's context, at most this
DEFAULT_BATCH_WINDOWS = 8


@dataclass
class PerplexityResult:
    nll: float  # total negative log-likelihood of the scored tokens (nats)
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the texts
    windows: int  # forwarded windows
    token_nlls: list[list[float]] | None = None  # per text, per token (with return_token_nlls)

    @property
    def nats_per_token(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes) if self.bytes else float("nan")


@dataclass(frozen=True)
class _Window:
    text: int  # index of the text
    ids: tuple[int, ...]  # the window's tokens
    first: int  # index in `ids` of the first scored token (scored: ids[first:])


def sliding_windows(length: int, window: int, stride: int, first_scored: int = 1) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index) of each window over `length` tokens (module doc).
    Tokens before `first_scored` are context only; every token from `first_scored` on is scored
    exactly once, always with at least one token of context (needs stride < window)."""
    end = min(window, length)
    spans = [(0, end, first_scored)] if first_scored < end else []
    while end < length:
        new_end = min(end + stride, length)
        spans.append((max(0, new_end - window), new_end, max(end, first_scored)))
        end = new_end
    return spans


def perplexity(model, tokenizer, texts: Sequence[str], *, window: int | None = None, stride: int | None = None,
               batch_windows: int = DEFAULT_BATCH_WINDOWS, return_token_nlls: bool = False,
               progress=None) -> PerplexityResult:
    """Sliding-window perplexity and bits per byte of `texts` (module doc). `window` defaults
    to the model's context (at most 2,048 tokens), `stride` to window // 2; `progress(done,
    total)` is called after each batch of windows."""
    import torch

    window, stride = _check_settings(model, window, stride, batch_windows)
    windows, total_bytes, expected = [], 0, 0
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise SpecError(f"texts[{index}]", f"must be a string, got {short(text)}")
        total_bytes += len(text.encode("utf-8"))
        ids = _token_ids(tokenizer, text)
        expected += len(ids) - 1  # the prefix token is context only
        for begin, end, first in sliding_windows(len(ids), window, stride):
            windows.append(_Window(index, tuple(ids[begin:end]), first - begin))

    token_nlls: list[list[float]] = [[] for _ in texts]
    total = 0.0
    device = next(model.parameters()).device
    # Windows of one length run together (every window but a short text's is `window` long);
    # a text's windows stay in order, so its per-token NLLs come out in text order.
    groups: dict[int, list[_Window]] = {}
    for item in windows:
        groups.setdefault(len(item.ids), []).append(item)
    done = 0
    with torch.inference_mode():
        for size in sorted(groups, reverse=True):
            group = groups[size]
            for start in range(0, len(group), batch_windows):
                batch = group[start: start + batch_windows]
                for item, values in zip(batch, _score_windows(model, batch, device)):
                    token_nlls[item.text].extend(values)
                    total += sum(values)
                done += len(batch)
                if progress is not None:
                    progress(done, len(windows))
    scored = sum(len(values) for values in token_nlls)
    if scored != expected:  # a broken window plan must never yield a plausible number
        raise RuntimeError(f"scored {scored} tokens of {expected}")
    return PerplexityResult(total, scored, total_bytes, len(windows), token_nlls if return_token_nlls else None)


def _check_settings(model, window, stride, batch_windows) -> tuple[int, int]:
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = int(getattr(config, "max_position_embeddings", 0) or 0) or None
    if window is None:
        window = min(limit or DEFAULT_MAX_WINDOW, DEFAULT_MAX_WINDOW)
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise SpecError("window", f"must be an integer >= 2 tokens, got {short(window)}")
    if limit is not None and window > limit:
        raise SpecError("window", f"must be at most the model's {limit} positions, got {window}")
    stride = window // 2 if stride is None else stride
    if not isinstance(stride, int) or isinstance(stride, bool) or not 1 <= stride < window:
        raise SpecError("stride", f"must be an integer from 1 to window - 1 ({window - 1}): each window keeps "
                                  f"at least one token of context, got {short(stride)}")
    if not isinstance(batch_windows, int) or isinstance(batch_windows, bool) or batch_windows < 1:
        raise SpecError("batch_windows", f"must be an integer >= 1, got {short(batch_windows)}")
    return window, stride


def _token_ids(tokenizer, text: str) -> list[int]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is None:
        raise SpecError("tokenizer", "has no BOS or EOS token to start a text with")
    return [prefix] + ids


def _score_windows(model, batch: Sequence[_Window], device) -> list[list[float]]:
    """Per window, the NLL (nats) of each scored token; the windows of a batch have one length."""
    import torch

    ids = torch.tensor([item.ids for item in batch], device=device)
    keep = torch.zeros(ids.shape, dtype=torch.bool)
    targets = []
    for row, item in enumerate(batch):
        keep[row, item.first - 1: len(item.ids) - 1] = True  # position p predicts token p + 1
        targets.extend(item.ids[item.first:])
    # Boolean logits_to_keep flattens the kept positions row by row, the order of `targets`.
    logits = model(input_ids=ids, logits_to_keep=keep.to(device)).logits.reshape(len(targets), -1).float()
    index = torch.tensor(targets, device=device).unsqueeze(1)
    nll = (torch.logsumexp(logits, dim=-1) - logits.gather(1, index).squeeze(1)).tolist()
    out, start = [], 0
    for item in batch:
        count = len(item.ids) - item.first
        out.append(nll[start: start + count])
        start += count
    return out
