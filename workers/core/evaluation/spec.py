"""The `evaluate` job spec: a target (model weights, a deployment or an external endpoint) and a
list of benchmark definitions. Imports nothing of the runner (and no ML library), so the web
side and the command line validate a spec cheaply.

The target (whose outputs are scored):

    target           model (default): the weights in `model_dir` run in this process |
                     deployment: a studio deployment as it is served, called over the serving
                     protocol like any client (workers/core/evaluation/clients.py) |
                     endpoint: an external OpenAI-compatible API (OpenCompass's API-model mode)
    model_dir        target model: a registry version's folder (else empty); for an adapter, its base
    adapter_dir      target model: a LoRA adapter version's folder, applied to model_dir with peft
                     (not merged), so a fine-tune is evaluated as trained (else empty)
    deployment_id    target deployment: its id
    endpoint_base_url, endpoint_model   target endpoint: the API's base URL ("https://host/v1"; it
                     must be on the administrator's allowlist, the environment variable
                     PUYU_EVAL_ENDPOINT_ALLOWLIST: comma-separated base URLs, empty allows none;
                     http(s), no user:password@) and the model name sent in requests
    target_revision  what is served: for a deployment, the served version's uid (required), for
                     an endpoint optional (a provider's model snapshot). With the target it makes
                     the prediction cache's model key, hash("deployment", id, revision) or
                     hash("endpoint", base URL, model[, revision]): a new served version never
                     reuses the old one's outputs.
    request_timeout_s  per remote request (deployment, endpoint and judge)

No secret is ever a spec field: the Redis URL of a deployment is the worker's REDIS_URL, and an
endpoint's API key is passed to run_evaluation by the caller (the studio reads it from an
admin-configured row at run time) or read from PUYU_EVAL_ENDPOINT_API_KEY (command line).
Remote targets produce text only: they run generation, code and judge benchmarks; likelihood
and perplexity need the weights.

The judge (for `judge` benchmarks; an LLM rates each answer, workers/core/evaluation/judge.py):
    judge_deployment_id | judge_endpoint_base_url + judge_endpoint_model   one of the two, as for
                     the target (the same allowlist; key: the caller's `judge_api_key`, or
                     PUYU_EVAL_JUDGE_API_KEY, else PUYU_EVAL_ENDPOINT_API_KEY)
    judge_revision   the judge's served version (part of the judgments' cache key)

A benchmark definition (one item of `benchmarks`):

    name       short label, unique in the spec (letters, digits, - _ .)
    shape      multiple_choice | qa | code | text | chat (the canonical records of
               workers/core/data/schema.py; a chat row is {"messages": [...], "reference"?}: the
               conversation up to its last user message is the question, "reference" (or the
               assistant turn after that message) is shown to the judge)
    data_path  a dataset version's JSONL file (under the data dir's datasets/ folder)
    template   the prompt of one row, with named fields in braces: {question}, {options} (the
               lettered choices, "A. ...\\nB. ..."), {prompt} (code), {text}; "{{" is a brace
               (a chat benchmark has none: its rows' messages are sent)
    answer_template   how a few-shot row's answer follows its prompt (default " {answer}")
    fewshot    fixed rows (same shape as the data) rendered before every prompt, never re-sampled
    fewshot_separator  between the few-shot blocks and the prompt (default "\\n\\n")
    chat       true: the rendered prompt (few-shot blocks + template) is sent as one user message
               through the model's chat template (with its generation prompt), the format
               instruct models are tuned on; the stored prompt is the text after the template
               (for a remote target, which applies its own template: the messages sent, as
               JSON). Default false; always true for a chat benchmark. Not for code or text.
    tools      tool schemas ({"type": "function", "function": {"name", "description"?,
               "parameters"?}}; at most 8, 16 KB of JSON) passed to the chat template (needs
               chat: true). On a local model whose own template does not render tools, a ChatML
               one (SmolLM2) is rendered with chatml-tools; any other is refused
               (benchmarks[i].tools): name a chat_template that renders them
    chat_template  "" (the model's own) or a named template of workers/core/inference/chat.py
               ("chatml", "chatml-tools": ChatML with Hermes/Qwen tool calls); local models only
    scorer     {paradigm: likelihood | generation | code | perplexity | judge, and its settings}
    dimension  knowledge | reasoning | math | code | language | understanding | exam | chinese | agent

Scorer settings per paradigm (unknown ones are errors):
    likelihood  normalization (none | per-token | per-character), continuation (letter | text),
                circular (true: every rotation of the options must be answered right, OpenCompass's CircularEval)
    generation  extractor (workers/core/evaluation/extract.py EXTRACTORS; with tools, tool_call
                makes it an agent benchmark: the calculator call runs and the model's reply after
                the observation is its answer, evaluation/tool_round.py), answer_pattern (regex extractor)
    code        timeout_s (per problem, default 3)
    perplexity  window, stride (tokens; defaults: the model's context and half of it)
    judge       repeats (judgments per answer, 1-10; their mean is the sample's score, their
                spread is shown), temperature (the judge's, 0-2; > 0 makes repeats differ)

`benchmark_hash` is the version hash shown beside every score: the data hash, template, few-shot
rows, chat settings and scorer with its settings. `prediction_hash` covers only what changes the
MODEL's output (everything but the answer extraction / normalisation / code timeout / judging):
predictions are cached under it, so a changed scorer re-scores cached outputs without running
the model again. Settings at their defaults (chat false, no tools, the model's template) are left
out of both, so the hashes of benchmarks made before those settings existed do not change.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import string
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from workers.core import paths
from workers.core.specs import SpecError, require_range, short

GENERATORS = ("engine", "generate")
TARGETS = ("model", "deployment", "endpoint")
SHAPES = ("multiple_choice", "qa", "code", "text", "chat")
PARADIGMS = ("likelihood", "generation", "code", "perplexity", "judge")
REMOTE_PARADIGMS = ("generation", "code", "judge")  # what a target without weights can run
DIMENSIONS = ("knowledge", "reasoning", "math", "code", "language", "understanding", "exam", "chinese", "agent")
# Which paradigms can score which shape.
PARADIGM_SHAPES = {
    "likelihood": ("multiple_choice",),
    "generation": ("multiple_choice", "qa"),
    "code": ("code",),
    "perplexity": ("text",),
    "judge": ("chat",),
}
# Settings per paradigm with (default, check); `MODEL_SETTINGS` are those that change the model's output.
SCORER_SETTINGS = {
    "likelihood": {"normalization": "none", "continuation": "letter", "circular": False},
    "generation": {"extractor": "last_number", "answer_pattern": ""},
    "code": {"timeout_s": 3.0},
    "perplexity": {"window": 0, "stride": 0},
    "judge": {"repeats": 1, "temperature": 0.0},
}
TOOL_ROUND_VERSION = 1  # agent benchmarks (tool_round.py): a change there must not reuse older predictions
MODEL_SETTINGS = {"likelihood": ("continuation", "circular"), "generation": (), "code": (), "perplexity": ("window", "stride"),
                  "judge": ()}
TEMPLATE_FIELDS = {
    "multiple_choice": ("question", "options", "subject"),
    "qa": ("question",),
    "code": ("prompt", "task_id", "entry_point"),
    "text": ("text",),
    "chat": (),
}
BENCHMARK_KEYS = ("name", "shape", "data_path", "template", "answer_template", "fewshot", "fewshot_separator",
                  "chat", "tools", "chat_template", "scorer", "dimension")
MAX_BENCHMARKS = 64
MAX_FEWSHOT = 32
MAX_TEMPLATE = 8000
MAX_TOOLS = 8
MAX_TOOLS_BYTES = 16 * 1024  # of the tools' JSON: they are rendered into every prompt
MAX_MESSAGES = 64  # per chat row
MAX_URL = 500
MAX_LABEL = 200  # a model name or revision
ENDPOINT_ALLOWLIST_ENV = "PUYU_EVAL_ENDPOINT_ALLOWLIST"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_LABEL = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII, no spaces: a model name, a uid


@dataclass
class EvaluateSpec:
    # What is evaluated and who judges (module doc); no secret is a field.
    target: str = "model"
    model_dir: str = ""
    adapter_dir: str = ""
    deployment_id: int = 0
    endpoint_base_url: str = ""
    endpoint_model: str = ""
    target_revision: str = ""
    judge_deployment_id: int = 0
    judge_endpoint_base_url: str = ""
    judge_endpoint_model: str = ""
    judge_revision: str = ""
    request_timeout_s: float = 300.0
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
        self._check_target()
        self._check_judge()
        paths.writable("cache_dir", self.cache_dir, paths.EVALUATIONS)
        require_range("request_timeout_s", self.request_timeout_s, 1, 3600)
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
        for i, definition in enumerate(self.benchmarks):
            paradigm = definition["scorer"]["paradigm"]
            if self.target != "model" and paradigm not in REMOTE_PARADIGMS:
                raise SpecError(f"benchmarks[{i}].scorer.paradigm",
                                f"{paradigm} needs the model's weights; a {self.target} target runs "
                                f"{', '.join(REMOTE_PARADIGMS)} benchmarks")
            if self.target != "model" and definition["chat_template"]:
                raise SpecError(f"benchmarks[{i}].chat_template",
                                f"a {self.target} applies its own chat template: leave it empty")
            if paradigm == "judge" and not self.has_judge():
                raise SpecError("judge_deployment_id", f"benchmarks[{i}] is judged: name the judge, "
                                                       "judge_deployment_id or judge_endpoint_base_url")

    def _check_target(self) -> None:
        if self.target not in TARGETS:
            raise SpecError("target", f"must be one of {', '.join(TARGETS)}, got {short(self.target)}")
        wanted = {"model": ("model_dir", "adapter_dir"), "deployment": ("deployment_id", "target_revision"),
                  "endpoint": ("endpoint_base_url", "endpoint_model", "target_revision")}[self.target]
        for name in ("model_dir", "adapter_dir", "deployment_id", "endpoint_base_url", "endpoint_model", "target_revision"):
            if name not in wanted and getattr(self, name):
                raise SpecError(name, f"is not used by a {self.target} target: leave it empty")
        if self.target == "model":
            paths.readable("model_dir", self.model_dir, paths.MODELS, starter=True)
            if self.adapter_dir:
                paths.readable("adapter_dir", self.adapter_dir, paths.MODELS)
        elif self.target == "deployment":
            if self.deployment_id < 1:
                raise SpecError("deployment_id", "must be a deployment id (a positive integer)")
            _check_label("target_revision", self.target_revision, required=True)
        else:
            self.endpoint_base_url = check_endpoint_url("endpoint_base_url", self.endpoint_base_url)
            _check_label("endpoint_model", self.endpoint_model, required=True)
            _check_label("target_revision", self.target_revision, required=False)

    def _check_judge(self) -> None:
        if self.judge_deployment_id and (self.judge_endpoint_base_url or self.judge_endpoint_model):
            raise SpecError("judge_deployment_id", "name one judge: a deployment or an endpoint, not both")
        if self.judge_deployment_id < 0:
            raise SpecError("judge_deployment_id", "must be a deployment id (a positive integer)")
        if self.judge_endpoint_base_url or self.judge_endpoint_model:
            self.judge_endpoint_base_url = check_endpoint_url("judge_endpoint_base_url", self.judge_endpoint_base_url)
            _check_label("judge_endpoint_model", self.judge_endpoint_model, required=True)
        _check_label("judge_revision", self.judge_revision, required=False)

    def has_judge(self) -> bool:
        return bool(self.judge_deployment_id or self.judge_endpoint_base_url)


def _check_label(name: str, value: str, *, required: bool) -> None:
    if not value and not required:
        return
    if not _LABEL.match(value or ""):
        raise SpecError(name, f"must be 1-{MAX_LABEL} printable characters without spaces, got {short(value)}")


def endpoint_allowlist() -> set[str]:
    """The administrator's allowlist of endpoint base URLs (normalised), read at call time."""
    raw = os.environ.get(ENDPOINT_ALLOWLIST_ENV, "")
    allowed = set()
    for item in raw.split(","):
        try:
            allowed.add(_normalise_url(item.strip()))
        except ValueError:
            continue  # a malformed entry allows nothing
    return allowed


