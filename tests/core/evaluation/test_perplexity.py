"""Perplexity and bits per byte (workers/core/evaluation/perplexity.py) on a tiny random Llama:
a window over the whole text equals a hand computation from one plain forward; a sliding window
scores every token exactly once, each with the context the recipe promises."""
from __future__ import annotations

import math

import pytest

from tests.fixtures.tiny_models import heldout_text
from workers.core.evaluation.perplexity import perplexity, sliding_windows
from workers.core.specs import SpecError

SHORT_TEXTS = ["First Citizen:\nWe are accounted poor citizens, the patricians good.",
               "MENENIUS:\nWhat work's, my countrymen, in hand? 何处去?"]  # multi-byte characters too


def token_ids(tokenizer, text):
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def forward_nlls(model, ids):
    """NLL of ids[1:] given everything before, from one plain forward, in float64."""
    import torch

    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return [-float(logprobs[p - 1, ids[p]]) for p in range(1, len(ids))]


def test_a_window_over_the_whole_text_equals_the_hand_computation(tiny_lm):
    model, tokenizer = tiny_lm
    result = perplexity(model, tokenizer, SHORT_TEXTS, window=128, stride=64, return_token_nlls=True)

    per_text = [forward_nlls(model, token_ids(tokenizer, text)) for text in SHORT_TEXTS]
    nll = sum(map(sum, per_text))
    tokens = sum(map(len, per_text))
    size = sum(len(text.encode("utf-8")) for text in SHORT_TEXTS)
    assert size > sum(map(len, SHORT_TEXTS))  # UTF-8 bytes, not characters
    assert (result.tokens, result.bytes, result.windows) == (tokens, size, 2)
    assert result.nll == pytest.approx(nll, abs=1e-3)
    assert result.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(nll / (math.log(2) * size), rel=1e-5)
    for got, expected in zip(result.token_nlls, per_text):
        assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("window, stride", [(64, 16), (64, 63), (50, 1), (256, 100)])
def test_windows_score_every_token_exactly_once(window, stride):
    length = 301
    spans = sliding_windows(length, window, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, length))  # token 0 (BOS) is context only
    for begin, end, first in spans:
        assert end - begin <= window and begin < first  # at least one token of context
    if length > window:
        assert len(spans) == 1 + math.ceil((length - window) / stride)


def test_a_sliding_window_scores_each_token_once_with_the_context_it_promises(tiny_lm):
    model, tokenizer = tiny_lm
    text = heldout_text()[:1500]
    ids = token_ids(tokenizer, text)
    window, stride = 64, 16
    assert len(ids) > 4 * window
    result = perplexity(model, tokenizer, [text], window=window, stride=stride, return_token_nlls=True)
    nlls = result.token_nlls[0]

    assert result.tokens == len(nlls) == len(ids) - 1
    assert result.windows == 1 + math.ceil((len(ids) - window) / stride)
    # the first window's tokens see everything before them
    assert nlls[: window - 1] == pytest.approx(forward_nlls(model, ids[:window]), abs=1e-4)
    # a later token t, scored in the window ending at the first multiple of the stride after
    # it, sees exactly the `window` tokens up to that end
    for t in (window + 5, len(ids) // 2, len(ids) - 1):
        end = min(window + math.ceil((t + 1 - window) / stride) * stride, len(ids))
        context = ids[end - window: end]
        expected = forward_nlls(model, context)[t - (end - window) - 1]
        assert nlls[t - 1] == pytest.approx(expected, abs=1e-4)
    # more context per token (a smaller stride) changes the numbers, never the count
    coarse = perplexity(model, tokenizer, [text], window=window, stride=window - 1)
    assert coarse.tokens == result.tokens and coarse.windows < result.windows
    assert coarse.nll != pytest.approx(result.nll, abs=1e-3)


def test_batched_windows_equal_windows_one_at_a_time(tiny_lm):
    model, tokenizer = tiny_lm
    texts = [heldout_text()[:700], heldout_text()[700:1000], "Hear me."]
    batched = perplexity(model, tokenizer, texts, window=48, stride=24, batch_windows=8)
    single = perplexity(model, tokenizer, texts, window=48, stride=24, batch_windows=1)
    assert batched.tokens == single.tokens and batched.windows == single.windows
    assert batched.nll == pytest.approx(single.nll, rel=1e-5)


@pytest.mark.parametrize("settings, field", [
    (dict(window=64, stride=64), "stride"),  # the window's first token would have no context
    (dict(window=64, stride=0), "stride"),
    (dict(window=1), "window"),
    (dict(window=10_000), "window"),  # beyond the model's positions
    (dict(window=64, batch_windows=0), "batch_windows"),
])
def test_bad_window_settings_are_refused_naming_the_setting(tiny_lm, settings, field):
    model, tokenizer = tiny_lm
    with pytest.raises(SpecError) as error:
        perplexity(model, tokenizer, SHORT_TEXTS, **settings)
    assert error.value.field == field


def test_a_text_that_is_not_a_string_is_refused_naming_its_index(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(SpecError) as error:
        perplexity(model, tokenizer, ["fine", 42], window=32, stride=16)
    assert error.value.field == "texts[1]"
