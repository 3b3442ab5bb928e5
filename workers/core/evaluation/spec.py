"""The `evaluate` job spec: a model folder and a list of benchmark definitions. Imports nothing of
the runner (and no ML library), so the web side and the command line validate a spec cheaply.

A benchmark definition (one item of `benchmarks`):

    name       short label, unique in the spec (letters, digits, - _ .)
    shape      multiple_choice | qa | code | text (the canonical records of workers/core/data/schema.py)
    data_path  a dataset version's JSONL file (under the data dir's datasets/ folder)
    template   the prompt of one row, with named fields in braces: {question}, {options} (the
               lettered choices, "A. ...\\nB. ..."), {prompt} (code), {text}; "{{" is a brace
    answer_template   how a few-shot row's answer follows its prompt (default " {answer}")
    fewshot    fixed rows (same shape as the data) rendered before every prompt, never re-sampled
    fewshot_separator  between the few-shot blocks and the prompt (default "\\n\\n")
    scorer     {paradigm: likelihood | generation | code | perplexity, and its settings}
    dimension  knowledge | reasoning | math | code | language | understanding | exam | chinese | agent

Scorer settings per paradigm (unknown ones are errors):
    likelihood  normalization (none | per-token | per-character), continuation (letter | text),
                circular (true: every rotation of the options must be answered right, OpenCompass's CircularEval)
    generation  extractor (workers/core/evaluation/extract.py EXTRACTORS), answer_pattern (regex extractor)
    code        timeout_s (per problem, default 3)
    perplexity  window, stride (tokens; defaults: the model's context and half of it)

`benchmark_hash` is the version hash shown beside every score: the data hash, template, few-shot
rows and scorer with its settings. `prediction_hash` covers only what changes the MODEL's output
(everything but the answer extraction / normalisation / code timeout): predictions are cached
under it, so a changed scorer re-scores cached outputs without running the model again.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from typing import Any

from workers.core import paths
from workers.core.specs import SpecError, require_range, short

GENERATORS = ("engine", "generate")
SHAPES = ("multiple_choice", "qa", "code", "text")
PARADIGMS = ("likelihood", "generation", "code", "perplexity")
DIMENSIONS = ("knowledge", "reasoning", "math", "code", "language", "understanding", "exam", "chinese", "agent")
# Which paradigms can score which shape.
PARADIGM_SHAPES = {
    "likelihood": ("multiple_choice",),
    "generation": ("multiple_choice", "qa"),
    "code": ("code",),
    "perplexity": ("text",),
}
# Settings per paradigm with (default, check); `MODEL_SETTINGS` are those that change the model's output.
SCORER_SETTINGS = {
    "likelihood": {"normalization": "none", "continuation": "letter", "circular": False},
    "generation": {"extractor": "last_number", "answer_pattern": ""},
    "code": {"timeout_s": 3.0},
    "perplexity": {"window": 0, "stride": 0},
}
MODEL_SETTINGS = {"likelihood": ("continuation", "circular"), "generation": (), "code": (), "perplexity": ("window", "stride")}
TEMPLATE_FIELDS = {
    "multiple_choice": ("question", "options", "subject"),
    "qa": ("question",),
    "code": ("prompt", "task_id", "entry_point"),
    "text": ("text",),
}
BENCHMARK_KEYS = ("name", "shape", "data_path", "template", "answer_template", "fewshot", "fewshot_separator",
                  "scorer", "dimension")
MAX_BENCHMARKS = 64
MAX_FEWSHOT = 32
MAX_TEMPLATE = 8000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass
class EvaluateSpec:
    model_dir: str = ""
    benchmarks: list = field(default_factory=list)
    cache_dir: str = ""  # predictions cache and per-sample files (under evaluations/)
    max_samples: int = 0  # 0: every row
    batch_size: int = 8
    max_new_tokens: int = 256
    seed: int = 0
    # Greedy generation (generation and code scorers): the continuous-batching inference engine
    # (workers/core/inference/engine.py, a batch's prompts submitted together), or plain batched
    # `model.generate` with left padding. Both are greedy; the cache does not tell them apart.
    generator: str = "engine"

    def validate(self) -> None:
        if self.generator not in GENERATORS:
            raise SpecError("generator", f"must be one of {', '.join(GENERATORS)}, got {short(self.generator)}")
        paths.readable("model_dir", self.model_dir, paths.MODELS, starter=True)
        paths.writable("cache_dir", self.cache_dir, paths.EVALUATIONS)
        require_range("max_samples", self.max_samples, 0, 10_000_000)
        require_range("batch_size", self.batch_size, 1, 1024)
        require_range("max_new_tokens", self.max_new_tokens, 1, 8192)
        require_range("seed", self.seed, 0, 2**32 - 1)
        if not self.benchmarks:
            raise SpecError("benchmarks", "must list at least one benchmark")
        if len(self.benchmarks) > MAX_BENCHMARKS:
            raise SpecError("benchmarks", f"lists more than {MAX_BENCHMARKS} benchmarks")
        self.benchmarks = [check_benchmark(f"benchmarks[{i}]", b) for i, b in enumerate(self.benchmarks)]
        names = [b["name"] for b in self.benchmarks]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise SpecError(f"benchmarks[{i}].name", f"repeats the name {short(name)}")


def check_benchmark(where: str, raw: Any) -> dict:
    """One benchmark definition, checked and completed with its defaults (module doc)."""
    if not isinstance(raw, dict):
        raise SpecError(where, f"must be an object, got {short(raw)}")
    for key in raw:
        if key not in BENCHMARK_KEYS:
            raise SpecError(f"{where}.{_key(key)}", f"unknown field (allowed: {', '.join(BENCHMARK_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecError(f"{where}.name", f"must be 1-64 letters, digits, '-', '_' or '.', got {short(name)}")
    shape = raw.get("shape")
    if shape not in SHAPES:
        raise SpecError(f"{where}.shape", f"must be one of {', '.join(SHAPES)}, got {short(shape)}")
    paths.readable(f"{where}.data_path", raw.get("data_path"), paths.DATASETS)
    default_template = {"multiple_choice": "{question}\n{options}\nAnswer:", "qa": "Question: {question}\nAnswer:",
                        "code": "{prompt}", "text": "{text}"}[shape]
    template = _string(f"{where}.template", raw.get("template", default_template))
    _check_template(f"{where}.template", template, TEMPLATE_FIELDS[shape])
    answer_template = _string(f"{where}.answer_template", raw.get("answer_template", " {answer}"))
    _check_template(f"{where}.answer_template", answer_template, ("answer",))
    separator = _string(f"{where}.fewshot_separator", raw.get("fewshot_separator", "\n\n"))
    fewshot = raw.get("fewshot", [])
    if not isinstance(fewshot, list) or len(fewshot) > MAX_FEWSHOT:
        raise SpecError(f"{where}.fewshot", f"must be a list of at most {MAX_FEWSHOT} rows")
    for k, row in enumerate(fewshot):
        check_row(f"{where}.fewshot[{k}]", shape, row)
    if fewshot and shape in ("code", "text"):
        raise SpecError(f"{where}.fewshot", f"is not used by a {shape} benchmark: leave it empty")
    dimension = raw.get("dimension", "knowledge")
    if dimension not in DIMENSIONS:
        raise SpecError(f"{where}.dimension", f"must be one of {', '.join(DIMENSIONS)}, got {short(dimension)}")
    return {"name": name, "shape": shape, "data_path": raw["data_path"], "template": template,
            "answer_template": answer_template, "fewshot": fewshot, "fewshot_separator": separator,
            "scorer": _check_scorer(f"{where}.scorer", shape, raw.get("scorer")), "dimension": dimension}


def _key(key: Any) -> str:
    """A dict key as it appears in a field name (bounded; a non-string key by its repr)."""
    return key[:60] if isinstance(key, str) else short(key)


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEMPLATE:
        raise SpecError(where, f"must be a string of at most {MAX_TEMPLATE} characters, got {short(value)}")
    return value


def _check_template(where: str, template: str, allowed: tuple[str, ...]) -> None:
    """Only plain named fields: no attribute or index access, conversion or format spec, so a
    template can never reach beyond the row's values."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise SpecError(where, f"is not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in allowed or spec or conversion:
            raise SpecError(where, f"field {{{short(name)}}} is not allowed here (allowed: "
                                   f"{', '.join('{' + a + '}' for a in allowed)})")


