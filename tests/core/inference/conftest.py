"""Tiny tool-capable chat models and started engines for the inference tests, built once per
session (a few hundred thousand parameters: an engine starts in well under a second). No Django
database is used here; the replica tests use the session Redis (REDIS_URL)."""
from __future__ import annotations

import pytest

from tests.fixtures.tiny_models import build_tiny_tool_chat_llama


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory):
    # a longer context than the default tiny model: the tool template's system turn is ~450 tokens
    return build_tiny_tool_chat_llama(tmp_path_factory.mktemp("serve") / "tiny-chat", max_position_embeddings=1024)


def make_engine(model_dir, **overrides):
    from workers.core.inference.engine import Engine, EngineConfig

    settings = dict(device="cpu", num_blocks=64, block_size=16, max_batch_tokens=256, max_concurrent=16, threads=1)
    settings.update(overrides)
    engine = Engine(EngineConfig(**settings), model_dir)
    engine.start()
    return engine


@pytest.fixture(scope="module")
def engine(serve_model_dir):
    engine = make_engine(serve_model_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def reference_model(serve_model_dir):
    """A separate copy of the weights for `generate` (never the engine's own model)."""
    from workers.core.modelstore.loading import load_causal_lm

    return load_causal_lm(serve_model_dir)
