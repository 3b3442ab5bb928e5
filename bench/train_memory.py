"""Peak memory of LoRA (r=16, all linear layers) vs full fine-tuning on CPU, measured as the peak
RSS of a fresh subprocess per case (so nothing of one case stays in the other's numbers):

    SmolLM2-135M-Instruct at 512 tokens per step (target: LoRA / full <= 0.5)
    a ~29M Llama from config (presets "llama-30m", 8k vocabulary) at 2,048 tokens per step, where
    activations dominate and the ratio is expected near 0.9 (reported, no target)

Each child loads the model in fp32 (the CPU training path), wraps it with peft for LoRA, and runs
3 optimizer steps (AdamW) with the training path's forward (packed position_ids, use_cache=False).
"baseline_rss" is the child's RSS after importing torch/transformers/peft, before the model.

Measured here (2 shared cores, 2026-11-28): SmolLM2 @ 512: full 3349 MiB, LoRA 2802 MiB, ratio
0.84; with gradient checkpointing in both: 2974 vs 1879 MiB, 0.63 (0.58 above the import baseline);
29M @ 2,048: 1.14 (LoRA's extra branch activations; activations dominate). The 0.5 target is NOT
met: at 512 tokens the fp32 activations (~1 GB for 30 layers) and the ~0.4 GB import baseline are
shared by both cases, so only the gradients + AdamW states (~1.6 GB) differ.

SmolLM2 is converted once from the packaged GGUF (workers.core.modelstore.convert_gguf) into
$PUYU_SMOLLM2_DIR or /tmp/puyu-bench-smollm2 if no converted copy exists (30-50 s).

    .venv/bin/python bench/train_memory.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def smollm2_dir() -> Path:
    folder = Path(os.environ.get("PUYU_SMOLLM2_DIR", "/tmp/puyu-bench-smollm2"))
    if (folder / "config.json").is_file():
        return folder
    from workers.core.modelstore import convert_gguf, find_starter_gguf
    from workers.core.reporting import ConsoleReporter

    print(f"converting SmolLM2 into {folder} (once)", file=sys.stderr)
    convert_gguf(find_starter_gguf(), folder, ConsoleReporter())
    return folder


def child(mode: str, model_ref: str, tokens: int, checkpointing: bool = False, steps: int = 3) -> None:
    import torch
    import transformers  # noqa: F401
    import peft  # noqa: F401

    baseline = _rss_now()
    torch.manual_seed(0)
    if model_ref == "llama-30m":
        from transformers import LlamaConfig, LlamaForCausalLM

        from workers.core.training.presets import ARCHITECTURES

        model = LlamaForCausalLM(LlamaConfig(**ARCHITECTURES["llama-30m"], vocab_size=8000))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=torch.float32, local_files_only=True,
                                                     use_safetensors=True)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        if checkpointing:
            model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, tokens))
    sample = 256  # packed: samples of 256 tokens back to back, position_ids restarting
    position_ids = torch.arange(tokens).remainder(sample).unsqueeze(0)
    started = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, position_ids=position_ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": peak, "baseline_rss": baseline, "trainable": sum(p.numel() for p in trainable),
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "checkpointing": checkpointing,
                      "seconds_per_step": round((time.perf_counter() - started) / steps, 3)}))


def _rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(mode: str, model_ref: str, tokens: int, checkpointing: bool = False) -> dict:
    extra = ["--checkpointing", "--steps", "2"] if checkpointing else []
    done = subprocess.run([sys.executable, __file__, "--child", mode, model_ref, str(tokens), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} {model_ref}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "TOKENS"))
    parser.add_argument("--quick", action="store_true", help="only the 29M model, 512 tokens")
    parser.add_argument("--checkpointing", action="store_true",
                        help="gradient checkpointing in both cases (activations no longer dominate)")
    parser.add_argument("--only-smollm2", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.checkpointing, args.steps)
        return 0
    cases = [] if args.only_smollm2 else [("llama-30m", 512 if args.quick else 2048)]
    if not args.quick:
        cases.insert(0, (str(smollm2_dir()), 512))
    summary = {"bench": "train_memory", "device": "cpu", "cases": []}
    for model_ref, tokens in cases:
        full = measure("full", model_ref, tokens, args.checkpointing)
        lora = measure("lora", model_ref, tokens, args.checkpointing)
        name = "SmolLM2-135M" if model_ref != "llama-30m" else "llama-30m (29M)"
        case = {"model": name, "tokens_per_step": tokens, "gradient_checkpointing": args.checkpointing, "full": full, "lora": lora,
                "lora_vs_full_peak": round(lora["peak_rss"] / full["peak_rss"], 3),
                "lora_vs_full_above_baseline": round((lora["peak_rss"] - lora["baseline_rss"])
                                                     / (full["peak_rss"] - full["baseline_rss"]), 3)}
        print(f"{name} @ {tokens}: full {full['peak_rss'] / 2**20:.0f} MiB, lora {lora['peak_rss'] / 2**20:.0f} MiB, "
              f"ratio {case['lora_vs_full_peak']}", file=sys.stderr)
        summary["cases"].append(case)
    summary["target_smollm2_lora_vs_full"] = 0.5
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
