"""int8 weight-only quantization (torchao) shrinks a model to <= 0.6 of its bf16 size, reloads
from safetensors, and barely moves the perplexity of a trained model; 4-bit needs a GPU and says so."""
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


def fake_quantized_copy(source, dest, levels: int):
    """A copy of `source` whose linear weights are rounded per row to `levels` symmetric levels:
    a deliberately bad quantizer, to show that the perplexity check below can fail."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                scale = weight.abs().amax(dim=1, keepdim=True) / (levels // 2)
                weight.copy_((weight / scale).round().clamp(-(levels // 2), levels // 2) * scale)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(dest)
    return dest


def test_int8_keeps_the_perplexity_of_a_trained_model_within_2_percent_and_a_coarse_quantizer_would_not(
        tmp_path, tmp_path_factory, reporter):
    """On random weights every quantizer "keeps" the perplexity (it stays near the vocabulary
    size), so this measures a tiny Llama trained on Shakespeare: held-out perplexity far below
    uniform, int8 within 2 % of float32, and 3-level rounding of the same weights well outside."""
    import math

    from transformers import AutoConfig

    from tests.fixtures.trained_tiny import trained_tiny_llama

    trained = trained_tiny_llama(tmp_path_factory)
    vocab = AutoConfig.from_pretrained(trained, local_files_only=True).vocab_size
    quantize_int8(trained, tmp_path / "int8", reporter)
    texts = [heldout_text()]
    before = perplexity(trained, texts, max_tokens=768, stride=128)
    after = perplexity(tmp_path / "int8", texts, max_tokens=768, stride=128)
    coarse = perplexity(fake_quantized_copy(trained, tmp_path / "coarse", levels=3), texts, max_tokens=768, stride=128)
    print(f"perplexity fp32 {before:.2f} -> int8 {after:.2f} ({after / before - 1:+.2%}); 3-level {coarse:.1f}; vocab {vocab}")
    assert before < vocab / 3  # the model learned something the quantizer could break
    assert math.isfinite(after) and abs(after / before - 1) < 0.02
    assert coarse > before * 1.1  # the check above would catch a quantizer that damaged the weights


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
