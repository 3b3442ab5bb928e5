"""Run an evaluation: every benchmark of an `EvaluateSpec` on one model, with a prediction cache.

    result = run_evaluation(build_spec(EvaluateSpec, params), reporter)
    result["benchmarks"]["mmlu"] == {"score": .., "ci_low": .., "ci_high": .., "n": .., "benchmark_hash": .., ...}

Per benchmark: rows are read from its JSONL file (the first `max_samples`), each row's prompt is
rendered (few-shot blocks + template), the model's raw prediction is computed for the rows not in
the cache, in batches, and every row is then scored from its raw prediction:
    likelihood  raw = each option's log-likelihood (nats), token and character counts
                (workers/core/evaluation/likelihood.py, prefix-shared); scored by the chosen
                normalisation; right when the best option is the answer
    generation  raw = the greedy completion (the inference engine, or batched `generate`: the
                spec's `generator`); scored by the extractor
    code        raw = the greedy completion, cut at the HumanEval stop sequences; scored by running
                the problem's tests in the sandbox (pass@1 with one greedy sample)
    perplexity  raw = the text's NLL, token and byte counts; the score is bits per byte over all texts

The prediction cache is a SQLite file in `cache_dir`, keyed by (model content hash, prediction
hash, row index) where the prediction hash covers what changes the model's output (spec.py): a
resumed run (after a cancel or a killed worker) reuses every cached row, and a changed extractor
or normalisation re-scores cached outputs without running the model. Rows are committed after
every batch, so at most one batch is lost. Per-sample rows (the prompt exactly as sent, raw
output, extracted answer, reference, correct, option log-likelihoods) are written to one JSONL
file per benchmark in `cache_dir` (its name is `samples_file` in the result).
"""
from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from pathlib import Path

from workers.core.data.packing import sha256_file
from workers.core.evaluation.spec import EvaluateSpec, benchmark_hash, check_row, prediction_hash
from workers.core.reporting import JobCancelled, Reporter
from workers.core.specs import SpecError

CACHE_FILE = "predictions.sqlite"
MAX_DATA_BYTES = 512 * 1024 * 1024  # a benchmark file larger than this is refused before reading
MAX_LINE_BYTES = 4 * 1024 * 1024
# HumanEval's stop sequences: the completion of one function ends where top-level code starts.
CODE_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ---------------------------------------------------------------------------------- hashing, data


def model_content_hash(model_dir: Path) -> str:
    """sha256 over the model folder's files (relative names and contents): the cache key of a
    model version, whatever folder it is loaded from."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


def load_rows(where: str, path: Path, shape: str, limit: int) -> list[dict]:
    """The benchmark's rows (the first `limit`, all when 0), each checked for its shape; a bad
    line is a SpecError naming the benchmark and the line."""
    if path.stat().st_size > MAX_DATA_BYTES:
        raise SpecError(f"{where}.data_path", f"is larger than {MAX_DATA_BYTES // 2**20} MiB")
    rows = []
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if len(line) > MAX_LINE_BYTES:
                raise SpecError(f"{where}.data_path", f"line {number} is longer than {MAX_LINE_BYTES} bytes")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise SpecError(f"{where}.data_path", f"line {number} is not JSON ({exc.__class__.__name__})") from None
            rows.append(check_row(f"{where}.data_path line {number}", shape, row))
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise SpecError(f"{where}.data_path", "holds no rows")
    return rows


# ---------------------------------------------------------------------------------------- prompts


def _fields(shape: str, row: dict) -> dict:
    if shape == "multiple_choice":
        options = "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(row["choices"]))
        return {"question": row["question"], "options": options, "subject": row.get("subject", "")}
    if shape == "qa":
        return {"question": row["question"]}
    if shape == "code":
        return {"prompt": row["prompt"], "task_id": row["task_id"], "entry_point": row["entry_point"]}
    return {"text": row["text"]}


def _fewshot_answer(shape: str, row: dict) -> str:
    return row["answer"]


def render_prompt(definition: dict, row: dict) -> str:
    """The prompt exactly as sent: each few-shot row's prompt and answer, then this row's prompt."""
    shape = definition["shape"]
    blocks = [definition["template"].format(**_fields(shape, shot))
              + definition["answer_template"].format(answer=_fewshot_answer(shape, shot))
              for shot in definition["fewshot"]]
    blocks.append(definition["template"].format(**_fields(shape, row)))
    return definition["fewshot_separator"].join(blocks)


def reference_of(shape: str, row: dict) -> str:
    """What a prediction is compared with: the letter, the final number of a GSM8K answer
    ("... #### 18" -> "18"), the answer text."""
    if shape == "qa" and "####" in row["answer"]:
        return row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    return row.get("answer", "")


# ------------------------------------------------------------------------------------------ cache


class PredictionCache:
    """Raw predictions per (model hash, prediction hash, row index) in a SQLite file. Insert-only
    (a key's first value is kept), committed per batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS predictions (model TEXT, benchmark TEXT, sample INTEGER, "
                        "raw TEXT, PRIMARY KEY (model, benchmark, sample))")
        self.db.commit()

    def get(self, model: str, benchmark: str) -> dict[int, dict]:
        rows = self.db.execute("SELECT sample, raw FROM predictions WHERE model = ? AND benchmark = ?", (model, benchmark))
        return {sample: json.loads(raw) for sample, raw in rows}

    def put(self, model: str, benchmark: str, items: dict[int, dict]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO predictions VALUES (?, ?, ?, ?)",
                            [(model, benchmark, i, json.dumps(raw)) for i, raw in items.items()])
        self.db.commit()

    def close(self) -> None:
        self.db.close()