def _normalise_url(url: str) -> str:
    if not url or len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("must be a URL of at most 500 characters without spaces")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    if "@" in parts.netloc:
        raise ValueError("must not hold a user name or password (user:pass@); the API key is configured apart")
    if parts.query or parts.fragment:
        raise ValueError("must be a base URL without ?query or #fragment")
    parts.port  # noqa: B018 - raises ValueError on a bad port
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def check_endpoint_url(field_name: str, url: Any) -> str:
    """An endpoint base URL, normalised (lower-case scheme and host, no trailing slash), or a
    SpecError naming the field: not http(s), with userinfo, or not on the allowlist."""
    if not isinstance(url, str):
        raise SpecError(field_name, f"must be a string, got {short(url)}")
    try:
        normalised = _normalise_url(url)
    except ValueError as exc:
        raise SpecError(field_name, str(exc)) from None
    if normalised not in endpoint_allowlist():
        raise SpecError(field_name, f"{short(normalised)} is not on the administrator's allowlist of evaluation "
                                    f"endpoints ({ENDPOINT_ALLOWLIST_ENV})")
    return normalised


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
                        "code": "{prompt}", "text": "{text}", "chat": ""}[shape]
    template = _string(f"{where}.template", raw.get("template", default_template))
    if shape == "chat" and template:
        raise SpecError(f"{where}.template", "a chat benchmark sends its rows' messages: it has no template")
    _check_template(f"{where}.template", template, TEMPLATE_FIELDS[shape])
    answer_template = _string(f"{where}.answer_template", raw.get("answer_template", " {answer}"))
    _check_template(f"{where}.answer_template", answer_template, ("answer",))
    separator = _string(f"{where}.fewshot_separator", raw.get("fewshot_separator", "\n\n"))
    fewshot = raw.get("fewshot", [])
    if not isinstance(fewshot, list) or len(fewshot) > MAX_FEWSHOT:
        raise SpecError(f"{where}.fewshot", f"must be a list of at most {MAX_FEWSHOT} rows")
    for k, row in enumerate(fewshot):
        check_row(f"{where}.fewshot[{k}]", shape, row)
    if fewshot and shape in ("code", "text", "chat"):
        raise SpecError(f"{where}.fewshot", f"is not used by a {shape} benchmark: leave it empty")
    chat, tools, chat_template = _check_chat(where, shape, raw)
    dimension = raw.get("dimension", "knowledge")
    if dimension not in DIMENSIONS:
        raise SpecError(f"{where}.dimension", f"must be one of {', '.join(DIMENSIONS)}, got {short(dimension)}")
    return {"name": name, "shape": shape, "data_path": raw["data_path"], "template": template,
            "answer_template": answer_template, "fewshot": fewshot, "fewshot_separator": separator,
            "chat": chat, "tools": tools, "chat_template": chat_template,
            "scorer": _check_scorer(f"{where}.scorer", shape, raw.get("scorer")), "dimension": dimension}


