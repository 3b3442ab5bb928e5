"""Small shared pieces of the recipes: device and threads, the model to train (pretrain init,
full, LoRA, QLoRA), TrainingArguments from a spec, the Trainer mixin that makes checkpoints
atomic and counts tokens, and the final atomic save."""
from __future__ import annotations

import contextlib
import gc
import os
import shutil
from pathlib import Path

from workers.core.specs import SpecError
from workers.core.training import checkpoints
from workers.core.training.presets import ARCHITECTURES


def setup_torch(spec) -> dict:
    """Threads, device kind/name and the precision actually used."""
    import torch

    threads = spec.torch_threads or int(os.environ.get("OMP_NUM_THREADS") or "0") or (os.cpu_count() or 1)
    if "LOCAL_WORLD_SIZE" in os.environ and not spec.torch_threads and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, threads // int(os.environ["LOCAL_WORLD_SIZE"]))
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    # auto: bf16 autocast on GPU, fp32 on CPU; an explicit bf16 is honoured on CPU too (slow on most CPUs)
    bf16 = spec.precision == "bf16" or (spec.precision == "auto" and cuda)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    return {"cuda": cuda, "bf16": bf16, "device_name": name, "threads": threads}


def count_parameters(model) -> tuple[int, int]:
    total = trainable = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def train_or_load_tokenizer(spec, records: list[dict], work_dir: Path):
    """Pretraining tokenizer: BPE trained on the text (saved under work_dir/tokenizer so a resumed
    attempt reuses it), or the tokenizer of a folder."""
    from transformers import AutoTokenizer

    if spec.tokenizer != "train":
        return AutoTokenizer.from_pretrained(spec.tokenizer, local_files_only=True, trust_remote_code=False)
    folder = Path(work_dir) / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from workers.core.training.tokenizer_train import train_bpe_tokenizer

        train_bpe_tokenizer((r["text"] for r in records if isinstance(r.get("text"), str)), folder,
                            vocab_size=spec.vocab_size)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_pretrain_model(spec, tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    settings = dict(ARCHITECTURES[spec.architecture])
    settings["max_position_embeddings"] = max(settings["max_position_embeddings"], spec.max_length)
    config = LlamaConfig(**settings, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def load_model(spec, env: dict):
    """(model, tokenizer) ready to train: the base in full, or with LoRA / QLoRA adapters."""
    import torch
    from transformers import AutoModelForCausalLM

    from workers.core.modelstore.loading import MODEL_LOAD_OPTIONS, load_tokenizer
    from workers.core.modelstore.validation import check_folder

    check_folder(Path(spec.base_model_dir))
    tokenizer = load_tokenizer(Path(spec.base_model_dir))
    kwargs = dict(use_safetensors=True, **MODEL_LOAD_OPTIONS)
    if spec.finetune == "qlora":
        if not env["cuda"]:
            raise SpecError("finetune", "QLoRA needs a CUDA GPU (bitsandbytes 4-bit)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SpecError("finetune", "QLoRA needs the bitsandbytes package on this GPU worker "
                                        "(pip install bitsandbytes)") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif spec.finetune == "lora" and env["bf16"] and env["cuda"]:
        kwargs["dtype"] = torch.bfloat16  # frozen base in bf16; peft keeps the adapters in fp32
    else:
        kwargs["dtype"] = torch.float32  # full fine-tune: fp32 master weights (+ bf16 autocast on GPU)
    model = AutoModelForCausalLM.from_pretrained(spec.base_model_dir, **kwargs)
    if spec.finetune in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if spec.finetune == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
        targets = "all-linear" if spec.lora_targets == ["all-linear"] else list(spec.lora_targets)
        config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                            target_modules=targets, task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            raise SpecError("lora_targets", str(exc)) from None
        if spec.gradient_checkpointing:
            model.enable_input_require_grads()
    return model, tokenizer


def training_arguments(spec, env: dict, *, staging: str, has_eval: bool, cls=None, **extra):
    """TrainingArguments (or a subclass such as TRL's DPOConfig) from the spec."""
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[spec.lr_schedule]
    dry = spec.dry_run_steps > 0
    kwargs = dict(
        output_dir=staging,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=schedule,
        warmup_steps=spec.warmup_ratio,  # a float below 1 is a ratio of the total steps (transformers 5)
        max_steps=spec.max_steps if spec.max_steps else -1,
        num_train_epochs=spec.epochs,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,
        logging_steps=spec.log_every,
        logging_first_step=False,
        save_strategy="no" if dry else "steps",
        save_steps=spec.save_every,
        save_total_limit=None,  # checkpoints.prune keeps the last K COMPLETE ones
        eval_strategy="steps" if has_eval and not dry else "no",
        eval_steps=spec.eval_every,
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=env["bf16"],
        optim="adamw_torch_fused" if env["cuda"] else "adamw_torch",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not env["cuda"],
        ddp_backend=("nccl" if env["cuda"] else "gloo") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        ddp_find_unused_parameters=False if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    if spec.gradient_checkpointing:
        kwargs.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.distributed == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs["fsdp"] = "full_shard auto_wrap"
        kwargs["ddp_find_unused_parameters"] = None
    kwargs.update(extra)
    return cls(**kwargs)


def length_grouped_sampling() -> dict:
    """TrainingArguments for length-grouped batches: `train_sampling_strategy` in transformers 5.24,
    `group_by_length` in older releases (5.17 is on some GPU workers)."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    if "train_sampling_strategy" in names:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True} if "group_by_length" in names else {}


def puyu_trainer_class(base):
    """`base` (Trainer or TRL's DPOTrainer) with atomic checkpoints, real-token counting and, when
    the recipe passes a loss.HeadLoss as compute_loss_func, the loss without full logits."""

    class PuyuTrainer(base):
        checkpoint_dir: str = ""
        keep_checkpoints: int = 2
        token_counter = None

        def compute_loss(self, model, inputs, *args, **kwargs):
            real = inputs.pop("real_tokens", None)
            if model.training and self.token_counter is not None:
                if real is None:
                    masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and hasattr(v, "sum")]
                    real = sum(int(m.sum()) for m in masks) if masks else inputs["input_ids"].numel()
                self.token_counter.add(int(real))
            capturing = getattr(self.compute_loss_func, "capturing", None)  # loss.HeadLoss: takes the head's input
            with capturing() if capturing else contextlib.nullcontext():
                return super().compute_loss(model, inputs, *args, **kwargs)

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop("real_tokens", None)
            return super().prediction_step(model, inputs, *args, **kwargs)

        def _save_checkpoint(self, model, trial):
            # The Trainer writes checkpoint-N into the staging root (args.output_dir); once every
            # rank has written its part it is committed atomically, manifest last.
            with checkpoints.writing(self.state.global_step):  # a full disk: a clear DiskFull
                super()._save_checkpoint(model, trial)
            _barrier()
            if self.args.should_save:
                staged = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
                checkpoints.commit_checkpoint(staged, Path(self.checkpoint_dir), self.state.global_step,
                                              self.keep_checkpoints)
            _barrier()

    return PuyuTrainer


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def save_final(model, tokenizer, spec, reporter) -> dict:
    """Write the final adapter or model (+ tokenizer, generation config) to a temporary sibling of
    output_dir and rename it into place; the facts the registry stores."""
    from workers.core.modelstore.saving import write_model_folder

    out = Path(spec.output_dir)
    if out.exists():  # left by an attempt that died after writing it: this attempt writes it again
        shutil.rmtree(out)
    unwrapped = getattr(model, "module", model)
    unwrapped.config.use_cache = True  # training turned the cache off; the saved model generates normally
    base = getattr(unwrapped, "get_base_model", lambda: unwrapped)()
    base.config.use_cache = True

    def write(folder: Path) -> None:
        if hasattr(unwrapped, "peft_config"):
            # never copy base weights (lm_head/embeddings when targeted) into the adapter: they are unchanged
            unwrapped.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)
        else:
            unwrapped.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    reporter.log(f"saving the final {'adapter' if spec.is_adapter else 'model'} to {out}")
    return write_model_folder(out, reporter, write).to_dict()


def free_memory() -> None:
    """After the caller dropped its references (model, trainer, optimizer): collect and give the
    GPU cache back, so a cancelled or finished job leaves the device free."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