# ------------------------------------------------------------------------------------- the model


def load_model(model_dir: Path, seed: int):
    import torch

    from workers.core.modelstore.loading import load_causal_lm

    torch.manual_seed(seed)
    return load_causal_lm(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")


class EngineGenerator:
    """Greedy completions through the continuous-batching engine around the loaded model,
    started on first use (a run without generation never starts it)."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer, self.engine = model, tokenizer, None

    def __call__(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        from workers.core.inference.engine import Engine, EngineConfig, EngineRequest
        from workers.core.inference.sampling import SamplingParams

        if self.engine is None:
            config = EngineConfig()
            config.max_new_tokens_cap = max(config.max_new_tokens_cap, max_new_tokens)
            self.engine = Engine.from_model(config, self.model, self.tokenizer)
            self.engine.start()
        handles = [self.engine.submit(EngineRequest(prompt=prompt, max_tokens_explicit=False,
                                                    sampling=SamplingParams(max_tokens=max_new_tokens, temperature=0.0)))
                   for prompt in prompts]
        texts = []
        for handle in handles:
            final = handle.result(timeout=600)
            if final.get("type") != "end":
                raise RuntimeError(f"generation failed: {str(final.get('message') or final)[:300]}")
            texts.append(final["text"])
        return texts

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions of a batch of prompts (left-padded, so every row ends at the prompt)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = _pad_left(tokenizer, prompts, pad, model.device)
    limit = getattr(model.config, "max_position_embeddings", None)
    budget = max_new_tokens if not limit else max(1, min(max_new_tokens, limit - enc["input_ids"].shape[1]))
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=budget, pad_token_id=pad)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _pad_left(tokenizer, prompts, pad, device):
    """Left-padded ids and mask (without touching the shared tokenizer's padding side)."""
    import torch

    ids = [list(i) for i in tokenizer(prompts)["input_ids"]]
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}


def _choice_raw(scores) -> dict:
    return {"logprobs": scores.logprobs, "tokens": scores.tokens, "chars": scores.chars}


def rotated_rows(row: dict) -> list[dict]:
    """The row once per rotation of its choices (rotation 0 is the row as given), answer moved along."""
    from workers.core.evaluation.likelihood import circular_variants

    return [{**row, "choices": choices, "answer": LETTERS[answer]}
            for choices, answer in circular_variants(row["choices"], LETTERS.index(row["answer"]))]


def _cut_code(completion: str) -> str:
    cut = min((completion.find(s) for s in CODE_STOPS if s in completion), default=len(completion))
    return completion[:cut]


def predict(model, tokenizer, definition: dict, rows: list[dict], prompts: list[str], max_new_tokens: int,
            generator=None) -> list[dict]:
    """Raw predictions of a batch (what the cache holds). `generator(prompts, max_new_tokens)`
    gives greedy completions (default: batched `generate`)."""
    paradigm = definition["scorer"]["paradigm"]
    if paradigm == "likelihood":
        from workers.core.evaluation.likelihood import MultipleChoice, score_choices

        letter = definition["scorer"]["continuation"] == "letter"

        def question(prompt: str, choices: list[str]) -> MultipleChoice:
            return MultipleChoice(prompt, tuple(" " + (LETTERS[i] if letter else c) for i, c in enumerate(choices)))

        if not definition["scorer"]["circular"]:
            scores = score_choices(model, tokenizer, [question(p, row["choices"]) for p, row in zip(prompts, rows)])
            return [_choice_raw(s) for s in scores]
        # Circular: every rotation is its own prompt (the prompt lists the options); one scoring call.
        variants = [rotated_rows(row) for row in rows]
        flat = [question(render_prompt(definition, v), v["choices"]) for vs in variants for v in vs]
        scores, raws, at = score_choices(model, tokenizer, flat), [], 0
        for vs in variants:
            raws.append({"rotations": [_choice_raw(s) for s in scores[at:at + len(vs)]]})
            at += len(vs)
        return raws
    if paradigm in ("generation", "code"):
        texts = generator(prompts, max_new_tokens) if generator else generate(model, tokenizer, prompts, max_new_tokens)
        return [{"output": text} for text in texts]
    from workers.core.evaluation.perplexity import perplexity

    settings = definition["scorer"]
    raws = []
    for prompt in prompts:
        result = perplexity(model, tokenizer, [prompt], window=settings["window"] or None, stride=settings["stride"] or None)
        raws.append({"nll": result.nll, "tokens": result.tokens, "bytes": result.bytes})
    return raws


# ------------------------------------------------------------------------------------------ scoring


def score_sample(definition: dict, row: dict, prompt: str, raw: dict) -> dict:
    """One per-sample row from a raw prediction (no model call)."""
    scorer, shape = definition["scorer"], definition["shape"]
    paradigm = scorer["paradigm"]
    sample = {"prompt": prompt, "reference": reference_of(shape, row)}
    if paradigm == "likelihood":
        from workers.core.evaluation.likelihood import ChoiceScores

        rotations = raw.get("rotations", [raw])
        variants = rotated_rows(row) if "rotations" in raw else [row]
        scored = [ChoiceScores(r["logprobs"], r["tokens"], r["chars"], scorer["normalization"]) for r in rotations]
        right = [LETTERS[s.prediction] == v["answer"] for s, v in zip(scored, variants)]
        answer = LETTERS[scored[0].prediction]
        sample.update(output=None, extracted=answer, correct=all(right),
                      option_logprobs=rotations[0]["logprobs"], option_scores=scored[0].scores)
        if "rotations" in raw:
            sample["rotations_correct"] = right
    elif paradigm == "generation":
        from workers.core.evaluation.extract import answers_match, compile_pattern, extract

        kind = scorer["extractor"]
        pattern = compile_pattern(scorer["answer_pattern"]) if kind == "regex" else None
        options = LETTERS[: len(row["choices"])] if shape == "multiple_choice" else "ABCD"
        extracted = extract(kind, raw["output"], options=options, pattern=pattern)
        sample.update(output=raw["output"], extracted=extracted, correct=answers_match(kind, extracted, sample["reference"]))
    elif paradigm == "code":
        from workers.core.sandbox.humaneval import check_program

        completion = _cut_code(raw["output"])
        check = check_program(row["prompt"], completion, row["tests"], row["entry_point"], timeout=scorer["timeout_s"])
        sample.update(output=raw["output"], extracted=completion, correct=check.passed, result=check.result,
                      reference=row.get("canonical_solution", ""))
    else:
        sample.update(output=None, extracted=None, correct=None, nll=raw["nll"], tokens=raw["tokens"], bytes=raw["bytes"])
    return sample


def _summary(definition: dict, samples: list[dict]) -> dict:
    from workers.core.evaluation.statistics import wilson_interval

    n = len(samples)
    if definition["scorer"]["paradigm"] == "perplexity":
        nll = sum(s["nll"] for s in samples)
        tokens, size = sum(s["tokens"] for s in samples), sum(s["bytes"] for s in samples)
        bpb = nll / (math.log(2) * size) if size else float("nan")
        return {"score": bpb, "metric": "bits_per_byte", "ci_low": None, "ci_high": None, "n": n,
                "perplexity": math.exp(nll / tokens) if tokens else float("nan")}
    right = sum(1 for s in samples if s["correct"])
    low, high = wilson_interval(right, n)
    metric = "pass@1" if definition["scorer"]["paradigm"] == "code" else "accuracy"
    return {"score": right / n if n else 0.0, "metric": metric, "ci_low": low, "ci_high": high, "n": n, "correct": right}


# ------------------------------------------------------------------------------------------ the run


def run_evaluation(spec: EvaluateSpec, reporter: Reporter, *, model=None, tokenizer=None) -> dict:
    """Evaluate `spec.model_dir` on every benchmark (module doc). Raises JobCancelled when the
    reporter asks to stop (what was predicted so far stays cached). `model`/`tokenizer` may be
    passed already loaded (they must be the model in `model_dir`)."""
    model_dir, cache_dir = Path(spec.model_dir), Path(spec.cache_dir)
    model_hash = model_content_hash(model_dir)
    prepared = []
    for i, definition in enumerate(spec.benchmarks):
        data_path = Path(definition["data_path"])
        if not data_path.is_file():
            raise SpecError(f"benchmarks[{i}].data_path", "is not a file")
        data_hash = sha256_file(data_path)
        rows = load_rows(f"benchmarks[{i}]", data_path, definition["shape"], spec.max_samples)
        prepared.append((definition, rows, data_hash))
    total = sum(len(rows) for _, rows, _ in prepared)
    cache = PredictionCache(cache_dir / CACHE_FILE)
    results, done_before, generator = {}, 0, None
    try:
        for definition, rows, data_hash in prepared:
            name = definition["name"]
            version = benchmark_hash(definition, data_hash)
            key = prediction_hash(definition, data_hash, spec.max_new_tokens)
            prompts = [render_prompt(definition, row) for row in rows]
            raws = cache.get(model_hash, key)
            cached = sum(1 for i in range(len(rows)) if i in raws)
            samples: dict[int, dict] = {}
            missing = [i for i in range(len(rows)) if i not in raws]
            reporter.log(f"{name}: {len(rows)} samples, {cached} cached (benchmark {version[:12]})")

            def account(indices: list[int]) -> None:
                for i in indices:
                    samples[i] = score_sample(definition, rows[i], prompts[i], raws[i])
                part = _summary(definition, list(samples.values()))
                shown = f"{part['score']:.3f}" + (f" [{part['ci_low']:.3f}, {part['ci_high']:.3f}]" if part["ci_low"] is not None else "")
                reporter.progress((done_before + len(samples)) / total, f"{name}: {len(samples)}/{len(rows)} {part['metric']} {shown}")
                reporter.metric(f"{name}/{part['metric']}", len(samples), part["score"])

            if cached:
                account([i for i in range(len(rows)) if i in raws])
            for start in range(0, len(missing), spec.batch_size):
                if reporter.should_stop():
                    raise JobCancelled("stopped on request")
                batch = missing[start:start + spec.batch_size]
                if model is None:
                    model, tokenizer = load_model(model_dir, spec.seed)
                if generator is None and spec.generator == "engine":
                    generator = EngineGenerator(model, tokenizer)
                new = predict(model, tokenizer, definition, [rows[i] for i in batch], [prompts[i] for i in batch],
                              spec.max_new_tokens, generator)
                cache.put(model_hash, key, dict(zip(batch, new)))
                raws.update(zip(batch, new))
                account(batch)
            ordered = [samples[i] for i in range(len(rows))]
            samples_path = cache_dir / f"samples-{name}-{version[:16]}-{model_hash[:16]}.jsonl"
            with open(samples_path, "w", encoding="utf-8") as fh:
                for index, sample in enumerate(ordered):
                    fh.write(json.dumps({"index": index, **sample}, ensure_ascii=False) + "\n")
            results[name] = {**_summary(definition, ordered), "benchmark_hash": version, "dimension": definition["dimension"],
                             "cached": cached, "computed": len(rows) - cached, "samples_file": samples_path.name}
            done_before += len(rows)
    finally:
        cache.close()
        if generator is not None:
            generator.close()
    return {"model_hash": model_hash, "benchmarks": results}
