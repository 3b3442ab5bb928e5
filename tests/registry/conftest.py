import shutil

import pytest

from tests.fixtures.tiny_models import build_tiny_llama, build_tiny_lora_adapter, train_tokenizer


@pytest.fixture(scope="session")
def tiny_model_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer(root / "tokenizer")
    model = build_tiny_llama(root / "tiny-llama", tokenizer_dir=tokenizer)
    adapter = build_tiny_lora_adapter(model, root / "tiny-lora")
    return {"model": model, "adapter": adapter}


@pytest.fixture
def import_dir(tmp_path, settings, monkeypatch):
    """A fresh allowlisted import directory for the test."""
    folder = tmp_path / "import"
    folder.mkdir()
    settings.MODEL_IMPORT_DIRS = [folder.resolve()]
    monkeypatch.setenv("PUYU_MODEL_IMPORT_DIRS", str(folder.resolve()))  # what the core allows reading
    return folder


@pytest.fixture
def offer(import_dir, tiny_model_source, tmp_path_factory):
    """Put a copy of a model folder in the import directory; returns its choice value. `source`:
    "model" (random tiny Llama), "adapter" (its LoRA) or "trained" (the tiny Llama trained
    briefly on Shakespeare, for measures that mean nothing on random weights)."""
    def place(name: str, source: str = "model", mutate=None) -> str:
        from tests.fixtures.trained_tiny import trained_tiny_llama

        target = import_dir / name
        origin = trained_tiny_llama(tmp_path_factory) if source == "trained" else tiny_model_source[source]
        shutil.copytree(origin, target)
        if mutate:
            mutate(target)
        return f"0/{name}"

    return place


@pytest.fixture(autouse=True)
def model_store(tmp_path, settings, monkeypatch):
    """Each test gets its own model store and upload dir, so leftovers of one cannot hide or fake another's."""
    monkeypatch.setenv("PUYU_DATA_DIR", str(tmp_path))  # the core confines job paths to this data dir
    store = tmp_path / "models"
    store.mkdir()
    settings.MODEL_STORE_DIR = store
    settings.UPLOAD_DIR = tmp_path / "uploads"
    settings.UPLOAD_DIR.mkdir()
    return store
