"""Trainer callbacks that connect a transformers Trainer to the Reporter: metrics, progress with
ETA, cooperative cancel (control.should_training_stop: the loop stops after the current step),
and sample generations from fixed prompts.

In a multi-process run only rank 0 has a Reporter; every rank runs StopCallback, which watches a
stop file the parent process writes, so all ranks stop at the same step.

Two kinds of stop, decided at the end of a step:
- cancel (or a lost lease): stop, and write NO checkpoint for this step, so an attempt that lost
  its job cannot leave state that the next attempt would resume from;
- suspend (warm shutdown of the worker): log, checkpoint this step, stop; the recipe raises
  JobSuspended and the next attempt resumes exactly here (no lost step).
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from workers.core.reporting import suspend_requested
from workers.core.training.distributed import suspend_file

# Peak dense bf16 FLOP/s per GPU (datasheet, without sparsity), for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
                   "L4": 121e12, "4090": 165e12, "3090": 71e12, "V100": 125e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


def peak_memory_bytes() -> int:
    """max_memory_allocated on GPU, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    if sys.platform.startswith("linux"):
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across vfork + exec,
        # so a torchrun rank started by a large worker would report the worker's size.
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class TokenCounter:
    """Shared between the trainer (which counts real tokens of each micro-batch) and the metrics
    callback (which turns them into tokens/s per logging interval)."""

    def __init__(self) -> None:
        self.total = 0
        self.world_size = 1

    def add(self, n: int) -> None:
        self.total += int(n) * self.world_size


class ReporterCallback(TrainerCallback):
    """Forward Trainer logs as metrics (step = optimizer step), report progress with an ETA and
    check the Reporter's cancel flag every step."""

    def __init__(self, reporter, counter: TokenCounter, *, total_steps: int, flops_per_token: float = 0.0,
                 device_name: str = "", start_step: int = 0):
        self.reporter = reporter
        self.counter = counter
        self.total_steps = total_steps
        self.flops_per_token = flops_per_token
        self.peak = peak_flops(device_name) if device_name else None
        self.start_step = start_step
        self.started = None
        self.last_time = None
        self.last_tokens = 0
        self.last = {}  # the latest value of each metric
        self.last_step = {}  # and the step it was reported at
        self.cancelled = False
        self.suspended = False
        self.step_times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_time = time.perf_counter()
        self.start_step = state.global_step
        self._step_start = self.started

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.step_times.append(now - self._step_start)
        self._step_start = now
        step = state.global_step
        # No ETA in the message: the job system derives one from the progress, and a second one
        # here disagreed with it on the same page.
        self.reporter.progress(min(1.0, step / max(self.total_steps, 1)), f"step {step}/{self.total_steps}")
        if self.reporter.should_stop():
            stop_here(control, save=False)
            self.cancelled = True
        elif suspend_requested(self.reporter):
            stop_here(control, save=True)
            self.suspended = True
            self.reporter.log(f"worker shutting down: checkpointing step {step} and handing the job back")
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = state.global_step
        now = time.perf_counter()
        for name, value in (logs or {}).items():
            if name in ("epoch", "total_flos", "train_runtime", "train_samples_per_second",
                        "train_steps_per_second", "train_loss") or not isinstance(value, (int, float)):
                continue
            if math.isnan(value) or math.isinf(value):
                continue
            if name.startswith("eval_") and name.endswith(("runtime", "per_second")):
                continue
            self._metric(name, step, float(value))
        if "loss" in (logs or {}) and now > self.last_time:
            tokens_per_s = (self.counter.total - self.last_tokens) / (now - self.last_time)
            self.last_time, self.last_tokens = now, self.counter.total
            self._metric("tokens_per_s", step, tokens_per_s)
            if self.peak and self.flops_per_token:
                self._metric("mfu", step, tokens_per_s * self.flops_per_token / self.peak)
            self._metric("memory_mb", step, peak_memory_bytes() / 2**20)

    def _metric(self, name: str, step: int, value: float) -> None:
        name = name.replace("/", "_")  # TRL's "rewards/chosen" → "rewards_chosen"
        self.last[name] = value
        self.last_step[name] = step
        self.reporter.metric(name, step, value)


def stop_here(control, *, save: bool) -> None:
    """End training after this step; `save` forces (True) or forbids (False) its checkpoint, and a
    saved step also logs its loss so the resumed run's metrics have no gap."""
    control.should_training_stop = True
    control.should_save = save
    if save:
        control.should_log = True


class StopCallback(TrainerCallback):
    """Stops every rank when the parent wrote the stop file (cancel: no checkpoint) or the suspend
    file (warm shutdown: checkpoint this step) in multi-process runs."""

    def __init__(self, stop_file: str):
        self.stop_file = Path(stop_file)
        self.suspend_file = suspend_file(stop_file)
        self.suspended = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_file.exists():
            stop_here(control, save=False)
        elif self.suspend_file.exists():
            stop_here(control, save=True)
            self.suspended = True
        return control


class StepLimitCallback(TrainerCallback):
    """Dry runs: stop after N optimizer steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control


class SampleCallback(TrainerCallback):
    """Every N steps, greedy generations from fixed prompts, appended to samples.jsonl and logged."""

    def __init__(self, reporter, tokenizer, prompts: list[str], every: int, max_tokens: int, path: Path,
                 chat: bool, chat_template: str | None):
        self.reporter, self.tokenizer, self.prompts = reporter, tokenizer, prompts
        self.every, self.max_tokens, self.path = every, max_tokens, Path(path)
        self.chat, self.chat_template = chat, chat_template

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.every or state.global_step % self.every or model is None:
            return control
        import torch

        model = getattr(model, "module", model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for prompt in self.prompts:
                    output = self._generate(model, prompt)
                    line = {"step": state.global_step, "prompt": prompt, "output": output}
                    with open(self.path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                    self.reporter.log(f"sample at step {state.global_step}: {prompt!r} → {output!r}")
        finally:
            model.train(was_training)
        return control

    def _generate(self, model, prompt: str) -> str:
        import torch

        tok = self.tokenizer
        if self.chat and (self.chat_template or getattr(tok, "chat_template", None)):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], chat_template=self.chat_template,
                                           add_generation_prompt=True, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
        ids = ids.to(next(model.parameters()).device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_tokens,
                             do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
