"""Run an evaluation: every benchmark of an `EvaluateSpec` on one target, with a prediction cache.

    result = run_evaluation(build_spec(EvaluateSpec, params), reporter)
    result["benchmarks"]["mmlu"] == {"score": .., "ci_low": .., "ci_high": .., "n": .., "benchmark_hash": .., ...}

The target is local weights or a remote generator (targets.py: a deployment, an endpoint).
Per benchmark: rows are read from its JSONL file (the first `max_samples`), each row's prompt is
rendered (few-shot blocks + template; for a chat benchmark through the chat template), the
target's raw prediction is computed for the rows not in the cache, in batches, and every row is
then scored from its raw prediction:
    likelihood  raw = each option's log-likelihood (nats), token and character counts
                (workers/core/evaluation/likelihood.py, prefix-shared); scored by the chosen
                normalisation; right when the best option is the answer
    generation  raw = the greedy completion (the inference engine, or batched `generate`: the
                spec's `generator`); scored by the extractor
    code        raw = the greedy completion, cut at the HumanEval stop sequences; scored by running
                the problem's tests in the sandbox (pass@1 with one greedy sample)
    perplexity  raw = the text's NLL, token and byte counts; the score is bits per byte over all texts
    judge       raw = the greedy answer to the conversation; a judge model rates it 1-10
                (judge.py, `repeats` times); the score is the mean rating with a bootstrap 95%
                interval. Judgments are cached apart, under (judge, target, benchmark hash): a
                new judge or judge setting re-judges the cached answers without regenerating them.

The prediction cache is a SQLite file in `cache_dir`, keyed by (model content hash, prediction
hash, row index) where the prediction hash covers what changes the model's output (spec.py): a
resumed run (after a cancel or a killed worker) reuses every cached row, and a changed extractor
or normalisation re-scores cached outputs without running the model. Rows are committed after
every batch, so at most one batch is lost. A remote target's model key is a hash of what it
serves (targets.remote_hash). Per-sample rows (the prompt exactly as sent, raw output, extracted
answer, reference, correct, option log-likelihoods; a judged answer's `judge_score` and
`judgment`: each rating and reason) are written to one JSONL file per benchmark in `cache_dir`
(its name is `samples_file` in the result).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workers.core.data.packing import sha256_file
from workers.core.evaluation.spec import EvaluateSpec, benchmark_hash, check_row, is_agent_benchmark, prediction_hash
from workers.core.evaluation.tool_round import predict_with_tools, score_tool_round, tool_metrics
from workers.core.evaluation.targets import (  # noqa: F401 - EngineGenerator, generate: bench/eval_generation.py
    EngineGenerator,
    Prompt,
    generate,
    model_content_hash,
    open_target,
    remote_hash,
)
from workers.core.inference.errors import InvalidRequest
from workers.core.reporting import JobCancelled, Reporter
from workers.core.specs import SpecError

CACHE_FILE = "predictions.sqlite"
MAX_DATA_BYTES = 512 * 1024 * 1024  # a benchmark file larger than this is refused before reading
MAX_LINE_BYTES = 4 * 1024 * 1024
# HumanEval's stop sequences: the completion of one function ends where top-level code starts.
CODE_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_JUDGE_PARALLEL = 8  # answers judged at once (each asks the judge `repeats` times)


# ---------------------------------------------------------------------------------- hashing, data


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
    """The prompt before any chat template: each few-shot row's prompt and answer, then this row's
    prompt ("" for a chat row: its messages are the prompt)."""
    shape = definition["shape"]
    if shape == "chat":
        return ""
    blocks = [definition["template"].format(**_fields(shape, shot))
              + definition["answer_template"].format(answer=_fewshot_answer(shape, shot))
              for shot in definition["fewshot"]]
    blocks.append(definition["template"].format(**_fields(shape, row)))
    return definition["fewshot_separator"].join(blocks)


def _last_user(messages: list[dict]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def chat_messages(definition: dict, row: dict, text: str) -> list[dict] | None:
    """A chat benchmark's messages: a chat row's conversation up to its last user message, or
    the rendered prompt as one user message; None for a plain prompt."""
    if definition["shape"] == "chat":
        return [{"role": m["role"], "content": m.get("content") or ""} for m in row["messages"][:_last_user(row["messages"]) + 1]]
    return [{"role": "user", "content": text}] if definition["chat"] else None


def reference_of(shape: str, row: dict) -> str:
    """What a prediction is compared with: the letter, the final number of a GSM8K answer
    ("... #### 18" -> "18"), the answer text; for a chat row its "reference", else the
    assistant turn after its last user message (shown to the judge), else nothing."""
    if shape == "chat":
        if row.get("reference"):
            return row["reference"]
        after = row["messages"][_last_user(row["messages"]) + 1:]
        return next((m.get("content") or "" for m in after if m["role"] == "assistant"), "")
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


# ------------------------------------------------------------------------------------- predicting


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


def predict(target, definition: dict, rows: list[dict], prompts: list[Prompt], max_new_tokens: int) -> list[dict]:
    """Raw predictions of a batch (what the cache holds): generated text from any target, option
    log-likelihoods and NLLs from local weights."""
    paradigm = definition["scorer"]["paradigm"]
    if is_agent_benchmark(definition):
        return predict_with_tools(target, definition, prompts, max_new_tokens)
    if paradigm in ("generation", "code", "judge"):
        return [{"output": text} for text in target.generate(prompts, max_new_tokens, definition["tools"] or None)]
    model, tokenizer = target.weights()
    if paradigm == "likelihood":
        from workers.core.evaluation.likelihood import MultipleChoice, score_choices

        letter = definition["scorer"]["continuation"] == "letter"
        special = not definition["chat"]  # a chat template wrote the special tokens already

        def question(prompt: str, choices: list[str]) -> MultipleChoice:
            return MultipleChoice(prompt, tuple(" " + (LETTERS[i] if letter else c) for i, c in enumerate(choices)))

        if not definition["scorer"]["circular"]:
            scores = score_choices(model, tokenizer, [question(p.text, row["choices"]) for p, row in zip(prompts, rows)],
                                   add_special_tokens=special)
            return [_choice_raw(s) for s in scores]
        # Circular: every rotation is its own prompt (the prompt lists the options); one scoring call.
        variants = [rotated_rows(row) for row in rows]
        flat = [question(request_prompt(target, "", definition, v).text, v["choices"]) for vs in variants for v in vs]
        scores, raws, at = score_choices(model, tokenizer, flat, add_special_tokens=special), [], 0
        for vs in variants:
            raws.append({"rotations": [_choice_raw(s) for s in scores[at:at + len(vs)]]})
            at += len(vs)
        return raws
    from workers.core.evaluation.perplexity import perplexity

    settings = definition["scorer"]
    raws = []
    for prompt in prompts:
        result = perplexity(model, tokenizer, [prompt.text], window=settings["window"] or None, stride=settings["stride"] or None)
        raws.append({"nll": result.nll, "tokens": result.tokens, "bytes": result.bytes})
    return raws


def request_prompt(target, where: str, definition: dict, row: dict) -> Prompt:
    """One row's prompt as the target sends it."""
    text = render_prompt(definition, row)
    return target.prompt(where, definition, text, chat_messages(definition, row, text))


