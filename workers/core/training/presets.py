"""Hyperparameter presets (like XTuner's configs) and Llama architecture presets for pretraining.

A preset is a dict of TrainSpec fields; the user edits, saves, clones and exports it as YAML.
Paths (base model, data, output) are never in a preset: the server fills them in. Light module:
no torch.

Gradient checkpointing: a preset that leaves `gradient_checkpointing` out gets the spec's default,
on for LoRA/QLoRA and off for full fine-tuning (where it pays: a frozen base has no gradients or
optimizer states, so activations are most of a LoRA's memory; see TrainSpec). The full preset says
false and the QLoRA one true explicitly, as their recipes elsewhere do.
"""
from __future__ import annotations

BUILTIN_PRESETS: dict[str, dict] = {
    "sft-lora-small": {
        "method": "sft", "finetune": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "lora_targets": ["all-linear"], "learning_rate": 2e-4, "lr_schedule": "cosine", "warmup_ratio": 0.03,
        "batch_size": 8, "grad_accum": 1, "max_length": 1024, "max_steps": 200, "packing": True,
        "save_every": 50, "eval_every": 50,
    },
    # The Quick start's LoRA of the starter model on the calculator dialogues, in a few minutes on 2 CPU
    # cores: a dialogue with its tools block is 295-360 SmolLM2 tokens, so 384 holds each whole (one a
    # sequence); bench/tool_use.py measured ~56 s a step at batch 4 x 1,024 tokens, so 15 steps at
    # 4 x 384 are ~5 min; a high rate because the run is short (1e-3 is the bench's).
    "quickstart-lora": {
        "method": "sft", "finetune": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "lora_targets": ["all-linear"], "learning_rate": 1e-3, "lr_schedule": "cosine", "warmup_ratio": 0.1,
        "batch_size": 4, "grad_accum": 1, "max_length": 384, "max_steps": 15, "packing": True,
        "eval_fraction": 0.02, "save_every": 15, "eval_every": 15,
    },
    "sft-full-small": {
        "method": "sft", "finetune": "full", "learning_rate": 2e-5, "lr_schedule": "cosine", "warmup_ratio": 0.03,
        "weight_decay": 0.01, "batch_size": 8, "grad_accum": 1, "max_length": 1024, "max_steps": 200,
        "packing": True, "gradient_checkpointing": False, "save_every": 50, "eval_every": 50,
    },
    "qlora-7b-style": {
        "method": "sft", "finetune": "qlora", "lora_r": 64, "lora_alpha": 16, "lora_dropout": 0.1,
        "lora_targets": ["all-linear"], "learning_rate": 2e-4, "lr_schedule": "cosine", "warmup_ratio": 0.03,
        "batch_size": 1, "grad_accum": 16, "max_length": 2048, "max_steps": 500, "packing": True,
        "gradient_checkpointing": True, "precision": "bf16", "save_every": 100, "eval_every": 100,
    },
    "dpo-lora": {
        "method": "dpo", "finetune": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "lora_targets": ["all-linear"], "dpo_beta": 0.1, "learning_rate": 5e-5, "lr_schedule": "cosine",
        "warmup_ratio": 0.1, "batch_size": 4, "grad_accum": 2, "max_length": 1024, "max_steps": 200,
        "packing": False, "save_every": 50, "eval_every": 50,
    },
    "pretrain-tiny": {
        "method": "pretrain", "finetune": "full", "architecture": "llama-tiny", "tokenizer": "train",
        "vocab_size": 8000, "learning_rate": 1e-3, "lr_schedule": "cosine", "warmup_ratio": 0.05,
        "weight_decay": 0.1, "batch_size": 8, "max_length": 512, "max_steps": 500, "packing": True,
        "save_every": 100, "eval_every": 100,
    },
    "cpt-lora": {
        "method": "cpt", "finetune": "lora", "lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.05,
        "lora_targets": ["all-linear"], "learning_rate": 1e-4, "lr_schedule": "cosine", "warmup_ratio": 0.03,
        "batch_size": 8, "max_length": 1024, "max_steps": 300, "packing": True, "save_every": 100,
        "eval_every": 100,
    },
}

# LlamaConfig fields of the pretraining architectures (vocab_size comes from the tokenizer).
ARCHITECTURES: dict[str, dict] = {
    # ~2-5M parameters with an 8k vocabulary: tests and smoke runs
    "llama-tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=688, max_position_embeddings=2048, tie_word_embeddings=True),
    # ~29M with an 8k vocabulary (the CPU packing benchmark's model)
    "llama-30m": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                      intermediate_size=1408, max_position_embeddings=2048, tie_word_embeddings=True),
    "llama-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                       intermediate_size=2048, max_position_embeddings=4096, tie_word_embeddings=True),
    # Qwen2.5-0.5B-like shape
    "llama-500m": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, max_position_embeddings=4096, tie_word_embeddings=True),
    # TinyLlama-like shape
    "llama-1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                     intermediate_size=5632, max_position_embeddings=4096, tie_word_embeddings=False),
}
