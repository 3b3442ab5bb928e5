"""Teach a small model to use a tool, the chain in miniature: LoRA-fine-tune SmolLM2-135M-Instruct
on the calculator tool-use dialogues of the Datasets generator, then score base and fine-tuned on
the built-in agent benchmark (100 held-out problems, workers/core/evaluation/builtins.py
"tool_use": the model calls the calculator, the result goes back, its next reply is the answer).

Everything runs through the product's own core jobs, as the studio runs them: `train` (sft, lora,
the model's template switched to chatml-tools because the records carry tool calls) and
`evaluate` (the tool round of evaluation/tool_round.py) in child processes.

    .venv/bin/python bench/tool_use.py                 # ~30 min on 2 cores (training 14 min)
    .venv/bin/python bench/tool_use.py --steps 20 --n-eval 10   # smoke run

Prints the training minutes and steps, and tool-call / argument / final-answer accuracy with
95% intervals for base and fine-tuned (targets: the LoRA run <= 20 minutes on 2 CPU cores,
final-answer accuracy >= 60% fine-tuned, where the base model is far lower), as one JSON line.
Measured here (2026-12-03): base 1% final answer, 0% tool calls; 15 steps (14.1 min) and 30 steps
(24.5 min) both 100% / 100% / 100% on the 100 held-out problems.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORK = Path("/tmp/puyu-bench/tool_use")
TRAIN_SEED = 0  # the Datasets generate form's default; the benchmark uses builtins.SEED
# A dialogue with the tools block is ~DIALOGUE_TOKENS tokens (54 of them trained on): packed three
# to a 1,024-token sequence, a step of 4 sequences sees ~12 dialogues.
MAX_LENGTH, BATCH, LEARNING_RATE = 1024, 4, 1e-3
DIALOGUE_TOKENS = 320


def core_job(kind: str, spec: dict, work: Path) -> dict:
    """Run `python -m workers.core KIND spec.json` in a fresh process; its result. Its progress
    lines go to WORK/KIND-<ms>.log as they come (tail -f it)."""
    stem = work / f"{kind}-{int(time.time() * 1000)}"
    path, log = stem.with_suffix(".json"), stem.with_suffix(".log")
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PUYU_DATA_DIR": str(work)}
    with open(log, "w") as fh:
        done = subprocess.run([sys.executable, "-m", "workers.core", kind, str(path)], cwd=REPO, env=env,
                              stdout=fh, stderr=subprocess.STDOUT, text=True)
    output = log.read_text()
    if done.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"{kind} failed (exit {done.returncode})")
    out = "\n" + output  # the result is the indented JSON object that ends the output
    try:
        return json.JSONDecoder().raw_decode(out[out.rindex("\n{\n") + 1:])[0]  # warnings may follow it
    except ValueError:
        raise SystemExit(f"{kind}: no JSON result in its output") from None


def evaluate(work: Path, model_dir: Path, adapter_dir: Path | None, data_path: Path, n: int, label: str) -> dict:
    from workers.core.evaluation.builtins import BUILTIN_SETS

    definition = {**BUILTIN_SETS["tool_use"].definition, "name": "tool_use", "data_path": str(data_path)}
    spec = {"model_dir": str(model_dir), "benchmarks": [definition], "cache_dir": str(work / "evaluations" / label),
            "max_samples": n, "batch_size": 32, "max_new_tokens": 96}
    if adapter_dir is not None:
        spec["adapter_dir"] = str(adapter_dir)
    started = time.perf_counter()
    result = core_job("evaluate", spec, work)["benchmarks"]["tool_use"]
    keys = ("score", "ci_low", "ci_high", "tool_call_accuracy", "tool_call_accuracy_low", "tool_call_accuracy_high",
            "argument_accuracy", "argument_accuracy_low", "argument_accuracy_high", "n")
    return {k: result[k] for k in keys} | {"minutes": round((time.perf_counter() - started) / 60, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=2000, help="generated training dialogues")
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps")
    parser.add_argument("--n-eval", type=int, default=100, help="held-out problems (at most 100)")
    parser.add_argument("--skip-base", action="store_true", help="skip scoring the base model (its figures do not change)")
    args = parser.parse_args()

    from bench.serving import smollm2_dir
    from workers.core.data.generators import tool_use_dialogues, write_jsonl
    from workers.core.evaluation.builtins import BUILTIN_SETS, SEED

    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "models").mkdir(parents=True)
    (WORK / "datasets").mkdir()
    base = WORK / "models" / "smollm2"
    shutil.copytree(smollm2_dir(), base, copy_function=os.link)  # the core reads only under its data dir

    train = tool_use_dialogues(args.n_train, TRAIN_SEED)
    held_out = BUILTIN_SETS["tool_use"].make()[: args.n_eval]
    # The benchmark's rows are these dialogues' questions: compare expressions, not wording.
    held_out_expressions = {r["meta"]["expression"] for r in tool_use_dialogues(len(held_out), SEED, split="test")}
    overlap = sum(1 for r in train if r["meta"]["expression"] in held_out_expressions)
    write_jsonl(train, WORK / "datasets" / "train.jsonl")
    write_jsonl(held_out, WORK / "datasets" / "tool_use.jsonl")
    print(f"{len(train)} training dialogues (seed {TRAIN_SEED}), {len(held_out)} held-out problems (seed {SEED}); "
          f"{overlap} training expressions equal a held-out one", flush=True)

    report = {"train_dialogues": len(train), "held_out": len(held_out), "overlapping_expressions": overlap}
    if not args.skip_base:
        report["base"] = evaluate(WORK, base, None, WORK / "datasets" / "tool_use.jsonl", args.n_eval, "base")
        print("base:", json.dumps(report["base"]), flush=True)

    spec = {"method": "sft", "finetune": "lora", "base_model_dir": str(base),
            "train_files": [str(WORK / "datasets" / "train.jsonl")], "output_dir": str(WORK / "models" / "lora"),
            "checkpoint_dir": str(WORK / "checkpoints" / "lora"), "max_length": MAX_LENGTH, "batch_size": BATCH,
            "learning_rate": LEARNING_RATE, "max_steps": args.steps, "lora_r": 16, "lora_alpha": 32, "eval_fraction": 0.02,
            "save_every": args.steps, "eval_every": args.steps, "log_every": 10}
    started = time.perf_counter()
    trained = core_job("train", spec, WORK)
    minutes = (time.perf_counter() - started) / 60
    report["train"] = {"steps": args.steps, "minutes": round(minutes, 2), "batch_size": BATCH, "max_length": MAX_LENGTH,
                       "learning_rate": LEARNING_RATE, "dialogues_seen": args.steps * BATCH * (MAX_LENGTH // DIALOGUE_TOKENS),
                       "final_metrics": {k: v for k, v in (trained.get("final_metrics") or {}).items()
                                         if isinstance(v, (int, float))}}
    print("train:", json.dumps(report["train"]), flush=True)
    report["fine_tuned"] = evaluate(WORK, base, WORK / "models" / "lora", WORK / "datasets" / "tool_use.jsonl",
                                    args.n_eval, "lora")
    print("fine-tuned:", json.dumps(report["fine_tuned"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
