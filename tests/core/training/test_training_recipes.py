"""Pretraining, SFT (LoRA and full) and DPO on tiny Llama models and the demo data sets."""
from __future__ import annotations

import json

import pytest

from tests.core.training.conftest import spec_params
from workers.core.kinds import run_core_job
from workers.core.reporting import ConsoleReporter


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def losses(reporter: ConsoleReporter, name: str = "loss") -> dict[int, float]:
    return {step: value for metric, step, value in reporter.metrics if metric == name}


def test_pretraining_a_tiny_llama_with_a_trained_tokenizer_lowers_the_loss(tmp_path, text_docs):
    reporter = ConsoleReporter()
    result = run_core_job("train", spec_params(
        tmp_path, method="pretrain", architecture="llama-tiny", vocab_size=512, train_files=[str(text_docs)],
        max_steps=24, learning_rate=3e-3, max_length=64, batch_size=4, eval_every=24), reporter)
    curve = losses(reporter)
    assert sorted(curve) == list(range(1, 25))
    assert sum(curve[s] for s in (22, 23, 24)) / 3 < curve[1] - 1.0
    assert result["facts"]["kind"] != "adapter"
    assert result["final_metrics"]["eval_loss"] < curve[1]
    out = tmp_path / "out"
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    from workers.core.modelstore import load_causal_lm

    model, tokenizer = load_causal_lm(out)
    assert model.config.vocab_size == len(tokenizer) and model.config.use_cache is True


def test_lora_sft_on_the_alpaca_demo_lowers_the_loss_and_changes_only_adapter_weights(tmp_path, tiny_base,
                                                                                       alpaca_chat):
    import torch
    from safetensors.torch import load_file

    from workers.core.modelstore import load_causal_lm

    before = {p.name: p.read_bytes() for p in tiny_base.iterdir() if p.is_file()}
    reporter = ConsoleReporter()
    result = run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                               max_steps=20, lora_r=8, lora_alpha=16, learning_rate=1e-2,
                                               # a random tiny base barely moves without a LoRA on lm_head
                                               lora_targets=[*ALL_LINEAR, "lm_head"]), reporter)
    curve = losses(reporter)
    assert sum(curve[s] for s in (18, 19, 20)) / 3 < curve[1] - 0.5
    assert result["facts"]["kind"] == "adapter"
    out = tmp_path / "out"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    assert any(key.endswith("lora_B.weight") and t.abs().sum() > 0 for key, t in adapter.items())  # B starts at 0
    assert {p.name: p.read_bytes() for p in tiny_base.iterdir() if p.is_file()} == before
    base, _ = load_causal_lm(tiny_base)
    tuned, _ = load_causal_lm(out, base_folder=tiny_base)
    tuned_base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in tuned.state_dict().items() if "lora_" not in k}
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, tuned_base[name]), name  # bit-identical
    assert {m for m, _, _ in reporter.metrics} >= {"loss", "learning_rate", "grad_norm", "tokens_per_s", "memory_mb",
                                                    "eval_loss"}


def test_full_sft_saves_a_whole_model_that_loads(tmp_path, tiny_base, alpaca_chat):
    from workers.core.modelstore import load_causal_lm

    result = run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), finetune="full",
                                               train_files=[str(alpaca_chat)], max_steps=3, learning_rate=1e-3,
                                               packing=False), ConsoleReporter())
    assert result["facts"]["kind"] != "adapter"
    model, tokenizer = load_causal_lm(tmp_path / "out")
    assert tokenizer.chat_template


def test_dpo_on_the_dpo_demo_reports_rewards_and_accuracies(tmp_path, tiny_base, dpo_pairs):
    reporter = ConsoleReporter()
    result = run_core_job("train", spec_params(tmp_path, method="dpo", base_model_dir=str(tiny_base),
                                               train_files=[str(dpo_pairs)], max_steps=4, batch_size=2, max_length=512,
                                               learning_rate=1e-3, eval_fraction=0.2), reporter)
    names = {m for m, _, _ in reporter.metrics}
    assert {"rewards_accuracies", "rewards_chosen", "rewards_rejected", "rewards_margins", "loss"} <= names
    assert sorted(losses(reporter)) == [1, 2, 3, 4]
    assert result["facts"]["kind"] == "adapter"
    assert result["final_metrics"]["eval_loss"] is not None


def test_sample_generations_are_appended_to_samples_jsonl(tmp_path, tiny_base, alpaca_chat):
    reporter = ConsoleReporter()
    run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                      max_steps=4, sample_every=2, sample_prompts=["Tell me a joke."],
                                      sample_max_tokens=8), reporter)
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "samples.jsonl").read_text().splitlines()]
    assert [(x["step"], x["prompt"]) for x in lines] == [(2, "Tell me a joke."), (4, "Tell me a joke.")]
    assert all(isinstance(x["output"], str) for x in lines)


def test_a_dry_run_measures_speed_and_writes_nothing(tmp_path, tiny_base, alpaca_chat):
    result = run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), train_files=[str(alpaca_chat)],
                                               max_steps=200, dry_run_steps=3), ConsoleReporter())
    dry = result["dry_run"]
    assert dry["seconds_per_step"] > 0 and dry["tokens_per_s"] > 0 and dry["peak_memory_bytes"] > 0
    assert dry["estimated_total_seconds"] == pytest.approx(dry["seconds_per_step"] * 200, rel=0.01)
    assert not (tmp_path / "out").exists()
    assert not any((tmp_path / "ckpt").glob("checkpoint-*"))
