"""perplexity() is token-level: with one window it equals exp(loss) of a plain forward pass,
and a sliding window scores each token once with left context."""
import math

from tests.fixtures.tiny_models import heldout_text
from workers.core.modelstore import load_causal_lm, perplexity


def test_one_window_perplexity_equals_exp_of_the_models_own_loss(tiny_model_dir):
    import torch

    model, tokenizer = load_causal_lm(tiny_model_dir)
    ids = tokenizer(heldout_text(), add_special_tokens=False, verbose=False).input_ids
    ids = torch.tensor([[tokenizer.bos_token_id] + ids])[:, :200]
    with torch.inference_mode():
        expected = math.exp(model(ids, labels=ids).loss.item())
    assert math.isclose(perplexity(tiny_model_dir, [heldout_text()], max_tokens=200), expected, rel_tol=1e-5)


def test_a_sliding_window_over_a_longer_text_reports_progress_and_stays_close(tiny_model_dir, reporter):
    whole = perplexity(tiny_model_dir, [heldout_text()], max_tokens=256)
    sliding = perplexity(tiny_model_dir, [heldout_text()], max_tokens=256, window=64, stride=32, reporter=reporter)
    assert math.isfinite(sliding)
    assert abs(sliding / whole - 1) < 0.1  # a random model barely uses its context
    assert reporter.fractions[-1] == 1.0 and len(reporter.fractions) == 7  # windows end at 64, 96, ..., 256