def judge_answers(judge, definition: dict, rows: list[dict], outputs: list[str]) -> list[dict]:
    """The judge's ratings of a batch of answers (judge.py score mode), in parallel."""
    from workers.core.evaluation.judge import judge_score

    def one(pair):
        row, output = pair
        messages = row["messages"][:_last_user(row["messages"]) + 1]
        return judge_score(judge, messages[-1].get("content") or "", output, reference=reference_of("chat", row) or None,
                           context=messages[:-1] or None, repeats=definition["scorer"]["repeats"])

    with ThreadPoolExecutor(max_workers=max(1, min(MAX_JUDGE_PARALLEL, len(rows)))) as pool:
        return list(pool.map(one, zip(rows, outputs)))


class JudgeTarget:
    """The spec's judge: a client, its cache key, and the judge callable per temperature."""

    def __init__(self, spec: EvaluateSpec, api_key: str | None, redis_url: str | None) -> None:
        from workers.core.evaluation.clients import JUDGE_KEY_ENV, open_client
        from workers.core.evaluation.judge import PROMPT_VERSION

        if spec.judge_deployment_id:
            self.client = open_client("deployment", deployment_id=spec.judge_deployment_id, redis_url=redis_url,
                                      timeout_s=spec.request_timeout_s)
            identity = ("deployment", spec.judge_deployment_id, spec.judge_revision)
        else:
            self.client = open_client("endpoint", base_url=spec.judge_endpoint_base_url, model=spec.judge_endpoint_model,
                                      api_key=api_key, key_env=JUDGE_KEY_ENV, timeout_s=spec.request_timeout_s,
                                      field="judge_endpoint_base_url")
            identity = ("endpoint", spec.judge_endpoint_base_url, spec.judge_endpoint_model, spec.judge_revision)
        self.hash = remote_hash(("judge", PROMPT_VERSION, *identity))

    def function(self, temperature: float):
        from workers.core.evaluation.clients import judge_function

        return judge_function(self.client, temperature=temperature)

    def close(self) -> None:
        self.client.close()


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
    elif is_agent_benchmark(definition):
        sample.update(score_tool_round(raw, sample["reference"], definition["tools"]))
    elif paradigm == "generation":
        from workers.core.evaluation.extract import answers_match, compile_pattern, extract

        kind = scorer["extractor"]
        pattern = compile_pattern(scorer["answer_pattern"]) if kind == "regex" else None
        options = LETTERS[: len(row["choices"])] if shape == "multiple_choice" else "ABCD"
        extracted = extract(kind, raw["output"], options=options, pattern=pattern, tools=definition["tools"] or None)
        sample.update(output=raw["output"], extracted=extracted, correct=answers_match(kind, extracted, sample["reference"]))
    elif paradigm == "code":
        from workers.core.sandbox.humaneval import check_program

        completion = _cut_code(raw["output"])
        check = check_program(row["prompt"], completion, row["tests"], row["entry_point"], timeout=scorer["timeout_s"])
        sample.update(output=raw["output"], extracted=completion, correct=check.passed, result=check.result,
                      reference=row.get("canonical_solution", ""))
    elif paradigm == "judge":
        judgment = raw["judgment"]
        sample.update(output=raw["output"], extracted=None, correct=None, judge_score=judgment["mean"], judgment=judgment)
    else:
        sample.update(output=None, extracted=None, correct=None, nll=raw["nll"], tokens=raw["tokens"], bytes=raw["bytes"])
    return sample


