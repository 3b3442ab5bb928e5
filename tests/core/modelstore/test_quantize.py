"""int8 weight-only quantization (torchao) shrinks a model to <= 0.6 of its bf16 size, reloads
from safetensors, and barely moves perplexity; 4-bit needs a GPU and says so."""
import pytest

from tests.fixtures.tiny_models import heldout_text
from workers.core.modelstore import (
    ModelFolderError,
    inspect_folder,
    load_causal_lm,
    perplexity,
    quantize_4bit,
    quantize_int8,
)


def weights_bytes(folder):
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A bf16 Llama with the tiny tokenizer but wider (hidden 256) and deeper (4 layers) than the
    tiny model, ~2.6M parameters: in the 64-wide tiny model the per-row int8 scales are a
    sizeable overhead, which no real model has; here they weigh as little as in a real model.
    Tied embeddings, like SmolLM2 (the case that needs the embedding quantized to reach 0.6)."""
    import torch

    from tests.fixtures.tiny_models import build_tiny_llama

    return build_tiny_llama(
        tmp_path_factory.mktemp("bf16") / "llama-256",
        tokenizer_dir=tiny_tokenizer_dir,
        hidden_size=256,
        num_hidden_layers=4,
        intermediate_size=512,
        tie_word_embeddings=True,
        dtype=torch.bfloat16,
    )


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, bf16_model_dir):
    import io

    from workers.core.reporting import ConsoleReporter

    out = tmp_path_factory.mktemp("int8") / "llama-256-int8"
    quantize_int8(bf16_model_dir, out, ConsoleReporter(stream=io.StringIO()))
    return out


def test_the_int8_folder_is_at_most_0_6_of_the_bf16_weights(int8_dir, bf16_model_dir):
    ratio = weights_bytes(int8_dir) / weights_bytes(bf16_model_dir)
    print(f"int8/bf16 weights bytes: {ratio:.3f}")
    assert ratio <= 0.6


def test_the_int8_folder_reloads_from_safetensors_with_int8_weights(int8_dir):
    from torchao.quantization import Int8Tensor

    model, tokenizer = load_causal_lm(int8_dir)
    assert isinstance(model.model.layers[0].mlp.down_proj.weight, Int8Tensor)
    assert isinstance(model.model.embed_tokens.weight, Int8Tensor)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    assert tokenizer.chat_template
    assert {p.suffix for p in int8_dir.iterdir()} <= {".json", ".safetensors", ".jinja"}


def test_the_int8_facts_record_the_quantization_and_the_same_parameter_count(int8_dir, bf16_model_dir):
    facts, source = inspect_folder(int8_dir), inspect_folder(bf16_model_dir)
    assert facts.quantization == {"method": "torchao-int8-weight-only", "bits": 8}
    assert facts.dtype == "int8-weight-only"
    assert facts.parameter_count == source.parameter_count
    assert (facts.architecture, facts.context_length) == (source.architecture, source.context_length)


def test_int8_perplexity_on_held_out_text_is_finite_and_within_5_percent(int8_dir, bf16_model_dir):
    import math

    texts = [heldout_text()]
    before = perplexity(bf16_model_dir, texts, max_tokens=768, stride=128)
    after = perplexity(int8_dir, texts, max_tokens=768, stride=128)
    print(f"perplexity bf16 {before:.3f} -> int8 {after:.3f} ({after / before - 1:+.3%})")
    assert math.isfinite(after)
    assert abs(after / before - 1) < 0.05


def test_quantizing_an_adapter_or_a_quantized_model_is_refused(tmp_path, tiny_adapter_dir, int8_dir, reporter):
    with pytest.raises(ModelFolderError, match="adapter"):
        quantize_int8(tiny_adapter_dir, tmp_path / "a", reporter)
    with pytest.raises(ModelFolderError, match="already quantized"):
        quantize_int8(int8_dir, tmp_path / "b", reporter)
    assert list(tmp_path.iterdir()) == []


def test_4bit_quantization_on_a_machine_without_cuda_raises_a_clear_error(tmp_path, tiny_model_dir, reporter):
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(ModelFolderError) as error:
        quantize_4bit(tiny_model_dir, tmp_path / "nf4", reporter)
    assert str(error.value) == "device: 4-bit quantization needs a CUDA GPU; int8 runs on CPU"
    assert "bitsandbytes" not in sys.modules
    assert list(tmp_path.iterdir()) == []
