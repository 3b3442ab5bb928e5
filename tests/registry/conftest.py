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
def import_dir(tmp_path, settings):
    """A fresh allowlisted import directory for the test."""
    folder = tmp_path / "import"
    folder.mkdir()
    settings.MODEL_IMPORT_DIRS = [folder.resolve()]
    return folder


@pytest.fixture
def offer(import_dir, tiny_model_source):
    """Put a copy of a model folder in the import directory; returns its choice value."""
    def place(name: str, source: str = "model", mutate=None) -> str:
        target = import_dir / name
        shutil.copytree(tiny_model_source[source], target)
        if mutate:
            mutate(target)
        return f"0/{name}"

    return place


@pytest.fixture(autouse=True)
def model_store(tmp_path, settings):
    """Each test gets its own model store and upload dir, so leftovers of one cannot hide or fake another's."""
    store = tmp_path / "models"
    store.mkdir()
    settings.MODEL_STORE_DIR = store
    settings.UPLOAD_DIR = tmp_path / "uploads"
    settings.UPLOAD_DIR.mkdir()
    return store
