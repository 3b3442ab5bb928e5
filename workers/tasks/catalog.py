"""What the web side may know about job kinds: the Celery task that runs each kind, its default
queue, and validation of its parameters. The apps reach the core only through this module, and
it imports only the light spec classes (no torch), so the web process stays fast to start."""
from __future__ import annotations

from dataclasses import asdict, dataclass

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


KINDS: dict[str, KindInfo] = {
    "diagnostics": KindInfo("jobs.diagnostics", "gpu"),
    "probe": KindInfo("jobs.probe", "cpu"),
    "model_import": KindInfo("registry.import", "cpu"),
    "model_merge": KindInfo("registry.merge", "cpu"),
    "model_quantize": KindInfo("registry.quantize", "cpu"),
    "dataset_import": KindInfo("datasets.import", "cpu"),
    "dataset_clean": KindInfo("datasets.clean", "cpu"),
    "dataset_generate": KindInfo("datasets.generate", "cpu"),
    "train": KindInfo("training.train", "gpu"),
    "serve": KindInfo("serving.replica", "serve"),
}


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