def _summary(definition: dict, samples: list[dict]) -> dict:
    from workers.core.evaluation.statistics import bootstrap_mean_interval, wilson_interval

    n = len(samples)
    if definition["scorer"]["paradigm"] == "judge":
        rated = [s["judge_score"] for s in samples if s["judge_score"] is not None]
        interval = bootstrap_mean_interval(rated) if rated else None
        return {"score": interval.estimate if interval else None, "metric": "judge_score", "n": n, "rated": len(rated),
                "ci_low": interval.low if interval else None, "ci_high": interval.high if interval else None}
    if definition["scorer"]["paradigm"] == "perplexity":
        nll = sum(s["nll"] for s in samples)
        tokens, size = sum(s["tokens"] for s in samples), sum(s["bytes"] for s in samples)
        bpb = nll / (math.log(2) * size) if size else float("nan")
        return {"score": bpb, "metric": "bits_per_byte", "ci_low": None, "ci_high": None, "n": n,
                "perplexity": math.exp(nll / tokens) if tokens else float("nan")}
    right = sum(1 for s in samples if s["correct"])
    low, high = wilson_interval(right, n)
    metric = "pass@1" if definition["scorer"]["paradigm"] == "code" else "accuracy"
    summary = {"score": right / n if n else 0.0, "metric": metric, "ci_low": low, "ci_high": high, "n": n, "correct": right}
    return summary | (tool_metrics(samples) if is_agent_benchmark(definition) else {})


# ------------------------------------------------------------------------------------------ the run


def run_evaluation(spec: EvaluateSpec, reporter: Reporter, *, model=None, tokenizer=None, api_key: str | None = None,
                   judge_api_key: str | None = None, redis_url: str | None = None) -> dict:
    """Evaluate the spec's target on every benchmark (module doc). Raises JobCancelled when the
    reporter asks to stop (what was predicted so far stays cached).

    `model`/`tokenizer`: the model in `model_dir`, already loaded. `api_key` / `judge_api_key`:
    the endpoint's and the judge endpoint's keys (default: the environment's, clients.py);
    `redis_url`: the broker of deployments (default: REDIS_URL). None of them is ever stored."""
    prepared = []
    for i, definition in enumerate(spec.benchmarks):
        data_path = Path(definition["data_path"])
        if not data_path.is_file():
            raise SpecError(f"benchmarks[{i}].data_path", "is not a file")
        data_hash = sha256_file(data_path)
        rows = load_rows(f"benchmarks[{i}]", data_path, definition["shape"], spec.max_samples)
        prepared.append((definition, rows, data_hash))
    total = sum(len(rows) for _, rows, _ in prepared)
    target = open_target(spec, model=model, tokenizer=tokenizer, api_key=api_key, redis_url=redis_url)
    judge = cache = None
    results, done_before = {}, 0
    try:
        # Every prompt first: a benchmark the target cannot render (no chat template) fails the
        # run before anything is computed or cached.
        prompts = [[request_prompt(target, f"benchmarks[{i}]", d, row) for row in rows]
                   for i, (d, rows, _) in enumerate(prepared)]
        if any(d["scorer"]["paradigm"] == "judge" for d, _, _ in prepared):
            judge = JudgeTarget(spec, judge_api_key, redis_url)
        cache = PredictionCache(Path(spec.cache_dir) / CACHE_FILE)
        for (definition, rows, data_hash), row_prompts in zip(prepared, prompts):
            results[definition["name"]] = _run_benchmark(spec, reporter, target, judge, cache, definition, rows,
                                                         row_prompts, data_hash, done_before, total)
            done_before += len(rows)
    finally:
        if cache is not None:
            cache.close()
        target.close()
        if judge is not None:
            judge.close()
    return {"target": spec.target, "model_hash": target.model_hash, "benchmarks": results}