def _check_scorer(where: str, shape: str, raw: Any) -> dict:
    from workers.core.evaluation.extract import EXTRACTORS, compile_pattern
    from workers.core.evaluation.likelihood import NORMALIZATIONS

    if not isinstance(raw, dict):
        raise SpecError(where, f"must be an object with a paradigm, got {short(raw)}")
    paradigm = raw.get("paradigm")
    if paradigm not in PARADIGMS:
        raise SpecError(f"{where}.paradigm", f"must be one of {', '.join(PARADIGMS)}, got {short(paradigm)}")
    if shape not in PARADIGM_SHAPES[paradigm]:
        raise SpecError(f"{where}.paradigm", f"{paradigm} cannot score a {shape} benchmark")
    settings = dict(SCORER_SETTINGS[paradigm])
    for key, value in raw.items():
        if key == "paradigm":
            continue
        if key not in settings:
            raise SpecError(f"{where}.{_key(key)}", f"unknown setting for {paradigm} (allowed: {', '.join(settings)})")
        if type(value) is not type(settings[key]) and not (isinstance(settings[key], float) and type(value) is int):
            raise SpecError(f"{where}.{key}", f"must be a {type(settings[key]).__name__}, got {short(value)}")
        settings[key] = value
    if paradigm == "likelihood":
        if settings["normalization"] not in NORMALIZATIONS:
            raise SpecError(f"{where}.normalization", f"must be one of {', '.join(NORMALIZATIONS)}")
        if settings["continuation"] not in ("letter", "text"):
            raise SpecError(f"{where}.continuation", "must be letter (score ' A', ' B', ...) or text (the choice)")
    elif paradigm == "generation":
        if settings["extractor"] not in EXTRACTORS:
            raise SpecError(f"{where}.extractor", f"must be one of {', '.join(EXTRACTORS)}")
        if settings["extractor"] == "regex":
            compile_pattern(settings["answer_pattern"], f"{where}.answer_pattern")
    elif paradigm == "code":
        settings["timeout_s"] = float(settings["timeout_s"])
        if not 0.1 <= settings["timeout_s"] <= 60:
            raise SpecError(f"{where}.timeout_s", "must be between 0.1 and 60 seconds")
    else:
        if not 0 <= settings["window"] <= 1_000_000 or not 0 <= settings["stride"] <= 1_000_000:
            raise SpecError(f"{where}.window", "window and stride must be between 0 (the default) and 1,000,000")
    return {"paradigm": paradigm, **settings}


