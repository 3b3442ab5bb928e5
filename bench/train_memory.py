"""Peak memory of LoRA vs full fine-tuning on CPU, each run through the product's training path
with the product's defaults (TrainSpec: LoRA r=16 on all linear layers, dropout 0.05, gradient
checkpointing on where it pays; full: fp32 AdamW, no checkpointing; packing; the loss of
workers/core/training/loss.py), as a dry run of 3 optimizer steps in a fresh process per case
(tests/core/training/peak_memory.py): peak = peak RSS minus the RSS after importing the libraries.

    SmolLM2-135M-Instruct, SFT on generated tool-use dialogues, 512 tokens per step (max_length 512,
    batch 1; loss on the assistant turns only): target LoRA / full <= 0.5
    the same model, continued pretraining on Shakespeare (every position carries loss), 512 tokens
    LoRA without gradient checkpointing (SFT), to show what the checkpointing default brings
    --quick: a ~29M Llama (bench/serving.py's llama30m) instead of SmolLM2, 512 tokens

Each ratio is against the full fine-tune measured in the same run.

    .venv/bin/python bench/train_memory.py [--quick]     (wrap in flock /tmp/puyu-cpu.lock here)

Measured here (2 shared, loaded cores, 2026-12-04), peak above imports (imports: 477 MiB):
    SFT  full 3045 MiB, LoRA 1343 MiB: LoRA / full 0.441 (target <= 0.5: met)
         LoRA without gradient checkpointing 2291 MiB: 0.752
    CPT  full 3043 MiB, LoRA 1377 MiB: 0.453
The seconds per step of these 3-step dry runs (full 27.9, LoRA 8.6, LoRA without checkpointing
30.9) came from a machine other jobs were loading and are no speed figure; what checkpointing
costs in time is to be measured on a quiet machine.

Before (2026-11-28, the plain loss with logits for every position, no checkpointing default, peak
RSS with the imports): SmolLM2 @ 512 full 3349 MiB, LoRA 2802 MiB, ratio 0.84.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = Path("/tmp/puyu-bench/train_memory")


def prepare(quick: bool) -> tuple[Path, dict]:
    """The data dir (PUYU_DATA_DIR) with the base model and the two data sets; their paths."""
    from bench.serving import llama30m_dir, smollm2_dir
    from tests.fixtures.tiny_models import train_text
    from workers.core.data.generators import tool_use_dialogues, write_jsonl

    if WORK.exists():
        shutil.rmtree(WORK)
    for sub in ("models", "datasets", "checkpoints"):
        (WORK / sub).mkdir(parents=True)
    base = WORK / "models" / "base"
    shutil.copytree(llama30m_dir() if quick else smollm2_dir(), base, copy_function=os.link)  # read inside the data dir
    write_jsonl(tool_use_dialogues(400, 0), WORK / "datasets" / "tool_use.jsonl")
    text = train_text()
    write_jsonl(({"text": text[i:i + 2000]} for i in range(0, min(len(text), 400_000), 2000)),
                WORK / "datasets" / "text.jsonl")
    return base, {"sft": WORK / "datasets" / "tool_use.jsonl", "cpt": WORK / "datasets" / "text.jsonl"}


def case_params(base: Path, data: Path, method: str, finetune: str, name: str, **extra) -> dict:
    return {"method": method, "finetune": finetune, "base_model_dir": str(base), "train_files": [str(data)],
            "max_length": 512, "batch_size": 1, "eval_fraction": 0.0, "torch_threads": 2,
            "output_dir": str(WORK / "models" / f"out-{name}"), "checkpoint_dir": str(WORK / "checkpoints" / name),
            **extra}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the ~29M Llama instead of SmolLM2, SFT only")
    args = parser.parse_args()
    from tests.core.training.peak_memory import measure

    base, data = prepare(args.quick)
    env = {**os.environ, "PUYU_DATA_DIR": str(WORK)}
    cases = [("sft", "full", {}), ("sft", "lora", {}), ("sft", "lora", {"gradient_checkpointing": False})]
    if not args.quick:
        cases += [("cpt", "full", {}), ("cpt", "lora", {})]
    runs = {}
    for method, finetune, extra in cases:
        name = f"{method}-{finetune}" + ("-no-checkpointing" if extra else "")
        runs[name] = measure(case_params(base, data[method], method, finetune, name, **extra), env=env)
        print(f"{name}: {runs[name]['peak_above_imports'] / 2**20:.0f} MiB above imports "
              f"(setup {runs[name]['setup_peak_above_imports'] / 2**20:.0f} MiB), "
              f"{runs[name]['seconds_per_step']:.2f} s/step", file=sys.stderr, flush=True)

    def ratio(a: str, b: str) -> float:
        return round(runs[a]["peak_above_imports"] / runs[b]["peak_above_imports"], 3)

    summary = {"bench": "train_memory", "device": "cpu", "model": "llama-30m (29M)" if args.quick else "SmolLM2-135M",
               "tokens_per_step": 512, "runs": runs,
               "sft_lora_vs_full": ratio("sft-lora", "sft-full"),
               "sft_lora_without_checkpointing_vs_full": ratio("sft-lora-no-checkpointing", "sft-full"),
               "sft_lora_time_per_step_checkpointing_vs_not": round(
                   runs["sft-lora"]["seconds_per_step"] / runs["sft-lora-no-checkpointing"]["seconds_per_step"], 3)}
    if not args.quick:
        summary["cpt_lora_vs_full"] = ratio("cpt-lora", "cpt-full")
    summary["target_lora_vs_full"] = 0.5
    print(json.dumps(summary))
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
