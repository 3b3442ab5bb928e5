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


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_full_sft_changes_every_weight_and_the_saved_model_fits_its_training_answers_better(tmp_path, tiny_base,
                                                                                            alpaca_chat):
    import torch

    from workers.core.modelstore import load_causal_lm, perplexity

    reporter = ConsoleReporter()
    result = run_core_job("train", spec_params(tmp_path, base_model_dir=str(tiny_base), finetune="full",
                                               train_files=[str(alpaca_chat)], max_steps=8, learning_rate=3e-3,
                                               packing=False), reporter)
    assert result["facts"]["kind"] != "adapter"
    curve = losses(reporter)
    assert sorted(curve) == list(range(1, 9)) and sum(curve[s] for s in (6, 7, 8)) / 3 < curve[1]
    out = tmp_path / "out"
    model, tokenizer = load_causal_lm(out)
    base, _ = load_causal_lm(tiny_base)
    assert tokenizer.chat_template
    base_weights = dict(base.named_parameters())
    unchanged = [name for name, p in model.named_parameters() if torch.equal(p, base_weights[name])]
    assert unchanged == []  # a full fine-tune moves every weight, norms included
    answers = [r["messages"][-1]["content"] for r in read_jsonl(alpaca_chat)[:20]]
    tuned_ppl, base_ppl = perplexity(out, answers, max_tokens=1024), perplexity(tiny_base, answers, max_tokens=1024)
    assert tuned_ppl < 0.8 * base_ppl, (tuned_ppl, base_ppl)  # the saved weights are the trained ones


def answer_logprobs(model, tokenizer, record: dict, max_length: int) -> tuple[float, float] | None:
    """Summed log-probabilities of the chosen and the rejected answer after the prompt, within the
    first `max_length` tokens as in training (None when the prompt alone fills them)."""
    import torch

    prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
    start = len(tokenizer(prompt, add_special_tokens=False).input_ids)
    if start >= max_length:
        return None
    sums = []
    for key in ("chosen", "rejected"):
        text = tokenizer.apply_chat_template(record["prompt"] + record[key], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :max_length]
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].float().log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
        sums.append(float(logp[start - 1:].sum()))
    return sums[0], sums[1]


def test_dpo_raises_the_chosen_answers_over_the_rejected_on_its_training_pairs(tmp_path, tiny_base, dpo_pairs):
    import math

    from safetensors.torch import load_file

    from workers.core.modelstore import load_causal_lm
    from workers.core.training.data import split_eval
    from workers.core.training.spec import TrainSpec

    reporter = ConsoleReporter()
    params = spec_params(tmp_path, method="dpo", base_model_dir=str(tiny_base), train_files=[str(dpo_pairs)],
                         max_steps=10, batch_size=2, max_length=256, learning_rate=1e-2, eval_fraction=0.2,
                         lora_r=8, lora_alpha=16, lora_targets=ALL_LINEAR)  # TRL refuses a LoRA on lm_head
    result = run_core_job("train", params, reporter)
    names = {m for m, _, _ in reporter.metrics}
    assert {"rewards_accuracies", "rewards_chosen", "rewards_rejected", "rewards_margins", "loss"} <= names
    curve = losses(reporter)
    assert sorted(curve) == list(range(1, 11))
    assert curve[1] == pytest.approx(math.log(2), abs=1e-3)  # step 1: the policy is still the reference
    assert result["facts"]["kind"] == "adapter" and result["final_metrics"]["eval_loss"] is not None
    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any(key.endswith("lora_B.weight") and t.abs().sum() > 0 for key, t in adapter.items())  # B starts at 0

    train, _ = split_eval(read_jsonl(dpo_pairs), 0.2, params.get("seed", TrainSpec.seed))  # the pairs it trained on
    base, tokenizer = load_causal_lm(tiny_base)
    tuned, _ = load_causal_lm(tmp_path / "out", base_folder=tiny_base)
    gains = []
    for record in train:
        if (before := answer_logprobs(base, tokenizer, record, 256)) is None:
            continue  # a long prompt: the pair taught nothing within 256 tokens
        chosen, rejected = answer_logprobs(tuned, tokenizer, record, 256)
        gains.append((chosen - rejected) - (before[0] - before[1]))  # the implicit reward margin / beta
    assert len(gains) >= 8
    assert sum(gains) / len(gains) > 1.0, gains  # measured: 11 nats on average, every pair up
    assert sum(g > 0 for g in gains) >= 0.8 * len(gains), gains


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

