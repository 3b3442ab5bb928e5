"""What the web side may know about job kinds: the Celery task that runs each kind, its default
queue, and validation of its parameters. The apps reach the core only through this module, and
it imports only the light spec classes (no torch), so the web process stays fast to start."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from workers.core import paths
from workers.core.kinds import CORE_JOBS
from workers.core.specs import SpecError, build_spec


class InvalidParams(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class KindInfo:
    task_name: str
    default_queue: str


# Derived from the one declaration of every kind (workers/core/kinds.py).
KINDS: dict[str, KindInfo] = {name: KindInfo(job.task_name, job.default_queue) for name, job in CORE_JOBS.items()}

# The kinds anyone may submit with their own parameters (the generic job API and forms): they
# touch no file. Every other kind carries server paths and is created only by its app's service,
# which derives each path from ids the caller may see; the value says where that is.
GENERIC_KINDS = tuple(name for name, job in CORE_JOBS.items() if not job.created_through)
APP_KINDS = {name: job.created_through for name, job in CORE_JOBS.items() if job.created_through}


def kind_choices() -> list[tuple[str, str]]:
    """(kind, label) of every kind, for the job model's choices."""
    return [(name, job.label) for name, job in CORE_JOBS.items()]


def check_generic_kind(kind: str) -> None:
    """InvalidParams naming `kind` unless `kind` may be submitted with caller-chosen parameters."""
    if kind in GENERIC_KINDS:
        return
    if kind in APP_KINDS:
        raise InvalidParams("kind", f"{kind!r} jobs are created only through {APP_KINDS[kind]}; "
                                    f"the generic job API accepts {', '.join(GENERIC_KINDS)}")
    raise InvalidParams("kind", f"unknown job kind {kind!r} (the generic job API accepts {', '.join(GENERIC_KINDS)})")


# ---- what users may see of a job's parameters ----------------------------------------------

# A key is secret when one of its words (split on _ - .) is one of these: `redis_url`, `hf_token`,
# `api_key`, `password` go; `max_tokens`, `keep_checkpoints` stay.
_SECRET_WORDS = {"password", "passwd", "pass", "secret", "token", "key", "apikey", "credential", "credentials",
                 "auth", "authorization", "cookie", "session", "url", "dsn"}
_USERINFO = re.compile(r"([a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
HIDDEN = "(hidden)"


def _secret_key(key: str) -> bool:
    words = [w for w in re.split(r"[_\-.\s]+", key.lower()) if w]
    return any(w in _SECRET_WORDS for w in words)


def _looks_like_a_path(value: str) -> bool:
    # Server paths are absolute and at least two levels deep; a prompt such as "/help me" is not.
    return value.startswith(("/", "~")) and value.count("/") >= 2 and not any(c.isspace() for c in value)


def public_value(value: Any) -> Any:
    """`value` with every absolute path made relative to the data dir (or a placeholder), every
    URL's user:password removed, and secret-looking keys of nested objects dropped."""
    if isinstance(value, dict):
        return {k: public_value(v) for k, v in value.items() if not (isinstance(k, str) and _secret_key(k))}
    if isinstance(value, (list, tuple)):
        return [public_value(v) for v in value]
    if isinstance(value, str):
        if _looks_like_a_path(value) or paths.data_dir().as_posix() in value:
            return paths.public(value)
        if "://" in value:
            return _USERINFO.sub(r"\1", value)
    return value


def public_text(text: str) -> str:
    """Free text (an error, a log line) with server folders replaced: the data dir made relative,
    the code and Python installation shown as a placeholder."""
    return paths.scrub_text(text)


def public_params(kind: str, params: dict | None) -> dict:
    """A job's parameters as users may see them (job page, /api/jobs, a run's spec.yaml): paths
    relative to the data dir (`models/<uid>`, `datasets/<uid>.jsonl`), other server paths as a
    placeholder, secrets dropped. The stored parameters (what the worker runs) stay absolute."""
    if not isinstance(params, dict):
        return {}
    return public_value(params)


def archive_stream(folder, arcname: str):
    """A model folder as a streamed tar, for downloads served by the web process."""
    from workers.core.modelstore import archive_stream as stream

    return stream(folder, arcname)


def render_preview(record: dict, canonical: str, tokenizer_dir) -> dict:
    """One record as the trainer will see it with a model's tokenizer and chat template:
    {"segments": [{"text", "loss"}], "tokens", "loss_tokens", "truncated"} (loads transformers
    on first use)."""
    from transformers import AutoTokenizer

    from workers.core.data.tokenize import render_record

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, trust_remote_code=False)
    rendered = render_record(record, canonical, tokenizer)
    return {"segments": rendered.segments, "tokens": len(rendered.input_ids),
            "loss_tokens": sum(1 for label in rendered.labels if label != -100), "truncated": getattr(rendered, "truncated", False)}


