"""A tiny random Llama (tests/fixtures/tiny_models.py) for the scoring tests, built once per
session. initializer_range=0.5 spreads its logits, so options differ clearly in likelihood and a
prediction never hangs on float rounding. Its tokenizer carries a ChatML chat template."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """(folder, model, tokenizer) of the tiny model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.fixtures.tiny_models import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("eval-tiny"), seed=0, initializer_range=0.5)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return folder, model, tokenizer


@pytest.fixture(scope="session")
def tiny_lm(tiny):
    return tiny[1], tiny[2]