def check_row(where: str, shape: str, row: Any) -> dict:
    """A data or few-shot row has its shape's fields (workers/core/data/schema.py)."""
    if not isinstance(row, dict):
        raise SpecError(where, f"must be an object, got {short(row)}")
    required = {"multiple_choice": ("question", "choices", "answer"), "qa": ("question", "answer"),
                "code": ("task_id", "prompt", "tests", "entry_point"), "text": ("text",)}[shape]
    for key in required:
        if key not in row:
            raise SpecError(where, f"a {shape} row needs the field {key!r}")
    if shape == "multiple_choice":
        choices = row["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= 26 or not all(isinstance(c, str) for c in choices):
            raise SpecError(f"{where}.choices", "must be a list of 2 to 26 strings")
        answer = row["answer"]
        if not isinstance(answer, str) or len(answer) != 1 or not 0 <= ord(answer) - ord("A") < len(choices):
            raise SpecError(f"{where}.answer", f"must be one of the choice letters, got {short(answer)}")
    elif shape == "code" and not (isinstance(row["entry_point"], str) and row["entry_point"].isidentifier()):
        raise SpecError(f"{where}.entry_point", "must be a Python identifier")
    for key in required:
        if shape != "multiple_choice" or key != "choices":
            if not isinstance(row[key], str):
                raise SpecError(f"{where}.{key}", f"must be a string, got {short(row[key])}")
    return row


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _hash_material(definition: dict, data_hash: str) -> dict:
    return {"data": data_hash, "shape": definition["shape"], "template": definition["template"],
            "answer_template": definition["answer_template"], "fewshot": definition["fewshot"],
            "fewshot_separator": definition["fewshot_separator"]}


def benchmark_hash(definition: dict, data_hash: str) -> str:
    """The benchmark's version hash: data hash + template + few-shot rows + scorer and settings.
    The name and the dimension are labels and do not change it."""
    return hashlib.sha256(_canonical({**_hash_material(definition, data_hash), "scorer": definition["scorer"]})).hexdigest()


def prediction_hash(definition: dict, data_hash: str, max_new_tokens: int) -> str:
    """The part of the version hash that changes the model's output (module doc)."""
    scorer = definition["scorer"]
    paradigm = scorer["paradigm"]
    model_settings = {k: scorer[k] for k in MODEL_SETTINGS[paradigm]}
    if paradigm in ("generation", "code"):
        model_settings["max_new_tokens"] = max_new_tokens
    material = {**_hash_material(definition, data_hash), "paradigm": paradigm, "settings": model_settings}
    return hashlib.sha256(_canonical(material)).hexdigest()