def load_yaml(text, field: str = "yaml"):
    """(value, root node) of user YAML (a preset file, the Advanced box), bounded in size, depth
    and alias expansion before it is built (workers/core/yamlsafe.py); else InvalidParams(field,
    "line N: ...")."""
    from workers.core.yamlsafe import YamlInputError, load_with_node

    try:
        return load_with_node(text)
    except YamlInputError as exc:
        raise InvalidParams(field, str(exc)) from None


def task_name(kind: str) -> str:
    return KINDS[kind].task_name


def validate_params(kind: str, params: dict | None) -> dict:
    """The normalised parameters (defaults filled in), or InvalidParams naming the field."""
    if kind not in KINDS:
        raise InvalidParams("kind", f"unknown job kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    if params is not None and not isinstance(params, dict):
        raise InvalidParams("params", "must be an object of field: value")
    try:
        return asdict(build_spec(CORE_JOBS[kind].spec_class, params))
    except SpecError as exc:
        raise InvalidParams(exc.field, exc.reason) from None


# ---- training (core: workers/core/training) -------------------------------------------------

def training_presets() -> dict[str, dict]:
    """The built-in hyperparameter presets (name → spec fields), like XTuner's configs."""
    from workers.core.training.presets import BUILTIN_PRESETS

    return {name: dict(fields) for name, fields in BUILTIN_PRESETS.items()}


def training_preflight(params: dict, device: dict) -> dict:
    """Check a training spec before it is queued. `device` is {"kind": "cpu"|"cuda", "name": str,
    "memory_bytes": int} of the target worker. Returns the report documented in
    workers/core/training/preflight.py (ok, errors [{field, message}], warnings, memory,
    suggestions, sample). Loads the tokenizer (transformers) on first use."""
    from workers.core.training.preflight import preflight

    return preflight(params, device=device)


# ---- evaluation (core: workers/core/evaluation) ---------------------------------------------

def check_benchmark(definition: dict, data_path) -> dict:
    """A benchmark definition checked and completed by the core (defaults filled in), against
    the dataset version file at `data_path`; returned without `data_path` (the studio adds the
    version's path when it queues a run). InvalidParams names the field as the definition does
    (`template`, `scorer.extractor`, `fewshot[2].answer`)."""
    from workers.core.evaluation.spec import check_benchmark as check

    where = "benchmark"
    try:
        checked = check(where, {**definition, "data_path": str(data_path)})
    except SpecError as exc:
        field = exc.field[len(where) + 1:] if exc.field.startswith(where + ".") else exc.field
        raise InvalidParams(field or "definition", exc.reason) from None
    checked.pop("data_path", None)
    return checked


def benchmark_hash(definition: dict, data_hash: str) -> str:
    """The version hash shown beside every score (data hash, template, few-shot rows, scorer)."""
    from workers.core.evaluation.spec import benchmark_hash as digest

    return digest(definition, data_hash)


def evaluation_limits() -> dict[str, int]:
    """The core's bounds on a run: benchmarks per spec and few-shot rows per benchmark."""
    from workers.core.evaluation.spec import MAX_BENCHMARKS, MAX_FEWSHOT

    return {"benchmarks": MAX_BENCHMARKS, "fewshot": MAX_FEWSHOT}


def builtin_benchmark_sets() -> dict[str, dict]:
    """The built-in benchmark sets (name -> {"title", "canonical", "dimension"}), without their data."""
    from workers.core.evaluation.builtins import BUILTIN_SETS

    return {name: {"title": s.title, "canonical": s.canonical, "dimension": s.definition.get("dimension", "")}
            for name, s in BUILTIN_SETS.items()}


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of an accuracy."""
    from workers.core.evaluation.statistics import wilson_interval

    return wilson_interval(successes, n)


def mcnemar(a_correct, b_correct) -> dict:
    """McNemar's exact test on paired right/wrong decisions: {only_a, only_b, p_value, p_mid}."""
    from workers.core.evaluation.statistics import mcnemar as test

    result = test(list(a_correct), list(b_correct))
    return {"only_a": result.only_a, "only_b": result.only_b, "p_value": result.p_exact, "p_mid": result.p_mid}


def paired_bootstrap(scores_a, scores_b, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap of mean(A) - mean(B): {difference, low, high, p_value} (seeded)."""
    from workers.core.evaluation.statistics import paired_bootstrap as test

    result = test(list(scores_a), list(scores_b), n_resamples=n_resamples, seed=seed)
    return {"difference": result.difference, "low": result.low, "high": result.high, "p_value": result.p_value}


def dimension_averages(scores) -> tuple[dict[str, dict], dict]:
    """Per-dimension and overall naive and weighted averages of one model's scores (rows
    {"dimension", "score" (None: not run), "weight"}): ({dim: average}, overall), each average
    {"naive", "weighted", "benchmarks", "complete"} (None averages when a score is missing)."""
    from workers.core.evaluation.statistics import dimension_averages as averages

    per_dimension, overall = averages(scores)
    return {d: asdict(a) for d, a in per_dimension.items()}, asdict(overall)
