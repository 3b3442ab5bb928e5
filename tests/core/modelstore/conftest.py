"""Tiny models for the model-store tests, built once per session under pytest's tmp dir.

The core tests need no Django database: nothing here (or in the tests) uses the `db` fixture.
ML libraries are imported inside the fixtures, so collecting these tests stays cheap."""
from __future__ import annotations

import io
import shutil

import pytest

from tests.fixtures.tiny_models import build_tiny_llama, build_tiny_lora_adapter, train_tokenizer
from workers.core.reporting import ConsoleReporter


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_model_dir):
    return build_tiny_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "tiny-lora")


@pytest.fixture
def reporter():
    return ConsoleReporter(stream=io.StringIO())


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir):
    """A private copy of the tiny model that a test may damage."""
    return shutil.copytree(tiny_model_dir, tmp_path / "copy")