def _check_chat(where: str, shape: str, raw: dict) -> tuple[bool, list, str]:
    """(chat, tools, chat_template) of a definition (module doc)."""
    from workers.core.inference.chat import NAMED_TEMPLATES

    chat = raw.get("chat", shape == "chat")
    if not isinstance(chat, bool):
        raise SpecError(f"{where}.chat", f"must be true or false, got {short(chat)}")
    if shape == "chat" and not chat:
        raise SpecError(f"{where}.chat", "a chat benchmark is always sent as a chat: leave it out or true")
    if chat and shape in ("code", "text"):
        raise SpecError(f"{where}.chat", f"a {shape} benchmark is scored on the raw continuation: chat must be false")
    tools = raw.get("tools", [])
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise SpecError(f"{where}.tools", f"must be a list of at most {MAX_TOOLS} tool schemas")
    if tools:
        if not chat:
            raise SpecError(f"{where}.tools", "tools go through the chat template: set chat: true")
        if len(_canonical(tools)) > MAX_TOOLS_BYTES:
            raise SpecError(f"{where}.tools", f"hold more than {MAX_TOOLS_BYTES // 1024} KB of JSON")
        names = []
        for k, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict)
                    or not isinstance(function.get("name"), str) or not _NAME.match(function["name"])):
                raise SpecError(f"{where}.tools[{k}]", 'must be {"type": "function", "function": {"name": ..., '
                                                      '"description": ..., "parameters": {...}}} with a short name')
            if not isinstance(function.get("parameters", {}), dict) or not isinstance(function.get("description", ""), str):
                raise SpecError(f"{where}.tools[{k}]", "parameters must be a JSON schema object and description a string")
            names.append(function["name"])
        if len(set(names)) != len(names):
            raise SpecError(f"{where}.tools", "names a tool twice")
    chat_template = raw.get("chat_template", "")
    if chat_template not in ("", *NAMED_TEMPLATES):
        raise SpecError(f"{where}.chat_template", f"must be empty (the model's own) or one of {', '.join(NAMED_TEMPLATES)}, "
                                                  f"got {short(chat_template)}")
    if chat_template and not chat:
        raise SpecError(f"{where}.chat_template", "is used only with chat: true")
    return chat, tools, chat_template


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
    elif paradigm == "judge":
        settings["temperature"] = float(settings["temperature"])
        if not 1 <= settings["repeats"] <= 10:
            raise SpecError(f"{where}.repeats", "must be between 1 and 10")
        if not 0 <= settings["temperature"] <= 2:
            raise SpecError(f"{where}.temperature", "must be between 0 and 2")
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
    if shape == "chat":
        return _check_chat_row(where, row)
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