def _run_benchmark(spec, reporter, target, judge, cache, definition, rows, prompts, data_hash, done_before, total) -> dict:
    name, judged = definition["name"], definition["scorer"]["paradigm"] == "judge"
    version = benchmark_hash(definition, data_hash)
    key = prediction_hash(definition, data_hash, spec.max_new_tokens)
    raws = cache.get(target.model_hash, key)
    # Judgments: per (judge, target) and benchmark version, which covers the judge's settings.
    judge_key = f"{judge.hash}:{target.model_hash}" if judged else ""
    judgments = cache.get(judge_key, version) if judged else {}
    ready = [i for i in range(len(rows)) if i in raws and (not judged or i in judgments)]
    missing = sorted(set(range(len(rows))) - set(ready))
    samples: dict[int, dict] = {}
    reporter.log(f"{name}: {len(rows)} samples, {len(ready)} cached (benchmark {version[:12]})")

    def account(indices: list[int]) -> None:
        for i in indices:
            raw = {**raws[i], "judgment": judgments[i]} if judged else raws[i]
            samples[i] = score_sample(definition, rows[i], prompts[i].text, raw)
        part = _summary(definition, list(samples.values()))
        shown = "-" if part["score"] is None else f"{part['score']:.3f}"
        if part["ci_low"] is not None:
            shown += f" [{part['ci_low']:.3f}, {part['ci_high']:.3f}]"
        reporter.progress((done_before + len(samples)) / total, f"{name}: {len(samples)}/{len(rows)} {part['metric']} {shown}")
        if part["score"] is not None:
            reporter.metric(f"{name}/{part['metric']}", len(samples), part["score"])

    if ready:
        account(ready)
    for start in range(0, len(missing), spec.batch_size):
        if reporter.should_stop():
            raise JobCancelled("stopped on request")
        batch = missing[start:start + spec.batch_size]
        todo = [i for i in batch if i not in raws]
        if todo:
            try:
                new = predict(target, definition, [rows[i] for i in todo], [prompts[i] for i in todo], spec.max_new_tokens)
            except InvalidRequest as exc:  # e.g. a prompt longer than the model's context: say which rows
                raise SpecError(f"benchmark {definition['name']}", f"rows {todo[0] + 1}-{todo[-1] + 1}: {exc}; "
                                "shorten the template or few-shot rows, or lower max_new_tokens") from None
            cache.put(target.model_hash, key, dict(zip(todo, new)))
            raws.update(zip(todo, new))
        if judged:
            todo = [i for i in batch if i not in judgments]
            new = judge_answers(judge.function(definition["scorer"]["temperature"]), definition,
                                [rows[i] for i in todo], [raws[i]["output"] for i in todo])
            cache.put(judge_key, version, dict(zip(todo, new)))
            judgments.update(zip(todo, new))
        account(batch)
    ordered = [samples[i] for i in range(len(rows))]
    # The cache folder is shared by every run: the name holds all that changes the samples (the
    # benchmark version, the model, the prediction settings, the row count), and the file is
    # written aside and renamed, so concurrent runs never read each other's half-written file.
    material = f"{version}:{target.model_hash}:{key}:{len(rows)}"
    samples_path = Path(spec.cache_dir) / f"samples-{name}-{hashlib.sha256(material.encode()).hexdigest()[:24]}.jsonl"
    partial = samples_path.with_name(f".{samples_path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(partial, "w", encoding="utf-8") as fh:
        for index, sample in enumerate(ordered):
            fh.write(json.dumps({"index": index, **sample}, ensure_ascii=False) + "\n")
    os.replace(partial, samples_path)
    return {**_summary(definition, ordered), "benchmark_hash": version, "dimension": definition["dimension"],
            "cached": len(ready), "computed": len(rows) - len(ready), "samples_file": samples_path.name}
