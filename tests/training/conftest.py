"""Fixtures for the training app: registry and dataset rows (with real files where the core
reads them), a tiny Llama base model, and a stand-in pre-flight for tests that need no core."""
from __future__ import annotations

import hashlib
import json
import shutil

import pytest

CHAT_RECORDS = [
    {"messages": [{"role": "user", "content": f"Say the number {i} in words."},
                  {"role": "assistant", "content": f"The number is {i}, my lord, as Romeo said to Juliet."}]}
    for i in range(48)
]
TEXT_RECORDS = [{"text": line} for line in (
    "First Citizen: Before we proceed any further, hear me speak.",
    "All: Speak, speak.",
    "First Citizen: You are all resolved rather to die than to famish?",
) * 8]
PREFERENCE_RECORDS = [
    {"prompt": [{"role": "user", "content": f"Greet person {i}."}],
     "chosen": [{"role": "assistant", "content": "Good morrow, friend."}],
     "rejected": [{"role": "assistant", "content": "Go away."}]}
    for i in range(16)
]
RECORDS = {"chat": CHAT_RECORDS, "text": TEXT_RECORDS, "preference": PREFERENCE_RECORDS}


@pytest.fixture(scope="session")
def tiny_base_source(tmp_path_factory):
    from tests.fixtures.tiny_models import build_tiny_llama, train_tokenizer

    root = tmp_path_factory.mktemp("tiny-base")
    return build_tiny_llama(root / "model", tokenizer_dir=train_tokenizer(root / "tokenizer"))


@pytest.fixture
def make_base():
    """A registered base version; with `files=True` the tiny Llama's files are in its folder."""
    from apps.registry.models import ModelVersion, RegisteredModel

    def make(user, name="tiny", files=False, source=None):
        model, _ = RegisteredModel.objects.get_or_create(owner=user, name=name)
        number = model.versions.count() + 1
        version = ModelVersion.objects.create(model=model, number=number, kind="base", source="import:folder",
                                              architecture="LlamaForCausalLM", parameter_count=100_000,
                                              context_length=256, created_by=user)
        if files:
            shutil.copytree(source, version.path)
        return version

    return make


@pytest.fixture
def make_dataset():
    """A dataset version of a canonical format, its JSONL written where the version says."""
    from apps.datasets.models import Dataset, DatasetVersion

    def make(user, canonical="chat", name=None, records=None):
        records = RECORDS[canonical] if records is None else records
        dataset, _ = Dataset.objects.get_or_create(owner=user, name=name or f"{canonical}-demo")
        body = "".join(json.dumps(r) + "\n" for r in records).encode()
        version = DatasetVersion.objects.create(
            dataset=dataset, number=dataset.versions.count() + 1, source="upload", source_format=canonical,
            canonical=canonical, sha256=hashlib.sha256(body).hexdigest(), rows=len(records), size_bytes=len(body),
            created_by=user)
        version.path.parent.mkdir(parents=True, exist_ok=True)
        version.path.write_bytes(body)
        return version

    return make


class FakePreflight:
    """Stands in for catalog.training_preflight where the core is not under test: records the
    calls, and answers ok (or with the errors a test sets)."""

    def __init__(self):
        self.calls = []
        self.errors = []
        self.memory = {"weights": 4 * 2**20, "gradients": 2**20, "optimizer": 2 * 2**20, "activations": 2**20,
                       "total": 8 * 2**20, "budget": 16 * 2**30}

    def __call__(self, params, device):
        self.calls.append((params, device))
        return {"ok": not self.errors, "errors": list(self.errors), "warnings": [], "memory": self.memory,
                "suggestions": ["use LoRA"] if self.errors else [],
                "sample": {"segments": [{"text": "<|im_start|>user\nhi<|im_end|>\n", "loss": False},
                                        {"text": "hello<|im_end|>", "loss": True}], "tokens": 9, "loss_tokens": 3},
                "context_length": 256, "parameters": 100_000, "trainable_parameters": 2_000}


@pytest.fixture
def fake_preflight(monkeypatch):
    from workers.tasks import catalog

    fake = FakePreflight()
    monkeypatch.setattr(catalog, "training_preflight", fake)
    return fake


@pytest.fixture
def lora_request():
    from apps.training.services import TrainingRequest

    def make(base, datasets, **extra):
        fields = {"max_steps": 4, "batch_size": 2, "max_length": 64, "save_every": 2, "eval_every": 2,
                  "lora_r": 4, "lora_alpha": 8, **extra.pop("fields", {})}
        return TrainingRequest(method="sft", finetune="lora", base=f"v:{base.pk}" if base else None,
                               train_versions=[d.pk for d in datasets], queue="gpu", fields=fields, **extra)

    return make
