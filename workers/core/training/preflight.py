"""Pre-flight checks of a training spec before it is queued: spec validity, data format vs method,
a rendered sample with its loss mask, max_length vs the model's context, and a memory estimate
against the target device, with a clear refusal and suggestions.

Fast: no weights are loaded (parameter counts come from config.json arithmetic) and only the
tokenizer is read. `params` may omit output_dir / checkpoint_dir (the server fills them in when
the job is created); placeholders are used here.

Memory model (bytes), per device, calibrated on CPU against measured peaks (below):
    weights      parameters x bytes: fp32 for full fine-tuning (master weights; bf16 autocast on
                 GPU), the frozen base in bf16 on GPU / fp32 on CPU for LoRA, 4-bit (0.5 byte,
                 + bf16 embeddings and lm_head) for QLoRA; + the fp32 adapter
    gradients    trainable parameters x 4
    optimizer    trainable parameters x 8 (AdamW: two fp32 moments)
    activations  tokens per step (batch_size x max_length) x the values kept per layer
                 (ACTIVATION_VALUES x hidden / intermediate, + LORA_INPUT_COPIES x each LoRA
                 branch's input with dropout on, + its r values) x layers, in bf16 on GPU / fp32
                 on CPU (sdpa keeps no seq x seq scores); gradient checkpointing keeps
                 CHECKPOINT_KEEPS of that (measured: more than the one hidden state per layer of
                 the textbook); + the logits: PLAIN_LOGIT_COPIES fp32 [tokens x vocab] on the plain
                 loss path, one chunk's worth (loss.CHUNK_BYTES) with the training loss of loss.py
    runtime      what every run holds besides the model (the Trainer, the rendered data, the
                 tokenizer, allocator arenas): RUNTIME_BYTES
    total        (the sum + 10% for the allocator and workspace) + runtime; budget = 90% of device memory

Calibration (2026-12-04, the 2-core CPU): the peak RSS of a fresh process minus its RSS after the
imports, running the spec through the training path with the product's defaults
(tests/core/training/peak_memory.py); tests/core/training/test_preflight_calibration.py keeps the
estimate within 30% of it for a tiny Llama and for SmolLM2-135M. The table below counted the
library pages the run maps too (25 MiB in that environment, 47 MiB in a fresh install); the
measure no longer does, and RUNTIME_BYTES went from 45 to 20 MiB with it: tiny Llama LoRA / full
then measured 27-32 / 29-30 MiB against 28 / 33 estimated, in both environments. Measured /
estimated, MiB:
    SmolLM2 SFT (tool dialogues)  LoRA 256 x 4   2,062 / 2,137   full 256 x 4   3,655 / 3,710
                                  LoRA 512 x 1   1,343 / 1,449   full 512 x 1   3,045 / 3,041
                                  LoRA 512 x 1 without gradient checkpointing   2,291 / 2,290
    SmolLM2 CPT (Shakespeare)     LoRA 512 x 1   1,377 / 1,449   full 512 x 1   3,043 / 3,041
    tiny Llama SFT (Alpaca)       LoRA 256 x 4      58 / 53      full 256 x 4      52 / 58
(Issue #14's case, LoRA at 256 x 4, was estimated at 2.3 GB against 5.0 GB measured before this
calibration and the chunked loss.) The GPU figures use the same value counts in bf16 and are not
calibrated: no GPU was at hand.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from workers.core import paths
from workers.core.data.tokenize import render_record
from workers.core.specs import SpecError, build_spec
from workers.core.training import data
from workers.core.training.presets import ARCHITECTURES
from workers.core.training.spec import TrainSpec
from workers.core.training.templates import template_for_records

LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def placeholders() -> dict:
    """Output folders for a spec checked before its run has any (never written: inside the data
    dir only because the spec refuses paths outside it)."""
    return {"output_dir": str(paths.data_dir() / paths.MODELS / "preflight"),
            "checkpoint_dir": str(paths.data_dir() / paths.CHECKPOINTS / "preflight")}


def preflight(params: dict, device: dict) -> dict:
    result = {"ok": False, "errors": [], "warnings": [], "memory": None, "suggestions": [], "sample": None,
              "context_length": None, "parameters": 0, "trainable_parameters": 0}
    errors = result["errors"]
    try:
        spec = build_spec(TrainSpec, {**placeholders(), **(params or {})})
    except SpecError as exc:
        errors.append({"field": exc.field, "message": exc.reason})
        return result
    cuda = device.get("kind") == "cuda"
    if spec.finetune == "qlora" and not cuda:
        errors.append({"field": "finetune", "message": "QLoRA needs a CUDA GPU (bitsandbytes 4-bit)"})

    config = _model_config(spec, errors)
    if config is not None:
        context = config.get("max_position_embeddings")
        result["context_length"] = context
        if spec.method != "pretrain" and context and spec.max_length > context:
            errors.append({"field": "max_length", "message": f"{spec.max_length} is longer than the model's context "
                                                                f"({context} tokens, config.json max_position_embeddings)"})
        shape = _shape(config)
        total, trainable = count_parameters(shape, spec)
        result["parameters"], result["trainable_parameters"] = total, trainable
        memory = estimate_memory(shape, spec, cuda)
        budget = int((device.get("memory_bytes") or 0) * 0.9)
        memory["budget"] = budget
        result["memory"] = memory
        if budget and memory["total"] > budget:
            result["suggestions"] = suggestions(shape, spec, cuda, budget)
            errors.append({"field": "memory", "message": (
                f"estimated {_gib(memory['total'])} GiB needed (weights {_gib(memory['weights'])}, gradients "
                f"{_gib(memory['gradients'])}, optimizer {_gib(memory['optimizer'])}, activations "
                f"{_gib(memory['activations'])}) but {device.get('name') or device.get('kind')} has "
                f"{_gib(budget)} GiB usable" + ("; try: " + "; ".join(result["suggestions"]) if result["suggestions"]
                                                 else ""))})
    _check_data(spec, result)
    result["ok"] = not errors
    return result


# ---------------------------------------------------------------------------------------------
# data


def _check_data(spec, result) -> None:
    errors = result["errors"]
    try:
        first = data.read_records(spec.train_files[:1], limit=1)[0]
        fmt = data.resolve_format(spec.method, spec.data_format, first,
                                  "data_format" if spec.data_format else "train_files")
    except SpecError as exc:
        errors.append({"field": exc.field, "message": exc.reason})
        return
    tokenizer = _tokenizer(spec, result)
    if tokenizer is None:
        return
    try:
        template, note = template_for_records(spec.chat_template, getattr(tokenizer, "chat_template", None), [first])
        if note:
            result["warnings"].append(note)
        rendered = render_record(first, fmt, tokenizer, chat_template=template, max_length=spec.max_length)
    except ValueError as exc:
        field = "chat_template" if "template" in str(exc) else "train_files"
        errors.append({"field": field, "message": f"the first record does not render: {exc}"})
        return
    result["sample"] = {"segments": rendered.segments, "tokens": len(rendered.input_ids),
                        "loss_tokens": rendered.loss_tokens}
    result["warnings"] += rendered.warnings
    if rendered.truncated:
        result["warnings"].append(f"the first record is longer than max_length ({spec.max_length}) and is truncated")
    if not rendered.loss_tokens:
        errors.append({"field": "chat_template", "message": "the first record has no token to train on with this "
                                                            "template (no assistant turn found)"})


def _tokenizer(spec, result):
    from transformers import AutoTokenizer

    if spec.method == "pretrain":
        if spec.tokenizer == "train":
            result["warnings"].append("the tokenizer is trained on the data when the job starts: no sample render yet")
            return None
        folder = spec.tokenizer
    else:
        folder = spec.base_model_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        tokenizer.model_max_length = 1 << 40  # truncation is reported by render_record itself
        return tokenizer
    except Exception as exc:  # a folder without a usable tokenizer
        result["errors"].append({"field": "tokenizer" if spec.method == "pretrain" else "base_model_dir",
                                 "message": f"cannot load a tokenizer from {folder}: {exc}"})
        return None


# ---------------------------------------------------------------------------------------------
# parameters and memory


def _model_config(spec, errors) -> dict | None:
    if spec.method == "pretrain":
        return {**ARCHITECTURES[spec.architecture], "vocab_size": spec.vocab_size}
    path = Path(spec.base_model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        errors.append({"field": "base_model_dir", "message": f"cannot read {path}: {exc}"})
        return None
    return config.get("text_config") or config


def _shape(config: dict) -> dict:
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "hidden": hidden, "layers": int(config.get("num_hidden_layers") or 0), "heads": heads,
        "kv_heads": int(config.get("num_key_value_heads") or heads), "head_dim": head_dim,
        "intermediate": int(config.get("intermediate_size") or 4 * hidden),
        "vocab": int(config.get("vocab_size") or 0), "tied": bool(config.get("tie_word_embeddings", False)),
    }


def _linear_shapes(s: dict) -> dict[str, tuple[int, int]]:
    h, q, kv, i = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"], s["intermediate"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def count_parameters(s: dict, spec) -> tuple[int, int]:
    """(total, trainable) from the config: embeddings, attention and MLP projections, norms."""
    linear = _linear_shapes(s)
    per_layer = sum(a * b for a, b in linear.values()) + 2 * s["hidden"]
    embeddings = s["vocab"] * s["hidden"] * (1 if s["tied"] else 2)
    total = embeddings + s["layers"] * per_layer + s["hidden"]
    if spec.method == "pretrain" or spec.finetune == "full":
        return total, total
    targets = LINEAR_MODULES if spec.lora_targets == ["all-linear"] else spec.lora_targets
    lora = s["layers"] * sum(spec.lora_r * (a + b) for name, (a, b) in linear.items() if name in targets)
    if "lm_head" in targets:
        lora += spec.lora_r * (s["hidden"] + s["vocab"])
    return total + lora, lora


# Fitted to the measured peaks (module doc), not derived: the fp32 values autograd's saved tensors,
# the gradients flowing back and the allocator's fragmentation add up to, per token and layer.
ACTIVATION_VALUES = (10, 3)  # x (hidden, intermediate): full fine-tuning of SmolLM2, 512 and 1,024 tokens
LORA_INPUT_COPIES = 2.65  # x each LoRA-targeted module's input width, with lora_dropout on (the dropped copy, its mask, its gradient)
CHECKPOINT_KEEPS = 0.45  # the share of the activations left with gradient checkpointing (LoRA of SmolLM2: 1,343 vs 2,291 MiB)
CHUNK_COPIES = 1  # the training loss (loss.py): one chunk of logits at a time
PLAIN_LOGIT_COPIES = 2  # the plain path: [tokens x vocab] fp32 logits and their gradient (not re-measured)
RUNTIME_BYTES = 20 * 2**20  # about the whole peak of a tiny Llama: Trainer, rendered data, tokenizer, arenas


def plain_loss(spec) -> bool:
    """Whether training computes logits for every position (loss.head_loss_for's conditions that a
    spec shows; the torch version is the worker's own and is assumed recent)."""
    lora_on_head = "lm_head" in spec.lora_targets and spec.finetune in ("lora", "qlora") and spec.method != "pretrain"
    return lora_on_head or spec.distributed == "fsdp"


def estimate_memory(s: dict, spec, cuda: bool) -> dict:
    from workers.core.training.loss import CHUNK_BYTES

    total, trainable = count_parameters(s, spec)
    full = spec.method == "pretrain" or spec.finetune == "full"
    if full:
        weights = total * 4
    elif spec.finetune == "qlora":
        embeddings = s["vocab"] * s["hidden"] * (1 if s["tied"] else 2)
        weights = (total - trainable - embeddings) // 2 + embeddings * 2 + trainable * 4
    else:
        weights = (total - trainable) * (2 if cuda else 4) + trainable * 4
    act_bytes = 2 if (cuda or spec.precision == "bf16") else 4
    tokens = spec.batch_size * spec.max_length
    if spec.method == "dpo":
        tokens *= 2  # chosen and rejected
    values = ACTIVATION_VALUES[0] * s["hidden"] + ACTIVATION_VALUES[1] * s["intermediate"]
    if not full:  # each LoRA branch keeps its (dropped-out) input and its r-wide middle
        targets = LINEAR_MODULES if spec.lora_targets == ["all-linear"] else spec.lora_targets
        values += sum((LORA_INPUT_COPIES * a if spec.lora_dropout else 0) + spec.lora_r
                      for name, (a, _) in _linear_shapes(s).items() if name in targets)
    activations = tokens * s["layers"] * values * act_bytes
    if spec.gradient_checkpointing:
        activations *= CHECKPOINT_KEEPS
    logits = tokens * s["vocab"] * 4
    activations += logits * PLAIN_LOGIT_COPIES if plain_loss(spec) else min(logits, CHUNK_BYTES) * CHUNK_COPIES
    memory = {"weights": int(weights), "gradients": int(trainable * 4), "optimizer": int(trainable * 8),
              "activations": int(activations), "runtime": 0 if cuda else RUNTIME_BYTES}
    memory["total"] = int((memory["weights"] + memory["gradients"] + memory["optimizer"] + memory["activations"])
                          * 1.1) + memory["runtime"]
    return memory


def suggestions(s: dict, spec, cuda: bool, budget: int) -> list[str]:
    """Changes that bring the estimate down, each with its new estimate (fitting ones first)."""
    options = []
    if spec.method != "pretrain" and spec.finetune == "full":
        options.append(("use LoRA (finetune: lora)", replace(spec, finetune="lora")))
        if cuda:
            options.append(("use QLoRA (finetune: qlora)", replace(spec, finetune="qlora")))
    if not spec.gradient_checkpointing:
        options.append(("turn on gradient_checkpointing", replace(spec, gradient_checkpointing=True)))
    if spec.batch_size > 1:
        half = spec.batch_size // 2
        options.append((f"batch_size {half} with grad_accum {spec.grad_accum * 2} (same tokens per optimizer step)",
                        replace(spec, batch_size=half, grad_accum=spec.grad_accum * 2)))
    if spec.max_length > 256:
        options.append((f"a shorter max_length ({spec.max_length // 2})", replace(spec, max_length=spec.max_length // 2)))
    rated = [(estimate_memory(s, option, cuda)["total"], text) for text, option in options]
    rated.sort(key=lambda r: (r[0] > budget, r[0]))
    return [f"{text}: about {_gib(total)} GiB" + ("" if total <= budget else " (still over)") for total, text in rated]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"
