"""Pre-flight refusals and the rendered sample, without loading any weights."""
from __future__ import annotations

from workers.core.training.preflight import preflight

CPU = {"kind": "cpu", "name": "cpu", "memory_bytes": 16 * 2**30}
GPU_24G = {"kind": "cuda", "name": "NVIDIA L4", "memory_bytes": 24 * 2**30}


def params(base, files, **overrides) -> dict:
    return {"method": "sft", "finetune": "lora", "base_model_dir": str(base), "train_files": [str(f) for f in files],
            "max_length": 256, "batch_size": 2, **overrides}


def fields(result) -> list[str]:
    return [e["field"] for e in result["errors"]]


def test_a_good_spec_passes_and_shows_the_sample_with_its_loss_segments(tiny_base, alpaca_chat):
    result = preflight(params(tiny_base, [alpaca_chat], max_length=512), CPU)
    assert result["ok"], result["errors"]
    sample = result["sample"]
    assert {s["loss"] for s in sample["segments"]} == {True, False}
    assert sample["loss_tokens"] < sample["tokens"]
    segments = sample["segments"]
    assert segments[0]["text"].startswith("<|im_start|>user\n") and not segments[0]["loss"]
    assert segments[0]["text"].endswith("<|im_start|>assistant\n") and segments[1]["loss"]  # only the reply
    assert result["context_length"] == 512
    assert 0 < result["trainable_parameters"] < result["parameters"]
    assert result["memory"]["total"] <= result["memory"]["budget"]


def test_the_parameter_count_matches_the_real_model(tiny_base, alpaca_chat):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    result = preflight(params(tiny_base, [alpaca_chat], finetune="full"), CPU)
    assert result["parameters"] == sum(p.numel() for p in model.parameters())


def test_a_wrong_format_for_the_method_is_refused(tiny_base, alpaca_chat, dpo_pairs, text_docs):
    dpo_on_chat = preflight(params(tiny_base, [alpaca_chat], method="dpo"), CPU)
    assert fields(dpo_on_chat) == ["train_files"]
    assert "preference" in dpo_on_chat["errors"][0]["message"] and "'chat'" in dpo_on_chat["errors"][0]["message"]
    sft_on_text = preflight(params(tiny_base, [text_docs]), CPU)
    assert "messages" in sft_on_text["errors"][0]["message"]
    cpt_on_pairs = preflight(params(tiny_base, [dpo_pairs], method="cpt"), CPU)
    assert "'text'" in cpt_on_pairs["errors"][0]["message"]
    declared = preflight(params(tiny_base, [alpaca_chat], method="dpo", data_format="chat"), CPU)
    assert fields(declared) == ["data_format"]


def test_qlora_without_a_gpu_is_refused(tiny_base, alpaca_chat):
    result = preflight(params(tiny_base, [alpaca_chat], finetune="qlora"), CPU)
    assert not result["ok"]
    assert {"field": "finetune", "message": "QLoRA needs a CUDA GPU (bitsandbytes 4-bit)"} in result["errors"]


def test_memory_over_budget_is_refused_with_suggestions(tmp_path, alpaca_chat):
    import json

    from tests.fixtures.tiny_models import train_tokenizer

    base = train_tokenizer(tmp_path / "seven-b")  # a 7B-shaped config beside a tokenizer: no weights needed
    (base / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
        "max_position_embeddings": 4096}))
    result = preflight(params(base, [alpaca_chat], finetune="full", max_length=2048, batch_size=8), GPU_24G)
    assert 6.5e9 < result["parameters"] < 7e9
    assert "memory" in fields(result)
    assert result["memory"]["total"] > result["memory"]["budget"]
    assert any(s.startswith("use LoRA") for s in result["suggestions"])
    assert any("gradient_checkpointing" in s for s in result["suggestions"])
    assert any(s.startswith("batch_size 4") for s in result["suggestions"])
    qlora = preflight(params(base, [alpaca_chat], finetune="qlora", max_length=2048, batch_size=1,
                             gradient_checkpointing=True), GPU_24G)
    assert qlora["ok"], qlora["errors"]


def test_max_length_over_the_model_context_is_refused(tiny_base, alpaca_chat):
    result = preflight(params(tiny_base, [alpaca_chat], max_length=4096), CPU)
    assert fields(result) == ["max_length"]
    assert "512" in result["errors"][0]["message"]


def test_an_invalid_spec_names_its_field(tiny_base, alpaca_chat):
    result = preflight(params(tiny_base, [alpaca_chat], lora_r=0), CPU)
    assert result["errors"] == [{"field": "lora_r", "message": "must be between 1 and 1024, got 0"}]
    assert preflight({**params(tiny_base, [alpaca_chat]), "epochz": 1}, CPU)["errors"][0]["field"] == "epochz"
    assert fields(preflight(params(tiny_base, [alpaca_chat], method="pretrain"), CPU)) == ["base_model_dir"]
