"""Shared fixtures for the training core tests: a tiny Llama with a ChatML tokenizer, and the demo
data sets (Alpaca SFT, DPO, plain text; excerpts in tests/fixtures/data) normalized into canonical
JSONL with workers/core/data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.data import excerpt
from tests.fixtures.tiny_models import build_tiny_llama, train_text, train_tokenizer


def normalized(tmp: Path, source: str, count: int) -> Path:
    """The first `count` records of a demo file, normalized to canonical JSONL."""
    from workers.core.data.formats import write_normalized

    records = json.loads(excerpt(f"llamafactory_demo/{source}").read_text(encoding="utf-8"))[:count]
    assert len(records) == count, f"the {source} excerpt has {len(records)} records, fewer than {count}"
    subset = tmp / source
    subset.write_text(json.dumps(records), encoding="utf-8")
    out = tmp / (Path(source).stem + ".jsonl")
    write_normalized(subset, subset.name, None, out)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-base")
    tokenizer = train_tokenizer(root / "tokenizer", vocab_size=512)
    return build_tiny_llama(root / "model", tokenizer_dir=tokenizer, seed=0, max_position_embeddings=512)


@pytest.fixture(scope="session")
def alpaca_chat(tmp_path_factory) -> Path:
    return normalized(tmp_path_factory.mktemp("alpaca"), "alpaca_en_demo.json", 160)


@pytest.fixture(scope="session")
def dpo_pairs(tmp_path_factory) -> Path:
    return normalized(tmp_path_factory.mktemp("dpo"), "dpo_en_demo.json", 24)


@pytest.fixture(scope="session")
def text_docs(tmp_path_factory) -> Path:
    """Shakespeare cut into ~600-character documents, one canonical text record a line."""
    text = train_text()
    out = tmp_path_factory.mktemp("text") / "text.jsonl"
    with open(out, "w", encoding="utf-8") as fh:
        for start in range(0, min(len(text), 60_000), 600):
            fh.write(json.dumps({"text": text[start:start + 600]}) + "\n")
    return out


def spec_params(tmp: Path, **overrides) -> dict:
    params = {"output_dir": str(tmp / "out"), "checkpoint_dir": str(tmp / "ckpt"), "max_length": 256,
              "batch_size": 4, "max_steps": 6, "save_every": 100, "eval_every": 100, "learning_rate": 3e-3,
              "warmup_ratio": 0.0, "lora_dropout": 0.0, "torch_threads": 2}
    params.update(overrides)
    return params
