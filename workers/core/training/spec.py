"""The `train` job spec: what to train (method, fine-tune kind, base model, data) and how
(hyperparameters, checkpoints, processes). Imports nothing of the runner (job.py and the modules it
drives) and no ML library, so the web side, pre-flight and the command line validate a spec cheaply;
the only module of this package it reads is presets.py, a table of architecture names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from workers.core import paths
from workers.core.specs import SpecError, require_range, short
from workers.core.training.presets import ARCHITECTURES

METHODS = ("pretrain", "cpt", "sft", "dpo")
FINETUNES = ("full", "lora", "qlora")
SCHEDULES = ("cosine", "linear", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DISTRIBUTED = ("ddp", "fsdp")
DATA_FORMATS = ("", "text", "chat", "qa", "preference")
# Processes one training job may launch (torchrun ranks): one per device on the biggest node
# the studio is sized for; `PUYU_MAX_TRAIN_PROCESSES` raises it for bigger nodes.
DEFAULT_MAX_PROCESSES = 8


def max_processes() -> int:
    try:
        return max(1, int(os.environ.get("PUYU_MAX_TRAIN_PROCESSES") or DEFAULT_MAX_PROCESSES))
    except ValueError:
        return DEFAULT_MAX_PROCESSES


# Which canonical dataset formats each method trains on (data.resolve_format checks the data against it).
METHOD_FORMATS = {
    "pretrain": ("text",),
    "cpt": ("text",),
    "sft": ("chat", "qa"),
    "dpo": ("preference",),
}


# Each number field's allowed range, checked in validate() and shown by the studio's training form.
RANGES = {
    "eval_fraction": (0.0, 0.5),
    "max_length": (16, 131_072),
    "batch_size": (1, 4096),
    "grad_accum": (1, 4096),
    "learning_rate": (1e-9, 1.0),
    "warmup_ratio": (0.0, 0.5),
    "max_steps": (0, 10_000_000),
    "epochs": (0.0, 1000.0),
    "weight_decay": (0.0, 1.0),
    "max_grad_norm": (0.0, 1e6),
    "lora_r": (1, 1024),
    "lora_alpha": (1, 4096),
    "lora_dropout": (0.0, 0.9),
    "dpo_beta": (1e-4, 100.0),
    "seed": (0, 2**31 - 1),
    "save_every": (1, 10_000_000),
    "keep_checkpoints": (1, 100),
    "eval_every": (1, 10_000_000),
    "log_every": (1, 10_000),
    "sample_every": (0, 10_000_000),
    "sample_max_tokens": (1, 4096),
    "dry_run_steps": (0, 1000),
    "torch_threads": (0, 1024),
}


@dataclass
class TrainSpec:
    RANGES: ClassVar[dict] = RANGES  # what the studio's training form shows (apps never import workers.core)

    method: str = "sft"  # pretrain | cpt | sft | dpo
    finetune: str = "lora"  # full | lora | qlora   (pretrain is always full)
    base_model_dir: str = ""  # HF folder (a registry version); "" only for pretrain
    architecture: str = "llama-tiny"  # pretrain presets (presets.ARCHITECTURES)
    tokenizer: str = "train"  # pretrain: "train" = BPE trained on the data, or a folder with a tokenizer
    vocab_size: int = 8000  # for a trained tokenizer
    train_files: list = field(default_factory=list)  # normalized JSONL files (one canonical format)
    data_format: str = ""  # text | chat | qa | preference ("" = sniff the first record)
    eval_files: list = field(default_factory=list)  # empty → eval_fraction of train (split by seed)
    eval_fraction: float = 0.05
    chat_template: str = ""  # "" = the model's own; else a named template (templates.py) or a Jinja string
    max_length: int = 1024
    packing: bool = True  # padding-free packing (per-sample position_ids, no cross-sample attention)
    batch_size: int = 8  # sequences per device step
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.03
    max_steps: int = 100  # optimizer steps; 0 → use epochs
    epochs: float = 1.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # None = where it pays: on for LoRA/QLoRA, off for full fine-tuning and pretraining. A frozen base
    # has no gradients or optimizer states, so activations are most of a LoRA's memory: recomputing
    # them took SmolLM2's LoRA at 512 tokens from 2,291 to 1,343 MiB (bench/train_memory.py,
    # 2026-12-04) at the price of a second forward per step; a full fine-tune's memory is mostly
    # weights, gradients and AdamW states.
    gradient_checkpointing: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list = field(default_factory=lambda: ["all-linear"])
    dpo_beta: float = 0.1
    seed: int = 42
    save_every: int = 50  # checkpoint every N optimizer steps (and at the end)
    keep_checkpoints: int = 2
    eval_every: int = 50
    log_every: int = 1
    sample_every: int = 0  # 0 = never; else generate from sample_prompts every N steps
    sample_prompts: list = field(default_factory=list)
    sample_max_tokens: int = 48
    output_dir: str = ""  # the FINAL model/adapter folder, written atomically at the end
    checkpoint_dir: str = ""  # checkpoint-N folders and samples.jsonl (survives the job's attempts)
    resume_from: str = ""  # "" = latest complete checkpoint if any; a checkpoint folder; "none" = fresh
    num_processes: int = 1  # >1: torchrun --nproc_per_node N (gloo on CPU, nccl on GPU)
    distributed: str = "ddp"  # ddp | fsdp
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16
    dry_run_steps: int = 0  # >0: run N steps, measure, estimate the full run, save nothing
    torch_threads: int = 0  # 0 = OMP_NUM_THREADS if set, else os.cpu_count()

    def validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("finetune", self.finetune, FINETUNES)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("distributed", self.distributed, DISTRIBUTED)
        _choice("data_format", self.data_format, DATA_FORMATS)
        if self.data_format and self.data_format not in METHOD_FORMATS[self.method]:
            raise SpecError("data_format", f"{self.method} trains on {' or '.join(METHOD_FORMATS[self.method])} "
                                           f"data, not {self.data_format!r}")
        if self.method == "pretrain":
            if self.base_model_dir:
                raise SpecError("base_model_dir", "pretraining starts from random weights: leave it empty "
                                                  "(use method 'cpt' to continue training a model)")
            _choice("architecture", self.architecture, tuple(ARCHITECTURES))
            if self.tokenizer != "train":
                paths.readable("tokenizer", self.tokenizer, paths.MODELS, starter=True)
            require_range("vocab_size", self.vocab_size, 260, 262_144)
        else:
            paths.readable("base_model_dir", self.base_model_dir, paths.MODELS, starter=True)
        if not self.train_files:
            raise SpecError("train_files", "needs at least one dataset file")
        paths.readable_list("train_files", self.train_files, paths.DATASETS)
        paths.readable_list("eval_files", self.eval_files, paths.DATASETS)
        for name, (low, high) in RANGES.items():
            require_range(name, getattr(self, name), low, high)
        if self.max_steps == 0 and self.epochs <= 0:
            raise SpecError("epochs", "must be above 0 when max_steps is 0")
        if self.gradient_checkpointing is None:
            self.gradient_checkpointing = self.finetune in ("lora", "qlora") and self.method != "pretrain"
        elif not isinstance(self.gradient_checkpointing, bool):
            raise SpecError("gradient_checkpointing", f"must be true, false or null (where it pays), "
                                                      f"got {short(self.gradient_checkpointing)}")
        if not self.lora_targets or not all(isinstance(t, str) and t.replace("_", "").replace("-", "").isalnum()
                                            for t in self.lora_targets):
            raise SpecError("lora_targets", "must be a list of module names such as q_proj, or ['all-linear']")
        if self.sample_every and not self.sample_prompts:
            raise SpecError("sample_prompts", "sample_every is set: give at least one prompt")
        if not all(isinstance(p, str) and p for p in self.sample_prompts):
            raise SpecError("sample_prompts", "must be a list of non-empty strings")
        require_range("num_processes", self.num_processes, 1, max_processes())
        if not self.dry_run_steps or self.output_dir:
            paths.writable("output_dir", self.output_dir, paths.MODELS)
        paths.writable("checkpoint_dir", self.checkpoint_dir, paths.CHECKPOINTS)
        if self.resume_from not in ("", "none"):
            paths.readable("resume_from", self.resume_from, paths.CHECKPOINTS)
        if self.method == "pretrain" and self.finetune != "full":
            self.finetune = "full"  # pretraining trains every weight; the field is ignored
        if self.method == "dpo" and self.packing:
            self.packing = False  # DPO batches chosen/rejected pairs (TRL pads them); packing is SFT/pretrain only
        if self.finetune == "qlora" and self.precision == "fp32":
            raise SpecError("precision", "QLoRA computes in bf16: use precision auto or bf16")

    @property
    def is_adapter(self) -> bool:
        return self.finetune in ("lora", "qlora") and self.method != "pretrain"


def _choice(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise SpecError(name, f"must be one of {', '.join(a or repr(a) for a in allowed)}, got {short(value)}")
