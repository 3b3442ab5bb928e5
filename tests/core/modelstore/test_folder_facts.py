"""inspect_folder describes a model folder from its files alone, without loading the model."""
import hashlib
import json

import pytest

from tests.fixtures.tiny_models import build_tiny_llama
from workers.core.modelstore import FolderFacts, inspect_folder


def parameters_of(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    return sum(p.numel() for p in model.parameters())  # shared (tied) parameters count once


def test_a_tiny_llama_is_a_base_model_with_its_architecture_context_dtype_and_chat_template(tiny_model_dir):
    facts = inspect_folder(tiny_model_dir)
    assert facts.kind == "base"
    assert (facts.architecture, facts.model_type) == ("LlamaForCausalLM", "llama")
    assert facts.context_length == 256
    assert facts.dtype == "float32"
    assert facts.has_chat_template is True
    assert facts.adapter is None and facts.quantization is None


def test_the_parameter_count_read_from_safetensors_headers_equals_the_models_parameters(tiny_model_dir):
    assert inspect_folder(tiny_model_dir).parameter_count == parameters_of(tiny_model_dir)


def test_tied_embeddings_are_counted_once(tmp_path, tiny_tokenizer_dir):
    folder = build_tiny_llama(tmp_path / "tied", tokenizer_dir=tiny_tokenizer_dir, tie_word_embeddings=True)
    untied = inspect_folder(build_tiny_llama(tmp_path / "untied", tokenizer_dir=tiny_tokenizer_dir))
    tied = inspect_folder(folder)
    assert tied.parameter_count == parameters_of(folder)
    assert untied.parameter_count - tied.parameter_count == 512 * 64  # the separate output head


def test_every_file_is_listed_with_its_size_and_sha256(tiny_model_dir):
    facts = inspect_folder(tiny_model_dir)
    on_disk = sorted(p.relative_to(tiny_model_dir).as_posix() for p in tiny_model_dir.rglob("*") if p.is_file())
    assert [f.path for f in facts.files] == on_disk
    for fact in facts.files:
        data = (tiny_model_dir / fact.path).read_bytes()
        assert fact.size == len(data)
        assert fact.sha256 == hashlib.sha256(data).hexdigest()
    assert facts.size_bytes == sum(f.size for f in facts.files)


def test_an_adapter_folder_reports_its_lora_rank_alpha_targets_and_base(tiny_adapter_dir, tiny_model_dir):
    facts = inspect_folder(tiny_adapter_dir)
    assert facts.kind == "adapter"
    assert facts.adapter == {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": str(tiny_model_dir),
    }
    assert (facts.model_type, facts.context_length) == ("", None)
    # A and B of q_proj (64 -> 64) and v_proj (64 -> 32) in 2 layers, rank 4
    assert facts.parameter_count == 2 * 4 * ((64 + 64) + (64 + 32))


def test_facts_serialise_to_json(tiny_model_dir, tiny_adapter_dir):
    for folder in (tiny_model_dir, tiny_adapter_dir):
        facts = inspect_folder(folder).to_dict()
        assert json.loads(json.dumps(facts)) == facts
        assert FolderFacts.from_dict(json.loads(json.dumps(facts))) == inspect_folder(folder)
        assert set(facts["files"][0]) == {"path", "size", "sha256"}


@pytest.mark.parametrize("content", [b"", b"\xff" * 8 + b"{}", b"\x04\0\0\0\0\0\0\0[1,2"])
def test_a_corrupt_safetensors_file_is_refused_by_name(model_copy, content):
    from workers.core.modelstore import ModelFolderError

    (model_copy / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelFolderError) as error:
        inspect_folder(model_copy)
    assert error.value.path == "model.safetensors"
    assert "not a safetensors file" in error.value.reason
