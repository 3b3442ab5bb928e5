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


# The kinds anyone may submit with their own parameters (the generic job API and forms): they
# touch no file. Every other kind carries server paths and is created only by its app's service,
# which derives each path from ids the caller may see; the value says where that is.
GENERIC_KINDS = ("diagnostics", "probe")
APP_KINDS = {
    "model_import": "the model registry (POST /api/models/import, /api/models/import/archive, or Models → Import)",
    "model_merge": "the model registry (POST /api/versions/{id}/merge, or a version's page)",
    "model_quantize": "the model registry (POST /api/versions/{id}/quantize, or a version's page)",
    "dataset_import": "the datasets app (POST /api/datasets/upload or /api/datasets/import-hub, or Datasets → Upload)",
    "dataset_clean": "the datasets app (POST /api/dataset-versions/{id}/clean, or a version's page)",
    "dataset_generate": "the datasets app (POST /api/datasets/generate, or Datasets → Generate)",
    "train": "the training app (POST /api/training/runs, or Training → New run)",
    "serve": "a deployment (POST /api/deployments; its replicas are started and restarted by the deployment)",
}


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