def _check_chat_row(where: str, row: dict) -> dict:
    """A chat row: messages with roles and string contents, a user turn among them, and an
    optional string "reference" (other fields, like "tools" or "meta", are ignored)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_MESSAGES:
        raise SpecError(f"{where}.messages", f"must be a list of 1 to {MAX_MESSAGES} messages")
    for k, message in enumerate(messages):
        if (not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool")
                or not isinstance(message.get("content") or "", str)):
            raise SpecError(f"{where}.messages[{k}]", "must be {\"role\": system|user|assistant|tool, \"content\": str}")
    if not any(m["role"] == "user" for m in messages):
        raise SpecError(f"{where}.messages", "needs a user message (the question)")
    if not isinstance(row.get("reference", ""), str):
        raise SpecError(f"{where}.reference", f"must be a string, got {short(row.get('reference'))}")
    return row


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _hash_material(definition: dict, data_hash: str) -> dict:
    material = {"data": data_hash, "shape": definition["shape"], "template": definition["template"],
                "answer_template": definition["answer_template"], "fewshot": definition["fewshot"],
                "fewshot_separator": definition["fewshot_separator"]}
    # Only when set, so a definition from before these settings keeps its hash.
    for key, default in (("chat", False), ("tools", []), ("chat_template", "")):
        if definition.get(key, default) != default:
            material[key] = definition[key]
    return material


def benchmark_hash(definition: dict, data_hash: str) -> str:
    """The benchmark's version hash: data hash + template + few-shot rows + scorer and settings.
    The name and the dimension are labels and do not change it."""
    return hashlib.sha256(_canonical({**_hash_material(definition, data_hash), "scorer": definition["scorer"]})).hexdigest()


def is_agent_benchmark(definition: dict) -> bool:
    """A generation benchmark with tools and the tool_call extractor: run with one tool round
    (evaluation/tool_round.py)."""
    scorer = definition["scorer"]
    return bool(definition.get("tools")) and scorer["paradigm"] == "generation" and scorer.get("extractor") == "tool_call"


def prediction_hash(definition: dict, data_hash: str, max_new_tokens: int) -> str:
    """The part of the version hash that changes the model's output (module doc)."""
    scorer = definition["scorer"]
    paradigm = scorer["paradigm"]
    model_settings = {k: scorer[k] for k in MODEL_SETTINGS[paradigm]}
    if paradigm in ("generation", "code"):
        model_settings["max_new_tokens"] = max_new_tokens
    if is_agent_benchmark(definition):  # a tool round runs (tool_round.py)
        model_settings["tool_round"] = TOOL_ROUND_VERSION
    material = {**_hash_material(definition, data_hash), "paradigm": paradigm, "settings": model_settings}
    return hashlib.sha256(_canonical(material)).hexdigest()
