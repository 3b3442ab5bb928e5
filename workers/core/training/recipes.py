"""One recipe per method family, each readable top to bottom: setup / train / save / cleanup.

    LMRecipe   pretrain, cpt, sft: transformers Trainer + our own collator and labels (TRL's SFT
               loss ran ~2x slower on CPU), padding-free packing by default, and the loss of
               loss.py (logits only for positions with a label, in chunks).
    DPORecipe  dpo: TRL's DPOTrainer (its pair collation, reference log-probs and reward metrics).

Both use the same components: model loading (components.load_model), TrainingArguments, the
Trainer mixin with atomic checkpoints (components.puyu_trainer_class / checkpoints.py) and the
Reporter callbacks (callbacks.py). No hand-written training loop: the Trainer covers resume
(exact after SIGKILL from a complete checkpoint), accumulation, schedules, DDP and bf16.

Batching, chosen by measurement (bench/train_packing.py, real non-pad tokens/s, same model and
optimizer): `packing: true` (the spec default) packs samples padding-free; `packing: false` pads
batches of samples of similar length (the Trainer's length-grouped sampler), never random-order
padding, which is the slowest mode everywhere. Measured on the 2-core CPU here (shared with other
jobs, so noisy), 29M Llama, max_length 512, batch 8, two runs: packing 1.48x / 1.97x random-order
padding and 0.75x / 1.22x length-grouped padding (the issue measured 1.92x and 0.87x at 1024); a 5M
model at 256: 2.1x and 2.4x. sdpa with the block-diagonal mask computed each row's full
max_length x max_length scores; a packed run now attends within each sample only
(packed_attention.py): at 1024, 1.96x random padding and 1.12x the masked packing, 0.94x
length-grouped padding (2026-12-04). Decision: packing stays the default on every device
(consistently faster than the Trainer default, exact, random data order, constant memory per
step); `packing: false` gives the grouped mode.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from workers.core.reporting import JobCancelled, JobSuspended, check_cancelled
from workers.core.training import checkpoints, components, data, packed_attention
from workers.core.training.loss import head_loss_for
from workers.core.training.templates import template_for_records


def run_recipe(spec, reporter, *, stop_file: str | None = None) -> dict:
    recipe = (DPORecipe if spec.method == "dpo" else LMRecipe)(spec, reporter, stop_file=stop_file)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.cleanup()


class Recipe:
    def __init__(self, spec, reporter, *, stop_file: str | None = None):
        self.spec, self.reporter, self.stop_file = spec, reporter, stop_file
        self.main = components.is_main_process()
        self.model = self.tokenizer = self.trainer = None
        self.resume = None
        self.staging_tmp = None

    # -- setup ----------------------------------------------------------------------------------
    def setup(self) -> None:
        spec = self.spec
        self.env = components.setup_torch(spec)
        self.checkpoint_dir = Path(spec.checkpoint_dir)
        if self.main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            removed = checkpoints.clean_incomplete(self.checkpoint_dir)
            if removed:
                self.reporter.log(f"removed incomplete checkpoint folders: {', '.join(sorted(removed))}", "warning")
        components._barrier()
        self.resume = None if spec.dry_run_steps else checkpoints.resolve_resume(self.checkpoint_dir, spec.resume_from)
        if self.resume:
            self.reporter.log(f"resuming from {Path(self.resume).name}")
        records = data.read_records(spec.train_files)
        self.format = data.resolve_format(spec.method, spec.data_format, records[0])
        if spec.eval_files:
            eval_records = data.read_records(spec.eval_files, "eval_files")
            data.resolve_format(spec.method, self.format, eval_records[0], "eval_files")
        else:
            records, eval_records = data.split_eval(records, spec.eval_fraction, spec.seed)
        check_cancelled(self.reporter)
        from transformers import set_seed

        set_seed(spec.seed)  # LoRA A matrices / pretraining init: the same run gives the same weights
        self.load_model(records)
        try:
            self.chat_template, note = template_for_records(spec.chat_template, getattr(self.tokenizer, "chat_template", None), records)
        except ValueError as exc:
            from workers.core.specs import SpecError

            raise SpecError("chat_template", str(exc)) from None
        if note:
            self.reporter.log(note)
        if self.chat_template:
            self.tokenizer.chat_template = self.chat_template  # saved with the model: it was trained with it
        self.saved_max_length = self.tokenizer.model_max_length
        self.tokenizer.model_max_length = 1 << 40  # lengths are handled here (chunking / truncation)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        total, trainable = components.count_parameters(self.model)
        self.parameters, self.trainable = total, trainable
        self.reporter.log(f"{spec.method} ({spec.finetune}): {total:,} parameters, {trainable:,} trainable; "
                          f"{self.env['device_name']}, bf16={self.env['bf16']}, threads={self.env['threads']}")
        self.build_data(records, eval_records)
        check_cancelled(self.reporter)
        self.build_trainer()

    def load_model(self, records) -> None:
        spec = self.spec
        if spec.method == "pretrain":
            self.tokenizer = components.train_or_load_tokenizer(spec, records, self.checkpoint_dir)
            self.model = components.build_pretrain_model(spec, self.tokenizer)
        else:
            self.model, self.tokenizer = components.load_model(spec, self.env)
        self.model.config.use_cache = False  # packed forwards need it off (data.py); training never uses it

    def _callbacks(self, total_steps: int) -> list:
        from workers.core.training.callbacks import (ReporterCallback, SampleCallback, StepLimitCallback,
                                                     StopCallback, TokenCounter)

        spec = self.spec
        self.counter = TokenCounter()
        self.counter.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        flops = (6 if spec.finetune == "full" else 4) * self.parameters  # LoRA: no weight gradients
        self.progress = ReporterCallback(self.reporter, self.counter, total_steps=total_steps,
                                         flops_per_token=flops if self.env["cuda"] else 0.0,
                                         device_name=self.env["device_name"] if self.env["cuda"] else "")
        callbacks = [self.progress]
        if self.stop_file:
            callbacks.append(StopCallback(self.stop_file))
        if spec.dry_run_steps:
            callbacks.append(StepLimitCallback(spec.dry_run_steps))
        if spec.sample_every and self.main and not spec.dry_run_steps:
            callbacks.append(SampleCallback(self.reporter, self.tokenizer, spec.sample_prompts, spec.sample_every,
                                            spec.sample_max_tokens, self.checkpoint_dir / "samples.jsonl",
                                            chat=spec.method in ("sft", "dpo"), chat_template=self.chat_template))
        return callbacks

    def _staging(self) -> str:
        if self.spec.dry_run_steps:
            self.staging_tmp = tempfile.mkdtemp(prefix="puyu-dry-run-")
            return self.staging_tmp
        return str(self.checkpoint_dir / checkpoints.STAGING)

    def total_steps(self, n_rows: int) -> int:
        spec = self.spec
        if spec.max_steps:
            return spec.max_steps
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_epoch = math.ceil(n_rows / (spec.batch_size * world) / spec.grad_accum)
        return max(1, math.ceil(per_epoch * spec.epochs))

    def _configure_trainer(self) -> None:
        from transformers.trainer_callback import PrinterCallback

        self.trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the Reporter has them
        self.trainer.checkpoint_dir, self.trainer.keep_checkpoints = str(self.checkpoint_dir), self.spec.keep_checkpoints
        self.trainer.token_counter = self.counter

    # -- train ----------------------------------------------------------------------------------
    def train(self) -> dict:
        spec = self.spec
        started = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=self.resume)
        seconds = time.perf_counter() - started
        if self.reporter.should_stop() or (self.stop_file and Path(self.stop_file).exists()):
            raise JobCancelled("stopped on request")
        step = self.trainer.state.global_step
        suspended = any(getattr(c, "suspended", False) for c in self.trainer.callback_handler.callbacks)
        if suspended and step < self.progress.total_steps and not spec.dry_run_steps:
            # Warm shutdown: the Trainer checkpointed this step (callbacks.stop_here); hand the job
            # back (at the last step there is nothing left to resume: finish instead).
            raise JobSuspended(f"checkpointed at step {step}")
        if spec.dry_run_steps:
            return {"dry_run": self.dry_run_report(seconds), "checkpoints": [], "resumed_from": None,
                    "final_metrics": {"loss": self.progress.last.get("loss"), "eval_loss": None,
                                      "tokens": self.counter.total, "steps": step,
                                      "train_seconds": round(seconds, 3)}}
        metrics = {"loss": self.progress.last.get("loss"), "tokens": self.counter.total, "steps": step,
                   "train_seconds": round(seconds, 3)}
        if self.trainer.eval_dataset is not None and self.progress.last_step.get("eval_loss") == step:
            metrics["eval_loss"] = self.progress.last["eval_loss"]  # the Trainer evaluated at the last step
        elif self.trainer.eval_dataset is not None:
            evaluated = self.trainer.evaluate()
            metrics["eval_loss"] = evaluated.get("eval_loss")
            if self.main and metrics["eval_loss"] is not None:
                self.reporter.metric("eval_loss", step, float(metrics["eval_loss"]))
        else:
            metrics["eval_loss"] = None
        check_cancelled(self.reporter)
        result = {"final_metrics": metrics, "resumed_from": self.resume,
                  "checkpoints": checkpoints.complete_checkpoints(self.checkpoint_dir)}
        if self.main:
            self.tokenizer.model_max_length = self.saved_max_length
            result["facts"] = components.save_final(self.trainer.model, self.tokenizer, spec, self.reporter)
            self.reporter.progress(1.0, f"trained {step} steps")
        components._barrier()
        return result

    def dry_run_report(self, seconds: float) -> dict:
        times = self.progress.step_times[1:] or self.progress.step_times  # the first step warms up
        per_step = statistics.median(times) if times else seconds
        total = self.progress.total_steps
        measured = sum(times) or seconds
        tokens = self.counter.total * (len(times) / max(len(self.progress.step_times), 1))
        from workers.core.training.callbacks import peak_memory_bytes

        report = {"seconds_per_step": round(per_step, 4), "tokens_per_s": round(tokens / measured, 1),
                  "peak_memory_bytes": peak_memory_bytes(), "estimated_total_seconds": round(per_step * total, 1),
                  "steps_measured": len(self.progress.step_times), "total_steps": total}
        self.reporter.log(f"dry run: {per_step:.3f} s/step, about {_human(per_step * total)} for {total} steps")
        return report

    # -- cleanup --------------------------------------------------------------------------------
    def cleanup(self) -> None:
        self.trainer = self.model = None
        if self.staging_tmp:
            shutil.rmtree(self.staging_tmp, ignore_errors=True)
        elif self.main and hasattr(self, "checkpoint_dir"):
            shutil.rmtree(self.checkpoint_dir / checkpoints.STAGING, ignore_errors=True)
        components.free_memory()


class LMRecipe(Recipe):
    """pretrain / cpt / sft with Trainer, our collator and our labels."""

    def build_data(self, records, eval_records) -> None:
        spec = self.spec
        pad_id = self.tokenizer.pad_token_id
        samples = data.render_samples(records, self.format, self.tokenizer, spec.max_length, self.chat_template)
        eval_samples = data.render_samples(eval_records, self.format, self.tokenizer, spec.max_length,
                                           self.chat_template) if eval_records else []
        if not samples:
            from workers.core.specs import SpecError

            raise SpecError("train_files", "no record has a token to train on (check the chat template and max_length)")
        self.train_set, self.eval_set, self.collator, stats = data.build_lm_datasets(
            samples, eval_samples, packing=spec.packing, max_length=spec.max_length, pad_id=pad_id)
        self.reporter.log(f"data: {stats.get('samples')} samples, {stats.get('tokens')} tokens"
                          + (f" packed into {stats['packs']} sequences of {spec.max_length} (fill {stats['fill']:.1%})"
                             if spec.packing else " (padded batches)")
                          + f"; {len(eval_samples)} held-out samples")

    def build_trainer(self) -> None:
        from transformers import Trainer

        spec = self.spec
        extra = {} if spec.packing else components.length_grouped_sampling()
        if spec.packing and packed_attention.use(self.model):
            self.reporter.log("attention: each packed sample attends within itself only (packed_attention.py)")
        args = components.training_arguments(spec, self.env, staging=self._staging(),
                                             has_eval=self.eval_set is not None, **extra)
        head_loss, plain_because = head_loss_for(self.model, spec)
        if head_loss is None:
            self.reporter.log(f"loss: the plain path, logits for every position ({plain_because})")
        cls = components.puyu_trainer_class(Trainer)
        self.trainer = cls(model=self.model, args=args, train_dataset=self.train_set, eval_dataset=self.eval_set,
                           data_collator=self.collator, processing_class=self.tokenizer, compute_loss_func=head_loss,
                           callbacks=self._callbacks(self.total_steps(len(self.train_set))))
        self._configure_trainer()


class DPORecipe(Recipe):
    """dpo with TRL's DPOTrainer: the reference model is the base with the adapter disabled (LoRA)
    or a frozen copy (full)."""

    def build_data(self, records, eval_records) -> None:
        from datasets import Dataset

        self.train_set = Dataset.from_list(data.preference_rows(records))
        self.eval_set = Dataset.from_list(data.preference_rows(eval_records)) if eval_records else None
        self.reporter.log(f"data: {len(records)} preference pairs; {len(eval_records)} held out")

    def build_trainer(self) -> None:
        from trl import DPOConfig, DPOTrainer

        spec = self.spec
        args = components.training_arguments(spec, self.env, staging=self._staging(),
                                             has_eval=self.eval_set is not None, cls=DPOConfig,
                                             beta=spec.dpo_beta, max_length=spec.max_length)
        base = components.puyu_trainer_class(DPOTrainer)

        class PuyuDPOTrainer(base):
            def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
                # TRL 1.16's DPOTrainer declares no label_names, so Trainer.evaluate would compute no
                # eval_loss at all: compute the DPO loss of the held-out pairs directly.
                import torch

                inputs = self._prepare_inputs(inputs)
                with torch.no_grad():
                    loss = self.compute_loss(model, inputs)
                return loss.detach(), None, None

        cls = PuyuDPOTrainer
        self.trainer = cls(model=self.model, args=args, train_dataset=self.train_set, eval_dataset=self.eval_set,
                           processing_class=self.tokenizer,
                           callbacks=self._callbacks(self.total_steps(len(self.train_set))))
        self._configure_trainer()


def _human(seconds: float) -> str:
    from workers.core.training.callbacks import _duration

    return _duration(seconds)
